"""One contract for every registry backend: memory://, redis:// (a real Redis: tests/redis_server.py) and
consul:// (a real agent with CONSUL_HTTP_ADDR, a Consul container where Docker answers, else the in-repo test
server: tests/consul_server.py). The pytest header and the log say which Redis and Consul ran."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest
import redis.asyncio as aioredis

from common.registry import NodeInfo, NodeLoad, Registry, RegistryError, RegistryEvent, StreamClaim, open_registry
from common.registry.consul import ConsulRegistry
from common.registry.memory import MemoryRegistry
from common.registry.redis import RedisRegistry
from tests.consul_server import ConsulTarget, consul_for_tests
from tests.redis_server import RedisServer, RedisServerUnavailable, redis_for_tests

SHORT = 0.3  # seconds: a TTL that lapses within the test
LONG = 10.0  # seconds: a TTL that does not


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """The Redis of the contract: a container where Docker answers, else a local redis-server."""
    try:
        with redis_for_tests() as url:
            yield url
    except RedisServerUnavailable as exc:
        pytest.skip(f"no redis-server: {exc}")


@pytest.fixture(scope="module")
def consul() -> Iterator[ConsulTarget]:
    with consul_for_tests() as target:
        yield target


def _prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["memory", "redis", "consul"])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[Registry]:
    reg: Registry
    if request.param == "memory":
        reg = MemoryRegistry()
    elif request.param == "redis":
        reg = RedisRegistry(request.getfixturevalue("redis_url"), prefix=_prefix())
    else:
        target: ConsulTarget = request.getfixturevalue("consul")
        reg = ConsulRegistry(target.url, prefix=_prefix())
    await reg.start()
    try:
        yield reg
    finally:
        await reg.close()


def node(node_id: str, role: str = "origin", viewers: int = 0) -> NodeInfo:
    return NodeInfo(
        id=node_id,
        role=role,
        region="eu",
        rtmp=f"{node_id}.example:1935",
        http=f"{node_id}.example:8080",
        load=NodeLoad(viewers=viewers, streams=1, bits_out=1.5e6),
    )


def url(origin: str, key: str) -> str:
    return f"rtmp://{origin}.example:1935/{key}"


async def claim(reg: Registry, key: str, origin: str, ttl: float = LONG) -> StreamClaim | None:
    return await reg.claim(key, origin, url(origin, key), ttl)


async def claim_over(reg: Registry, key: str, origin: str, *, take_over: int) -> StreamClaim | None:
    return await reg.claim(key, origin, url(origin, key), LONG, take_over=take_over)


async def must_claim(reg: Registry, key: str, origin: str, ttl: float = LONG) -> StreamClaim:
    got = await claim(reg, key, origin, ttl)
    assert got is not None, f"{origin} could not claim {key}"
    return got


# -- nodes -----------------------------------------------------------------------------------------


async def test_nodes_heartbeat_role_filter_expiry_and_removal(registry: Registry) -> None:
    before = time.time()
    await registry.heartbeat(node("o2"), SHORT)
    await registry.heartbeat(node("o1", viewers=3), LONG)
    await registry.heartbeat(node("e1", role="edge"), LONG)

    listed = await registry.nodes()
    assert [n.id for n in listed] == ["e1", "o1", "o2"]
    o1 = listed[1]
    assert o1 == replace(node("o1", viewers=3), updated=o1.updated)
    assert before - 1 <= o1.updated <= time.time() + 1
    assert [n.id for n in await registry.nodes("origin")] == ["o1", "o2"]
    assert [n.id for n in await registry.nodes("edge")] == ["e1"]

    await registry.heartbeat(node("o1", viewers=7), LONG)  # a refresh replaces the record
    assert [n.load.viewers for n in await registry.nodes("origin") if n.id == "o1"] == [7]

    await asyncio.sleep(SHORT + 0.15)  # o2 stopped heartbeating
    assert [n.id for n in await registry.nodes()] == ["e1", "o1"]
    assert [n.id for n in await registry.nodes("origin")] == ["o1"]

    await registry.remove_node("o1")
    await registry.remove_node("nobody")  # unknown ids are fine
    assert [n.id for n in await registry.nodes()] == ["e1"]


async def test_heartbeat_keeps_a_node_alive(registry: Registry) -> None:
    for _ in range(3):
        await registry.heartbeat(node("o1"), SHORT)
        await asyncio.sleep(SHORT / 2)
    assert [n.id for n in await registry.nodes()] == ["o1"]


# -- stream claims ---------------------------------------------------------------------------------


async def test_claim_lookup_exclusivity_and_reclaim_fencing(registry: Registry) -> None:
    assert await registry.lookup("live/a") is None
    first = await must_claim(registry, "live/a", "o1")
    assert (first.key, first.origin, first.rtmp_url) == ("live/a", "o1", url("o1", "live/a"))
    assert abs(first.since - time.time()) < 5
    assert await registry.lookup("live/a") == first

    assert await claim(registry, "live/a", "o2") is None  # a live claim by another origin
    assert await registry.lookup("live/a") == first

    second = await must_claim(registry, "live/a", "o1")  # the publisher reconnected to the same origin
    assert second.epoch > first.epoch
    assert await registry.lookup("live/a") == second
    assert not await registry.renew(first, LONG)  # the old epoch is fenced off
    assert not await registry.release(first)
    assert await registry.lookup("live/a") == second
    assert await registry.renew(second, LONG)


async def test_renew_extends_the_lease(registry: Registry) -> None:
    held = await must_claim(registry, "live/a", "o1", ttl=SHORT)
    for _ in range(3):
        await asyncio.sleep(SHORT * 0.6)
        assert await registry.renew(held, SHORT)
    assert await registry.lookup("live/a") == held  # 0.54 s after a 0.3 s claim: alive thanks to renewals


async def test_release_deletes_and_is_refused_when_stale(registry: Registry) -> None:
    held = await must_claim(registry, "live/a", "o1")
    assert not await registry.release(replace(held, epoch=held.epoch + 1000))  # not the holder's epoch
    assert await registry.lookup("live/a") == held
    assert await registry.release(held)
    assert await registry.lookup("live/a") is None
    assert await registry.streams() == []
    assert not await registry.release(held)  # already released
    assert not await registry.renew(held, LONG)
    assert await must_claim(registry, "live/a", "o2")  # free for anyone now


async def test_claim_expires_without_renewal_then_another_origin_takes_it(registry: Registry) -> None:
    dead = await must_claim(registry, "live/a", "o1", ttl=SHORT)
    assert await claim(registry, "live/a", "o2") is None
    await asyncio.sleep(SHORT + 0.15)  # o1 died: nobody renews
    assert await registry.lookup("live/a") is None
    assert not await registry.renew(dead, LONG)
    taken = await must_claim(registry, "live/a", "o2")
    assert taken.epoch > dead.epoch
    assert [c.origin for c in await registry.streams()] == ["o2"]
    assert not await registry.release(dead)  # the dead origin's late release does not hurt the new owner
    assert await registry.lookup("live/a") == taken


async def test_take_over_needs_the_exact_epoch_and_fences_the_old_owner(registry: Registry) -> None:
    old = await must_claim(registry, "live/a", "o1")
    assert await claim_over(registry, "live/a", "o2", take_over=old.epoch + 1) is None  # not what o1 holds
    assert await registry.lookup("live/a") == old
    taken = await claim_over(registry, "live/a", "o2", take_over=old.epoch)
    assert taken is not None and taken.origin == "o2" and taken.epoch > old.epoch
    assert await registry.lookup("live/a") == taken
    assert not await registry.renew(old, LONG)  # the old owner, if it comes back, is fenced off
    assert not await registry.release(old)
    # A second taker that saw the same old epoch loses: only one owner at a time.
    assert await claim_over(registry, "live/a", "o3", take_over=old.epoch) is None
    assert await registry.lookup("live/a") == taken


async def test_concurrent_take_overs_have_exactly_one_winner(registry: Registry) -> None:
    old = await must_claim(registry, "live/a", "o1")
    results = await asyncio.gather(
        *(claim_over(registry, "live/a", f"o{i}", take_over=old.epoch) for i in range(2, 12))
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and await registry.lookup("live/a") == winners[0]


async def test_streams_lists_live_claims_sorted(registry: Registry) -> None:
    c = await must_claim(registry, "live/c", "o1")
    a = await must_claim(registry, "live/a", "o2")
    await must_claim(registry, "live/b", "o1", ttl=SHORT)
    z = await must_claim(registry, "app2/z", "o3")
    assert [s.key for s in await registry.streams()] == ["app2/z", "live/a", "live/b", "live/c"]
    await asyncio.sleep(SHORT + 0.15)
    assert await registry.streams() == [z, a, c]


async def test_epochs_strictly_increase_across_streams(registry: Registry) -> None:
    epochs = [(await must_claim(registry, f"live/s{i % 3}", "o1")).epoch for i in range(9)]
    assert epochs == sorted(set(epochs))


async def test_concurrent_claims_have_exactly_one_winner(registry: Registry) -> None:
    results = await asyncio.gather(*(claim(registry, "live/hot", f"o{i}") for i in range(10)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert await registry.lookup("live/hot") == winners[0]


# -- events ----------------------------------------------------------------------------------------


async def _collect(reg: Registry, count: int, into: list[RegistryEvent]) -> None:
    async for event in reg.events():
        into.append(event)
        if len(into) >= count:
            return


async def test_events_publish_then_unpublish_in_order(registry: Registry) -> None:
    received: list[RegistryEvent] = []
    consumer = asyncio.create_task(_collect(registry, 4, received))
    await asyncio.sleep(0.2)  # let the subscription settle
    a = await must_claim(registry, "live/a", "o1")
    b = await must_claim(registry, "live/b", "o2")
    assert await registry.release(a)
    assert not await registry.release(a)  # a refused release publishes nothing
    assert await registry.release(b)
    async with asyncio.timeout(3):
        await consumer
    assert received == [
        RegistryEvent("publish", "live/a", "o1", a.epoch),
        RegistryEvent("publish", "live/b", "o2", b.epoch),
        RegistryEvent("unpublish", "live/a", "o1", a.epoch),
        RegistryEvent("unpublish", "live/b", "o2", b.epoch),
    ]


async def test_events_consumer_can_stop_and_be_cancelled(registry: Registry) -> None:
    stream = registry.events()
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.2)
    held = await must_claim(registry, "live/a", "o1")
    async with asyncio.timeout(3):
        assert await waiting == RegistryEvent("publish", "live/a", "o1", held.epoch)
    await stream.aclose()  # type: ignore[attr-defined]

    blocked = asyncio.create_task(_collect(registry, 1, []))
    await asyncio.sleep(0.2)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked


# -- redis only ------------------------------------------------------------------------------------


async def _subscribers(server_url: str, channel: str) -> int:
    client = aioredis.Redis.from_url(server_url)
    try:
        counts = await client.pubsub_numsub(channel)
        return int(counts[0][1])
    finally:
        await client.aclose()


async def _wait_subscribers(server_url: str, channel: str, want: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if await _subscribers(server_url, channel) == want:
                return
            await asyncio.sleep(0.05)


async def test_redis_events_cleanup_the_subscription(redis_url: str) -> None:
    prefix = _prefix()
    channel = f"{prefix}:events"
    reg = RedisRegistry(redis_url, prefix=prefix)
    try:
        stream = reg.events()
        waiting = asyncio.ensure_future(anext(stream))
        await _wait_subscribers(redis_url, channel, 1)
        # Malformed messages on the channel are skipped, not fatal.
        raw = aioredis.Redis.from_url(redis_url)
        await raw.publish(channel, "not json")
        await raw.publish(channel, '{"kind":"explode","key":"k","origin":"o","epoch":1}')
        await raw.aclose()
        held = await reg.claim("live/a", "o1", "rtmp://o1/live/a", LONG)
        assert held is not None
        async with asyncio.timeout(3):
            assert (await waiting).epoch == held.epoch
        await stream.aclose()  # type: ignore[attr-defined]
        await _wait_subscribers(redis_url, channel, 0)

        task = asyncio.create_task(_collect(reg, 1, []))
        await _wait_subscribers(redis_url, channel, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _wait_subscribers(redis_url, channel, 0)
    finally:
        await reg.close()


async def test_redis_record_layout(redis_url: str) -> None:
    prefix = _prefix()
    reg = RedisRegistry(redis_url, prefix=prefix)
    raw = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await reg.heartbeat(node("o1"), LONG)
        held = await reg.claim("live/a", "o1", "rtmp://o1/live/a", LONG)
        assert held is not None
        assert NodeInfo.from_json(await raw.get(f"{prefix}:node:o1")).id == "o1"
        assert StreamClaim.from_json(await raw.get(f"{prefix}:stream:live/a")) == held
        assert 0 < await raw.pttl(f"{prefix}:stream:live/a") <= LONG * 1000
        assert await raw.smembers(f"{prefix}:nodes") == {"o1"}
        assert await raw.smembers(f"{prefix}:streams") == {"live/a"}
        assert int(await raw.get(f"{prefix}:epoch")) == held.epoch
        # Index entries whose record vanished are pruned on read.
        await raw.delete(f"{prefix}:node:o1", f"{prefix}:stream:live/a")
        assert await reg.nodes() == [] and await reg.streams() == []
        assert await raw.smembers(f"{prefix}:nodes") == set()
        assert await raw.smembers(f"{prefix}:streams") == set()
        await reg.remove_node("o1")
        # Listing never scans the keyspace.
        stats = await raw.info("commandstats")
        assert not any(name in stats for name in ("cmdstat_keys", "cmdstat_scan"))
    finally:
        await raw.aclose()
        await reg.close()


async def fails_fast(call: object) -> None:
    """The call raises RegistryError naming the backend's address, within 3 s."""
    started = time.monotonic()
    with pytest.raises(RegistryError, match=r"127\.0\.0\.1"):
        await call  # type: ignore[misc]
    assert time.monotonic() - started < 3.0


