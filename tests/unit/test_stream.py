"""The hub: shared bytes, late-joiner bootstrap, bounded GOP cache, slow-viewer policy."""

from __future__ import annotations

from collections.abc import Callable

from common.hub.pacing import MergeWindow
from common.hub.packet import AUDIO, DATA, RTMP, VIDEO, HubLimits
from common.hub.stream import Hub, Stream
from common.keys import StreamKey
from common.rtmp import amf0
from common.rtmp.chunk import ChunkReader

AVC_HEADER = b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f"
AAC_HEADER = b"\xaf\x00\x12\x10"
KEY = b"\x17\x01\x00\x00\x00key"
INTER = b"\x27\x01\x00\x00\x00inter"
AUDIO_FRAME = b"\xaf\x01audio"
META = amf0.encode("@setDataFrame", "onMetaData", {"width": 320.0, "height": 240.0})


class FakeViewer:
    wire_format = RTMP

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.backlog = 0
        self.dropped: str | None = None
        self.ended = False

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def buffered(self) -> int:
        return self.backlog

    def drop(self, reason: str) -> None:
        self.dropped = reason

    def source_ended(self) -> None:
        self.ended = True

    def messages(self, chunk_size: int = 4096) -> list[tuple[int, int, bytes]]:
        reader = ChunkReader()
        reader.chunk_size = chunk_size
        return [(m.type_id, m.timestamp, m.payload) for m in reader.feed(b"".join(self.chunks))]


IMMEDIATE = HubLimits(merge_window=0)


class FakeSource:
    """Feeds nothing by itself; the test calls stream.feed."""

    def stop(self, reason: str) -> None:
        raise AssertionError(f"nobody stops a test's source: {reason}")


