"""The control plane HTTP API over an in-memory registry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from common.registry.base import NodeInfo, RegistryError, StreamClaim
from common.registry.memory import MemoryRegistry
from common.runtime.config import ConfigError, load_settings
from control.app import make_control_app
from control.node import http_url, serve_control
from control.settings import ControlSettings
from tests.helpers import node_info as node

TTL = 30.0

Client = TestClient[aiohttp.web.Request, aiohttp.web.Application]


class BrokenRegistry(MemoryRegistry):
    """A registry whose backend is down: every call raises."""

    async def ping(self) -> bool:
        raise RegistryError("connection refused")

    async def nodes(self, role: str | None = None) -> list[NodeInfo]:
        raise RegistryError("connection refused")

    async def lookup(self, key: str) -> StreamClaim | None:
        raise RegistryError("connection refused")

    async def streams(self) -> list[StreamClaim]:
        raise RegistryError("connection refused")


class TrackedRegistry(MemoryRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.started = 0
        self.closed = 0

    async def start(self) -> None:
        self.started += 1

    async def close(self) -> None:
        self.closed += 1


async def make_client(registry: MemoryRegistry) -> Client:
    # node_list_max_age 0: these tests change heartbeats and expect the very next request to see them.
    client = TestClient(TestServer(make_control_app(registry, node_list_max_age=0)))
    await client.start_server()
    return client


@pytest.fixture
async def registry() -> MemoryRegistry:
    reg = MemoryRegistry()
    for info in (
        node("origin-eu", "origin", "eu", streams=3),
        node("origin-us", "origin", "us", streams=0),
        node("edge-eu-1", "edge", "eu"),
        node("edge-eu-2", "edge", "eu"),
        node("edge-us-1", "edge", "us"),
        node("edge-us-2", "edge", "us", draining=True),
    ):
        await reg.heartbeat(info, TTL)
    return reg


@pytest.fixture
async def client(registry: MemoryRegistry) -> AsyncIterator[Client]:
    c = await make_client(registry)
    yield c
    await c.close()


async def test_healthz_and_readyz(client: Client) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}
    resp = await client.get("/readyz")
    assert resp.status == 200 and await resp.json() == {"ready": True}


async def test_route_publish_least_loaded_region_first(client: Client) -> None:
    resp = await client.get("/v1/route/publish", params={"stream": "live/x", "region": "eu"})
    assert resp.status == 200
    assert await resp.json() == {
        "stream": "live/x",
        "origin": "origin-eu",
        "region": "eu",
        "rtmp": "rtmp://origin-eu.test:1935/live/x",
        "client_region": "eu",
        "region_source": "query",
    }
    resp = await client.get("/v1/route/publish", params={"stream": "live/x"})
    body = await resp.json()
    assert body["origin"] == "origin-us"  # least loaded overall
    assert body["client_region"] is None and body["region_source"] == "none"  # no region settings: as before
    resp = await client.get("/v1/route/publish", params={"stream": "live/x", "region": "ap", "unrelated": "1"})
    assert (await resp.json())["origin"] == "origin-us"  # no origin in ap: fall back


async def test_route_publish_goes_to_the_owner(registry: MemoryRegistry, client: Client) -> None:
    await registry.claim("live/x", "origin-eu", "rtmp://origin-eu.test:1935/live/x", TTL)
    resp = await client.get("/v1/route/publish", params={"stream": "live/x", "region": "us"})
    assert resp.status == 200
    assert (await resp.json())["origin"] == "origin-eu"


async def test_route_play(client: Client) -> None:
    resp = await client.get("/v1/route/play", params={"stream": "live/x", "region": "us"})
    assert resp.status == 200
    assert await resp.json() == {
        "stream": "live/x",
        "edge": "edge-us-1",  # edge-us-2 is draining
        "region": "us",
        "rtmp": "rtmp://edge-us-1.test:1935/live/x",
        "flv": "http://edge-us-1.test:8080/live/x.flv",
        "hls": "http://edge-us-1.test:8080/live/x.m3u8",
        "client_region": "us",
        "region_source": "query",
    }
    body = await (await client.get("/v1/route/play", params={"stream": "live/x", "region": "eu"})).json()
    assert body["edge"] in ("edge-eu-1", "edge-eu-2")
    again = await (await client.get("/v1/route/play", params={"stream": "live/x", "region": "eu"})).json()
    assert again == body  # same stream, same loads: same edge
    body = await (await client.get("/v1/route/play", params={"stream": "live/x", "region": "ap"})).json()
    assert body["edge"] in ("edge-eu-1", "edge-eu-2", "edge-us-1")


async def test_a_play_token_is_passed_on_to_the_edge_urls(client: Client) -> None:
    token = {"exp": "1800000000", "sig": "abc_DEF-123"}
    body = await (await client.get("/v1/route/play", params={"stream": "live/x", "region": "us", **token})).json()
    assert body["rtmp"] == "rtmp://edge-us-1.test:1935/live/x?exp=1800000000&sig=abc_DEF-123"
    assert body["flv"] == "http://edge-us-1.test:8080/live/x.flv?exp=1800000000&sig=abc_DEF-123"
    resp = await client.get("/play/live/x", params={"region": "us", **token}, allow_redirects=False)
    assert resp.headers["Location"] == "http://edge-us-1.test:8080/live/x.flv?exp=1800000000&sig=abc_DEF-123"
    resp = await client.get("/v1/route/play", params={"stream": "live/x", "exp": "soon", "sig": "x"})
    assert resp.status == 400 and "play token" in (await resp.json())["error"]


async def test_route_play_does_not_need_a_live_stream(registry: MemoryRegistry, client: Client) -> None:
    assert await registry.lookup("live/nobody") is None
    resp = await client.get("/v1/route/play", params={"stream": "live/nobody"})
    assert resp.status == 200


async def test_route_play_spills_when_home_edge_is_full(registry: MemoryRegistry, client: Client) -> None:
    params = {"stream": "live/x", "region": "eu"}
    home = (await (await client.get("/v1/route/play", params=params)).json())["edge"]
    other = "edge-eu-2" if home == "edge-eu-1" else "edge-eu-1"
    await registry.heartbeat(node(home, "edge", "eu", viewers=100), TTL)
    assert (await (await client.get("/v1/route/play", params=params)).json())["edge"] == other


async def test_play_redirect(client: Client) -> None:
    resp = await client.get("/play/live/x", params={"region": "us"}, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "http://edge-us-1.test:8080/live/x.flv"
    resp = await client.get("/play/live/x?region=us&format=rtmp", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "rtmp://edge-us-1.test:1935/live/x"
    resp = await client.get("/play/live/x?format=hls", allow_redirects=False)
    assert resp.status == 400 and "format" in (await resp.json())["error"]
    resp = await client.get("/play/live/..x", allow_redirects=False)
    assert resp.status == 400


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?stream=",
        "?stream=live",
        "?stream=live/x/y",
        "?stream=/x",
        "?stream=live/",
        "?stream=live/..",
        "?stream=live/.hidden",
        "?stream=live/a%20b",
        "?stream=live/x%3Fkey%3D1",
        "?stream=" + "a" * 129 + "/x",
        "?stream=live/x&region=e%2Fu",
        "?stream=live/x&region=..",
    ],
)
@pytest.mark.parametrize("path", ["/v1/route/publish", "/v1/route/play"])
async def test_bad_requests(client: Client, path: str, query: str) -> None:
    resp = await client.get(path + query)
    assert resp.status == 400
    body = await resp.json()
    assert set(body) == {"error"} and body["error"]


async def test_query_string_in_stream_is_explained(client: Client) -> None:
    resp = await client.get("/v1/route/publish", params={"stream": "live/x?key=1"})
    assert resp.status == 400
    assert "query string" in (await resp.json())["error"]


async def test_no_healthy_nodes_is_503() -> None:
    reg = MemoryRegistry()
    await reg.heartbeat(node("o1", "origin", draining=True), TTL)
    await reg.heartbeat(node("e1", "edge", draining=True), TTL)
    c = await make_client(reg)
    try:
        resp = await c.get("/v1/route/publish?stream=live/x")
        assert resp.status == 503 and "origin" in (await resp.json())["error"]
        resp = await c.get("/v1/route/play?stream=live/x")
        assert resp.status == 503 and "edge" in (await resp.json())["error"]
        resp = await c.get("/play/live/x", allow_redirects=False)
        assert resp.status == 503 and "edge" in (await resp.json())["error"]
    finally:
        await c.close()


async def test_registry_errors_are_503() -> None:
    c = await make_client(BrokenRegistry())
    try:
        for path in ("/v1/route/publish?stream=live/x", "/v1/route/play?stream=live/x", "/play/live/x"):
            resp = await c.get(path, allow_redirects=False)
            assert resp.status == 503, path
            assert "registry unavailable" in (await resp.json())["error"]
        for path in ("/v1/nodes", "/v1/streams", "/"):
            assert (await c.get(path)).status == 503, path
        resp = await c.get("/readyz")
        assert resp.status == 503
        body = await resp.json()
        assert body["ready"] is False and "registry" in body["error"]
        assert (await c.get("/healthz")).status == 200  # the process itself is fine
        # Validation still comes first: a bad request is 400 even while the registry is down.
        assert (await c.get("/v1/route/play?stream=bad")).status == 400
    finally:
        await c.close()


async def test_nodes_and_streams(registry: MemoryRegistry, client: Client) -> None:
    await registry.claim("live/x", "origin-eu", "rtmp://origin-eu.test:1935/live/x", TTL)
    nodes = (await (await client.get("/v1/nodes")).json())["nodes"]
    assert [n["id"] for n in nodes] == sorted(n["id"] for n in nodes)
    assert len(nodes) == 6
    us2 = next(n for n in nodes if n["id"] == "edge-us-2")
    assert us2["draining"] is True and us2["role"] == "edge" and us2["load"]["viewers"] == 0
    assert NodeInfo.from_json(json.dumps(us2)).id == "edge-us-2"
    streams = (await (await client.get("/v1/streams")).json())["streams"]
    assert len(streams) == 1
    assert streams[0]["key"] == "live/x" and streams[0]["origin"] == "origin-eu" and streams[0]["epoch"] >= 1


async def test_status_page_escapes(registry: MemoryRegistry, client: Client) -> None:
    await registry.heartbeat(node("<script>x</script>", "edge"), TTL)
    resp = await client.get("/")
    assert resp.status == 200 and resp.content_type == "text/html"
    text = await resp.text()
    assert "&lt;script&gt;" in text and "<script>" not in text
    assert "origin-eu" in text


async def test_unknown_path_is_json_404(client: Client) -> None:
    resp = await client.get("/v1/nope")
    assert resp.status == 404 and "error" in await resp.json()
    resp = await client.post("/v1/route/play?stream=live/x")
    assert resp.status == 405 and "GET" in resp.headers["Allow"] and "error" in await resp.json()


async def test_concurrent_routes_share_registry_reads(registry: MemoryRegistry, client: Client) -> None:
    calls = 0
    original = registry.nodes

    async def counting(role: str | None = None) -> list[NodeInfo]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return await original(role)

    registry.nodes = counting  # type: ignore[method-assign]
    resps = await asyncio.gather(*(client.get("/v1/route/play?stream=live/x") for _ in range(20)))
    assert all(r.status == 200 for r in resps)
    assert calls < 20


async def test_app_starts_and_closes_registry() -> None:
    reg = TrackedRegistry()
    c = await make_client(reg)
    assert reg.started == 1 and reg.closed == 0
    await c.close()
    assert reg.closed == 1


ANY_PORT = ControlSettings(http="127.0.0.1:0")


async def test_serve_control_port_zero_and_stop() -> None:
    reg = TrackedRegistry()
    await reg.heartbeat(node("e1", "edge"), TTL)
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_control(ANY_PORT, stop, registry=reg, on_ready=ready.set_result))
    url = await asyncio.wait_for(ready, 5)
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/route/play?stream=live/x") as resp:
        assert resp.status == 200 and (await resp.json())["edge"] == "e1"
    stop.set()
    await asyncio.wait_for(task, 5)
    assert reg.started == 1 and reg.closed == 0  # a registry passed in stays open for its owner


async def test_serve_control_opens_registry_from_url() -> None:
    stop = asyncio.Event()
    urls: list[str] = []
    task = asyncio.create_task(serve_control(ANY_PORT, stop, on_ready=urls.append))
    for _ in range(100):
        if urls:
            break
        await asyncio.sleep(0.01)
    async with aiohttp.ClientSession() as session, session.get(f"{urls[0]}/readyz") as resp:
        assert resp.status == 200
    stop.set()
    await asyncio.wait_for(task, 5)


def test_control_settings_refuse_a_bad_registry_url() -> None:
    with pytest.raises(ConfigError, match="registry"):
        load_settings(ControlSettings, {"registry": "nope://"})


def test_http_url_brackets_ipv6() -> None:
    assert http_url("127.0.0.1", 80) == "http://127.0.0.1:80"
    assert http_url("::1", 80) == "http://[::1]:80"
