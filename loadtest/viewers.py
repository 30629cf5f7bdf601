"""The swarm's viewers: RTMP and HTTP-FLV ``asyncio.BufferedProtocol``s reading into ONE shared
preallocated scratch buffer (``SwarmState.scratch``).

* **counting viewers** (the many) set up the session (RTMP: handshake, connect, createStream, play with
  the sans-IO ``ClientSession``; HTTP-FLV: a hand-written GET and the status line), then stop parsing and
  only count bytes. RTMP ones still send Acknowledgements per the server's window (they cannot answer
  a Ping Request, which they no longer see). Once playing, their sockets get ``SO_RCVLOWAT`` so the
  kernel wakes us for large reads only (this also lets the server write in fewer, larger segments).
* **probe viewers** (a few) parse every message and hand it to their ``ProbeMeasurements``.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import socket
import struct
import termios
from typing import Final, cast

from common.rtmp.chunk import encode_message
from common.rtmp.events import (
    ConnectAccepted,
    ConnectionFailed,
    ConnectRejected,
    MediaReceived,
    PlayStarted,
    StatusReceived,
    StreamCreated,
)
from common.rtmp.messages import CSID_PROTOCOL, MessageType, u32_payload
from common.rtmp.session import ClientSession
from common.serving.client import RtmpUrl
from loadtest.flvfile import FlvError, FlvReader
from loadtest.http1 import ChunkedDecoder, HeadReader, HttpError, HttpUrl
from loadtest.probe import ProbeMeasurements
from loadtest.swarm_config import ViewerSpec
from loadtest.swarm_state import SwarmState

DEFAULT_ACK_WINDOW: Final = 2_500_000  # RTMP: ack every this many bytes if the server announced no window

CONNECTING, PLAYING, CLOSED = 0, 1, 2  # SwarmViewer.state


class ViewerFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a failure nobody awaits any more (timed out) is not an error


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0) or type(exc).__name__


def os_error_reason(stage: str, exc: OSError) -> str:
    return f"{stage}: {_errno_name(exc)}"


class SwarmViewer(asyncio.BufferedProtocol):
    """What RTMP and HTTP-FLV viewers share: the scratch buffer, byte counts, lifecycle, failures."""

    def __init__(self, swarm: SwarmState, spec: ViewerSpec) -> None:
        self.swarm = swarm
        self.spec = spec
        self.probe = ProbeMeasurements(swarm) if spec.probe else None
        self.transport: asyncio.Transport | None = None
        self.nbytes = 0  # every byte received on this connection
        self.mark = 0  # bytes received (read + waiting in the kernel) when the measuring interval began
        self.mark_end = 0  # the same when it ended
        self.counting = False  # fast path: playing, not a probe, bytes are not looked at
        self.state = CONNECTING
        self.closing = False  # we are closing it (failure, end of run): not a drop
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started.add_done_callback(_consume)

    # -- asyncio callbacks ---------------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.swarm.scratch

    def buffer_updated(self, nbytes: int) -> None:
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = CLOSED
        self.counting = False
        reason = f"reset ({_errno_name(exc)})" if isinstance(exc, OSError) else "closed by server"
        if was == CONNECTING:
            if not self.started.done():
                self.started.set_exception(ViewerFailed(reason + " before playing"))
        elif was == PLAYING and not self.closing:
            self.swarm.viewer_dropped(reason)

    # -- shared logic --------------------------------------------------------------------------------

    def received(self) -> int:
        """Bytes read so far plus those waiting unread in the kernel's receive queue (FIONREAD): exact
        interval accounting although SO_RCVLOWAT leaves up to that many bytes unread at any moment."""
        return self.nbytes + (_unread_bytes(self.transport) if self.state == PLAYING else 0)

    def _data(self, nbytes: int) -> bytes:
        return bytes(self.swarm.scratch_view[:nbytes])

    def _playing(self) -> None:
        if self.state != CONNECTING:
            return
        self.state = PLAYING
        if self.probe is not None:
            self.probe.playing()
        else:
            self.counting = True
            self._set_rcvlowat()
        if not self.started.done():
            self.started.set_result(None)

    def _set_rcvlowat(self) -> None:
        lowat = self.swarm.config.rcvlowat
        if not lowat or self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
        except OSError:
            self.swarm.rcvlowat_errors += 1

    def fail(self, reason: str) -> None:
        """Setup went wrong: resolve ``started`` with the reason and close (never retried)."""
        if not self.started.done():
            self.started.set_exception(ViewerFailed(reason))
        if self.state == PLAYING and not self.closing:
            self.swarm.viewer_dropped(reason)
        self.close()

    def close(self) -> None:
        self.closing = True
        self.counting = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class RtmpSwarmViewer(SwarmViewer):
    def __init__(self, swarm: SwarmState, spec: ViewerSpec, url: RtmpUrl) -> None:
        super().__init__(swarm, spec)
        self.url = url
        self.session: ClientSession | None = ClientSession(url.app, url.tc_url)
        self.window = DEFAULT_ACK_WINDOW
        self.acked = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._flush()  # C0 + C1

    def buffer_updated(self, nbytes: int) -> None:
        self.nbytes += nbytes
        self.swarm.bytes_total += nbytes
        if self.counting:
            if self.nbytes - self.acked >= self.window:
                self.acked = self.nbytes
                ack = encode_message(CSID_PROTOCOL, 0, MessageType.ACKNOWLEDGEMENT, 0, u32_payload(self.nbytes), 128)
                if self.transport is not None:
                    self.transport.write(ack)
            return
        session = self.session
        if session is None:
            return
        for event in session.receive_data(self._data(nbytes)):
            kind = type(event)
            if kind is MediaReceived:
                if self.probe is not None:
                    media = cast(MediaReceived, event)
                    self.probe.on_media(media.type_id, media.timestamp, media.payload)
            elif kind is ConnectAccepted:
                session.create_stream()
            elif kind is StreamCreated:
                session.play(cast(StreamCreated, event).stream_id, self.url.name)
            elif kind is PlayStarted:
                self._playing()
                if self.counting:
                    self._stop_parsing(session)
                    break
            elif kind is StatusReceived:
                status = cast(StatusReceived, event)
                if status.level == "error":
                    self.fail(f"rtmp {status.code or 'error status'}")
                    return
            elif kind is ConnectRejected:
                self.fail(f"rtmp connect rejected {cast(ConnectRejected, event).code}")
                return
            elif kind is ConnectionFailed:
                self.fail(f"rtmp protocol error: {cast(ConnectionFailed, event).reason}")
                return
        self._flush()

    def _stop_parsing(self, session: ClientSession) -> None:
        """From here on only bytes are counted; acks continue from the session's own bookkeeping
        (the server's Window Acknowledgement Size and our last ack), so the sequence has no gap."""
        self.window = session.peer_window or DEFAULT_ACK_WINDOW
        self.acked = session.acknowledged
        self._flush()
        self.session = None  # the parser's state is no longer needed; free it

    def _flush(self) -> None:
        session = self.session
        if session is None or self.transport is None or self.transport.is_closing():
            return
        data = session.data_to_send()
        if data:
            self.transport.write(data)


class FlvSwarmViewer(SwarmViewer):
    def __init__(self, swarm: SwarmState, spec: ViewerSpec, url: HttpUrl) -> None:
        super().__init__(swarm, spec)
        self.url = url
        self.head: HeadReader | None = HeadReader()
        self.chunked: ChunkedDecoder | None = None
        self.flv: FlvReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        cast(asyncio.Transport, transport).write(self.url.get_request())

    def buffer_updated(self, nbytes: int) -> None:
        self.nbytes += nbytes
        self.swarm.bytes_total += nbytes
        if self.counting:
            return
        data = self._data(nbytes)
        try:
            if self.head is not None:
                got = self.head.feed(data)
                if got is None:
                    return
                head, data = got
                self.head = None
                if head.status != 200:
                    self.fail(f"http {head.status}")
                    return
                if self.probe is not None:
                    self.chunked = ChunkedDecoder() if head.chunked else None
                    self.flv = FlvReader()
                self._playing()
                if self.counting:
                    return
            self._probe_body(data)
        except (HttpError, FlvError) as exc:
            self.fail(f"http-flv protocol error: {exc}")

    def _probe_body(self, data: bytes) -> None:
        if self.flv is None or self.probe is None:
            return
        if self.chunked is not None:
            data = self.chunked.feed(data)
        for tag in self.flv.feed(data):
            self.probe.on_media(tag.tag_type, tag.timestamp, tag.payload)


def _unread_bytes(transport: asyncio.Transport | None) -> int:
    if transport is None or transport.is_closing():
        return 0
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return int(struct.unpack("i", raw)[0])
