"""RTMP publish/play semantics over the hub: what each session event means for the node.

Who may publish and where a missing stream comes from are the role's to decide: the service asks its
StreamPolicy. Plays go through the Playback path that HTTP-FLV shares.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from common.hub.stream import Stream
from common.keys import StreamKey, valid_name
from common.rtmp.events import (
    ConnectRequested,
    Event,
    HandshakeCompleted,
    MediaReceived,
    PlayRequested,
    PublishRequested,
    StreamDeleted,
)
from common.rtmp.messages import MEDIA_STREAM_ID
from common.rtmp.session import SessionLimits
from common.serving.access import ConnectionLimiter
from common.serving.connection import Bounds, RtmpServerProtocol, RtmpViewer, Timeouts
from common.serving.playback import Playback
from common.serving.policy import Rejected, SourceUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RtmpOptions:
    session_limits: SessionLimits = field(default_factory=SessionLimits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    publish_grace: float = 0.0  # seconds viewers wait for a publisher that left to come back (0: end at once)
    bounds: Bounds = field(default_factory=Bounds)


class RtmpService:
    """The ConnectionHandler of every RTMP connection a node accepts."""

    def __init__(
        self, playback: Playback, options: RtmpOptions | None = None, limiter: ConnectionLimiter | None = None
    ) -> None:
        options = options or RtmpOptions(SessionLimits(out_chunk_size=playback.hub.limits.chunk_size))
        self.playback = playback
        self.hub = playback.hub
        self.policy = playback.policy
        self.session_limits = options.session_limits
        self.timeouts = options.timeouts
        self.publish_grace = options.publish_grace
        self.bounds = options.bounds
        self.limiter = limiter if limiter is not None else ConnectionLimiter()
        self.connections: set[RtmpServerProtocol] = set()
        self.connections_refused = 0
        self._refusals_logged_at = 0.0
        self._graces: dict[StreamKey, tuple[asyncio.TimerHandle, Stream]] = {}  # streams waiting for a publisher
        self._closing = False
        self.protocol_errors = 0
        self.connections_total = 0
        self._handlers: dict[type[Event], Callable[[RtmpServerProtocol, Any], Awaitable[None] | None]] = {
            MediaReceived: self._on_media,
            ConnectRequested: self._on_connect,
            PublishRequested: self._on_publish,
            PlayRequested: self._on_play,
            StreamDeleted: self._on_stream_deleted,
            HandshakeCompleted: lambda conn, event: None,
        }

    # -- connection bookkeeping ----------------------------------------------------------------------

    def protocol_factory(self) -> RtmpServerProtocol:
        return RtmpServerProtocol(self)

    def connection_opened(self, conn: RtmpServerProtocol) -> None:
        refused = self.limiter.acquire(conn.address)
        if refused is not None:
            self.connections_refused += 1
            now = time.monotonic()
            if now - self._refusals_logged_at > 1.0:  # a flood must not flood the log too
                self._refusals_logged_at = now
                log.warning(
                    "%s: connection refused: %s (%d refused so far)",
                    conn.peer,
                    refused,
                    self.connections_refused,
                    extra={"event": "refused", "client": conn.peer},
                )
            conn.abort(refused)
            return
        self.connections.add(conn)
        self.connections_total += 1
        log.info("%s: connected", conn.peer, extra={"event": "connect", "client": conn.peer})

    def connection_closed(self, conn: RtmpServerProtocol) -> None:
        if conn not in self.connections:
            return  # refused at the door: it never held anything
        self.connections.discard(conn)
        self.limiter.release(conn.address)
        for stream in conn.publishing.values():
            self._end_publish(conn, stream)
        conn.publishing.clear()
        if conn.viewer is not None:
            self._end_play(conn, conn.viewer)
        log.info("%s: closed (%s)", conn.peer, conn.close_reason, extra={"event": "close", "client": conn.peer})

    def protocol_error(self, conn: RtmpServerProtocol, reason: str) -> None:
        self.protocol_errors += 1
        log.warning(
            "%s: RTMP protocol error, closing: %s", conn.peer, reason, extra={"event": "error", "client": conn.peer}
        )

    def handle(self, conn: RtmpServerProtocol, event: Event) -> Awaitable[None] | None:
        handler = self._handlers.get(type(event))
        return handler(conn, event) if handler is not None else None

    async def close_all(self, reason: str) -> None:
        self._closing = True  # publishers closed now end their streams at once: nobody will come back here
        for timer, _ in self._graces.values():
            timer.cancel()
        self._graces.clear()
        for conn in list(self.connections):
            conn.close(reason)
        await asyncio.sleep(0)

    # -- events ----------------------------------------------------------------------------------------

    def _on_media(self, conn: RtmpServerProtocol, event: MediaReceived) -> None:
        stream = conn.publishing.get(event.stream_id)
        if stream is not None:
            stream.feed(event.type_id, event.timestamp, event.payload)

    def _on_connect(self, conn: RtmpServerProtocol, event: ConnectRequested) -> None:
        if not valid_name(event.app):
            conn.session.reject_connect(f"invalid application name {event.app!r}")
            conn.close(f"bad app {event.app!r}")
            return
        conn.session.accept_connect()

    def _on_publish(self, conn: RtmpServerProtocol, event: PublishRequested) -> Awaitable[None] | None:
        key = StreamKey(conn.session.app, event.name)
        if not valid_name(event.name):
            conn.session.reject(event.stream_id, "NetStream.Publish.BadName", f"invalid stream name {event.name!r}")
            return None
        try:
            stream = self.hub.get_or_create(key)
        except OverflowError as exc:
            conn.session.reject(event.stream_id, "NetStream.Publish.Failed", str(exc))
            return None
        if stream.source is not None:
            log.warning(
                "%s: refused publish of %s: already published",
                conn.peer,
                key,
                extra={"event": "publish_refused", "stream": str(key), "client": conn.peer},
            )
            conn.session.reject(event.stream_id, "NetStream.Publish.BadName", f"{key} is already being published")
            return None
        stream.attach(conn)  # reserve before any await, so a racing second publisher is refused
        return self._admit_publisher(conn, stream, event)

    async def _admit_publisher(self, conn: RtmpServerProtocol, stream: Stream, event: PublishRequested) -> None:
        admitted = False
        try:
            await self.policy.admit_publisher(stream, event.query, conn.peer)
            admitted = not conn.closed
            if not admitted:
                self.policy.publisher_left(stream)  # it left while being admitted: give back what the policy took
        except Rejected as exc:
            log.warning(
                "%s: refused publish of %s: %s",
                conn.peer,
                stream.key,
                exc.description,
                extra={"event": "publish_refused", "stream": str(stream.key), "client": conn.peer},
            )
            conn.session.reject(event.stream_id, exc.code, exc.description)
        finally:
            if not admitted:  # refused, the publisher went away meanwhile, or the policy failed
                stream.source = None
                self.hub.discard_if_idle(stream)
        if admitted:
            waiting = self._graces.pop(stream.key, None)
            if waiting is not None:
                waiting[0].cancel()
                log.info(
                    "%s: %s is back within its grace period (%d viewers kept)", conn.peer, stream.key, stream.viewers
                )
            conn.publishing[event.stream_id] = stream
            conn.session.accept_publish(event.stream_id, event.name)
            log.info(
                "%s: publishing %s",
                conn.peer,
                stream.key,
                extra={"event": "publish", "stream": str(stream.key), "client": conn.peer},
            )

    def _on_play(self, conn: RtmpServerProtocol, event: PlayRequested) -> Awaitable[None] | None:
        if conn.viewer is not None or event.stream_id != MEDIA_STREAM_ID:
            conn.session.reject(event.stream_id, "NetStream.Play.Failed", "one play per connection, on stream 1")
            return None
        if not valid_name(event.name):
            conn.session.reject(event.stream_id, "NetStream.Play.StreamNotFound", f"invalid stream name {event.name!r}")
            return None
        key = StreamKey(conn.session.app, event.name)
        try:
            stream = self.playback.open(key, event.query)
        except Rejected as exc:
            self._refuse_play(conn, key, event, exc)
            return None
        if stream is not None:
            self._start_play(conn, stream, event)
            return None
        return self._play_from_source(conn, key, event)

    def _refuse_play(self, conn: RtmpServerProtocol, key: StreamKey, event: PlayRequested, exc: Rejected) -> None:
        log.warning(
            "%s: refused play of %s: %s",
            conn.peer,
            key,
            exc.description,
            extra={"event": "play_refused", "stream": str(key), "client": conn.peer},
        )
        conn.session.reject(event.stream_id, exc.code, exc.description)

    async def _play_from_source(self, conn: RtmpServerProtocol, key: StreamKey, event: PlayRequested) -> None:
        try:
            stream = await self.playback.locate(key, event.query)
        except Rejected as exc:
            self._refuse_play(conn, key, event, exc)
            return
        except SourceUnavailable as exc:
            log.warning("%s: play of %s: %s", conn.peer, key, exc)
            conn.session.reject(event.stream_id, "NetStream.Play.StreamNotFound", str(exc))
            return
        if conn.closed:
            return
        if stream is None:
            log.info("%s: play of unknown stream %s", conn.peer, key)
            conn.session.reject(event.stream_id, "NetStream.Play.StreamNotFound", f"{key} is not live")
            return
        self._start_play(conn, stream, event)

    def _start_play(self, conn: RtmpServerProtocol, stream: Stream, event: PlayRequested) -> None:
        conn.session.accept_play(event.stream_id, event.name)
        conn.flush()  # status messages must reach the player before the bootstrap packets
        viewer = RtmpViewer(conn, stream, event.stream_id)
        conn.viewer = viewer
        self.playback.subscribe(stream, viewer, conn.peer, "RTMP")

    def _on_stream_deleted(self, conn: RtmpServerProtocol, event: StreamDeleted) -> None:
        stream = conn.publishing.pop(event.stream_id, None)
        if stream is not None:
            self._end_publish(conn, stream)
        if conn.viewer is not None and conn.viewer.stream_id == event.stream_id:
            self._end_play(conn, conn.viewer)

    def _end_publish(self, conn: RtmpServerProtocol, stream: Stream) -> None:
        if stream.source is not conn:
            return
        log.info(
            "%s: unpublished %s (%d bytes in)",
            conn.peer,
            stream.key,
            stream.bytes_in,
            extra={"event": "unpublish", "stream": str(stream.key), "client": conn.peer},
        )
        self.policy.publisher_left(stream)
        if self.publish_grace > 0 and stream.viewers > 0 and not self._closing:
            # An encoder restart or a network blip: keep the viewers for a while; a publisher that comes
            # back (here, or at another origin an edge then follows) continues the stream.
            stream.source_left()
            previous = self._graces.pop(stream.key, None)
            if previous is not None:
                previous[0].cancel()
            timer = asyncio.get_running_loop().call_later(self.publish_grace, self._grace_over, stream)
            self._graces[stream.key] = (timer, stream)
            log.info(
                "%s: %d viewers wait up to %gs for it to be published again",
                stream.key,
                stream.viewers,
                self.publish_grace,
            )
        else:
            stream.end_of_source()
        self.hub.discard_if_idle(stream)

    def _grace_over(self, stream: Stream) -> None:
        waiting = self._graces.get(stream.key)
        if waiting is not None and waiting[1] is stream:
            del self._graces[stream.key]
        if stream.source is None:
            log.info("%s: not published again within %gs; ending it for its viewers", stream.key, self.publish_grace)
            stream.end_of_source()
            self.hub.discard_if_idle(stream)

    def _end_play(self, conn: RtmpServerProtocol, viewer: RtmpViewer) -> None:
        conn.viewer = None
        self.playback.unsubscribe(viewer.stream, viewer)
