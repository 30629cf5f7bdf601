"""An edge's pull keeps the upstream's clock on a first session, and rebases it exactly once on a re-pull.

The upstream sends its cached GOP right behind Play.Start, usually in the same read: those frames reach
the puller before ``play()`` returns. They once went into the stream under the old session, and the
session's start, coming after them, rebased the next frame 500 ms ahead of the publisher's clock: viewers
of every fresh pull saw a half-second jump (and the load tool, negative lag)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from common.hub.packet import AUDIO, VIDEO, HubLimits
from common.hub.stream import Hub, Stream
from common.hub.timeline import REBASE_GAP_MS
from common.keys import StreamKey
from common.rtmp.events import MediaReceived
from common.rtmp.session import SessionLimits
from common.serving.connection import RtmpServerProtocol
from common.serving.playback import Playback
from common.serving.policy import StandalonePolicy
from common.serving.service import RtmpService
from edge.puller import PullManager, PullSettings
from edge.upstream import StaticResolver
from tests.unit.test_stream import AAC_HEADER, AVC_HEADER, INTER, KEY, FakeSource

KEY_NAME = StreamKey("live", "cam")


def origin_stream(hub: Hub) -> Stream:
    stream = hub.get_or_create(KEY_NAME)
    stream.source = FakeSource()
    stream.feed(VIDEO, 0, AVC_HEADER)
    stream.feed(AUDIO, 0, AAC_HEADER)
    for n in range(10):  # a cached GOP: what an upstream sends right behind Play.Start
        stream.feed(VIDEO, 1000 + 40 * n, KEY if n == 0 else INTER)
    return stream


def video_timestamps(stream: Stream) -> list[int]:
    return [p.timestamp for p in stream.gop if p.kind == VIDEO]


async def wait_for_timestamp(stream: Stream, timestamp: int) -> None:
    # Polled: the hub has no "packet arrived" signal for a test to wait on.
    async with asyncio.timeout(5):
        while not video_timestamps(stream) or video_timestamps(stream)[-1] < timestamp:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_fresh_pull_keeps_the_upstreams_clock_and_a_re_pull_rebases_once() -> None:
    origin_hub = Hub(HubLimits(merge_window=0))
    upstream = origin_stream(origin_hub)
    service = RtmpService(Playback(origin_hub, StandalonePolicy()))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RtmpServerProtocol(service), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    edge_hub = Hub(HubLimits(merge_window=0))
    settings = PullSettings(SessionLimits(), idle_grace=30, pull_timeout=5, reconnect_window=10)
    pulls = PullManager(edge_hub, StaticResolver(f"rtmp://127.0.0.1:{port}/live"), settings)
    try:
        edge = await pulls.acquire(KEY_NAME)
        assert edge is not None
        upstream.feed(VIDEO, 1400, INTER)
        await wait_for_timestamp(edge, 1400)
        assert video_timestamps(edge) == [1000 + 40 * n for n in range(10)] + [1400], "the upstream clock"

        for conn in list(service.connections):  # the upstream drops the edge: it pulls again
            conn.abort("test: upstream gone")
        upstream.feed(VIDEO, 1440, KEY)
        upstream.feed(VIDEO, 1480, INTER)
        await wait_for_timestamp(edge, 1400 + REBASE_GAP_MS)
        upstream.feed(VIDEO, 1520, INTER)
        await wait_for_timestamp(edge, 1400 + REBASE_GAP_MS + 80)
        after = [t for t in video_timestamps(edge) if t > 1400]
        # One rebase: the re-pull's first frame (its cached key frame, 1440) lands 500 ms after what viewers
        # saw last, and every later frame keeps that offset.
        assert after == [1400 + REBASE_GAP_MS, 1400 + REBASE_GAP_MS + 40, 1400 + REBASE_GAP_MS + 80]
    finally:
        await pulls.stop_all()
        for conn in list(service.connections):
            conn.abort("test over")
        server.close()


class RacingClient:
    """An upstream whose cached GOP arrives in the same read as its Play.Start: the frames reach the
    puller's media callback before ``play()`` returns (what a real origin does when both fit one segment)."""

    def __init__(self) -> None:
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def play(self, on_media: Callable[[MediaReceived], None], *, timeout: float = 10.0) -> None:
        for n in range(10):
            on_media(MediaReceived(1, VIDEO, 1000 + 40 * n, KEY if n == 0 else INTER))
        self.on_media = on_media

    def close(self, reason: str = "") -> None:
        if not self.closed.done():
            self.closed.set_result(reason)


async def test_frames_that_arrive_with_play_start_do_not_push_the_clock_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    client = RacingClient()

    async def connect(url: str, **kwargs: object) -> RacingClient:
        return client

    monkeypatch.setattr("edge.puller.RtmpClient.connect", connect)
    edge_hub = Hub(HubLimits(merge_window=0))
    settings = PullSettings(SessionLimits(), idle_grace=30, pull_timeout=5, reconnect_window=10)
    pulls = PullManager(edge_hub, StaticResolver("rtmp://127.0.0.1:1/live"), settings)
    try:
        edge = await pulls.acquire(KEY_NAME)
        assert edge is not None
        client.on_media(MediaReceived(1, VIDEO, 1400, INTER))
        assert video_timestamps(edge) == [1000 + 40 * n for n in range(10)] + [1400], "no 500 ms jump"
    finally:
        client.close()
        await pulls.stop_all()
