"""Fan-out of a stream's packets to its viewers: merged, phased writes and the slow-viewer policy.

Packets that arrive within the node's merge window (``common.hub.pacing``: 0 while the node has CPU to
spare, wider as it gets busy) reach each viewer as ONE write (one syscall per viewer per window, not per
message), built by one join per group and format and shared by the group. The write is a bare send(2)
on the viewer's socket while its transport holds nothing, and sendfile from the spool for large batches
(``common.hub.spool``); a transport that holds bytes, or is closing, gets it through ``write``. Viewers are
split into ``phases`` groups whose flushes are staggered across a wide window, so a large audience costs
the event loop a steady trickle instead of one long burst per window. A viewer over the high-water mark
waits in its group's lagging set, out of the hot loop, until it can rejoin at a key frame.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Final, Protocol

from common.hub.pacing import MergeWindow
from common.hub.packet import HubLimits, Packet
from common.hub.spool import Spool

log = logging.getLogger(__name__)

PHASE_SPACING: Final = 0.025  # seconds between two groups' flushes; sets the number of phases per window
MAX_PHASES: Final = 16
SPOOL_MIN_BYTES: Final = 16 * 1024  # batches this large go out by sendfile from the spool (see spool.py)
MIN_TICK: Final = 0.004  # seconds: a window whose groups would flush closer than this flushes them together

Scheduler = Callable[[float, Callable[[], None]], object]


class Subscriber(Protocol):
    """A viewer as the hub sees it: a non-blocking byte sink that can report its backlog.

    ``write`` and ``buffered`` are read once at subscribe time and called directly in the fan-out
    loop, so a viewer can make them its transport's own (C) methods: no Python frame per write.
    """

    wire_format: str  # which prebuilt bytes of each packet it takes (RTMP chunks, FLV tags)

    @property
    def write(self) -> Callable[[bytes], object]: ...
    @property
    def buffered(self) -> Callable[[], int]: ...
    def drop(self, reason: str) -> None: ...
    def source_ended(self) -> None: ...


@dataclass(slots=True)
class _ViewerState:
    subscriber: Subscriber
    write: Callable[[bytes], object]
    buffered: Callable[[], int]
    group: int
    closing: Callable[[], bool]  # its transport's is_closing: from then on its descriptor may be another's
    sock: _BorrowedSocket | None  # a socket object over the transport's descriptor; None: none
    skipping_since: float = 0.0  # when it fell over the high-water mark (while in its group's ``lagging``)

    @property
    def writer(self) -> Writer:
        if self.sock is None:
            return (self.write, self.buffered, self.closing, -1, _send_nothing)
        return (self.write, self.buffered, self.closing, self.sock.fileno(), self.sock.send)


# A live viewer's (write, buffered, closing, fd, send), unpacked at once in the hot loop. ``write`` is its
# transport's (it queues what the socket does not take); ``send`` is send(2) on the same socket, used only
# while the transport holds nothing (so bytes keep their order) and is not closing (so the descriptor is
# still this connection's): a bare system call, without the transport's bookkeeping or write(2)'s file layer.
Writer = tuple[Callable[[bytes], object], Callable[[], int], Callable[[], bool], int, Callable[[bytes], int]]


def _send_nothing(data: bytes) -> int:
    return 0


class _Group:
    """Viewers flushed together. Per wire format: ``live`` ones get every batch; ``lagging`` ones fell over
    the high-water mark and wait to drain and rejoin at a key frame (kept apart so the hot loop over the
    live ones reads no per-viewer state beyond a tuple of bound C methods)."""

    __slots__ = ("lagging", "live", "sent_upto")

    def __init__(self) -> None:
        self.live: dict[str, dict[Subscriber, Writer]] = {}
        self.lagging: dict[str, dict[Subscriber, _ViewerState]] = {}
        self.sent_upto = 0  # sequence number of the first packet this group has not been sent

    def formats(self) -> set[str]:
        return {fmt for fmt, members in self.live.items() if members} | {
            fmt for fmt, members in self.lagging.items() if members
        }


class _Batch:
    """The packets of one flush in one wire format, joined once for every viewer of the group."""

    __slots__ = ("_resume", "data", "fmt", "headers", "packets")

    def __init__(self, packets: list[Packet], fmt: str, headers: Callable[[], list[Packet]]) -> None:
        self.packets = packets
        self.fmt = fmt
        self.headers = headers
        self.data = packets[0].wire(fmt) if len(packets) == 1 else b"".join(p.wire(fmt) for p in packets)
        self._resume: bytes | None = None

    def resume(self) -> bytes | None:
        """For a viewer rejoining live: current metadata and sequence headers, then the batch from its first
        key frame. None when the batch has no key frame (the viewer keeps waiting)."""
        if self._resume is None:
            start = next((i for i, p in enumerate(self.packets) if p.keyframe), None)
            if start is None:
                return None
            parts = [p.wire(self.fmt) for p in self.headers()]
            parts.extend(p.wire(self.fmt) for p in self.packets[start:])
            self._resume = b"".join(parts)
        return self._resume


def phases_for(window: float, configured: int = 0) -> int:
    if window <= 0:
        return 1
    if configured > 0:
        return min(configured, MAX_PHASES)
    return max(1, min(MAX_PHASES, round(window / PHASE_SPACING)))


class FanOut:
    def __init__(
        self,
        limits: HubLimits,
        scheduler: Scheduler,
        clock: Callable[[], float],
        headers: Callable[[], list[Packet]],
        pacing: MergeWindow | None = None,
    ) -> None:
        self.limits = limits
        self.scheduler = scheduler
        self.clock = clock
        self.headers = headers
        self.pacing = pacing if pacing is not None else MergeWindow(limits.merge_window)
        # Groups are sized for the widest window the pacing allows; a narrower window flushes them all at once.
        self.phases = phases_for(self.pacing.largest, limits.merge_phases)
        self._groups = [_Group() for _ in range(self.phases)]
        self._subscribers: dict[Subscriber, _ViewerState] = {}
        self._log: list[Packet] = []  # packets some group has not been sent yet
        self._base = 0  # sequence number of _log[0]
        self._next_group = 0
        self._ticking = False
        self._joins = 0
        self._doomed: list[tuple[Subscriber, str]] = []
        self._spool: Spool | None = None  # opened at the first large batch
        self.bytes_out = 0
        self.viewers_dropped = 0
        self.viewer_skips = 0  # times a viewer fell over the high-water mark and skipped ahead

    @property
    def viewers(self) -> int:
        return len(self._subscribers)

    @property
    def _seq(self) -> int:
        return self._base + len(self._log)

    # -- viewers -------------------------------------------------------------------------------------

    def add(self, subscriber: Subscriber, cached: list[Packet]) -> None:
        """Subscribe and send the bootstrap (metadata, headers, GOP), minus what the viewer's group has
        still to be sent: that arrives with the group's next flush, in order, exactly once."""
        index = self._joins % self.phases
        self._joins += 1
        group = self._groups[index]
        closing, sock = _socket_of(subscriber)
        state = _ViewerState(subscriber, subscriber.write, subscriber.buffered, index, closing, sock)
        fmt = subscriber.wire_format
        self._subscribers[subscriber] = state
        group.live.setdefault(fmt, {})[subscriber] = state.writer
        unsent = {id(p) for p in self._log[group.sent_upto - self._base :]}
        bootstrap = [p.wire(fmt) for p in cached if id(p) not in unsent]
        if bootstrap:
            data = b"".join(bootstrap)
            self.bytes_out += len(data)
            state.write(data)

    def remove(self, subscriber: Subscriber) -> None:
        state = self._subscribers.pop(subscriber, None)
        if state is not None:
            group = self._groups[state.group]
            fmt = subscriber.wire_format
            group.live.get(fmt, {}).pop(subscriber, None)
            group.lagging.get(fmt, {}).pop(subscriber, None)
            _release(state)
        if not self._subscribers:
            self._forget_log()

    def detach_all(self) -> list[Subscriber]:
        subscribers = list(self._subscribers)
        for state in self._subscribers.values():
            _release(state)
        self._subscribers.clear()
        for group in self._groups:
            group.live.clear()
            group.lagging.clear()
        self._forget_log()
        return subscribers

    # -- packets -------------------------------------------------------------------------------------

    def push(self, packet: Packet) -> None:
        if not self._subscribers:
            return
        self._log.append(packet)
        window = self.pacing.window
        if window <= 0:
            self.flush_all()  # with whatever a wider window left pending, in order
        elif not self._ticking:
            self._ticking = True
            self.scheduler(self._tick_for(window), self._on_tick)

    def flush_all(self) -> None:
        for group in self._groups:
            self._flush(group)
        self._trim()

    def _phased(self, window: float) -> bool:
        return self.phases > 1 and window / self.phases >= MIN_TICK

    def _tick_for(self, window: float) -> float:
        """Seconds to the next flush: a group per tick when the window is wide enough to spread them."""
        return window / self.phases if self._phased(window) else window

    def _on_tick(self) -> None:
        window = self.pacing.window
        if window <= 0 or not self._phased(window):
            self.flush_all()
        else:
            group = self._groups[self._next_group]
            self._next_group = (self._next_group + 1) % self.phases
            self._flush(group)
            self._trim()
        if self._log and self._subscribers and window > 0:
            self.scheduler(self._tick_for(window), self._on_tick)
        else:
            self._ticking = False

    def _flush(self, group: _Group) -> None:
        packets = self._log[group.sent_upto - self._base :]
        group.sent_upto = self._seq
        if packets:
            formats = group.formats()
            if formats:
                started = perf_counter()
                self._deliver(group, formats, packets)
                self.pacing.record_flush(perf_counter() - started)

    def _trim(self) -> None:
        low = min(group.sent_upto for group in self._groups)
        if low > self._base:
            del self._log[: low - self._base]
            self._base = low

    def _forget_log(self) -> None:
        self._base = self._seq
        self._log.clear()
        for group in self._groups:
            group.sent_upto = self._base
        if self._spool is not None:  # no viewers: its pages go as soon as the sockets have sent them
            self._spool.close()
            self._spool = None

    def _deliver(self, group: _Group, formats: set[str], packets: list[Packet]) -> None:
        high_water = self.limits.viewer_high_water
        sent = 0
        for fmt in formats:
            batch = _Batch(packets, fmt, self.headers)
            data = batch.data
            live = group.live.setdefault(fmt, {})
            fell_behind: list[Subscriber] = []
            if len(data) >= SPOOL_MIN_BYTES:
                self._send_spooled(live, data, high_water, fell_behind)
            else:
                # The hot loop: per viewer, three C calls (the transport's backlog and state, a send).
                size = len(data)
                for subscriber, (write, buffered, closing, _fd, send) in live.items():
                    pending = buffered()
                    if pending or closing():
                        if pending > high_water:
                            fell_behind.append(subscriber)
                            continue
                        write(data)  # behind what the transport holds (a closing one drops it)
                        continue
                    try:
                        done = send(data)
                    except OSError:  # full (EAGAIN) or broken: the transport queues it or finds the error
                        done = 0
                    if done < size:
                        write(data[done:])
            sent += len(data) * (len(live) - len(fell_behind))
            lagging = group.lagging.setdefault(fmt, {})
            if lagging:
                sent += self._serve_lagging(live, lagging, batch)
            now = self.clock() if fell_behind else 0.0
            for subscriber in fell_behind:
                del live[subscriber]
                state = self._subscribers[subscriber]
                state.skipping_since = now
                lagging[subscriber] = state
                self.viewer_skips += 1
                self._check_backlog(state, state.buffered())
        self.bytes_out += sent
        if self._doomed:
            doomed, self._doomed = self._doomed, []
            for subscriber, reason in doomed:
                self.remove(subscriber)
                self.viewers_dropped += 1
                subscriber.drop(reason)  # its transport closes later, outside the fan-out

    def _send_spooled(
        self, live: dict[Subscriber, Writer], data: bytes, high_water: int, fell_behind: list[Subscriber]
    ) -> None:
        """A large batch: written once to the spool, then sent to each viewer by sendfile, which costs the
        kernel page references instead of a copy per viewer. A viewer whose transport still holds bytes
        gets the batch through it (behind those bytes, in order); what a full socket did not take goes the
        same way."""
        if self._spool is None:
            self._spool = Spool()
        spool = self._spool
        offset = spool.put(data)
        source = spool.fd
        size = len(data)
        sendfile = os.sendfile
        for subscriber, (write, buffered, closing, fd, _send) in live.items():
            pending = buffered()
            # A closing transport may have closed its descriptor already, and the number may now be a new
            # connection's: it goes through the transport, which drops it.
            if pending or fd < 0 or closing():
                if pending > high_water:
                    fell_behind.append(subscriber)
                    continue
                write(data)
                continue
            try:
                done = sendfile(fd, source, offset, size)
            except OSError:  # full (EAGAIN) or broken: the transport queues it or finds the error itself
                done = 0
            if done < size:
                write(data[done:])

    def _serve_lagging(
        self, live: dict[Subscriber, Writer], lagging: dict[Subscriber, _ViewerState], batch: _Batch
    ) -> int:
        """Slow viewer policy: nothing while over the high-water mark; once drained, rejoin live at a key
        frame with the sequence headers. Returns the bytes written."""
        high_water = self.limits.viewer_high_water
        sent = 0
        caught_up: list[_ViewerState] = []
        for state in lagging.values():
            backlog = state.buffered()
            if backlog > high_water:
                self._check_backlog(state, backlog)
                continue
            resume = batch.resume()
            if resume is None:  # drained, but this batch has no key frame to rejoin at
                continue
            state.write(resume)
            sent += len(resume)
            caught_up.append(state)
        for state in caught_up:
            del lagging[state.subscriber]
            live[state.subscriber] = state.writer
        return sent

    def _check_backlog(self, state: _ViewerState, backlog: int) -> None:
        """Disconnected past the byte limit, or when it stays behind longer than the stall limit."""
        limits = self.limits
        if backlog > limits.viewer_max_buffer:
            reason = f"viewer fell {backlog} bytes behind (limit {limits.viewer_max_buffer})"
            self._doomed.append((state.subscriber, reason))
            return
        stalled = self.clock() - state.skipping_since
        if stalled > limits.viewer_max_stall:
            reason = f"viewer stayed {stalled:.1f}s behind (limit {limits.viewer_max_stall:g}s)"
            self._doomed.append((state.subscriber, reason))