class ManualScheduler:
    """Stands in for the event loop's call_later: the test decides when a merge window ends."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> None:
        self.calls.append((delay, callback))

    def fire(self) -> None:
        """Let the timers due now run (each merge phase reschedules the next)."""
        calls, self.calls = self.calls, []
        for _, callback in calls:
            callback()

    def fire_all(self, limit: int = 100) -> int:
        """Run timers until none is left; returns how many ran."""
        ran = 0
        while self.calls and ran < limit:
            self.fire()
            ran += 1
        return ran


def live_stream(
    limits: HubLimits = IMMEDIATE, scheduler: ManualScheduler | None = None, pacing: MergeWindow | None = None
) -> Stream:
    stream = Hub(limits, scheduler or ManualScheduler(), pacing=pacing).get_or_create(StreamKey("live", "cam"))
    stream.source = FakeSource()
    stream.feed(DATA, 0, META)
    stream.feed(VIDEO, 0, AVC_HEADER)
    stream.feed(AUDIO, 0, AAC_HEADER)
    return stream


def test_every_viewer_gets_the_same_bytes_object() -> None:
    stream = live_stream()
    viewers = [FakeViewer() for _ in range(3)]
    for viewer in viewers:
        stream.add_subscriber(viewer)
    packet = stream.feed(VIDEO, 40, KEY)
    assert packet is not None
    assert all(v.chunks[-1] is packet.rtmp for v in viewers)
    assert stream.bytes_out >= 3 * len(packet.rtmp)


def test_late_joiner_gets_metadata_headers_then_gop_from_last_keyframe() -> None:
    stream = live_stream()
    stream.feed(VIDEO, 0, KEY)
    stream.feed(VIDEO, 40, INTER)
    stream.feed(VIDEO, 2000, KEY)  # a new GOP starts: the first one is dropped from the cache
    stream.feed(AUDIO, 2010, AUDIO_FRAME)
    stream.feed(VIDEO, 2040, INTER)
    viewer = FakeViewer()
    stream.add_subscriber(viewer)
    got = viewer.messages()
    assert got[0][0] == DATA
    assert amf0.decode(got[0][2]) == ["onMetaData", {"width": 320.0, "height": 240.0}]  # @setDataFrame stripped
    assert got[1:] == [
        (VIDEO, 0, AVC_HEADER),
        (AUDIO, 0, AAC_HEADER),
        (VIDEO, 2000, KEY),
        (AUDIO, 2010, AUDIO_FRAME),
        (VIDEO, 2040, INTER),
    ]


def test_gop_cache_is_bounded_in_bytes_and_packets() -> None:
    stream = live_stream(HubLimits(gop_max_bytes=2000, gop_max_packets=1000, merge_window=0))
    stream.feed(VIDEO, 0, KEY)
    for i in range(100):
        stream.feed(VIDEO, 40 * (i + 1), INTER + b"x" * 100)
        assert stream.gop.nbytes <= 2000
    assert len(stream.gop) == 0  # over the bound: dropped until the next key frame
    stream.feed(VIDEO, 5000, KEY)
    assert len(stream.gop) == 1
    packets = live_stream(HubLimits(gop_max_packets=5, merge_window=0))
    packets.feed(VIDEO, 0, KEY)
    for i in range(20):
        packets.feed(AUDIO, i, AUDIO_FRAME)
        assert len(packets.gop) <= 5


def test_no_gop_before_first_keyframe() -> None:
    stream = live_stream()
    stream.feed(VIDEO, 0, INTER)
    stream.feed(AUDIO, 0, AUDIO_FRAME)
    assert len(stream.gop) == 0


def test_slow_viewer_skips_to_next_keyframe_and_others_are_unaffected() -> None:
    stream = live_stream(HubLimits(viewer_high_water=1000, viewer_max_buffer=100_000, merge_window=0))
    fast, slow = FakeViewer(), FakeViewer()
    stream.add_subscriber(fast)
    stream.add_subscriber(slow)
    slow.chunks.clear()
    slow.backlog = 5000  # over the high-water mark
    stream.feed(VIDEO, 0, KEY)
    stream.feed(AUDIO, 10, AUDIO_FRAME)
    stream.feed(VIDEO, 40, INTER)
    assert slow.chunks == []
    slow.backlog = 0  # drained; still waits for a key frame before getting media again
    stream.feed(VIDEO, 80, INTER)
    stream.feed(AUDIO, 90, AUDIO_FRAME)
    assert slow.chunks == []
    stream.feed(VIDEO, 2000, KEY)
    stream.feed(VIDEO, 2040, INTER)
    # It rejoins at the key frame with metadata and sequence headers first, so a decoder restarts cleanly.
    assert [(m[0], m[1]) for m in slow.messages()] == [(DATA, 0), (VIDEO, 0), (AUDIO, 0), (VIDEO, 2000), (VIDEO, 2040)]
    assert [m[1] for m in fast.messages()][-7:] == [0, 10, 40, 80, 90, 2000, 2040]


def test_viewer_past_the_limit_is_dropped() -> None:
    stream = live_stream(HubLimits(viewer_high_water=1000, viewer_max_buffer=10_000, merge_window=0))
    viewer = FakeViewer()
    stream.add_subscriber(viewer)
    viewer.backlog = 20_000
    stream.feed(VIDEO, 0, KEY)
    assert viewer.dropped is not None and "behind" in viewer.dropped
    assert stream.viewers_dropped == 1 and stream.viewers == 0


def test_end_of_source_tells_viewers_and_clears_caches() -> None:
    stream = live_stream()
    stream.feed(VIDEO, 0, KEY)
    viewer = FakeViewer()
    stream.add_subscriber(viewer)
    stream.end_of_source()
    assert viewer.ended
    assert stream.viewers == 0
    assert stream.metadata is None and stream.video_header is None and len(stream.gop) == 0


def test_hub_bounds_its_stream_count_and_discards_idle_streams() -> None:
    hub = Hub(HubLimits(max_streams=2), ManualScheduler())
    a = hub.get_or_create(StreamKey("live", "a"))
    hub.get_or_create(StreamKey("live", "b"))
    try:
        hub.get_or_create(StreamKey("live", "c"))
    except OverflowError as exc:
        assert "maximum" in str(exc)
    else:
        raise AssertionError("third stream accepted")
    hub.discard_if_idle(a)
    assert hub.get(StreamKey("live", "a")) is None
    assert len(hub) == 1


def test_enhanced_rtmp_hevc_sequence_start_is_cached_as_header() -> None:
    stream = live_stream()
    hevc_start = bytes([0x80 | 0x10 | 0]) + b"hvc1" + b"config"  # ExHeader, key frame, SequenceStart
    stream.feed(VIDEO, 0, hevc_start)
    assert stream.video_header is not None and stream.video_header.payload == hevc_start


MERGED = HubLimits(merge_window=0.05, merge_phases=1)


def test_merge_window_joins_packets_into_one_write_shared_by_all_viewers() -> None:
    scheduler = ManualScheduler()
    stream = live_stream(MERGED, scheduler)
    viewers = [FakeViewer() for _ in range(3)]
    for viewer in viewers:
        stream.add_subscriber(viewer)
        viewer.chunks.clear()
    stream.feed(VIDEO, 0, KEY)
    stream.feed(AUDIO, 10, AUDIO_FRAME)
    stream.feed(VIDEO, 40, INTER)
    assert all(v.chunks == [] for v in viewers), "nothing is written before the window ends"
    assert len(scheduler.calls) == 1 and scheduler.calls[0][0] == 0.05
    scheduler.fire()
    assert all(len(v.chunks) == 1 for v in viewers), "one write per viewer per window"
    assert viewers[0].chunks[0] is viewers[1].chunks[0] is viewers[2].chunks[0], "joined once, shared"
    assert [m[1] for m in viewers[0].messages()] == [0, 10, 40]


def test_joining_inside_a_window_gets_each_packet_exactly_once() -> None:
    scheduler = ManualScheduler()
    stream = live_stream(MERGED, scheduler)
    early = FakeViewer()
    stream.add_subscriber(early)
    stream.feed(VIDEO, 0, KEY)
    stream.feed(VIDEO, 40, INTER)
    scheduler.fire()
    stream.feed(VIDEO, 80, INTER)  # pending when the late viewer joins
    late = FakeViewer()
    stream.add_subscriber(late)
    stream.feed(VIDEO, 120, INTER)
    scheduler.fire()
    assert [m[1] for m in late.messages() if m[0] == VIDEO] == [0, 0, 40, 80, 120]  # header, then GOP, once each
    assert [m[1] for m in early.messages() if m[0] == VIDEO] == [0, 0, 40, 80, 120]


def test_slow_viewer_rejoins_mid_window_batch_at_its_key_frame() -> None:
    scheduler = ManualScheduler()
    limits = HubLimits(merge_window=0.05, merge_phases=1, viewer_high_water=1000, viewer_max_buffer=100_000)
    stream = live_stream(limits, scheduler)
    slow = FakeViewer()
    stream.add_subscriber(slow)
    slow.chunks.clear()
    slow.backlog = 5000
    stream.feed(VIDEO, 0, KEY)
    scheduler.fire()
    assert slow.chunks == []
    slow.backlog = 0
    stream.feed(AUDIO, 2000, AUDIO_FRAME)
    stream.feed(VIDEO, 2040, KEY)
    stream.feed(AUDIO, 2050, AUDIO_FRAME)
    scheduler.fire()
    assert [(m[0], m[1]) for m in slow.messages()] == [(DATA, 0), (VIDEO, 0), (AUDIO, 0), (VIDEO, 2040), (AUDIO, 2050)]


def test_end_of_source_flushes_what_is_pending_first() -> None:
    scheduler = ManualScheduler()
    stream = live_stream(MERGED, scheduler)
    viewer = FakeViewer()
    stream.add_subscriber(viewer)
    stream.feed(VIDEO, 0, KEY)
    stream.end_of_source()
    assert [m[1] for m in viewer.messages() if m[0] == VIDEO] == [0, 0]
    assert viewer.ended


def test_viewer_that_stays_behind_past_the_stall_limit_is_dropped() -> None:
    now = [100.0]
    hub = Hub(
        HubLimits(merge_window=0, viewer_high_water=1000, viewer_max_stall=5.0), ManualScheduler(), lambda: now[0]
    )
    stream = hub.get_or_create(StreamKey("live", "cam"))
    stream.source = FakeSource()
    stuck, fine = FakeViewer(), FakeViewer()
    stream.add_subscriber(stuck)
    stream.add_subscriber(fine)
    stuck.backlog = 5000  # never drains, never grows (nothing more is written to it)
    stream.feed(VIDEO, 0, KEY)
    now[0] += 4.0
    stream.feed(VIDEO, 40, INTER)
    assert stuck.dropped is None, "within the stall limit it only skips"
    now[0] += 2.0
    stream.feed(VIDEO, 80, INTER)
    assert stuck.dropped is not None and "behind" in stuck.dropped
    assert stream.viewers == 1 and stream.viewers_dropped == 1
    stream.feed(VIDEO, 120, INTER)
    assert [m[1] for m in fine.messages()] == [0, 40, 80, 120]


def test_phased_flushes_spread_viewers_across_the_window_and_lose_nothing() -> None:
    scheduler = ManualScheduler()
    stream = live_stream(HubLimits(merge_window=0.1), scheduler)  # 4 phases, 25 ms apart
    assert stream.fanout.phases == 4
    viewers = [FakeViewer() for _ in range(8)]
    for viewer in viewers:
        stream.add_subscriber(viewer)
        viewer.chunks.clear()
    timestamps = list(range(0, 400, 20))
    stream.feed(VIDEO, 0, KEY)
    for ts in timestamps[1:]:
        stream.feed(VIDEO, ts, INTER)
    assert scheduler.calls and scheduler.calls[0][0] == 0.025
    scheduler.fire()  # the first phase: only its quarter of the viewers is written
    assert sum(1 for v in viewers if v.chunks) == 2
    late = FakeViewer()  # joins between two phases
    stream.add_subscriber(late)
    stream.feed(VIDEO, 400, INTER)
    scheduler.fire_all()
    for viewer in viewers:
        assert len(viewer.chunks) <= 2, "one write per viewer per window"
        assert [m[1] for m in viewer.messages()] == [*timestamps, 400]
    assert [m[1] for m in late.messages() if m[0] == VIDEO] == [0, *timestamps, 400]  # header, GOP, live: once
    assert stream.fanout._log == [], "nothing is kept once every group has been sent it"
