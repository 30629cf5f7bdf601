"""loadtest: the FLV parser (whole and incremental), HTTP bits, stats math, the swarm's viewers in memory."""

from __future__ import annotations

import ast
import itertools
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.hub.packet import http_chunk
from common.media.flv import flv_file_header, flv_tag
from common.rtmp import amf0
from common.rtmp.chunk import ChunkReader
from common.rtmp.events import ConnectRequested, PlayRequested
from common.rtmp.messages import MessageType
from common.rtmp.session import ServerSession, SessionLimits
from common.serving.client import RtmpUrl
from loadtest.flvfile import (
    TAG_AUDIO,
    TAG_SCRIPT,
    TAG_VIDEO,
    FlvError,
    FlvReader,
    FlvTag,
    make_flv_command,
    parse_flv,
    parse_size,
    read_flv,
    summarize,
)
from loadtest.http1 import ChunkedDecoder, HeadReader, HttpError, HttpUrl, parse_head
from loadtest.publisher import EPOCH_FIELD, LoopedFlv
from loadtest.stats import (
    Distribution,
    RateEstimator,
    delivered_ratio,
    is_join_burst,
    lag_ms,
    percentile,
)
from loadtest.swarm_config import SwarmConfig, ViewerSpec, plan_viewers
from loadtest.swarm_report import SwarmReport
from loadtest.swarm_state import SwarmState
from loadtest.viewers import FlvSwarmViewer, RtmpSwarmViewer, ViewerFailed
from tests.layers import ROOT, import_graph

AVC_HEADER = b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f"
AAC_HEADER = b"\xaf\x00\x12\x10"
KEY = b"\x17\x01\x00\x00\x00key"
INTER = b"\x27\x01\x00\x00\x00inter"
AUDIO_FRAME = b"\xaf\x01audio"

tags_strategy = st.lists(
    st.builds(
        FlvTag,
        st.sampled_from([TAG_AUDIO, TAG_VIDEO, TAG_SCRIPT]),
        st.integers(0, 0xFFFFFFFF),
        st.binary(max_size=300),
    ),
    max_size=20,
)


def flv_bytes(tags: list[FlvTag]) -> bytes:
    return flv_file_header() + b"".join(flv_tag(t.tag_type, t.timestamp, t.payload) for t in tags)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


# --- FLV parsing -----------------------------------------------------------------------------------


@given(tags_strategy)
def test_flv_round_trip_against_the_muxer(tags: list[FlvTag]) -> None:
    assert parse_flv(flv_bytes(tags)) == tags


@settings(max_examples=200)
@given(tags_strategy, st.lists(st.integers(0, 10_000), max_size=30))
def test_flv_reader_takes_any_fragmentation(tags: list[FlvTag], cuts: list[int]) -> None:
    data = flv_bytes(tags)
    reader = FlvReader()
    got: list[FlvTag] = []
    for piece in split_at(data, cuts):
        got.extend(reader.feed(piece))
    reader.close()
    assert got == tags
    assert reader.offset == len(data)
    assert reader.header is not None and reader.header.has_audio and reader.header.has_video


def test_flv_extended_timestamp_and_header_only_file() -> None:
    assert parse_flv(flv_bytes([FlvTag(TAG_VIDEO, 0x12345678, KEY)])) == [FlvTag(TAG_VIDEO, 0x12345678, KEY)]
    assert parse_flv(flv_file_header()) == []


def _with(data: bytes, offset: int, replacement: bytes) -> bytes:
    return data[:offset] + replacement + data[offset + len(replacement) :]


