"""What the consul:// registry does in Consul beyond the shared contract (tests/unit/test_registry_contract.py):
nodes are services with TTL checks, claims are session locks whose CreateIndex is the epoch, events come from
blocking queries, and an agent that is away or hung fails every call fast. Runs against the Consul that
tests/consul_server.py picks (the pytest header says which); the few tests that need to stop, freeze or look
inside the server run on the in-repo test server only, and say so when skipped."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from common.registry import NodeInfo, RegistryError, RegistryEvent
from common.registry.consul import SESSION_TTL, ConsulRegistry
from tests.consul_server import ConsulTarget, ConsulTestServer, consul_for_tests
from tests.unit.test_registry_contract import every_call_fails_fast, fails_fast

LONG = 10.0


@pytest.fixture(scope="module")
def consul() -> Iterator[ConsulTarget]:
    with consul_for_tests() as target:
        yield target


@pytest.fixture
async def reg(consul: ConsulTarget) -> AsyncIterator[ConsulRegistry]:
    registry = ConsulRegistry(consul.url, prefix=f"test-{uuid.uuid4().hex[:12]}")
    await registry.start()
    try:
        yield registry
    finally:
        await registry.close()


def only_on_test_server(consul: ConsulTarget) -> ConsulTestServer:
    if consul.server is None:
        pytest.skip(f"needs the in-repo test server (stops, freezes or looks inside it); this run uses {consul.kind}")
    return consul.server


async def api(consul: ConsulTarget, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"http://{consul.address}{path}") as resp:
        return resp.status, (await resp.json() if resp.status == 200 else None)


def node(node_id: str, role: str = "origin") -> NodeInfo:
    return NodeInfo(node_id, role, "eu", f"{node_id}.example:1935", f"{node_id}.example:8080")


async def test_nodes_are_services_with_a_ttl_check(consul: ConsulTarget, reg: ConsulRegistry) -> None:
    await reg.heartbeat(node("o1"), LONG)
    status, entries = await api(consul, f"/v1/health/service/{reg.prefix}?passing=1")
    assert status == 200 and len(entries) == 1
    service = entries[0]["Service"]
    assert service["ID"] == f"{reg.prefix}-o1" and set(service["Tags"]) == {"origin", "eu"}
    assert (service["Address"], service["Port"]) == ("o1.example", 1935)  # Consul DNS SRV answers the RTMP port
    assert service["Meta"]["draining"] == "0"
    ttl_checks = [c for c in entries[0]["Checks"] if c.get("ServiceID") == service["ID"]]
    assert [c["Status"] for c in ttl_checks] == ["passing"]

    await reg.heartbeat(NodeInfo("o1", "origin", "eu", "o1.example:1935", "o1.example:8080", draining=True), LONG)
    [listed] = await reg.nodes()
    assert listed.draining  # the router sees a drain at the next read, not after a TTL

    await reg.remove_node("o1")  # a clean shutdown deregisters the service
    status, entries = await api(consul, f"/v1/health/service/{reg.prefix}")
    assert entries == []


async def test_claims_are_session_locks_and_the_epoch_is_the_create_index(
    consul: ConsulTarget, reg: ConsulRegistry
) -> None:
    held = await reg.claim("live/a", "o1", "rtmp://o1/live/a", LONG)
    assert held is not None
    status, [entry] = await api(consul, f"/v1/kv/{reg.prefix}/streams/live/a")
    assert entry["CreateIndex"] == held.epoch and entry["Session"]
    status, [session] = await api(consul, f"/v1/session/info/{entry['Session']}")
    assert session["Behavior"] == "delete" and session["TTL"] == f"{SESSION_TTL}s" and session["LockDelay"] == 0

    assert await reg.renew(held, LONG)
    status, [renewed] = await api(consul, f"/v1/kv/{reg.prefix}/streams/live/a")
    assert renewed["ModifyIndex"] > entry["ModifyIndex"]  # the deadline moved ...
    assert (renewed["CreateIndex"], renewed["Session"]) == (held.epoch, entry["Session"])  # ... the epoch did not

    await reg.close()  # the session ends with the registry, and Consul deletes what it held
    status, _ = await api(consul, f"/v1/kv/{reg.prefix}/streams/live/a")
    assert status == 404
    status, sessions = await api(consul, f"/v1/session/info/{entry['Session']}")
    assert sessions in (None, [])


async def test_a_claim_and_its_release_between_two_reads_are_both_reported(reg: ConsulRegistry) -> None:
    events = reg.events()
    first = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.2)
    a = await reg.claim("live/a", "o1", "rtmp://o1/live/a", LONG)
    assert a is not None
    async with asyncio.timeout(3):
        assert await first == RegistryEvent("publish", "live/a", "o1", a.epoch)
    # Several changes before the watcher asks again: the release tombstone keeps their order.
    b = await reg.claim("live/b", "o2", "rtmp://o2/live/b", LONG)
    assert b is not None and await reg.release(b) and await reg.release(a)
    got = []
    async with asyncio.timeout(3):
        while len(got) < 3:
            got.append(await anext(events))
    assert got == [
        RegistryEvent("publish", "live/b", "o2", b.epoch),
        RegistryEvent("unpublish", "live/b", "o2", b.epoch),
        RegistryEvent("unpublish", "live/a", "o1", a.epoch),
    ]
    await events.aclose()  # type: ignore[attr-defined]


async def test_events_block_instead_of_polling(consul: ConsulTarget, reg: ConsulRegistry) -> None:
    server = only_on_test_server(consul)
    route = "GET /v1/kv/{key}"
    consumer = asyncio.create_task(anext(reg.events()))
    await asyncio.sleep(0.3)
    before = server.requests.get(route, 0)
    await asyncio.sleep(1.5)
    assert server.requests.get(route, 0) - before == 0  # one request waits; nothing polls
    held = await reg.claim("live/a", "o1", "rtmp://o1/live/a", LONG)
    assert held is not None
    async with asyncio.timeout(2):
        assert (await consumer).epoch == held.epoch


async def test_tombstones_are_swept_and_the_session_is_renewed(
    consul: ConsulTarget, reg: ConsulRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("common.registry.consul.TOMBSTONE_LINGER", 0.2)
    monkeypatch.setattr("common.registry.consul.SESSION_RENEW_EVERY", 0.5)
    monkeypatch.setattr("common.registry.consul.KEEPER_TICK", 0.1)
    held = await reg.claim("live/a", "o1", "rtmp://o1/live/a", LONG)
    assert held is not None and await reg.release(held)
    status, [tomb] = await api(consul, f"/v1/kv/{reg.prefix}/streams/live/a")
    assert status == 200 and b"released" in base64.b64decode(tomb["Value"])
    deadline = time.monotonic() + 3
    while (await api(consul, f"/v1/kv/{reg.prefix}/streams/live/a"))[0] != 404:
        assert time.monotonic() < deadline, "the release tombstone was never deleted"
        await asyncio.sleep(0.05)
    renewed_before = reg._session_renewed
    await asyncio.sleep(0.8)
    assert reg._session_renewed > renewed_before


async def test_a_lost_session_is_replaced_and_claims_are_made_again(consul: ConsulTarget, reg: ConsulRegistry) -> None:
    server = only_on_test_server(consul)
    held = await reg.claim("live/a", "o1", "rtmp://o1/live/a", LONG)
    assert held is not None
    session = reg._session
    assert session is not None
    # As if the process froze past 2 x the session TTL: Consul invalidates it and deletes its keys.
    server.call(lambda state: setattr(state.sessions[session], "deadline", 0.0))
    assert not await reg.renew(held, LONG) and await reg.lookup("live/a") is None
    again = await reg.claim("live/a", "o1", "rtmp://o1/live/a", LONG)  # the lock fails: a new session
    assert again is not None and again.epoch > held.epoch and reg._session not in (None, session)


async def test_an_agent_away_or_hung_fails_fast_and_the_registry_recovers(consul: ConsulTarget) -> None:
    server = only_on_test_server(consul)
    reg = ConsulRegistry(server.url, prefix=f"test-{uuid.uuid4().hex[:12]}")
    received: list[RegistryEvent] = []

    async def collect() -> None:
        async for event in reg.events():
            received.append(event)

    consumer = asyncio.create_task(collect())
    try:
        await reg.heartbeat(node("o1"), LONG)
        before = await reg.claim("live/a", "o1", "rtmp://o1/live/a", LONG)
        assert before is not None
        await asyncio.sleep(0.2)
        server.stop()  # connection refused
        try:
            await every_call_fails_fast(reg, before)
        finally:
            server.start()  # restarted on its data: indexes go on
        server.freeze()  # a hung agent: connections open, no answers
        try:
            await fails_fast(reg.lookup("live/a"))
        finally:
            server.thaw()
        assert await reg.ping()
        assert await reg.renew(before, LONG)
        assert await reg.release(before)
        after = await reg.claim("live/a", "o1", "rtmp://o1/live/a", LONG)
        assert after is not None and after.epoch > before.epoch
        async with asyncio.timeout(5):  # the event watch came back by itself
            while RegistryEvent("publish", "live/a", "o1", after.epoch) not in received:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await reg.close()


async def test_a_closed_registry_raises_ends_its_events_and_start_reopens(reg: ConsulRegistry) -> None:
    consumer = asyncio.create_task(anext(reg.events()))
    await asyncio.sleep(0.2)
    await reg.close()
    async with asyncio.timeout(2):
        with pytest.raises(StopAsyncIteration):
            await consumer  # the blocking query in flight ends at once
    with pytest.raises(RegistryError):
        await reg.lookup("live/a")
    await reg.start()
    assert await reg.lookup("live/a") is None


async def test_nothing_listening_fails_fast() -> None:
    reg = ConsulRegistry("consul://127.0.0.1:1")
    try:
        await fails_fast(reg.lookup("live/a"))
        await fails_fast(reg.claim("live/a", "o1", "rtmp://o1/live/a", LONG))
        assert not await reg.ping()
    finally:
        await reg.close()


async def test_an_unreadable_claim_is_replaced_not_stuck(consul: ConsulTarget, reg: ConsulRegistry) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"http://{consul.address}/v1/kv/{reg.prefix}/streams/live/a", data=b"not json") as resp,
    ):
        assert resp.status == 200
    assert await reg.lookup("live/a") is None and await reg.streams() == []
    held = await reg.claim("live/a", "o1", "rtmp://o1/live/a", LONG)
    assert held is not None and await reg.lookup("live/a") == held
