"""CPU and memory of the server under test, and how busy the load tool's own core is, sampled during a step."""

from __future__ import annotations

import asyncio
import time

import psutil


class CpuSampler:
    """Samples a process's CPU time and RSS, and the load core's busy time, twice a second while a step runs."""

    def __init__(self, proc: psutil.Process, load_core: int | None) -> None:
        self.proc = proc
        self.load_core = load_core
        self.samples: list[tuple[float, float, int]] = []  # (monotonic, cpu seconds, rss)
        self.load: list[tuple[float, float]] = []  # (monotonic, busy seconds of the load core)

    def sample(self) -> None:
        now = time.monotonic()
        times = self.proc.cpu_times()
        self.samples.append((now, times.user + times.system, self.proc.memory_info().rss))
        if self.load_core is not None:
            core = psutil.cpu_times(percpu=True)[self.load_core]
            self.load.append((now, core.user + core.nice + core.system + core.irq + core.softirq))

    def load_percent(self, start: float, end: float) -> float | None:
        inside = [s for s in self.load if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        return 100.0 * (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.5)

    def cpu_percent(self, start: float, end: float) -> float | None:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        (t0, c0, _), (t1, c1, _) = inside[0], inside[-1]
        return 100.0 * (c1 - c0) / (t1 - t0)

    @property
    def peak_rss(self) -> int:
        return max((s[2] for s in self.samples), default=0)