GOOD = flv_bytes([FlvTag(TAG_VIDEO, 0, KEY), FlvTag(TAG_AUDIO, 20, AUDIO_FRAME)])
FIRST_TAG = 13  # 9-byte header + PreviousTagSize0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "inside the file header"),
        (b"FLV\x01", "inside the file header"),
        (b"MP4\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00", "not an FLV stream"),
        (_with(GOOD, 3, b"\x02"), "unsupported FLV version 2"),
        (_with(GOOD, 5, b"\x00\x00\x00\x05"), "data offset 5"),
        (_with(GOOD, 5, b"\x00\x10\x00\x00"), "data offset 1048576"),
        (_with(GOOD, 9, b"\x00\x00\x00\x07"), "PreviousTagSize0"),
        (GOOD[:FIRST_TAG], None),  # header only: fine
        (GOOD[: FIRST_TAG + 5], "truncated tag at byte 13"),
        (GOOD[:-1], "truncated tag"),
        (_with(GOOD, FIRST_TAG, b"\x07"), "unknown tag type 7"),
        (_with(GOOD, FIRST_TAG, b"\x29"), "filtered/encrypted"),
        (_with(GOOD, FIRST_TAG + 8, b"\x00\x00\x01"), "stream id must be 0"),
        (_with(GOOD, FIRST_TAG + 11 + len(KEY), b"\x00\x00\x00\x01"), "PreviousTagSize is 1, expected"),
    ],
)
def test_flv_bad_input_is_refused_with_a_reason(data: bytes, message: str | None) -> None:
    if message is None:
        assert parse_flv(data) == []
        return
    with pytest.raises(FlvError, match=message):
        parse_flv(data)


def test_flv_tag_size_bound_fails_before_the_data_arrives() -> None:
    reader = FlvReader(max_tag_size=100)
    big = flv_bytes([FlvTag(TAG_VIDEO, 0, b"x" * 101)])
    with pytest.raises(FlvError, match="exceeds the limit of 100"):
        reader.feed(big[: FIRST_TAG + 11])  # just the tag header


def test_read_flv_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.flv"
    path.write_bytes(GOOD[:-2])
    with pytest.raises(FlvError, match=r"bad\.flv: .*truncated"):
        read_flv(path)
    path.write_bytes(GOOD)
    assert [t.tag_type for t in read_flv(path)] == [TAG_VIDEO, TAG_AUDIO]


def test_summary_and_make_flv_command() -> None:
    info = summarize(
        [FlvTag(TAG_SCRIPT, 0, b"m"), FlvTag(TAG_VIDEO, 0, b"x" * 500), FlvTag(TAG_AUDIO, 1000, b"y" * 500)]
    )
    assert (info.video_tags, info.audio_tags, info.duration_ms, info.kbps) == (1, 1, 1000, 8.0)
    command = make_flv_command(
        "out.flv", seconds=20, bitrate_kbps=2000, gop_seconds=2, fps=30, size="1280x720", ffmpeg="ff"
    )
    text = " ".join(command)
    for part in ("-b:v 2000k", "-maxrate 2000k", "-bufsize 2000k", "-g 60", "-keyint_min 60", "-sc_threshold 0"):
        assert part in text
    assert "testsrc2=size=1280x720:rate=30" in text and "-b:a 128k" in text and command[-1] == "out.flv"
    assert parse_size("640x360") == (640, 360)
    for bad in ("640", "641x360", "0x360", "axb"):
        with pytest.raises(ValueError):
            parse_size(bad)


# --- the publisher's file preparation --------------------------------------------------------------


