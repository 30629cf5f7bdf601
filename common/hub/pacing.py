"""The merge window every stream of a node uses: fixed, or adapted to how busy the node is.

Merging packets into one write per viewer per window is what makes a large audience cheap (one syscall
per viewer per window instead of per message), and the window is added to every viewer's latency. So the
window is only as large as the load needs: while the node has CPU to spare it stays at its floor (0: each
message is written as it arrives, as nginx-rtmp does), and it grows as viewers grow.

The control is sans-IO: the node feeds ``update`` the fraction of the last period its event loop was busy
(its CPU time over wall time: a node is one thread), the fan-out reports each flush's duration, and
``window`` is what every stream reads when it schedules its next flush.

Law: above the busy target the window grows by half (at least 2 ms); below ``LOW_SHARE`` of the target it
shrinks by 1/SHRINK, and under 1 ms it drops to the floor. The write count (hence at most the CPU) goes as
1/window, so one shrink step raises the CPU by at most 10 %: LOW_SHARE x SHRINK < 1 keeps a shrink from
crossing the target, so the window does not flap between two steps. The band is narrow on purpose: a
window that a ramp of joins pushed up comes back down once the node is below 0.9 x target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

GROW: Final = 1.5
GROW_STEP: Final = 0.002  # seconds: the smallest growth, so a window can leave 0
SHRINK: Final = 1.1
FLOOR_SNAP: Final = 0.001  # seconds: below it a shrinking window goes straight to its floor
LOW_SHARE: Final = 0.9  # shrink only while busy < target x this


@dataclass(frozen=True, slots=True)
class WindowBounds:
    """Where an adaptive window may go, and the busy fraction it keeps the node under."""

    floor: float = 0.0
    ceiling: float = 0.03
    busy_target: float = 0.85

    def __post_init__(self) -> None:
        if not 0 <= self.floor <= self.ceiling:
            raise ValueError(f"merge window bounds: need 0 <= floor ({self.floor}) <= ceiling ({self.ceiling})")
        if not 0 < self.busy_target <= 1:
            raise ValueError(f"busy target must be in (0, 1], got {self.busy_target}")


class MergeWindow:
    """The node's current merge window (seconds). ``bounds`` None: fixed at the window given."""

    def __init__(self, window: float, bounds: WindowBounds | None = None) -> None:
        self.bounds = bounds
        self.window = window if bounds is None else min(max(window, bounds.floor), bounds.ceiling)
        self.busy = 0.0  # busy fraction of the last period
        self.flush_max = 0.0  # longest single flush (one group's writes) in the last period, seconds
        self._flush_peak = 0.0  # the same, for the period under way
        self.flushes = 0
        self.flush_seconds = 0.0
        self.changes = 0  # times the window moved

    @classmethod
    def adaptive(cls, bounds: WindowBounds) -> MergeWindow:
        return cls(bounds.floor, bounds)

    @property
    def is_adaptive(self) -> bool:
        return self.bounds is not None

    @property
    def largest(self) -> float:
        """The widest the window can get: streams size their flush groups for it."""
        return self.window if self.bounds is None else self.bounds.ceiling

    def record_flush(self, seconds: float) -> None:
        self.flushes += 1
        self.flush_seconds += seconds
        if seconds > self._flush_peak:
            self._flush_peak = seconds

    def update(self, busy: float) -> float:
        """One control period ended with the event loop ``busy`` (0..1) of it: move the window."""
        self.busy = busy
        self.flush_max, self._flush_peak = self._flush_peak, 0.0
        bounds = self.bounds
        if bounds is None:
            return self.window
        window = self.window
        if busy > bounds.busy_target:
            window = min(bounds.ceiling, max(window * GROW, window + GROW_STEP))
        elif busy < bounds.busy_target * LOW_SHARE and window > bounds.floor:
            window /= SHRINK
            if window < FLOOR_SNAP:
                window = bounds.floor
            window = max(window, bounds.floor)
        if window != self.window:
            self.changes += 1
            self.window = window
        return window
