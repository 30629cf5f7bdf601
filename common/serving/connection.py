"""The thin asyncio layer: a Protocol that drives one sans-IO ServerSession over a transport.

Events are handed to a ConnectionHandler (the RTMP service) synchronously. When the service needs to wait (a registry
claim, an upstream pull) it returns an awaitable: reading pauses, later events queue in order, and
dispatch resumes when the wait is over. The media hot path stays synchronous.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from common.hub.packet import RTMP
from common.hub.stream import Stream
from common.rtmp.events import ConnectionFailed, Event
from common.rtmp.session import ServerSession, SessionLimits

log = logging.getLogger(__name__)

_LATE = 1.0  # seconds a progress check may fire late before the node counts as having stood still


@dataclass(frozen=True, slots=True)
class Timeouts:
    handshake: float = 10.0  # seconds from TCP accept to a connect command
    idle: float = 30.0  # seconds without input on a connection that is not playing
    publisher: float = 5.0  # seconds without input on a publishing connection (half-open: it must not block)

    @property
    def check_every(self) -> float:
        return min(self.idle, self.publisher / 2, 5.0)


@dataclass(frozen=True, slots=True)
class Bounds:
    """What one connection may cost the node beyond the protocol's own limits."""

    commands_per_second: float = 50.0  # sustained; bursts of BURST_SECONDS worth are allowed
    max_unsent: int = 1024 * 1024  # bytes queued for a peer that does not read (players have their own limits)


BURST_SECONDS: Final = 2.0


class ConnectionHandler(Protocol):
    """What a connection needs from the service that gives its events meaning."""

    session_limits: SessionLimits
    timeouts: Timeouts
    bounds: Bounds

    def connection_opened(self, conn: RtmpServerProtocol) -> None: ...
    def connection_closed(self, conn: RtmpServerProtocol) -> None: ...
    def protocol_error(self, conn: RtmpServerProtocol, reason: str) -> None: ...
    def handle(self, conn: RtmpServerProtocol, event: Event) -> Awaitable[None] | None:
        """Act on one event; an awaitable pauses this connection's input until it is done."""


class RtmpViewer:
    """A playing connection as the hub's Subscriber: writes go straight to the transport."""

    __slots__ = ("buffered", "conn", "stream", "stream_id", "transport", "write")
    wire_format = RTMP

    def __init__(self, conn: RtmpServerProtocol, stream: Stream, stream_id: int) -> None:
        assert conn.transport is not None
        self.conn = conn
        self.stream = stream
        self.stream_id = stream_id
        self.transport: asyncio.Transport = conn.transport
        # The transport's own methods: the hub's fan-out loop calls them with no Python frame in between.
        self.write = conn.transport.write
        self.buffered = conn.transport.get_write_buffer_size

    def drop(self, reason: str) -> None:
        log.warning("%s: dropping viewer of %s: %s", self.conn.peer, self.stream.key, reason)
        self.conn.abort(reason)  # connection_lost runs later, outside the hub's fan-out loop

    def source_ended(self) -> None:
        # conn.viewer stays set: closing unsubscribes it through the one play path, as any other leave.
        self.conn.session.end_play(self.stream_id, self.stream.name)
        self.conn.close(f"source of {self.stream.key} ended")

    def disconnect(self, reason: str) -> None:
        self.conn.close(reason)  # no Play.Stop: the stream goes on, the player reconnects elsewhere


