"""The thin asyncio layer: a Protocol that drives one sans-IO ServerSession over a transport.

Events are handed to the node's service synchronously. When the service needs to wait (a registry
claim, an upstream pull) it returns an awaitable: reading pauses, later events queue in order, and
dispatch resumes when the wait is over. The media hot path stays synchronous.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, cast

from common.rtmp.events import ConnectionFailed, Event
from common.rtmp.session import ServerSession

if TYPE_CHECKING:
    from common.server import RtmpService

log = logging.getLogger(__name__)


class RtmpServerProtocol(asyncio.Protocol):
    def __init__(self, service: RtmpService) -> None:
        self.service = service
        self.session = ServerSession(service.session_limits)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.closed = False
        self.close_reason = ""
        self.last_received = time.monotonic()
        self.publishing: dict[int, Any] = {}  # message stream id -> Stream
        self.viewer: Any = None  # the Viewer while this connection plays a stream
        self._pending: deque[Event] = deque()
        self._waiting: asyncio.Future[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.service.connection_opened(self)
        self._timer = asyncio.get_running_loop().call_later(self.service.timeouts.handshake, self._check_progress)

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        events = self.session.receive_data(data)
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
            log.error("%s: handler failed: %r", self.peer, exc, exc_info=exc)
            self.close(f"internal error: {exc!r}")
            return
        self.flush()
        pending, self._pending = self._pending, deque()
        self._dispatch(pending)
        if self._waiting is None and not self.closed and self.transport is not None:
            self.transport.resume_reading()

    def _check_progress(self) -> None:
        """Close connections that stall: no connect in time, or an idle non-playing connection."""
        timeouts = self.service.timeouts
        if self.closed:
            return
        if not self.session.connected:
            self.close(f"no connect within {timeouts.handshake:g}s")
            return
        if self.viewer is None and time.monotonic() - self.last_received > timeouts.idle:
            self.close(f"idle for {timeouts.idle:g}s")
            return
        self._timer = asyncio.get_running_loop().call_later(min(timeouts.idle, 5.0), self._check_progress)

    # -- output ------------------------------------------------------------------------------------

    def flush(self) -> None:
        data = self.session.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self, reason: str) -> None:
        """Flush what the session owes the peer, then close; connection_lost does the cleanup."""
        if self.closed:
            return
        self.close_reason = reason
        self.flush()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self, reason: str) -> None:
        """Drop at once, discarding anything still buffered (a viewer that fell too far behind)."""
        if not self.closed:
            self.close_reason = reason
            self.closed = True
        if self.transport is not None:
            self.transport.abort()