async def every_call_fails_fast(reg: Registry, held: StreamClaim) -> None:
    """With the backend unreachable: ping says so, and every other call fails fast (shared by the backends'
    outage tests). ``held`` is a claim taken before the outage."""
    assert not await reg.ping()
    await fails_fast(reg.lookup("live/a"))
    await fails_fast(reg.claim("live/b", "o1", "rtmp://o1/live/b", LONG))
    await fails_fast(reg.renew(held, LONG))
    await fails_fast(reg.release(held))
    await fails_fast(reg.heartbeat(node("o1"), LONG))
    await fails_fast(reg.nodes())
    await fails_fast(reg.streams())
    await fails_fast(reg.remove_node("o1"))


async def test_redis_outage_fails_fast_and_recovers() -> None:
    try:
        server = RedisServer()
    except RedisServerUnavailable as exc:
        pytest.skip(f"no redis-server: {exc}")
    with server:
        reg = RedisRegistry(server.url, prefix=_prefix())
        channel = f"{reg.prefix}:events"
        received: list[RegistryEvent] = []
        consumer = asyncio.create_task(_collect(reg, 3, received))
        try:
            await reg.heartbeat(node("o1"), LONG)
            before = await must_claim(reg, "live/a", "o1")
            await _wait_subscribers(server.url, channel, 1)

            server.stop()
            await every_call_fails_fast(reg, before)

            server.start()  # same port, empty data, no cached scripts
            assert server.pid is not None
            os.kill(server.pid, signal.SIGSTOP)  # a hung server: connections open, no answers
            try:
                await fails_fast(reg.lookup("live/a"))
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert await reg.ping()
            await _wait_subscribers(server.url, channel, 1)  # the event subscription comes back by itself
            after = await must_claim(reg, "live/a", "o1")  # the claim script is loaded again
            assert after.epoch > before.epoch  # epochs keep increasing although the counter was lost
            assert await reg.renew(after, LONG)
            assert await reg.lookup("live/a") == after
            await reg.heartbeat(node("o1"), LONG)
            assert [n.id for n in await reg.nodes()] == ["o1"]
            assert await reg.release(after)
            async with asyncio.timeout(3):
                await consumer
            assert received == [
                RegistryEvent("publish", "live/a", "o1", before.epoch),
                RegistryEvent("publish", "live/a", "o1", after.epoch),
                RegistryEvent("unpublish", "live/a", "o1", after.epoch),
            ]
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
            await reg.close()


