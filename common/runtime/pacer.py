"""Drives the node's adaptive merge window from what the node measures: its event loop's busy fraction.

A node is one thread running one event loop, so the process's CPU time over a period is the loop's busy
time (callbacks plus the kernel's work inside the send calls they make, which on a fan-out node is most of
it). Sampled every PERIOD seconds; the sans-IO law is in ``common.hub.pacing``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

from aiohttp import web

from common.aio import cancel_and_wait
from common.hub.pacing import MergeWindow, WindowBounds
from common.runtime.config import NodeSettings

log = logging.getLogger(__name__)

PERIOD: Final = 0.5  # seconds between two window updates


def merge_window(settings: NodeSettings) -> MergeWindow:
    """Fixed when ``merge_window`` is set, else adaptive within its bounds."""
    if settings.merge_window is not None:
        return MergeWindow(settings.merge_window)
    return MergeWindow.adaptive(
        WindowBounds(settings.merge_window_min, settings.merge_window_max, settings.merge_busy_target)
    )


async def adapt(
    window: MergeWindow,
    period: float = PERIOD,
    cpu: Callable[[], float] = time.process_time,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    last_cpu, last_wall = cpu(), clock()
    while True:
        await asyncio.sleep(period)
        now_cpu, now_wall = cpu(), clock()
        busy = min(1.0, (now_cpu - last_cpu) / max(now_wall - last_wall, 1e-6))
        last_cpu, last_wall = now_cpu, now_wall
        before = window.window
        after = window.update(busy)
        if after != before:
            log.debug("merge window %.1f ms -> %.1f ms (event loop %.0f%% busy)", before * 1e3, after * 1e3, busy * 100)


def pacer_context(window: MergeWindow) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup context that adapts ``window`` while the node runs (nothing for a fixed one)."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(adapt(window), name="merge-window") if window.is_adaptive else None
        try:
            yield
        finally:
            if task is not None:
                await cancel_and_wait(task)

    return run


def pacing_stats(window: MergeWindow) -> dict[str, float | int | bool]:
    """The window's state for /v1/stats and /metrics."""
    bounds = window.bounds
    return {
        "seconds": window.window,
        "adaptive": window.is_adaptive,
        "min_seconds": bounds.floor if bounds is not None else window.window,
        "max_seconds": bounds.ceiling if bounds is not None else window.window,
        "busy_target": bounds.busy_target if bounds is not None else 0.0,
        "loop_busy": round(window.busy, 4),
        "flush_max_seconds": round(window.flush_max, 6),
        "flushes": window.flushes,
        "flush_seconds": round(window.flush_seconds, 6),
        "changes": window.changes,
    }