class _BorrowedSocket(socket.socket):
    """A socket object over a descriptor its transport owns: it never closes it. A plain socket object closes
    its descriptor when it is freed, and one freed late (a stream collected with viewers still attached)
    would close whatever connection has the number by then."""

    __slots__ = ()

    def __del__(self) -> None:
        self.detach()


def _never_closing() -> bool:
    return False


def _socket_of(subscriber: Subscriber) -> tuple[Callable[[], bool], _BorrowedSocket | None]:
    """A viewer's transport's ``is_closing``, and a socket object over its descriptor for send and sendfile
    (None when it has none: everything then goes through ``write``). The object does not own the descriptor:
    ``_release`` detaches it, never closes it (the transport does)."""
    transport = getattr(subscriber, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if transport is None or sock is None or transport.get_extra_info("ssl_object") is not None:
        return _never_closing, None  # (under TLS the socket carries records, not our bytes)
    try:
        # Created in blocking mode by default, which changes nothing on the descriptor: it stays the
        # transport's non-blocking one, so send() returns at once (EAGAIN when the socket is full).
        return transport.is_closing, _BorrowedSocket(fileno=sock.fileno())
    except (OSError, ValueError):
        return _never_closing, None


def _release(state: _ViewerState) -> None:
    if state.sock is not None:
        state.sock.detach()  # the descriptor is the transport's: never close it here
        state.sock = None
