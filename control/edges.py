"""The edges as the play route sees them: the registry's node list plus the viewers routed to each edge
since its last heartbeat (common.placement.unreported), shared with the other control-plane replicas
through pending counters (common.registry.pending).

Two reads, each with one round trip in flight at a time:

- the node list, at most `node_list_max_age` old: a request that finds it older waits for a fresh
  read (one in flight, shared by the burst); the healthy edges are then arranged once (an EdgeTable)
  for every decision until the next read. Parsing every node record is the costly part of routing on
  a large cluster (200 edges: ~5 ms a read), and heartbeats only change it once a second anyway.
- the pending counts: after a decision, an exchange (send this replica's decisions since the last
  one, read everyone's totals) starts at most every `pending_interval`, in the background; nobody
  waits for it. A decision is counted locally at once, so the next request already sees it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from common.placement.choice import EdgeTable, RegionFallback
from common.placement.hashing import DEFAULT_EPSILON
from common.placement.unreported import UnreportedViewers
from common.registry.base import NodeInfo, Registry, RegistryError
from common.registry.pending import PendingCounts
from control.coalesce import Coalesced
from control.metrics import ControlMetrics

log = logging.getLogger(__name__)


class EdgeRouting:
    """Chooses edges for viewers. With `pending` None or `pending_ttl` 0: on reported loads alone."""

    def __init__(
        self,
        registry: Registry,
        pending: PendingCounts | None,
        metrics: ControlMetrics,
        *,
        epsilon: float = DEFAULT_EPSILON,
        fallback: RegionFallback | None = None,
        pending_ttl: float = 3.0,
        pending_interval: float = 0.005,
        pending_lag: float = 0.3,
        node_list_max_age: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._pending = pending if pending_ttl > 0 else None
        self._metrics = metrics
        self._epsilon = epsilon
        self._fallback = fallback
        self._ttl = pending_ttl
        self._interval = pending_interval
        self._max_age = node_list_max_age
        self._clock = clock
        self._unreported = UnreportedViewers(pending_lag)
        self._nodes = Coalesced(self._read_nodes)
        self._edges: list[NodeInfo] = []  # the node list the table and the pending versions come from
        self._table: EdgeTable | None = None
        self._table_read_at = 0.0
        self._lock = asyncio.Lock()  # one exchange at a time
        self._last_exchange = float("-inf")
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._store_down = False

    async def choose(self, stream_key: str, region: str | None) -> NodeInfo | None:
        table = self._table
        if table is None or self._clock() - self._table_read_at >= self._max_age:
            table = await self._nodes.get()
        edge = table.choose(stream_key, region, epsilon=self._epsilon, unreported=self._unreported.counts)
        if edge is not None and self._pending is not None:
            self._unreported.assigned(edge.id)
            self._flush_soon()
        return edge

    async def _read_nodes(self) -> EdgeTable:
        started = self._clock()
        edges = await self._registry.nodes("edge")
        table = EdgeTable(edges, self._fallback)
        async with self._lock:
            if self._pending is not None:
                # The counts must move to the new heartbeat versions together with the table.
                await self._exchange(self._pending, edges)
            self._edges, self._table, self._table_read_at = edges, table, started
        return table

    # -- pending counts ------------------------------------------------------------------------------

    def _flush_soon(self) -> None:
        """Send this replica's decisions within `pending_interval` (one exchange in flight or planned)."""
        if self._flush_timer is not None or self._flush_task is not None:
            return
        delay = max(0.0, self._last_exchange + self._interval - self._clock())
        self._flush_timer = asyncio.get_running_loop().call_later(delay, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_timer = None
        self._flush_task = task = asyncio.get_running_loop().create_task(self._flush())
        task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flush_task = None
        if task.cancelled():
            return
        if task.exception() is not None:
            log.error("pending-count exchange failed", exc_info=task.exception())
        elif self._unreported.unsent:
            self._flush_soon()  # decisions made during the exchange go with the next one

    async def _flush(self) -> None:
        if self._pending is None:
            return
        async with self._lock:
            await self._exchange(self._pending, self._edges)

    async def _exchange(self, pending: PendingCounts, edges: list[NodeInfo]) -> None:
        plan = self._unreported.plan(edges)
        self._last_exchange = self._clock()
        try:
            totals: list[int] | None = await pending.exchange(plan.add, plan.read, self._ttl)
        except RegistryError as exc:
            # Routing goes on with this replica's own counts; a registry that is really down fails the
            # next node-list read anyway.
            totals = None
            if not self._store_down:
                log.warning("pending counts unavailable, routing with this replica's own: %s", exc)
            self._store_down = True
        except BaseException:
            self._unreported.settle(plan, None, self._clock())  # cancelled (shutdown): stay consistent
            raise
        else:
            if self._store_down:
                log.info("pending counts available again")
            self._store_down = False
        self._unreported.settle(plan, totals, self._clock())
        self._metrics.pending_exchanged(totals is not None)

    async def close(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        task, self._flush_task = self._flush_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._nodes.close()
