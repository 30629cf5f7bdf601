"""HTTP-FLV viewers: GET /APP/NAME.flv streams the hub's packets as one FLV file, chunk-encoded.

Each packet's FLV tag, already framed as an HTTP chunk, is built once and shared by all viewers, and
written straight to the transport like RTMP viewers (no per-viewer await in the fan-out).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from common.hub.packet import FLV, http_chunk
from common.hub.stream import Stream
from common.keys import StreamKey
from common.media.flv import flv_file_header
from common.media.metadata import metadata_properties
from common.serving.access import ConnectionLimiter
from common.serving.playback import Playback
from common.serving.policy import Rejected, SourceUnavailable

log = logging.getLogger(__name__)

# How long a new viewer waits for a stream's metadata or sequence headers before its FLV header is sent: an
# edge's first viewer is admitted at Play.Start, a few milliseconds before the origin's cached headers arrive.
TRACKS_WAIT = 1.0

PLAYBACK_KEY = web.AppKey("playback", Playback)
LIMITER_KEY = web.AppKey("connection_limiter", ConnectionLimiter)


class FlvViewer:
    __slots__ = ("done", "peer", "stream", "transport")
    wire_format = FLV

    def __init__(self, transport: asyncio.Transport, stream: Stream, peer: str) -> None:
        self.transport = transport
        self.stream = stream
        self.peer = peer
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size()

    def drop(self, reason: str) -> None:
        log.warning("%s: dropping HTTP-FLV viewer of %s: %s", self.peer, self.stream.key, reason)
        self.transport.abort()
        self._finish(reason)

    def source_ended(self) -> None:
        # Returning from the handler ends the chunked body (aiohttp writes the last chunk).
        self._finish(f"source of {self.stream.key} ended")

    def disconnect(self, reason: str) -> None:
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)


async def play_flv(request: web.Request) -> web.StreamResponse:
    playback = request.app[PLAYBACK_KEY]
    key = StreamKey(request.match_info["app"], request.match_info["name"])
    if not key.valid:
        raise web.HTTPBadRequest(text=f"invalid stream {key}\n")
    try:
        stream = await playback.locate(key, request.query_string)
    except Rejected as exc:
        raise web.HTTPForbidden(text=f"{exc.description}\n") from None
    except SourceUnavailable as exc:
        raise web.HTTPServiceUnavailable(text=f"{exc}\n", headers={"Retry-After": "2"}) from None
    if stream is None:
        raise web.HTTPNotFound(text=f"{key} is not live\n")
    transport = request.transport
    if transport is None:
        raise web.HTTPServiceUnavailable()
    limiter = request.app[LIMITER_KEY]
    address = request.remote or "?"
    refused = limiter.acquire(address)
    if refused is not None:
        raise web.HTTPServiceUnavailable(text=f"{refused}\n", headers={"Retry-After": "5"})
    try:
        return await _stream_flv(request, playback, stream, transport, address)
    finally:
        limiter.release(address)


async def _stream_flv(
    request: web.Request, playback: Playback, stream: Stream, transport: asyncio.Transport, peer: str
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "video/x-flv", "Cache-Control": "no-cache", "Access-Control-Allow-Origin": "*"}
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    audio, video = await stream_tracks(stream)
    viewer = FlvViewer(transport, stream, peer)
    viewer.write(http_chunk(flv_file_header(audio=audio, video=video)))
    playback.subscribe(stream, viewer, peer, "HTTP-FLV")
    try:
        reason = await viewer.done
        log.info(
            "%s: HTTP-FLV viewer of %s done: %s",
            peer,
            stream.key,
            reason,
            extra={"event": "play_stop", "stream": str(stream.key), "client": peer, "format": "HTTP-FLV"},
        )
    finally:  # also on cancellation: the client went away and aiohttp cancels the handler
        playback.unsubscribe(stream, viewer)
    return response


def known_tracks(stream: Stream) -> tuple[bool, bool] | None:
    """(audio, video) as the stream says so far: its onMetaData (ffmpeg and OBS write a codec id per track
    they carry), else the sequence headers seen; None while nothing is known."""
    if stream.metadata is not None:
        props = metadata_properties(stream.metadata.payload)
        if props is not None and ("audiocodecid" in props or "videocodecid" in props):
            return "audiocodecid" in props, "videocodecid" in props
    if stream.audio_header is not None or stream.video_header is not None:
        return stream.audio_header is not None, stream.video_header is not None
    return None


async def stream_tracks(stream: Stream) -> tuple[bool, bool]:
    """The tracks to announce in the FLV header. Players that trust it (mpegts.js) wait forever for a track
    announced but absent, so it must be right; unknown after TRACKS_WAIT: both, as a plain FLV muxer says."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TRACKS_WAIT
    # Polled: the hub has no "headers arrived" signal, and a bounded poll for one new viewer costs nothing.
    while (tracks := known_tracks(stream)) is None and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    return tracks if tracks is not None else (True, True)
