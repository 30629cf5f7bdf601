"""Jittered exponential backoff for every retry loop (registry calls, upstream re-pulls)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float = 0.2  # seconds before the first retry
    maximum: float = 5.0  # the delay never grows past this
    factor: float = 2.0
    _next: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._next = self.initial

    def next_delay(self) -> float:
        """Full jitter: uniform in [delay/2, delay], so many clients that failed together spread out."""
        delay = self._next
        self._next = min(self.maximum, self._next * self.factor)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._next = self.initial
