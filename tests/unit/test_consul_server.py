"""The Consul semantics the consul:// registry relies on, as Consul's HTTP API documents them. They run
against whichever Consul tests/consul_server.py picks: here usually the in-repo test server, so these tests
keep it honest; with CONSUL_HTTP_ADDR they check the same against a real agent (the few that force time
forward need the test server and say so when skipped)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.consul_server import ConsulTarget, consul_for_tests, parse_duration


@pytest.fixture(scope="module")
def consul() -> Iterator[ConsulTarget]:
    with consul_for_tests() as target:
        yield target


class Api:
    def __init__(self, address: str, session: aiohttp.ClientSession) -> None:
        self.base = f"http://{address}"
        self.http = session

    async def call(self, method: str, path: str, body: Any = None, data: bytes | None = None) -> tuple[int, Any, int]:
        payload = json.dumps(body).encode() if body is not None else data
        async with self.http.request(method, self.base + path, data=payload) as resp:
            text = await resp.text()
            index = int(resp.headers.get("X-Consul-Index", "0"))
            try:
                return resp.status, json.loads(text) if text else None, index
            except json.JSONDecodeError:
                return resp.status, text, index

    async def session(self, behavior: str = "delete", lock_delay: str = "0s") -> str:
        status, body, _ = await self.call(
            "PUT", "/v1/session/create", {"TTL": "10s", "Behavior": behavior, "LockDelay": lock_delay}
        )
        assert status == 200, body
        return str(body["ID"])


@pytest.fixture
async def api(consul: ConsulTarget) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(consul.address, session)


def key() -> str:
    return f"semantics-{uuid.uuid4().hex[:10]}/k"


def test_go_durations() -> None:
    assert parse_duration("300ms") == pytest.approx(0.3)
    assert parse_duration("1m30s") == 90.0 and parse_duration("10s") == 10.0 and parse_duration(15e9) == 15.0
    with pytest.raises(ValueError):
        parse_duration("10 seconds")


async def test_session_ttl_must_be_at_least_ten_seconds(api: Api) -> None:
    status, _, _ = await api.call("PUT", "/v1/session/create", {"TTL": "5s"})
    assert status == 400
    status, _, _ = await api.call("PUT", "/v1/session/renew/" + str(uuid.uuid4()))
    assert status == 404


async def test_cas_and_locks(api: Api) -> None:
    k = key()
    assert (await api.call("PUT", f"/v1/kv/{k}?cas=0", data=b"one"))[1] is True  # create only ...
    assert (await api.call("PUT", f"/v1/kv/{k}?cas=0", data=b"two"))[1] is False  # ... not over an existing key
    _, [entry], _ = await api.call("GET", f"/v1/kv/{k}")
    assert (await api.call("PUT", f"/v1/kv/{k}?cas={entry['ModifyIndex'] + 1}", data=b"x"))[1] is False
    assert (await api.call("PUT", f"/v1/kv/{k}?cas={entry['ModifyIndex']}", data=b"x"))[1] is True

    first, second = await api.session(), await api.session()
    assert (await api.call("PUT", f"/v1/kv/{k}?acquire={first}", data=b"held"))[1] is True
    assert (await api.call("PUT", f"/v1/kv/{k}?acquire={second}", data=b"mine"))[1] is False  # held by another
    assert (await api.call("PUT", f"/v1/kv/{k}", data=b"plain"))[1] is True
    _, [entry], _ = await api.call("GET", f"/v1/kv/{k}")
    assert entry["Session"] == first and base64.b64decode(entry["Value"]) == b"plain"  # a set keeps the lock
    assert (await api.call("PUT", f"/v1/kv/{k}?release={second}", data=b""))[1] is False
    assert (await api.call("PUT", f"/v1/kv/{k}?release={first}", data=b"free"))[1] is True
    _, [entry], _ = await api.call("GET", f"/v1/kv/{k}")
    assert "Session" not in entry or not entry["Session"]

    assert (await api.call("DELETE", f"/v1/kv/{k}?cas={entry['ModifyIndex'] + 1}"))[1] is False
    assert (await api.call("DELETE", f"/v1/kv/{k}?cas={entry['ModifyIndex']}"))[1] is True
    assert (await api.call("GET", f"/v1/kv/{k}"))[0] == 404


async def test_a_destroyed_session_deletes_or_releases_its_keys(api: Api) -> None:
    deleting, releasing = await api.session("delete"), await api.session("release")
    gone, kept = key(), key()
    assert (await api.call("PUT", f"/v1/kv/{gone}?acquire={deleting}", data=b"a"))[1] is True
    assert (await api.call("PUT", f"/v1/kv/{kept}?acquire={releasing}", data=b"b"))[1] is True
    await api.call("PUT", f"/v1/session/destroy/{deleting}")
    await api.call("PUT", f"/v1/session/destroy/{releasing}")
    assert (await api.call("GET", f"/v1/kv/{gone}"))[0] == 404
    _, [entry], _ = await api.call("GET", f"/v1/kv/{kept}")
    assert not entry.get("Session")


async def test_lock_delay_blocks_acquire_after_invalidation(api: Api) -> None:
    holder, other = await api.session("release", lock_delay="15s"), await api.session()
    k = key()
    assert (await api.call("PUT", f"/v1/kv/{k}?acquire={holder}", data=b"a"))[1] is True
    await api.call("PUT", f"/v1/session/destroy/{holder}")
    assert (await api.call("PUT", f"/v1/kv/{k}?acquire={other}", data=b"b"))[1] is False


async def test_a_ttl_session_outlives_its_ttl_by_the_grace(consul: ConsulTarget, api: Api) -> None:
    if consul.server is None:
        pytest.skip(f"forces the server's clock; this run uses {consul.kind}")
    session = await api.session()
    k = key()
    assert (await api.call("PUT", f"/v1/kv/{k}?acquire={session}", data=b"a"))[1] is True
    deadline = consul.server.call(lambda state: state.sessions[session].deadline)
    assert deadline - time.monotonic() == pytest.approx(20.0, abs=1.0)  # 2 x TTL
    consul.server.call(lambda state: setattr(state.sessions[session], "deadline", 0.0))
    assert (await api.call("GET", f"/v1/kv/{k}"))[0] == 404
    assert (await api.call("PUT", f"/v1/session/renew/{session}"))[0] == 404


async def test_blocking_queries_wait_for_a_change_of_the_prefix(api: Api) -> None:
    prefix = key().rsplit("/", 1)[0] + "/"
    assert (await api.call("PUT", f"/v1/kv/{prefix}a", data=b"1"))[1] is True
    _, _, index = await api.call("GET", f"/v1/kv/{prefix}?recurse")
    started = time.monotonic()
    _, _, same = await api.call("GET", f"/v1/kv/{prefix}?recurse&index={index}&wait=1s")
    assert same == index and time.monotonic() - started >= 0.9  # no change: waits, same index

    async def delete_soon() -> None:
        await asyncio.sleep(0.3)
        await api.call("DELETE", f"/v1/kv/{prefix}a")

    task = asyncio.create_task(delete_soon())
    started = time.monotonic()
    status, _, after = await api.call("GET", f"/v1/kv/{prefix}?recurse&index={index}&wait=5s")
    await task
    assert status == 404 and after > index  # a deletion wakes it too (Consul keeps a graveyard)
    assert time.monotonic() - started < 2


async def test_transactions_are_all_or_nothing(api: Api) -> None:
    k = key()
    session = await api.session()
    value = base64.b64encode(b"v").decode()
    ops = [
        {"KV": {"Verb": "check-not-exists", "Key": k}},
        {"KV": {"Verb": "lock", "Key": k, "Value": value, "Session": session}},
    ]
    status, body, _ = await api.call("PUT", "/v1/txn", ops)
    assert status == 200 and body["Results"][0]["KV"]["CreateIndex"] > 0
    created = body["Results"][0]["KV"]["CreateIndex"]
    status, body, _ = await api.call("PUT", "/v1/txn", ops)
    assert status == 409 and body["Errors"][0]["OpIndex"] == 0
    replace = [
        {"KV": {"Verb": "check-index", "Key": k, "Index": created}},
        {"KV": {"Verb": "delete", "Key": k}},
        {"KV": {"Verb": "lock", "Key": k, "Value": value, "Session": session}},
        {"KV": {"Verb": "check-index", "Key": k, "Index": 1}},  # fails: nothing above is applied
    ]
    status, body, _ = await api.call("PUT", "/v1/txn", replace)
    assert status == 409 and body["Errors"][0]["OpIndex"] == 3
    _, [entry], _ = await api.call("GET", f"/v1/kv/{k}")
    assert entry["CreateIndex"] == created
    status, body, _ = await api.call("PUT", "/v1/txn", replace[:3])
    assert status == 200 and body["Results"][-1]["KV"]["CreateIndex"] > created  # created anew


async def test_ttl_checks_go_critical_and_a_reregistration_keeps_the_status(api: Api) -> None:
    name = f"svc-{uuid.uuid4().hex[:8]}"
    check = {"CheckID": f"{name}-ttl", "TTL": "300ms", "Status": "passing"}
    registration = {"Name": name, "ID": name, "Meta": {"a": "b"}, "Check": check}
    assert (await api.call("PUT", "/v1/agent/service/register", registration))[0] == 200
    assert len((await api.call("GET", f"/v1/health/service/{name}?passing=1"))[1]) == 1
    await asyncio.sleep(0.6)
    assert (await api.call("GET", f"/v1/health/service/{name}?passing=1"))[1] == []
    assert (await api.call("PUT", "/v1/agent/service/register", registration))[0] == 200
    assert (await api.call("GET", f"/v1/health/service/{name}?passing=1"))[1] == []  # still critical
    assert (await api.call("PUT", f"/v1/agent/check/pass/{name}-ttl"))[0] == 200
    assert len((await api.call("GET", f"/v1/health/service/{name}?passing=1"))[1]) == 1
    assert (await api.call("PUT", f"/v1/agent/service/deregister/{name}"))[0] == 200
    assert (await api.call("GET", f"/v1/health/service/{name}"))[1] == []
