"""RTMP publish/play semantics over the hub, shared by origin and edge nodes.

The service decides what each session event means for the node: who may publish, what a play
subscribes to. Cluster concerns (registry claims, upstream pulls) plug in through the async hooks
``authorize_publish``, ``unpublished``, ``find_source`` and ``viewer_left``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from common.net import RtmpServerProtocol
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
from common.stream import RTMP, Hub, Stream

log = logging.getLogger(__name__)

# App and stream names: path-safe, bounded. No '..', no leading dots, no slashes inside a name.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


def valid_name(value: str) -> bool:
    return bool(_NAME.match(value)) and ".." not in value


class Rejected(Exception):
    """A hook refuses a publish or a play; the text goes to the client in the onStatus."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


@dataclass(frozen=True, slots=True)
class Timeouts:
    handshake: float = 10.0  # seconds from TCP accept to a connect command
    idle: float = 30.0  # seconds without input on a connection that is not playing


class Viewer:
    """A playing connection as the hub's Subscriber: writes go straight to the transport."""

    __slots__ = ("buffered", "conn", "stream", "stream_id", "write")
    wire_format = RTMP

    def __init__(self, conn: RtmpServerProtocol, stream: Stream, stream_id: int) -> None:
        assert conn.transport is not None
        self.conn = conn
        self.stream = stream
        self.stream_id = stream_id
        # The transport's own methods: the hub's fan-out loop calls them with no Python frame in between.
        self.write = conn.transport.write
        self.buffered = conn.transport.get_write_buffer_size

    def drop(self, reason: str) -> None:
        log.warning("%s: dropping viewer of %s: %s", self.conn.peer, self.stream.key, reason)
        self.conn.abort(reason)  # connection_lost runs later, outside the hub's fan-out loop

    def source_ended(self) -> None:
        self.conn.viewer = None
        self.conn.session.end_play(self.stream_id, self.stream.name)
        self.conn.close(f"source of {self.stream.key} ended")


