"""LL-HLS viewers: GET /APP/NAME.m3u8 and the init segment, parts and segments under /APP/NAME/.

One ``HlsChannel`` per stream taps the hub's packets into a ``Segmenter``, so every part and segment is
built once and served from memory to every viewer. HLS viewers hold no connection: a viewer is a client
identity (its ``sid`` query parameter, else its address and User-Agent) that keeps fetching; one silent
for three target durations is gone. The channel counts its viewers on the stream through
``Playback.join_polled``/``leave_polled`` (idle teardown, stats, node load) and is dropped, with its tap,
when its last viewer is gone. Every request plays through ``Playback.locate``: the play token is checked
and a cold edge starts its one coalesced upstream pull.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from common.aio import cancel_and_wait
from common.hub.packet import Packet
from common.hub.stream import Stream
from common.keys import StreamKey
from common.media.playlist import render
from common.media.segmenter import Segmenter
from common.serving.playback import Playback
from common.serving.policy import Rejected, SourceUnavailable

log = logging.getLogger(__name__)

CORS = {"Access-Control-Allow-Origin": "*"}
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
MIN_VIEWER_TIMEOUT = 3.0  # seconds: floor of the three-target-durations silence that ends a viewer
SWEEP_INTERVAL = 1.0
# Both keyed by what clients send (a query string, a sid): bounded, so varying them cannot grow memory.
MAX_CACHED_PLAYLISTS = 32  # distinct queries whose playlist text is kept for the current part
MAX_VIEWERS_PER_STREAM = 50_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _remote(request: web.Request) -> str:
    return request.remote or "?"


@dataclass
class HlsCounters:
    parts_served: int = 0
    segments_served: int = 0
    blocking_reloads: int = 0  # playlist or part requests that waited for a part
    blocking_wait_seconds: float = 0.0
    blocking_timeouts: int = 0


class HlsChannel:
    """One stream's packager and its viewers."""

    def __init__(self, stream: Stream, part_target: float, clock: Callable[[], float]) -> None:
        self.stream = stream
        self.part_target = part_target
        self.segmenter = Segmenter(part_target)
        self.clock = clock
        self.viewers: dict[str, float] = {}  # identity -> last request (monotonic)
        self._changed: asyncio.Future[None] | None = None
        self._playlists: dict[str, str] = {}  # by query, for the current window (cleared on each part)
        self.broken = False
        # Bootstrap from what the hub caches, so the first parts exist before the next packet arrives.
        for packet in [*stream.headers(), *stream.gop]:
            self.segmenter.feed(packet.kind, packet.timestamp, packet.payload)
        stream.add_tap(self.on_packet)

    def on_packet(self, packet: Packet) -> None:
        if self.broken:
            return
        try:
            completed = self.segmenter.feed(packet.kind, packet.timestamp, packet.payload)
        except Exception:  # a packager bug must never break the stream's other viewers
            log.exception("%s: HLS packager failed; HLS stops for this stream", self.stream.key)
            self.broken = True
            return
        if completed:
            self._playlists.clear()
            if self._changed is not None and not self._changed.done():
                self._changed.set_result(None)
            self._changed = None

    def close(self) -> None:
        self.stream.remove_tap(self.on_packet)

    def playlist(self, query: str) -> str:
        text = self._playlists.get(query)
        if text is None:
            text = render(self.segmenter, self.part_target, query, f"{self.stream.name}/")
            if len(self._playlists) < MAX_CACHED_PLAYLISTS:
                self._playlists[query] = text
        return text

    @property
    def max_wait(self) -> float:
        return 3 * self.segmenter.target_duration

    async def wait_until(self, ready: Callable[[], bool]) -> bool:
        """Hold until ``ready()`` (checked after each new part), at most three target durations."""
        deadline = self.clock() + self.max_wait
        while not ready():
            left = deadline - self.clock()
            if left <= 0 or self.broken:
                return False
            if self._changed is None:
                self._changed = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._changed), left)
        return True