class RtmpServerProtocol(asyncio.Protocol):
    """One RTMP connection. As a publisher it is its stream's Source: ``stop`` disconnects it."""

    def __init__(self, service: ConnectionHandler) -> None:
        self.service = service
        self.session = ServerSession(service.session_limits)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.closed = False
        self.close_reason = ""
        self.opened_at = self.last_received = time.monotonic()
        self.publishing: dict[int, Stream] = {}  # message stream id -> the stream it feeds
        self.viewer: RtmpViewer | None = None  # while this connection plays a stream
        self._pending: deque[Event] = deque()
        self._waiting: asyncio.Future[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._check_due = 0.0
        self.address = "?"  # the client's IP address
        self._commands_paid = 0
        self._command_budget = service.bounds.commands_per_second * BURST_SECONDS
        self._budget_at = self.opened_at

    # -- asyncio callbacks ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.address = str(peer[0]) if isinstance(peer, tuple) else self.peer
        self.service.connection_opened(self)
        if self.closed:  # refused at the door (a connection limit)
            return
        timeouts = self.service.timeouts
        self._check_in(min(timeouts.handshake, timeouts.check_every))

    def data_received(self, data: bytes) -> None:
        now = self.last_received = time.monotonic()
        events = self.session.receive_data(data)
        if self.session.commands_received > self._commands_paid and self._over_command_budget(now):
            events = [ConnectionFailed(f"more than {self.service.bounds.commands_per_second:g} commands per second")]
        self.flush()
        if self._waiting is not None:
            self._pending.extend(events)
        else:
            self._dispatch(events)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = self.close_reason or (f"peer dropped the connection: {exc}" if exc else "peer closed")
        if self._timer is not None:
            self._timer.cancel()
        if self._waiting is not None:
            self._waiting.cancel()
        self.service.connection_closed(self)

    def _over_command_budget(self, now: float) -> bool:
        """A token bucket over the session's command count: commands cost the node CPU and replies."""
        rate = self.service.bounds.commands_per_second
        self._command_budget = min(rate * BURST_SECONDS, self._command_budget + (now - self._budget_at) * rate)
        self._budget_at = now
        self._command_budget -= self.session.commands_received - self._commands_paid
        self._commands_paid = self.session.commands_received
        return self._command_budget < 0

    # -- driving the service ---------------------------------------------------------------------

    def _dispatch(self, events: list[Event] | deque[Event]) -> None:
        queue = deque(events)
        while queue and not self.closed:
            event = queue.popleft()
            if isinstance(event, ConnectionFailed):
                self.service.protocol_error(self, event.reason)
                self.close(f"protocol error: {event.reason}")
                return
            waiter = self.service.handle(self, event)
            ready = self.session.take_events()  # what accepting a connect released, before what came after
            if ready:
                queue.extendleft(reversed(ready))
            self.flush()
            if waiter is not None:
                self._wait(waiter, queue)
                return

    def _wait(self, waiter: Awaitable[Any], rest: deque[Event]) -> None:
        self._pending = rest
        if self.transport is not None:
            self.transport.pause_reading()
        self._waiting = asyncio.ensure_future(waiter)
        self._waiting.add_done_callback(self._resume)

    def _resume(self, future: asyncio.Future[Any]) -> None:
        self._waiting = None
        if future.cancelled() or self.closed:
            return
        exc = future.exception()
        if exc is not None:
            extra = {"event": "error", "client": self.peer}
            log.error("%s: handler failed: %r", self.peer, exc, exc_info=exc, extra=extra)
            self.close(f"internal error: {exc!r}")
            return
        self.flush()
        pending, self._pending = self._pending, deque()
        self._dispatch(pending)
        if self._waiting is None and not self.closed and self.transport is not None:
            self.transport.resume_reading()

    def _check_progress(self) -> None:
        """Close connections that stall: no connect in time, a publisher that went quiet (half-open: its
        replacement must not wait), or an idle connection that neither plays nor publishes."""
        timeouts = self.service.timeouts
        if self.closed:
            return
        now = time.monotonic()
        if now - self._check_due > _LATE:
            # The process itself stood still (frozen, swapped out): what the peer sent meanwhile is still
            # unread in the socket, so its silence proves nothing yet. Judge once the input is read.
            self._check_in(_LATE)
            return
        delay = timeouts.check_every
        if not self.session.connected:
            left = timeouts.handshake - (now - self.opened_at)
            if left <= 0:
                self.close(f"no connect within {timeouts.handshake:g}s")
                return
            delay = min(delay, left)
        quiet = now - self.last_received
        if self.publishing and quiet > timeouts.publisher:
            self.close(f"publisher sent nothing for {timeouts.publisher:g}s")
            return
        if self.viewer is None and quiet > timeouts.idle:
            self.close(f"idle for {timeouts.idle:g}s")
            return
        self._check_in(delay)

    def _check_in(self, delay: float) -> None:
        self._check_due = time.monotonic() + delay
        self._timer = asyncio.get_running_loop().call_later(delay, self._check_progress)

    # -- output ------------------------------------------------------------------------------------

    def flush(self) -> None:
        data = self.session.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)
            if self.viewer is None and self.transport.get_write_buffer_size() > self.service.bounds.max_unsent:
                # A peer that sends commands and never reads the replies: it must not grow our memory.
                reason = f"peer does not read: over {self.service.bounds.max_unsent} unsent bytes"
                self.service.protocol_error(self, reason)
                self.abort(reason)

    def close(self, reason: str) -> None:
        """Flush what the session owes the peer, then close; connection_lost does the cleanup."""
        if self.closed:
            return
        self.close_reason = reason
        self.flush()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def stop(self, reason: str) -> None:
        self.close(reason)

    def abort(self, reason: str) -> None:
        """Drop at once, discarding anything still buffered (a viewer that fell too far behind)."""
        if not self.closed:
            self.close_reason = reason
            self.closed = True
        if self.transport is not None:
            self.transport.abort()
