"""What every viewer of one swarm run shares and writes into: the scratch buffer, byte and drop counts,
and the probes' lag and first-frame distributions."""

from __future__ import annotations

from collections import Counter
from typing import Final

from loadtest.stats import Distribution
from loadtest.swarm_config import SwarmConfig

SCRATCH_BYTES: Final = 1024 * 1024  # the one buffer every viewer reads into


class SwarmState:
    """One run's shared state. Viewers read into ``scratch`` (``get_buffer`` and ``buffer_updated`` run back
    to back on the loop thread, so sharing is safe) and add to the counters; the run reads them to report."""

    def __init__(self, config: SwarmConfig) -> None:
        self.config = config
        self.scratch = bytearray(SCRATCH_BYTES)
        self.scratch_view = memoryview(self.scratch)
        self.bytes_total = 0  # every viewer, whole run, wire bytes
        self.playing = 0  # viewers playing right now
        self.drops: Counter[str] = Counter()  # were playing, then the server closed or reset: why
        self.lag = Distribution()  # probes: ms per video frame, join burst excluded
        self.first_frame = Distribution()  # probes: ms from connect start to the first key frame
        self.epochs_seen = 0  # probes that found the publisher's epoch in onMetaData
        self.rcvlowat_errors = 0  # sockets that refused SO_RCVLOWAT
        self.measuring = False  # inside the measuring interval (after the ramp)

    def viewer_dropped(self, reason: str) -> None:
        self.drops[reason] += 1
        self.playing -= 1
