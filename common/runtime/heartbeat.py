"""A node's record in the registry: built in one place, refreshed every ``heartbeat_interval`` (at once when
asked: a drain), removed when the node stops. A node of one process keeps its own; a node of several
workers has its supervisor keep it for all of them (common.runtime.supervisor)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from common.aio import cancel_and_wait
from common.backoff import Backoff
from common.registry import NodeInfo, NodeLoad, Registry, RegistryError
from common.runtime.config import NodeSettings
from common.runtime.role import Addresses

log = logging.getLogger(__name__)

REMOVE_TIMEOUT = 2.0  # seconds a stopping node waits for the registry to drop its record


def node_record(settings: NodeSettings, role: str, addresses: Addresses, load: NodeLoad, draining: bool) -> NodeInfo:
    return NodeInfo(
        id=settings.node_id,
        role=role,
        region=settings.region,
        rtmp=addresses.rtmp_hostport,
        http=addresses.http_hostport,
        load=load,
        draining=draining,
    )


class Heartbeat:
    def __init__(self, registry: Registry, settings: NodeSettings, record: Callable[[], Awaitable[NodeInfo]]) -> None:
        self.registry = registry
        self.settings = settings
        self.record = record  # called before each heartbeat: the node's record now
        self._now = asyncio.Event()

    def now(self) -> None:
        """Heartbeat at once rather than at the next interval (the node began to drain)."""
        self._now.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._loop(), name="heartbeat")
        try:
            yield
        finally:
            await cancel_and_wait(task)
            with contextlib.suppress(RegistryError, TimeoutError):
                async with asyncio.timeout(REMOVE_TIMEOUT):
                    await self.registry.remove_node(self.settings.node_id)

    async def _loop(self) -> None:
        backoff = Backoff(initial=0.5, maximum=self.settings.heartbeat_interval)
        failing = False
        while True:
            self._now.clear()  # before the record is built: a drain begun meanwhile is sent in the next one
            try:
                await self.registry.heartbeat(await self.record(), self.settings.node_ttl)
            except RegistryError as exc:
                if not failing:
                    log.warning("registry heartbeat failed (streams keep flowing; retrying): %s", exc)
                failing = True
                await asyncio.sleep(backoff.next_delay())
                continue
            if failing:
                log.info("registry heartbeat works again")
                failing = False
                backoff.reset()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.heartbeat_interval):
                    await self._now.wait()
