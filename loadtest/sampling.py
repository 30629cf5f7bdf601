"""CPU and memory of the server under test, and how busy its core and the load tool's core are, sampled
during a step."""

from __future__ import annotations

import asyncio
import time

import psutil


def _busy(times: object) -> float:
    """Seconds a core was busy: everything but idle and iowait, softirq included (on loopback the kernel
    runs much of a send's work, the receiver's side included, as softirq: part of it in ksoftirqd, a thread
    that is not the server's process but runs on the server's core)."""
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))


class CpuSampler:
    """Samples a process's (and its children's) CPU time and RSS, and the busy time of the server's core
    and of the load core, twice a second while a step runs."""

    def __init__(self, proc: psutil.Process, load_core: int | None, node_core: int | None = None) -> None:
        self.proc = proc
        self.load_core = load_core
        self.node_core = node_core
        self.samples: list[tuple[float, float, int]] = []  # (monotonic, cpu seconds, rss)
        self.user: list[tuple[float, float]] = []  # (monotonic, user-space cpu seconds): the rest is the kernel's
        self.load: list[tuple[float, float]] = []  # (monotonic, busy seconds of the load core)
        self.node: list[tuple[float, float]] = []  # (monotonic, busy seconds of the server's core)

    def sample(self) -> None:
        now = time.monotonic()
        cpu, user, rss = 0.0, 0.0, 0
        # The process and its children: a node with --workers is a supervisor and one process per worker.
        for proc in [self.proc, *self._children()]:
            try:
                times = proc.cpu_times()
                cpu += times.user + times.system
                user += times.user
                rss += proc.memory_info().rss
            except psutil.Error:  # a child that just exited
                continue
        self.samples.append((now, cpu, rss))
        self.user.append((now, user))
        cores = psutil.cpu_times(percpu=True)
        if self.load_core is not None:
            self.load.append((now, _busy(cores[self.load_core])))
        if self.node_core is not None:
            self.node.append((now, _busy(cores[self.node_core])))

    def _children(self) -> list[psutil.Process]:
        try:
            return self.proc.children(recursive=True)
        except psutil.Error:
            return []

    def load_percent(self, start: float, end: float) -> float | None:
        return _rate(self.load, start, end)

    def node_core_percent(self, start: float, end: float) -> float | None:
        return _rate(self.node, start, end)

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.5)

    def cpu_percent(self, start: float, end: float) -> float | None:
        return _rate([(t, c) for t, c, _ in self.samples], start, end)

    def user_percent(self, start: float, end: float) -> float | None:
        """The share of cpu_percent spent in user space (the Python side); the rest is system calls."""
        return _rate(self.user, start, end)

    @property
    def peak_rss(self) -> int:
        return max((s[2] for s in self.samples), default=0)


def _rate(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2:
        return None
    (t0, c0), (t1, c1) = inside[0], inside[-1]
    return 100.0 * (c1 - c0) / (t1 - t0)
