"""An edge's re-pull: timestamps continue forward for viewers, per kind, whatever the new upstream sends."""

from __future__ import annotations

import itertools

from common.hub.packet import AUDIO, VIDEO, HubLimits
from common.hub.stream import Hub, Stream
from common.keys import StreamKey
from common.registry.memory import MemoryRegistry
from common.rtmp.events import MediaReceived
from common.rtmp.session import SessionLimits
from edge.puller import Puller, PullSettings
from edge.upstream import RegistryResolver

AVC_HEADER = b"\x17\x00\x00\x00\x00\x01\x64"
KEY = b"\x17\x01\x00\x00\x00key"
INTER = b"\x27\x01\x00\x00\x00inter"
AAC = b"\xaf\x01audio"


class Recorder:
    def __init__(self, stream: Stream) -> None:
        self.out: list[tuple[int, int]] = []
        original = stream.feed

        def feed(kind: int, timestamp: int, payload: bytes) -> object:
            self.out.append((kind, timestamp))
            return original(kind, timestamp, payload)

        stream.feed = feed  # type: ignore[method-assign]


async def make_puller() -> tuple[Puller, Recorder]:
    hub = Hub(HubLimits(merge_window=0), lambda delay, callback: None)
    stream = hub.get_or_create(StreamKey("live", "x"))
    recorder = Recorder(stream)
    settings = PullSettings(SessionLimits(), idle_grace=1, pull_timeout=1, reconnect_window=1)
    puller = Puller(hub, stream, RegistryResolver(MemoryRegistry()), settings, lambda p: None)
    return puller, recorder


def send(puller: Puller, messages: list[tuple[int, int, bytes]]) -> None:
    for kind, timestamp, payload in messages:
        puller._on_media(MediaReceived(1, kind, timestamp, payload))


def per_kind_monotonic(out: list[tuple[int, int]]) -> bool:
    for kind in (AUDIO, VIDEO):
        stamps = [t for k, t in out if k == kind]
        if not all(b >= a for a, b in itertools.pairwise(stamps)):
            return False
    return True


async def test_repull_starting_with_audio_ahead_of_video_keeps_video_forward() -> None:
    puller, recorder = await make_puller()
    send(puller, [(VIDEO, 0, AVC_HEADER), (VIDEO, 0, KEY), (AUDIO, 10, AAC), (VIDEO, 40, INTER), (AUDIO, 30, AAC)])
    puller._rebase_pending = True  # what a new upstream session sets
    # The new origin has no GOP yet: live audio arrives first, video a little behind it.
    send(puller, [(VIDEO, 0, AVC_HEADER), (AUDIO, 90_000, AAC), (VIDEO, 89_950, KEY), (VIDEO, 89_990, INTER)])
    assert per_kind_monotonic(recorder.out), recorder.out
    last_video_before = 40
    first_video_after = next(t for k, t in recorder.out[6:] if k == VIDEO and t != recorder.out[5][1])
    assert first_video_after > last_video_before


async def test_clock_wrap_is_not_mistaken_for_going_backwards() -> None:
    puller, recorder = await make_puller()
    near_wrap = 0xFFFFFFFF - 100
    send(
        puller,
        [(VIDEO, near_wrap, KEY), (VIDEO, near_wrap + 40, INTER), (VIDEO, (near_wrap + 140) & 0xFFFFFFFF, INTER)],
    )
    assert [t for _, t in recorder.out] == [near_wrap, near_wrap + 40, 39]  # wrapped, passed through unchanged
