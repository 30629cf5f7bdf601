"""Small asyncio helpers every layer above may use."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel a task we own and wait until it has finished. Its own end (cancelled or failed) is absorbed;
    a cancellation of the caller still propagates, unlike suppressing CancelledError around the await."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