def test_looped_flv_splits_headers_rebases_and_adds_the_epoch() -> None:
    meta = amf0.encode("onMetaData", amf0.EcmaArray({"duration": 2.0, "framerate": 25.0, "width": 320.0}))
    tags = [
        FlvTag(TAG_SCRIPT, 0, meta),
        FlvTag(TAG_VIDEO, 0, AVC_HEADER),
        FlvTag(TAG_AUDIO, 0, AAC_HEADER),
        FlvTag(TAG_VIDEO, 100, KEY),
        FlvTag(TAG_AUDIO, 110, AUDIO_FRAME),
        FlvTag(TAG_VIDEO, 140, INTER),
    ]
    looped = LoopedFlv.from_tags(tags)
    assert [t.payload for t in looped.headers] == [AVC_HEADER, AAC_HEADER]
    assert [(t.tag_type, t.timestamp) for t in looped.media] == [(TAG_VIDEO, 0), (TAG_AUDIO, 10), (TAG_VIDEO, 40)]
    assert looped.period_ms == 40 + 40  # last timestamp + one frame at 25 fps
    stamps = [t.timestamp for t in itertools.islice(looped.looped(), 7)]
    assert stamps == [0, 10, 40, 80, 90, 120, 160]  # loops continue monotonically, one frame apart
    name, kind, values = amf0.decode(looped.metadata_payload(1234.5))
    assert (name, kind) == ("@setDataFrame", "onMetaData")
    assert values[EPOCH_FIELD] == 1234.5 and values["duration"] == 0.0 and values["width"] == 320.0


# --- HTTP ------------------------------------------------------------------------------------------


def test_http_url_and_request() -> None:
    url = HttpUrl.parse("http://127.0.0.1:8082/live/x.flv?token=1")
    assert url.get_request().startswith(b"GET /live/x.flv?token=1 HTTP/1.1\r\nHost: 127.0.0.1:8082\r\n")
    assert url.get_request().endswith(b"Connection: close\r\n\r\n")
    with pytest.raises(ValueError):
        HttpUrl.parse("rtmp://127.0.0.1/live/x")


def test_head_reader_across_feeds_and_bounds() -> None:
    reader = HeadReader()
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\nTransfer-Encoding: chunked\r\n\r\nBODY"
    pieces = [raw[i : i + 7] for i in range(0, len(raw), 7)]
    results = [reader.feed(piece) for piece in pieces]
    n = next(i for i, r in enumerate(results) if r is not None)
    assert all(r is None for r in results[n + 1 :])
    got = results[n]
    assert got is not None
    head, rest = got
    assert head.status == 200 and head.chunked and head.headers["content-type"] == "video/x-flv"
    assert rest + b"".join(pieces[n + 1 :]) == b"BODY"
    assert parse_head(b"HTTP/1.0 404 Not Found").status == 404
    for bad in (b"SIP/2.0 200 OK", b"HTTP/1.1 2xx OK", b"HTTP/1.1 200 OK\r\nno colon"):
        with pytest.raises(HttpError):
            parse_head(bad)
    with pytest.raises(HttpError, match="larger than"):
        HeadReader(max_bytes=64).feed(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20)


@settings(max_examples=200)
@given(st.lists(st.binary(min_size=1, max_size=200), max_size=10), st.lists(st.integers(0, 3000), max_size=20))
def test_chunked_decoder_takes_any_fragmentation(pieces: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(http_chunk(p) for p in pieces) + b"0\r\n\r\n"
    decoder = ChunkedDecoder()
    body = b"".join(decoder.feed(part) for part in split_at(wire, cuts))
    assert body == b"".join(pieces)
    assert decoder.finished


@pytest.mark.parametrize("wire", [b"zz\r\nab\r\n", b"+2\r\nab\r\n", b"0x2\r\nab\r\n", b"2\r\nabXY", b"2" * 2000])
def test_chunked_decoder_refuses_bad_framing(wire: bytes) -> None:
    with pytest.raises(HttpError):
        ChunkedDecoder().feed(wire)


# --- stats -----------------------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    values = [float(v) for v in range(1, 11)]  # 1..10
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 95) == pytest.approx(9.55)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 10.0
    assert percentile(list(reversed(values)), 90) == pytest.approx(9.1)
    with pytest.raises(ValueError):
        percentile(values, 101)


@given(st.lists(st.floats(0, 5000), min_size=1, max_size=300), st.floats(0, 100))
def test_percentile_is_within_the_data(values: list[float], q: float) -> None:
    result = percentile(values, q)
    assert result is not None and min(values) <= result <= max(values)


