"""The whole node as its workers report it: each worker's own stats and metrics, asked over its private
loopback HTTP port, merged (common.runtime.merge). A worker answers /v1/stats and /metrics on the public
port with it, and the supervisor builds the node's registry record from it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any, Final

import aiohttp

from common.runtime.merge import merge_metrics, merge_stats
from common.runtime.workerplan import LOOPBACK

log = logging.getLogger(__name__)

WORKER_STATS: Final = "/v1/worker/stats"
WORKER_METRICS: Final = "/v1/worker/metrics"
MAX_ANSWER: Final = 64 * 1024 * 1024  # bytes read from one worker: a stats document with many streams


class WorkerView:
    def __init__(self, http_ports: Sequence[int], timeout: float = 1.0) -> None:
        self.http_ports = tuple(http_ports)
        # A worker that is down (restarting) still has its listening socket, held by the supervisor: a
        # request to it waits unanswered, so the timeout is what says it is down.
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def worker_stats(self) -> list[dict[str, Any] | None]:
        answers = await self._ask_all(WORKER_STATS)
        return [json.loads(body) if body is not None else None for body in answers]

    async def stats(self) -> dict[str, Any]:
        return merge_stats(await self.worker_stats())

    async def metrics(self) -> bytes:
        answers = await self._ask_all(WORKER_METRICS)
        return merge_metrics([body.decode() if body is not None else None for body in answers]).encode()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _ask_all(self, path: str) -> list[bytes | None]:
        return list(await asyncio.gather(*(self._ask(port, path) for port in self.http_ports)))

    async def _ask(self, port: int, path: str) -> bytes | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        url = f"http://{LOOPBACK}:{port}{path}"
        try:
            async with self._session.get(url) as response:
                response.raise_for_status()
                if (response.content_length or 0) > MAX_ANSWER:
                    log.warning("worker on port %d answered %s with over %d bytes: ignored", port, path, MAX_ANSWER)
                    return None
                return await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("worker on port %d did not answer %s: %r", port, path, exc)
            return None
