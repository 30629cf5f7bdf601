"""One call in flight, shared by everyone who asks meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Coalesced(Generic[T]):
    """Runs `fetch` for the first caller; callers arriving while it runs await that same run. No result
    is kept once the run is over, so an answer is never older than the run the caller joined: a burst of
    requests shares one registry round trip instead of each making its own."""

    def __init__(self, fetch: Callable[[], Awaitable[T]]) -> None:
        self._fetch = fetch
        self._inflight: asyncio.Task[T] | None = None

    async def get(self) -> T:
        task = self._inflight
        if task is None:
            task = self._inflight = asyncio.get_running_loop().create_task(self._run())
            task.add_done_callback(self._finished)
        # shield: one caller going away must not cancel the run the others wait on.
        return await asyncio.shield(task)

    async def _run(self) -> T:
        return await self._fetch()

    def _finished(self, task: asyncio.Task[T]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved here so an error nobody awaited anymore is not logged as lost

    async def close(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