class HlsService:
    """The node's HLS channels, their viewers' comings and goings, and the HTTP handlers."""

    def __init__(self, playback: Playback, part_target: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.playback = playback
        self.part_target = part_target
        self.clock = clock
        self.channels: dict[StreamKey, HlsChannel] = {}
        self.counters = HlsCounters()
        # Who sent a request: its peer, unless a trusted forwarder vouches for another (a worker of the
        # node passing on the requests for a stream this process packages: common.runtime.hlsowner).
        self.client_address: Callable[[web.Request], str] = _remote

    @property
    def viewers(self) -> int:
        return sum(len(c.viewers) for c in self.channels.values())

    def viewers_of(self, stream: Stream) -> int:
        channel = self.channels.get(stream.key)
        return len(channel.viewers) if channel is not None and channel.stream is stream else 0

    def routes(self) -> list[tuple[str, Handler]]:
        return [
            ("/{app}/{name}.m3u8", self.playlist),
            ("/{app}/{name}/init.mp4", self.init_segment),
            (r"/{app}/{name}/seg{msn:\d+}.m4s", self.segment),
            (r"/{app}/{name}/seg{msn:\d+}.{part:\d+}.m4s", self.part),
        ]

    def add_routes(self, app: web.Application) -> None:
        for path, handler in self.routes():
            app.router.add_get(path, handler)
        app.cleanup_ctx.append(self._sweeper_ctx)

    # -- handlers ------------------------------------------------------------------------------------

    async def playlist(self, request: web.Request) -> web.Response:
        channel = await self._channel(request)
        msn, part = _blocking_request(request)
        if msn is not None:
            current = channel.segmenter.current
            if current is not None and msn > current.msn + 2:  # RFC 8216bis 6.2.5.2: too far ahead
                raise web.HTTPBadRequest(text="_HLS_msn is more than two segments ahead\n", headers=CORS)
            if not await self._hold(channel, lambda: channel.segmenter.has_part(msn, part)):
                raise web.HTTPServiceUnavailable(text="the requested part did not appear in time\n", headers=CORS)
        elif not await self._hold(channel, lambda: channel.segmenter.has_part(0, None)):
            # A cold stream: a player that ignores the LL tags (ffmpeg, plain HLS) gives up on a playlist
            # without a full segment, so the first plain request waits for one (at most one GOP on a live source).
            raise web.HTTPServiceUnavailable(text="no complete segment yet\n", headers=CORS)
        query = urlencode([(k, v) for k, v in parse_qsl(request.query_string) if not k.startswith("_HLS_")])
        headers = {**CORS, "Cache-Control": "no-cache"}
        return web.Response(text=channel.playlist(query), content_type=PLAYLIST_TYPE, headers=headers)

    async def init_segment(self, request: web.Request) -> web.Response:
        channel = await self._channel(request)
        if channel.segmenter.init is None:
            raise web.HTTPNotFound(text="no key frame yet\n", headers=CORS)
        return _media(channel.segmenter.init, "max-age=60")

    async def segment(self, request: web.Request) -> web.Response:
        channel = await self._channel(request)
        msn = int(request.match_info["msn"])
        if not await self._hold(channel, lambda: channel.segmenter.has_part(msn, None)):
            raise web.HTTPServiceUnavailable(text="the segment did not complete in time\n", headers=CORS)
        segment = channel.segmenter.segment(msn)
        if segment is None or segment.data is None:
            raise web.HTTPNotFound(text="segment not in the window\n", headers=CORS)
        self.counters.segments_served += 1
        return _media(segment.data, "max-age=60")

    async def part(self, request: web.Request) -> web.Response:
        """A part; the one a preload hint names is held until it is built (a blocking part request)."""
        channel = await self._channel(request)
        msn, index = int(request.match_info["msn"]), int(request.match_info["part"])
        current = channel.segmenter.current
        if current is not None and msn > current.msn + 1:
            raise web.HTTPNotFound(text="part too far ahead\n", headers=CORS)
        if not await self._hold(channel, lambda: channel.segmenter.has_part(msn, index)):
            raise web.HTTPServiceUnavailable(text="the part did not appear in time\n", headers=CORS)
        segment = channel.segmenter.segment(msn)
        if segment is None or index >= len(segment.parts):
            raise web.HTTPNotFound(text="part not in the window\n", headers=CORS)
        self.counters.parts_served += 1
        return _media(segment.parts[index].data, "max-age=60")

    async def _hold(self, channel: HlsChannel, ready: Callable[[], bool]) -> bool:
        if ready():
            return True
        started = self.clock()
        self.counters.blocking_reloads += 1
        ok = await channel.wait_until(ready)
        self.counters.blocking_wait_seconds += self.clock() - started
        if not ok:
            self.counters.blocking_timeouts += 1
        return ok

    # -- channels and viewers ------------------------------------------------------------------------

    async def _channel(self, request: web.Request) -> HlsChannel:
        key = StreamKey(request.match_info["app"], request.match_info["name"])
        if not key.valid:
            raise web.HTTPBadRequest(text=f"invalid stream {key}\n", headers=CORS)
        try:
            stream = await self.playback.locate(key, request.query_string)
        except Rejected as exc:
            raise web.HTTPForbidden(text=f"{exc.description}\n", headers=CORS) from None
        except SourceUnavailable as exc:
            raise web.HTTPServiceUnavailable(text=f"{exc}\n", headers={**CORS, "Retry-After": "2"}) from None
        if stream is None:
            raise web.HTTPNotFound(text=f"{key} is not live\n", headers=CORS)
        channel = self.channels.get(key)
        if channel is not None and channel.stream is not stream:  # the stream was replaced: start afresh
            self._drop(channel)
            channel = None
        if channel is None:
            try:
                channel = self.channels[key] = HlsChannel(stream, self.part_target, self.clock)
            except OverflowError as exc:  # the stream's packager slots are taken
                raise web.HTTPServiceUnavailable(text=f"{exc}\n", headers=CORS) from None
            log.info("%s: HLS packager started", key)
        address = self.client_address(request)
        identity = request.query.get("sid") or _client_identity(address, request)
        if identity not in channel.viewers:
            if len(channel.viewers) >= MAX_VIEWERS_PER_STREAM:
                raise web.HTTPServiceUnavailable(text=f"{key} has its maximum of HLS viewers here\n", headers=CORS)
            self.playback.join_polled(stream, address, "LL-HLS")
        channel.viewers[identity] = self.clock()
        return channel

    def _drop(self, channel: HlsChannel) -> None:
        for _ in range(len(channel.viewers)):
            self.playback.leave_polled(channel.stream)
        channel.viewers.clear()
        channel.close()
        if self.channels.get(channel.stream.key) is channel:
            del self.channels[channel.stream.key]
        log.info("%s: HLS packager stopped (no HLS viewers)", channel.stream.key)

    def sweep(self) -> None:
        """Let go viewers silent for three target durations, and channels with no viewer left."""
        now = self.clock()
        for channel in list(self.channels.values()):
            timeout = max(MIN_VIEWER_TIMEOUT, 3 * channel.segmenter.target_duration)
            for identity, seen in list(channel.viewers.items()):
                if now - seen > timeout:
                    del channel.viewers[identity]
                    self.playback.leave_polled(channel.stream)
            if not channel.viewers:
                self._drop(channel)

    async def _sweeper_ctx(self, app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(SWEEP_INTERVAL)
                self.sweep()

        task = asyncio.create_task(loop(), name="hls-sweeper")
        try:
            yield
        finally:
            await cancel_and_wait(task)


def _blocking_request(request: web.Request) -> tuple[int | None, int | None]:
    try:
        msn = int(request.query["_HLS_msn"]) if "_HLS_msn" in request.query else None
        part = int(request.query["_HLS_part"]) if "_HLS_part" in request.query else None
    except ValueError:
        raise web.HTTPBadRequest(text="_HLS_msn and _HLS_part are integers\n", headers=CORS) from None
    if part is not None and msn is None:  # RFC 8216bis 6.2.5.2
        raise web.HTTPBadRequest(text="_HLS_part needs _HLS_msn\n", headers=CORS)
    return msn, part


def _client_identity(address: str, request: web.Request) -> str:
    """A client without a sid: its address and User-Agent (clients behind one NAT with one browser merge)."""
    raw = f"{address}|{request.headers.get('User-Agent', '')}"
    return hashlib.blake2s(raw.encode(), digest_size=8).hexdigest()


def _media(data: bytes, cache: str) -> web.Response:
    return web.Response(body=data, content_type="video/mp4", headers={**CORS, "Cache-Control": cache})