def test_distribution_exact_then_histogram_past_the_cap() -> None:
    exact = Distribution()
    for v in range(1, 101):
        exact.add(float(v))
    summary = exact.summary()
    assert summary.count == 100 and summary.max == 100.0
    assert summary.p50 == pytest.approx(50.5) and summary.p95 == pytest.approx(95.05)
    assert exact.approx_percentile(95) == 96.0  # upper edge of the 1 ms bucket holding the 95th value

    capped = Distribution(max_samples=10)
    for v in range(1, 101):
        capped.add(float(v))
    summary = capped.summary()
    assert summary.count == 100 and len(capped.samples) == 10
    assert summary.p50 == 51.0 and summary.p95 == 96.0 and summary.max == 100.0
    assert Distribution().summary().p95 is None


def test_lag_and_join_burst() -> None:
    assert lag_ms(10_500.0, 10_000.0, 400) == 100.0
    assert lag_ms(10_500.0, None, 400) is None
    # Play started at wall 10 400: a frame the publisher sent at 10 000 + 300 is GOP replay, 10 000 + 450 is live.
    assert is_join_burst(10_400.0, 10_000.0, 300)
    assert not is_join_burst(10_400.0, 10_000.0, 450)


def test_rate_estimator_and_delivered_ratio() -> None:
    rate = RateEstimator()
    assert rate.kbps() is None
    for ts in range(0, 2001, 40):
        rate.add(ts, 1000)  # 51 frames of 1000 bytes over 2 s
    assert rate.span_ms == 2000
    assert rate.kbps() == pytest.approx(51 * 1000 * 8 / 2000)
    assert delivered_ratio(2_500_000, 10, 2000, 1.0) == pytest.approx(1.0)
    assert delivered_ratio(1_250_000, 10, 2000, 1.0) == pytest.approx(0.5)
    assert delivered_ratio(1, 0, 2000, 1.0) is None and delivered_ratio(1, 1, None, 1.0) is None


# --- the swarm's plan and config -------------------------------------------------------------------


def test_plan_spreads_probes_and_alternates_protocols() -> None:
    plan = plan_viewers(50, 5, "mixed")
    probes = [s for s in plan if s.probe]
    assert [s.index for s in probes] == [0, 10, 20, 30, 40]
    assert [s.protocol for s in probes] == ["rtmp", "flv", "rtmp", "flv", "rtmp"]
    counting = [s.protocol for s in plan if not s.probe]
    assert (counting.count("rtmp"), counting.count("flv")) == (23, 22)
    assert len(plan_viewers(3, 5, "rtmp")) == 3 and all(s.probe for s in plan_viewers(3, 5, "rtmp"))
    assert not any(s.probe for s in plan_viewers(10, 0, "flv"))
    assert {s.protocol for s in plan_viewers(10, 2, "flv")} == {"flv"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"viewers": 0}, "viewers"),
        ({"viewers": 20_001}, "viewers"),
        ({"duration": 3601}, "duration"),
        ({"ramp": 0}, "ramp"),
        ({"protocol": "hls"}, "protocol"),
        ({"protocol": "mixed"}, "HTTP-FLV URL"),
        ({"rcvbuf": 65536, "rcvlowat": 65536}, "half of rcvbuf"),
        ({"url": "http://h/live/x.flv"}, "rtmp"),
    ],
)
def test_swarm_config_is_validated(kwargs: dict[str, Any], message: str) -> None:
    options: dict[str, Any] = {"url": "rtmp://127.0.0.1:1935/live/x", **kwargs}
    with pytest.raises(ValueError, match=message):
        SwarmConfig(**options)


def test_swarm_config_takes_an_http_url_for_flv() -> None:
    config = SwarmConfig(url="http://127.0.0.1:8082/live/x.flv", protocol="flv")
    assert config.flv_url == config.url and config.http_url.port == 8082