async def test_redis_errors_hide_the_password() -> None:
    reg = RedisRegistry("redis://user:s3cret@127.0.0.1:1/0")  # nothing listens on port 1
    try:
        with pytest.raises(RegistryError) as caught:
            await reg.lookup("live/a")
        assert "s3cret" not in str(caught.value)
        assert "***" in str(caught.value)
        assert not await reg.ping()
    finally:
        await reg.close()


async def test_closed_registry_raises_ends_events_and_start_reopens(redis_url: str) -> None:
    reg = RedisRegistry(redis_url, prefix=_prefix())
    consumer = asyncio.create_task(_collect(reg, 1, []))
    await _wait_subscribers(redis_url, f"{reg.prefix}:events", 1)
    await reg.close()
    async with asyncio.timeout(3):
        await consumer  # the event stream ends after close()
    with pytest.raises(RegistryError):
        await reg.lookup("live/a")
    await reg.start()
    assert await reg.lookup("live/a") is None
    await reg.close()


# -- selection by URL ------------------------------------------------------------------------------


async def test_open_registry_by_url() -> None:
    assert isinstance(open_registry("memory://"), MemoryRegistry)
    reg = open_registry("redis://127.0.0.1:6379/0")
    assert isinstance(reg, RedisRegistry)
    await reg.close()
    consul = open_registry("consul://consul.internal:8501/staging")
    assert isinstance(consul, ConsulRegistry) and consul.prefix == "staging"
    await consul.close()
    assert open_registry("consul://127.0.0.1").prefix == "livecdn"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="bad prefix"):
        open_registry("consul://127.0.0.1:8500/a/b")
    with pytest.raises(ValueError, match="unsupported registry URL"):
        open_registry("etcd://x")
