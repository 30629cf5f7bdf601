"""Socket options of viewer connections (every format), set once when a viewer starts playing."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ViewerSockets:
    # SO_SNDBUF in bytes (0: kernel autotuning). Bounds the kernel memory a stalled viewer can pin; past it
    # the hub's own limits apply.
    sndbuf: int = 0
    # TCP_NODELAY. Off (the default, as nginx-rtmp leaves it), the kernel appends a write to data still
    # waiting for an acknowledgement instead of sending a segment per write: measured at 1,000 viewers on one
    # core, the same lag for about a third less CPU (docs/BENCHMARKS.md). A segment that fills the MSS goes
    # at once either way, so only the tail of a write can wait, for at most one round trip.
    nodelay: bool = False

    def tune(self, transport: asyncio.BaseTransport | None) -> None:
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            return
        try:
            # asyncio and uvloop turn TCP_NODELAY on for every TCP transport: set it both ways.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(self.nodelay))
            if self.sndbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        except OSError as exc:  # a non-TCP socket (tests' socketpairs), or one already closing
            log.debug("viewer socket options not set: %s", exc)
