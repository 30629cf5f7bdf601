"""Viewers routed but not yet reported: the accounting (common.placement.unreported), the counters it is
shared through (common.registry.pending: in-process and a real Redis), and the control plane using them."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from common.placement.unreported import UnreportedViewers, counter_key
from common.registry.base import NodeInfo, RegistryError
from common.registry.memory import MemoryRegistry
from common.registry.pending import InProcessPendingCounts, RedisPendingCounts, open_pending_counts
from common.registry.redis import RedisRegistry
from control.app import make_control_app
from tests.helpers import node_info
from tests.redis_server import RedisServer


def edge(node_id: str, version: float, viewers: int = 0) -> NodeInfo:
    return replace(node_info(node_id, viewers=viewers), updated=version)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def exchange(router: UnreportedViewers, store: InProcessPendingCounts, edges: list[NodeInfo]) -> None:
    plan = router.plan(edges)
    router.settle(plan, store.exchange_now(plan.add, plan.read, 3.0))


# -- the accounting ----------------------------------------------------------------------------------


def test_decisions_count_until_the_edges_next_heartbeat() -> None:
    store, router = InProcessPendingCounts(), UnreportedViewers()
    exchange(router, store, [edge("a", 1.0), edge("b", 1.0)])
    for _ in range(5):
        router.assigned("a")
    router.assigned("b")
    assert router.counts == {"a": 5, "b": 1}  # at once, before any exchange
    exchange(router, store, [edge("a", 1.0), edge("b", 1.0)])
    assert router.counts == {"a": 5, "b": 1}  # sent and read back: not counted twice
    # a's next heartbeat counts those five viewers itself: from zero again. b's has not come yet.
    exchange(router, store, [edge("a", 2.0, viewers=5), edge("b", 1.0)])
    assert router.counts == {"b": 1}


def test_a_new_heartbeat_keeps_the_decisions_it_cannot_count_yet() -> None:
    """With lag 0.3 s: the decisions of the last 0.3 s before the new version carry over to it, until the
    version after; older ones (connected, so in the heartbeat) do not."""
    store, router = InProcessPendingCounts(), UnreportedViewers(lag=0.3)
    now = 0.0
    plan = router.plan([edge("a", 1.0)])
    router.settle(plan, store.exchange_now(plan.add, plan.read, 3.0), now)
    for step in range(10):  # 10 viewers a second on version 1, one each 0.1 s, exchanged as they go
        now = 0.1 * (step + 1)
        router.assigned("a")
        plan = router.plan([edge("a", 1.0)])
        router.settle(plan, store.exchange_now(plan.add, plan.read, 3.0), now)
    assert router.counts == {"a": 10}
    plan = router.plan([edge("a", 2.0, viewers=7)])  # reports 7: the last 3 had not connected
    router.settle(plan, store.exchange_now(plan.add, plan.read, 3.0), now + 0.01)
    assert router.counts == {"a": 3}
    plan = router.plan([edge("a", 3.0, viewers=10)])
    router.settle(plan, store.exchange_now(plan.add, plan.read, 3.0), now + 1.0)
    assert router.counts == {}  # nothing routed on version 2: nothing to carry


def test_replicas_see_each_others_decisions_after_an_exchange() -> None:
    store = InProcessPendingCounts()
    one, two = UnreportedViewers(), UnreportedViewers()
    edges = [edge("a", 1.0), edge("b", 1.0)]
    exchange(one, store, edges)
    exchange(two, store, edges)
    for _ in range(3):
        one.assigned("a")
    two.assigned("a")
    two.assigned("b")
    assert one.counts == {"a": 3} and two.counts == {"a": 1, "b": 1}  # behind by one exchange
    exchange(one, store, edges)
    exchange(two, store, edges)
    assert two.counts == {"a": 4, "b": 1}
    exchange(one, store, edges)
    assert one.counts == {"a": 4, "b": 1}


def test_decisions_during_an_exchange_go_with_the_next_one() -> None:
    store, router = InProcessPendingCounts(), UnreportedViewers()
    edges = [edge("a", 1.0)]
    exchange(router, store, edges)
    router.assigned("a")
    plan = router.plan(edges)
    router.assigned("a")  # while the exchange is under way
    assert router.counts == {"a": 2}
    router.settle(plan, store.exchange_now(plan.add, plan.read, 3.0))
    assert router.counts == {"a": 2} and router.unsent
    exchange(router, store, edges)
    assert router.counts == {"a": 2} and not router.unsent
    assert store.exchange_now({}, [counter_key("a", 1.0)], 3.0) == [2]
    router.plan(edges)
    with pytest.raises(RuntimeError):
        router.plan(edges)


def test_a_failed_exchange_keeps_the_decisions_for_the_next() -> None:
    store, router = InProcessPendingCounts(), UnreportedViewers()
    edges = [edge("a", 1.0)]
    exchange(router, store, edges)
    router.assigned("a", 2)
    plan = router.plan(edges)
    router.settle(plan, None)  # the store did not answer
    assert router.counts == {"a": 2}
    exchange(router, store, edges)
    assert router.counts == {"a": 2} and store.exchange_now({}, [counter_key("a", 1.0)], 3.0) == [2]


def test_an_edge_that_leaves_the_node_list_is_forgotten() -> None:
    store, router = InProcessPendingCounts(), UnreportedViewers()
    exchange(router, store, [edge("a", 1.0), edge("b", 1.0)])
    router.assigned("a")
    router.assigned("b")
    exchange(router, store, [edge("a", 1.0)])
    assert router.counts == {"a": 1}


# -- the counters --------------------------------------------------------------------------------------


def test_in_process_counters_lapse_after_their_ttl() -> None:
    clock = Clock()
    store = InProcessPendingCounts(clock=clock)
    assert store.exchange_now({"k": 2}, ["k", "other"], 3.0) == [2, 0]
    clock.now += 2.0
    assert store.exchange_now({"k": 1}, ["k"], 3.0) == [3]  # an addition renews the ttl
    clock.now += 2.9
    assert store.exchange_now({}, ["k"], 3.0) == [3]
    clock.now += 0.2
    assert store.exchange_now({}, ["k"], 3.0) == [0]
    clock.now += 3.0
    store.exchange_now({}, [], 3.0)
    assert len(store) == 0  # lapsed counters are swept, not kept forever


def test_the_backend_follows_the_registry_url() -> None:
    memory = MemoryRegistry()
    counts = open_pending_counts(memory)
    assert isinstance(counts, InProcessPendingCounts) and counts.shared
    assert open_pending_counts(memory) is counts  # every control plane on this registry shares them
    assert open_pending_counts(MemoryRegistry()) is not counts
    assert isinstance(open_pending_counts(RedisRegistry("redis://127.0.0.1:1/0")), RedisPendingCounts)
    other = MemoryRegistry()
    other.url = "consul://127.0.0.1:8500"  # a backend with no shared counters of its own
    alone = open_pending_counts(other)
    assert isinstance(alone, InProcessPendingCounts) and not alone.shared


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def test_redis_counters_are_shared_atomic_and_lapse(redis: RedisServer) -> None:
    one, two = RedisPendingCounts(redis.url, prefix="t1"), RedisPendingCounts(redis.url, prefix="t1")
    try:
        assert await one.exchange({"a@1.0": 3, "b@1.0": 1}, ["a@1.0", "b@1.0", "c@1.0"], 0.5) == [3, 1, 0]
        assert await two.exchange({"a@1.0": 2}, ["a@1.0"], 0.5) == [5]
        assert await two.exchange({}, [], 0.5) == []
        client = RedisRegistry(redis.url)._client
        ttl_ms = await client.pttl("t1:pending:a@1.0")
        assert 0 < ttl_ms <= 500  # under the registry's prefix, never without a TTL
        await asyncio.sleep(0.6)
        assert await one.exchange({}, ["a@1.0", "b@1.0"], 0.5) == [0, 0]
        await client.aclose()
    finally:
        await one.close()
        await two.close()


async def test_redis_counters_unreachable_is_a_registry_error() -> None:
    store = RedisPendingCounts("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(RegistryError):
            await store.exchange({"a@1.0": 1}, ["a@1.0"], 1.0)
    finally:
        await store.close()


# -- the control plane -------------------------------------------------------------------------------


async def burst(registry: MemoryRegistry, viewers: int, apps: int = 1, **options: float) -> Counter[str]:
    """`viewers` concurrent play requests for one stream, spread over `apps` control planes on one registry,
    with no heartbeat in between: reported loads stay 0 throughout."""
    clients = [TestClient(TestServer(make_control_app(registry, **options))) for _ in range(apps)]  # type: ignore[arg-type]
    for client in clients:
        await client.start_server()
    try:

        async def one(i: int) -> str:
            resp = await clients[i % apps].get("/v1/route/play?stream=live/final&region=eu")
            body = await resp.json()
            return str(body["edge"])

        return Counter(await asyncio.gather(*(one(i) for i in range(viewers))))
    finally:
        for client in clients:
            await client.close()


async def three_edges() -> MemoryRegistry:
    registry = MemoryRegistry()
    for name in ("e1", "e2", "e3"):
        await registry.heartbeat(node_info(name), 30.0)
    return registry


async def test_a_burst_within_one_heartbeat_is_spread_within_the_bound() -> None:
    per_edge = await burst(await three_edges(), 600, apps=2)
    # Two apps on one memory:// registry share the counters in-process: exact, +1 for the rounding.
    assert max(per_edge.values()) <= math.ceil(1.25 * 600 / 3) + 1, per_edge


async def test_without_pending_counts_a_burst_lands_on_the_home_edge() -> None:
    per_edge = await burst(await three_edges(), 600, pending_ttl=0)
    assert per_edge.most_common(1)[0][1] == 600  # what the pending counts exist for


async def test_a_node_list_is_routed_on_for_its_max_age() -> None:
    registry = await three_edges()
    reads = 0
    original = registry.nodes

    async def counting(role: str | None = None) -> list[NodeInfo]:
        nonlocal reads
        reads += 1
        return await original(role)

    registry.nodes = counting  # type: ignore[method-assign]
    async with TestClient(TestServer(make_control_app(registry, node_list_max_age=30.0))) as client:
        for _ in range(5):
            assert (await client.get("/v1/route/play?stream=live/x")).status == 200
        assert reads == 1
    async with TestClient(TestServer(make_control_app(registry, node_list_max_age=0))) as client:
        for _ in range(5):
            assert (await client.get("/v1/route/play?stream=live/x")).status == 200
        assert reads == 6


async def test_pending_counts_show_in_the_metrics() -> None:
    registry = await three_edges()
    async with TestClient(TestServer(make_control_app(registry, pending_interval=0))) as client:
        assert (await client.get("/v1/route/play?stream=live/x")).status == 200
        for _ in range(50):
            text = await (await client.get("/metrics")).text()
            if 'livecdn_control_pending_exchanges_total{result="ok"} 2.0' in text:
                break
            await asyncio.sleep(0.01)
        assert 'livecdn_control_pending_exchanges_total{result="ok"} 2.0' in text  # node read + the flush


def test_bad_pending_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="pending_ttl"):
        make_control_app(MemoryRegistry(), pending_ttl=-1)
    with pytest.raises(ValueError, match="node_list_max_age"):
        make_control_app(MemoryRegistry(), node_list_max_age=-1)


_ = aiohttp  # the client type the test helpers return