# --- viewers driven in memory ----------------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def take(self) -> bytes:
        data = b"".join(self.written)
        self.written.clear()
        return data


def deliver(viewer: RtmpSwarmViewer | FlvSwarmViewer, data: bytes, read_size: int = 65536) -> None:
    """What the event loop does: copy into the buffer get_buffer returned, then buffer_updated."""
    for start in range(0, len(data), read_size):
        piece = data[start : start + read_size]
        buffer = viewer.get_buffer(len(piece))
        buffer[: len(piece)] = piece
        viewer.buffer_updated(len(piece))


def make_swarm(**kwargs: Any) -> SwarmState:
    config = SwarmConfig(url="rtmp://127.0.0.1:1935/live/x", viewers=10, **kwargs)
    return SwarmState(config)


def rtmp_viewer_playing(swarm: SwarmState, probe: bool) -> tuple[RtmpSwarmViewer, ServerSession, FakeTransport]:
    viewer = RtmpSwarmViewer(swarm, ViewerSpec(0, "rtmp", probe), RtmpUrl.parse("rtmp://127.0.0.1:1935/live/x"))
    transport = FakeTransport()
    viewer.connection_made(transport)  # type: ignore[arg-type]
    server = ServerSession(SessionLimits(window_ack_size=100_000))
    for _ in range(10):
        for event in server.receive_data(transport.take()):
            if isinstance(event, ConnectRequested):
                server.accept_connect()
            elif isinstance(event, PlayRequested):
                server.accept_play(event.stream_id, event.name)
        out = server.data_to_send()
        if not out:
            break
        deliver(viewer, out)
    assert viewer.started.done() and viewer.started.exception() is None
    return viewer, server, transport


async def test_counting_rtmp_viewer_stops_parsing_and_acknowledges_per_window() -> None:
    swarm = make_swarm()
    viewer, _server, transport = rtmp_viewer_playing(swarm, probe=False)
    assert viewer.counting and viewer.session is None
    assert viewer.window == 100_000  # what the server announced
    start = viewer.nbytes
    transport.take()
    deliver(viewer, b"\xff" * 350_000, read_size=10_000)  # garbage: never parsed any more
    assert viewer.nbytes == start + 350_000 == swarm.bytes_total
    reader = ChunkReader()
    acks = [m for m in reader.feed(transport.take()) if m.type_id == MessageType.ACKNOWLEDGEMENT]
    assert len(acks) == 3 and all(m.csid == 2 and m.stream_id == 0 for m in acks)
    totals = [int.from_bytes(m.payload, "big") for m in acks]  # the total received so far, at each ack
    # The session had not acked yet (setup is far below the window): acks every >= 100 000 bytes from 0.
    assert all(100_000 <= b - a < 110_000 for a, b in itertools.pairwise([0, *totals]))
    assert viewer.nbytes - totals[-1] < 100_000


async def test_probe_rtmp_viewer_measures_first_frame_and_lag() -> None:
    swarm = make_swarm()
    viewer, server, _transport = rtmp_viewer_playing(swarm, probe=True)
    assert not viewer.counting and viewer.probe is not None
    epoch = time.time() * 1000.0 - 1000.0  # media time 0 was a second ago
    meta = amf0.encode("onMetaData", amf0.EcmaArray({EPOCH_FIELD: epoch}))
    server.send_media(1, MessageType.DATA_AMF0, 0, meta)
    server.send_media(1, MessageType.VIDEO, 0, AVC_HEADER)
    server.send_media(1, MessageType.VIDEO, 0, KEY)  # sent before play started: join burst
    server.send_media(1, MessageType.VIDEO, 1000, INTER)  # sent "now": lag ~0
    deliver(viewer, server.data_to_send())
    assert viewer.probe.epoch_ms == epoch
    assert swarm.first_frame.count == 1
    assert swarm.lag.count == 1 and abs(swarm.lag.samples[0]) < 500


