"""memory:// — the registry inside one process: the embedded default for `livecdn up` and tests."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from common.registry.base import NodeInfo, Registry, RegistryEvent, StreamClaim, wall_clock

EVENT_QUEUE_SIZE = 1024  # per subscriber; a consumer that falls further behind loses the oldest events


class MemoryRegistry(Registry):
    def __init__(self, url: str = "memory://", *, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self._clock = clock
        self._nodes: dict[str, tuple[NodeInfo, float]] = {}  # id -> (info, expires at)
        self._claims: dict[str, tuple[StreamClaim, float]] = {}
        self._epochs = itertools.count(1)
        self._subscribers: set[asyncio.Queue[RegistryEvent]] = set()

    async def ping(self) -> bool:
        return True

    async def heartbeat(self, node: NodeInfo, ttl: float) -> None:
        self._nodes[node.id] = (replace(node, updated=wall_clock()), self._clock() + ttl)

    async def remove_node(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    async def nodes(self, role: str | None = None) -> list[NodeInfo]:
        now = self._clock()
        for node_id, (_, expires) in list(self._nodes.items()):
            if expires <= now:
                del self._nodes[node_id]
        return sorted(
            (info for info, _ in self._nodes.values() if role is None or info.role == role), key=lambda n: n.id
        )

    def _live_claim(self, key: str) -> StreamClaim | None:
        held = self._claims.get(key)
        if held is None:
            return None
        if held[1] <= self._clock():
            del self._claims[key]
            return None
        return held[0]

    async def claim(
        self, key: str, origin: str, rtmp_url: str, ttl: float, *, take_over: int | None = None
    ) -> StreamClaim | None:
        current = self._live_claim(key)
        if current is not None and current.origin != origin and current.epoch != take_over:
            return None
        claim = StreamClaim(key, origin, rtmp_url, next(self._epochs), wall_clock())
        self._claims[key] = (claim, self._clock() + ttl)
        self._emit(RegistryEvent("publish", key, origin, claim.epoch))
        return claim

    async def renew(self, claim: StreamClaim, ttl: float) -> bool:
        current = self._live_claim(claim.key)
        if current is None or current.epoch != claim.epoch:
            return False
        self._claims[claim.key] = (current, self._clock() + ttl)
        return True

    async def release(self, claim: StreamClaim) -> bool:
        current = self._live_claim(claim.key)
        if current is None or current.epoch != claim.epoch:
            return False
        del self._claims[claim.key]
        self._emit(RegistryEvent("unpublish", claim.key, claim.origin, claim.epoch))
        return True

    async def lookup(self, key: str) -> StreamClaim | None:
        return self._live_claim(key)

    async def streams(self) -> list[StreamClaim]:
        return sorted(
            (c for key in list(self._claims) if (c := self._live_claim(key)) is not None), key=lambda c: c.key
        )

    def _emit(self, event: RegistryEvent) -> None:
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    async def events(self) -> AsyncIterator[RegistryEvent]:
        queue: asyncio.Queue[RegistryEvent] = asyncio.Queue(EVENT_QUEUE_SIZE)
        self._subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)