class RtmpService:
    """Origin behaviour by default: publishers feed the hub, players read live streams from it."""

    def __init__(
        self,
        hub: Hub,
        *,
        session_limits: SessionLimits | None = None,
        timeouts: Timeouts | None = None,
        viewer_sndbuf: int = 0,
    ) -> None:
        self.hub = hub
        self.session_limits = session_limits or SessionLimits(out_chunk_size=hub.limits.chunk_size)
        self.timeouts = timeouts or Timeouts()
        self.viewer_sndbuf = viewer_sndbuf
        self.connections: set[RtmpServerProtocol] = set()
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

    # -- hooks for cluster behaviour (origin/edge override) -----------------------------------------

    async def authorize_publish(self, conn: RtmpServerProtocol, stream: Stream, query: str) -> None:
        """Raise Rejected to refuse. Runs with the stream reserved for this publisher."""

    def unpublished(self, stream: Stream) -> None:
        """The publisher left (called synchronously, once for every publish authorize_publish let through,
        including one whose connection closed before it could start)."""

    async def find_source(self, app: str, name: str, query: str) -> Stream | None:
        """A play for a stream with no local source: an edge starts a pull here."""
        return None

    def viewer_joined(self, stream: Stream) -> None:
        """A viewer started playing (RTMP or HTTP-FLV)."""

    def viewer_left(self, stream: Stream) -> None:
        """A viewer stopped playing (the stream may now have none)."""

    async def locate_for_play(self, app: str, name: str, query: str) -> Stream | None:
        """The live local stream to play, starting an upstream pull through find_source if needed."""
        stream = self.hub.get(app, name)
        if stream is not None and stream.publisher is not None:
            return stream
        stream = await self.find_source(app, name, query)
        return stream if stream is not None and stream.publisher is not None else None

    # -- connection bookkeeping ----------------------------------------------------------------------

    def protocol_factory(self) -> RtmpServerProtocol:
        return RtmpServerProtocol(self)

    def connection_opened(self, conn: RtmpServerProtocol) -> None:
        self.connections.add(conn)
        self.connections_total += 1
        log.debug("%s: connected", conn.peer)

    def connection_closed(self, conn: RtmpServerProtocol) -> None:
        self.connections.discard(conn)
        for stream in conn.publishing.values():
            self._end_publish(conn, stream)
        conn.publishing.clear()
        if conn.viewer is not None:
            self._end_play(conn)
        log.info("%s: closed (%s)", conn.peer, conn.close_reason)

    def protocol_error(self, conn: RtmpServerProtocol, reason: str) -> None:
        self.protocol_errors += 1
        log.warning("%s: RTMP protocol error, closing: %s", conn.peer, reason)

    def handle(self, conn: RtmpServerProtocol, event: Event) -> Awaitable[None] | None:
        handler = self._handlers.get(type(event))
        return handler(conn, event) if handler is not None else None

    async def close_all(self, reason: str) -> None:
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
        app = conn.session.app
        if not valid_name(event.name):
            conn.session.reject_publish(
                event.stream_id, "NetStream.Publish.BadName", f"invalid stream name {event.name!r}"
            )
            return None
        try:
            stream = self.hub.get_or_create(app, event.name)
        except OverflowError as exc:
            conn.session.reject_publish(event.stream_id, "NetStream.Publish.Failed", str(exc))
            return None
        if stream.publisher is not None:
            log.warning("%s: refused publish of %s: already published", conn.peer, stream.key)
            conn.session.reject_publish(
                event.stream_id, "NetStream.Publish.BadName", f"{stream.key} is already being published"
            )
            return None
        stream.publisher = conn  # reserve before any await, so a racing second publisher is refused
        return self._admit_publisher(conn, stream, event)

    async def _admit_publisher(self, conn: RtmpServerProtocol, stream: Stream, event: PublishRequested) -> None:
        admitted = False
        try:
            await self.authorize_publish(conn, stream, event.query)
            admitted = not conn.closed
            if not admitted:
                self.unpublished(stream)  # it left while being authorized: give back what the hook took
        except Rejected as exc:
            log.warning("%s: refused publish of %s: %s", conn.peer, stream.key, exc.description)
            conn.session.reject_publish(event.stream_id, exc.code, exc.description)
        finally:
            if not admitted:  # refused, the publisher went away meanwhile, or the hook failed
                stream.publisher = None
                self.hub.discard_if_idle(stream)
        if admitted:
            conn.publishing[event.stream_id] = stream
            conn.session.accept_publish(event.stream_id, event.name)
            log.info("%s: publishing %s", conn.peer, stream.key)

    def _on_play(self, conn: RtmpServerProtocol, event: PlayRequested) -> Awaitable[None] | None:
        if conn.viewer is not None or event.stream_id != MEDIA_STREAM_ID:
            conn.session.reject_play(event.stream_id, "NetStream.Play.Failed", "one play per connection, on stream 1")
            return None
        if not valid_name(event.name):
            conn.session.reject_play(
                event.stream_id, "NetStream.Play.StreamNotFound", f"invalid stream name {event.name!r}"
            )
            return None
        stream = self.hub.get(conn.session.app, event.name)
        if stream is not None and stream.publisher is not None:
            self._start_play(conn, stream, event)
            return None
        return self._play_from_source(conn, event)

    async def _play_from_source(self, conn: RtmpServerProtocol, event: PlayRequested) -> None:
        app = conn.session.app
        try:
            stream = await self.locate_for_play(app, event.name, event.query)
        except Rejected as exc:
            conn.session.reject_play(event.stream_id, exc.code, exc.description)
            return
        if conn.closed:
            return
        if stream is None:
            log.info("%s: play of unknown stream %s/%s", conn.peer, app, event.name)
            conn.session.reject_play(
                event.stream_id, "NetStream.Play.StreamNotFound", f"{app}/{event.name} is not live"
            )
            return
        self._start_play(conn, stream, event)

    def _start_play(self, conn: RtmpServerProtocol, stream: Stream, event: PlayRequested) -> None:
        conn.session.accept_play(event.stream_id, event.name)
        conn.flush()  # status messages must reach the player before the bootstrap packets
        if self.viewer_sndbuf and conn.transport is not None:
            # Bounds the kernel memory a stalled viewer can pin; past it the hub's own limits apply.
            sock = conn.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.viewer_sndbuf)
        viewer = Viewer(conn, stream, event.stream_id)
        conn.viewer = viewer
        stream.add_subscriber(viewer)
        self.viewer_joined(stream)
        log.info("%s: playing %s (%d viewers)", conn.peer, stream.key, stream.viewers)

    def _on_stream_deleted(self, conn: RtmpServerProtocol, event: StreamDeleted) -> None:
        stream = conn.publishing.pop(event.stream_id, None)
        if stream is not None:
            self._end_publish(conn, stream)
        if conn.viewer is not None and conn.viewer.stream_id == event.stream_id:
            self._end_play(conn)

    def _end_publish(self, conn: RtmpServerProtocol, stream: Stream) -> None:
        if stream.publisher is not conn:
            return
        log.info("%s: unpublished %s (%d bytes in)", conn.peer, stream.key, stream.bytes_in)
        stream.end_of_source()
        self.unpublished(stream)
        self.hub.discard_if_idle(stream)

    def _end_play(self, conn: RtmpServerProtocol) -> None:
        viewer = conn.viewer
        conn.viewer = None
        stream = viewer.stream
        stream.remove_subscriber(viewer)
        self.viewer_left(stream)
        self.hub.discard_if_idle(stream)