async def test_rtmp_viewer_refused_play_fails_with_the_status_code() -> None:
    swarm = make_swarm()
    viewer = RtmpSwarmViewer(swarm, ViewerSpec(0, "rtmp", False), RtmpUrl.parse("rtmp://127.0.0.1:1935/live/x"))
    transport = FakeTransport()
    viewer.connection_made(transport)  # type: ignore[arg-type]
    server = ServerSession()
    for _ in range(10):
        for event in server.receive_data(transport.take()):
            if isinstance(event, ConnectRequested):
                server.accept_connect()
            elif isinstance(event, PlayRequested):
                server.reject(event.stream_id, "NetStream.Play.StreamNotFound", "no such stream")
        out = server.data_to_send()
        if not out:
            break
        deliver(viewer, out)
    with pytest.raises(ViewerFailed, match=r"NetStream\.Play\.StreamNotFound"):
        viewer.started.result()
    assert transport.closed


async def test_flv_viewers_check_the_status_and_probes_parse_the_chunked_body() -> None:
    swarm = make_swarm(flv_url="http://127.0.0.1:8082/live/x.flv", protocol="mixed")
    url = HttpUrl.parse("http://127.0.0.1:8082/live/x.flv")

    refused = FlvSwarmViewer(swarm, ViewerSpec(0, "flv", False), url)
    transport = FakeTransport()
    refused.connection_made(transport)  # type: ignore[arg-type]
    assert transport.take().startswith(b"GET /live/x.flv HTTP/1.1\r\n")
    deliver(refused, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(ViewerFailed, match="http 404"):
        refused.started.result()

    counting = FlvSwarmViewer(swarm, ViewerSpec(1, "flv", False), url)
    counting.connection_made(FakeTransport())  # type: ignore[arg-type]
    deliver(counting, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"\x00" * 1000)
    assert counting.counting and counting.nbytes > 1000

    probe = FlvSwarmViewer(swarm, ViewerSpec(2, "flv", True), url)
    probe.connection_made(FakeTransport())  # type: ignore[arg-type]
    epoch = time.time() * 1000.0 - 2000.0
    body = http_chunk(flv_file_header()) + b"".join(
        http_chunk(flv_tag(kind, ts, payload))
        for kind, ts, payload in [
            (TAG_SCRIPT, 0, amf0.encode("onMetaData", amf0.EcmaArray({EPOCH_FIELD: epoch}))),
            (TAG_VIDEO, 0, AVC_HEADER),
            (TAG_VIDEO, 1960, KEY),  # before play started: first frame, but no lag sample
            (TAG_VIDEO, 2100, INTER),  # live
        ]
    )
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    for i in range(0, len(wire), 5):  # in small pieces
        deliver(probe, wire[i : i + 5])
    assert probe.started.done() and not probe.counting
    assert probe.probe is not None and probe.probe.first_frame_ms is not None
    assert swarm.lag.count == 1


def test_report_table_and_json(tmp_path: Path) -> None:
    report = SwarmReport(
        url="rtmp://h/live/x",
        flv_url=None,
        protocol="rtmp",
        viewers_target=10,
        viewers_connected=9,
        viewers_failed=1,
        viewers_dropped=0,
        viewers_pending=0,
        failure_reasons={"timeout (play start, 10s)": 1},
        drop_reasons={},
        probes_target=1,
        probes_connected=1,
        bytes_received=10_000_000,
        ramp_per_s=10,
        ramp_seconds=1.0,
        measure_offset_s=3.5,
        interval_seconds=5.0,
        interval_viewers=8,
        interval_bytes=8_000_000,
        received_mbps=12.8,
        viewer_kbps_p50=1600.0,
        viewer_kbps_p5=1500.0,
        viewer_kbps_min=1400.0,
        expected_kbps=1600.0,
        expected_kbps_source="given",
        delivered_ratio=1.0,
        lag_samples=0,
        lag_p50_ms=None,
        lag_p95_ms=None,
        lag_max_ms=None,
        lag_note="no livecdnEpochMs",
        first_frame_samples=1,
        first_frame_p50_ms=12.0,
        first_frame_p95_ms=12.0,
        first_frame_max_ms=12.0,
        duration_s=6.0,
        settings={"rcvlowat": 65536, "rcvbuf": None, "connect_timeout": 10.0, "loop": "uvloop.Loop"},
    )
    table = report.table()
    assert "delivered/expected" in table and "1.000" in table and "1 x timeout (play start, 10s)" in table
    assert "SO_RCVLOWAT 65536" in table and "p95 -" in table
    path = tmp_path / "r.json"
    report.write_json(path)
    assert '"delivered_ratio": 1.0' in path.read_text()


# --- the scenario's plumbing (no server started) ---------------------------------------------------


def test_scenario_config_builds_each_steps_swarm_and_command() -> None:
    from loadtest.scenario import PassCriteria, ScenarioConfig
    from loadtest.servers import ServerUnderTest
    from loadtest.swarm_processes import swarm_command

    config = ScenarioConfig(
        server_kind="nginx",
        steps=(100, 200),
        flv=Path("x.flv"),
        merge_window=0.0,
        duration=10.0,
        settle=2.5,
        ramp=50.0,
        probes=3,
        node_core=0,
        load_core=1,
        criteria=PassCriteria(),
        rcvlowat=65536,
        rcvbuf=None,
        bitrate_kbps=2000.0,
        keep_going=False,
        stalled=0,
        protocol="mixed",
    )
    url = "rtmp://127.0.0.1:1935/live/bench"
    swarm = config.swarm_config(ServerUnderTest("nginx", url, None, url), 200, 1234.0)
    # The run covers the ramp, the settle time (a GOP: nginx-rtmp starts video at the next key frame) and 10 s.
    assert (swarm.url, swarm.viewers, swarm.duration, swarm.protocol) == (url, 200, 200 / 50 + 2.5 + 10, "rtmp")
    assert swarm.settle == 2.5
    assert (swarm.probes, swarm.bitrate_kbps, swarm.epoch_ms, swarm.rcvbuf) == (3, 2000.0, 1234.0, None)
    command = swarm_command(swarm, Path("out.json"), load_core=None, nice=10, progress=False)
    assert command[:3] == ["nice", "-n", "10"] and command[-2:] == ["--epoch-ms", "1234.0"]
    assert "--no-progress" in command and "--rcvbuf" not in command and "--flv-url" not in command
    assert command[command.index("--settle") + 1] == "2.5"


def test_a_settle_time_must_leave_room_to_measure() -> None:
    SwarmConfig(url="rtmp://h/live/x", duration=10, settle=3)
    with pytest.raises(ValueError, match="settle"):
        SwarmConfig(url="rtmp://h/live/x", duration=3, settle=3)


# --- layering (the project-wide rules are in tests/unit/test_layers.py) --------------------------------

# The load tools are clients: they use the protocol, media and client code, never a node's runtime.
COMMON_ALLOWED = (
    "common",
    "common.system",
    "common.keys",
    "common.backoff",
    "common.rtmp",
    "common.media",
    "common.hub",
    "common.serving.client",
)


def _is_within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def test_loadtest_imports_only_the_shared_common_modules() -> None:
    for module, targets in import_graph().items():
        if _is_within(module, ("loadtest",)):
            outside = [t for t in targets if not _is_within(t, ("loadtest",))]
            assert all(_is_within(t, COMMON_ALLOWED) for t in outside), (module, outside)


def test_the_cli_does_not_import_the_scenario_at_start() -> None:
    """`loadtest.__main__` registers the scenario command; the CLI module itself stays quick to import."""
    tree = ast.parse((ROOT / "loadtest" / "cli.py").read_text())
    top_level = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
    top_level |= {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    assert "loadtest.scenario" not in top_level
