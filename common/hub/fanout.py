"""Fan-out of a stream's packets to its viewers: merged, phased writes and the slow-viewer policy.

Packets that arrive within the merge window reach each viewer as ONE write (one syscall per viewer
per window, not per message), built by one join per group and format and shared by the group. Viewers
are split into ``phases`` groups whose flushes are staggered across the window, so a large audience
costs the event loop a steady trickle instead of one long burst per window: each viewer still gets one
write per window, but waits behind N/phases writes instead of N.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from common.hub.packet import HubLimits, Packet

log = logging.getLogger(__name__)

PHASE_SPACING: Final = 0.025  # seconds between two groups' flushes; sets the number of phases per window
MAX_PHASES: Final = 16

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
    skipping: bool = False  # over the high-water mark: no media until it drains and a key frame comes
    skipping_since: float = 0.0


class _Group:
    __slots__ = ("by_format", "sent_upto")

    def __init__(self) -> None:
        self.by_format: dict[str, dict[Subscriber, _ViewerState]] = {}
        self.sent_upto = 0  # sequence number of the first packet this group has not been sent


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
    ) -> None:
        self.limits = limits
        self.scheduler = scheduler
        self.clock = clock
        self.headers = headers
        self.window = limits.merge_window
        self.phases = phases_for(self.window, limits.merge_phases)
        self.tick = self.window / self.phases
        self._groups = [_Group() for _ in range(self.phases)]
        self._subscribers: dict[Subscriber, _ViewerState] = {}
        self._log: list[Packet] = []  # packets some group has not been sent yet
        self._base = 0  # sequence number of _log[0]
        self._next_group = 0
        self._ticking = False
        self._joins = 0
        self._doomed: list[tuple[Subscriber, str]] = []
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
        state = _ViewerState(subscriber, subscriber.write, subscriber.buffered, index)
        fmt = subscriber.wire_format
        self._subscribers[subscriber] = state
        group.by_format.setdefault(fmt, {})[subscriber] = state
        unsent = {id(p) for p in self._log[group.sent_upto - self._base :]}
        bootstrap = [p.wire(fmt) for p in cached if id(p) not in unsent]
        if bootstrap:
            data = b"".join(bootstrap)
            self.bytes_out += len(data)
            state.write(data)

    def remove(self, subscriber: Subscriber) -> None:
        state = self._subscribers.pop(subscriber, None)
        if state is not None:
            group = self._groups[state.group].by_format.get(subscriber.wire_format)
            if group is not None:
                group.pop(subscriber, None)
        if not self._subscribers:
            self._forget_log()

    def detach_all(self) -> list[Subscriber]:
        subscribers = list(self._subscribers)
        self._subscribers.clear()
        for group in self._groups:
            group.by_format.clear()
        self._forget_log()
        return subscribers

    # -- packets -------------------------------------------------------------------------------------

    def push(self, packet: Packet) -> None:
        if not self._subscribers:
            return
        if self.window <= 0:
            self._deliver(self._groups[0], [packet])
            return
        self._log.append(packet)
        if not self._ticking:
            self._ticking = True
            self.scheduler(self.tick, self._on_tick)

    def flush_all(self) -> None:
        for group in self._groups:
            self._flush(group)
        self._trim()

    def _on_tick(self) -> None:
        group = self._groups[self._next_group]
        self._next_group = (self._next_group + 1) % self.phases
        self._flush(group)
        self._trim()
        if self._log and self._subscribers:
            self.scheduler(self.tick, self._on_tick)
        else:
            self._ticking = False

    def _flush(self, group: _Group) -> None:
        packets = self._log[group.sent_upto - self._base :]
        group.sent_upto = self._seq
        if packets:
            self._deliver(group, packets)

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

    def _deliver(self, group: _Group, packets: list[Packet]) -> None:
        high_water = self.limits.viewer_high_water
        sent = 0
        for fmt, members in group.by_format.items():
            if not members:
                continue
            batch = _Batch(packets, fmt, self.headers)
            data = batch.data
            size = len(data)
            for state in members.values():
                backlog = state.buffered()
                if backlog > high_water or state.skipping:
                    resume = self._lagging(state, batch, backlog)
                    if resume is not None:
                        state.write(resume)
                        sent += len(resume)
                    continue
                state.write(data)
                sent += size
        self.bytes_out += sent
        if self._doomed:
            doomed, self._doomed = self._doomed, []
            for subscriber, reason in doomed:
                self.remove(subscriber)
                self.viewers_dropped += 1
                subscriber.drop(reason)  # its transport closes later, outside the fan-out

    def _lagging(self, state: _ViewerState, batch: _Batch, backlog: int) -> bytes | None:
        """Slow viewer policy: nothing while over the high-water mark; once drained, rejoin live at a key
        frame with the sequence headers. Disconnected past the byte limit, or when it stays behind longer
        than the stall limit. Returns what to write, if anything."""
        limits = self.limits
        if not state.skipping:
            state.skipping = True
            state.skipping_since = self.clock()
            self.viewer_skips += 1
        if backlog > limits.viewer_max_buffer:
            self._doomed.append(
                (state.subscriber, f"viewer fell {backlog} bytes behind (limit {limits.viewer_max_buffer})")
            )
            return None
        if backlog > limits.viewer_high_water:
            stalled = self.clock() - state.skipping_since
            if stalled > limits.viewer_max_stall:
                self._doomed.append(
                    (state.subscriber, f"viewer stayed {stalled:.1f}s behind (limit {limits.viewer_max_stall:g}s)")
                )
            return None
        resume = batch.resume()
        if resume is not None:
            state.skipping = False
        return resume
