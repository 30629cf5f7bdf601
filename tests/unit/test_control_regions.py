"""Viewers and publishers reach their region without saying it: the real control plane app on a loopback
port, asked from different loopback addresses (all of 127.0.0.0/8 is this machine on Linux), with an
address map, a GeoIP database made here, trusted proxies and region fallback lists."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from common.registry.memory import MemoryRegistry
from common.runtime.config import load_settings
from control.node import control_app
from control.settings import ControlSettings
from tests.geoip import country, write_geoip_db
from tests.helpers import node_info as node

TTL = 30.0
PROXY = "127.0.0.9"  # the trusted proxy's address

# 127.0.0.2 eu and 127.0.0.3 us by the map; .4 (Japan) and .5 (Brazil, continent South America) by
# GeoIP; .6 nowhere: the default. 127.0.0.16/28 is ap except its most specific .17, eu.
REGION_MAP = "127.0.0.2/32=eu,127.0.0.3/32=us,127.0.0.16/28=ap,127.0.0.17/32=eu"
GEOIP_REGIONS = "JP=ap,DE=eu,continent:SA=us"


@pytest.fixture
def geoip_db(tmp_path: Path) -> Path:
    return write_geoip_db(
        tmp_path / "geo.mmdb",
        {
            "127.0.0.4/32": country("JP", "AS"),
            "127.0.0.5/32": country("BR", "SA"),
            "127.0.0.2/32": country("BR", "SA"),  # the map says eu: the operator's ranges come first
            PROXY + "/32": country("DE", "EU"),
        },
    )


def cluster(*, drained: tuple[str, ...] = ()) -> list[Any]:
    """Two edges and an origin in eu, one edge and origin each in us and ap; `drained` regions draining."""
    nodes = [
        node("edge-eu-1", "edge", "eu"),
        node("edge-eu-2", "edge", "eu"),
        node("edge-us-1", "edge", "us"),
        node("edge-ap-1", "edge", "ap"),
        node("origin-eu", "origin", "eu", streams=5),
        node("origin-us", "origin", "us", streams=0),
        node("origin-ap", "origin", "ap", streams=9),
    ]
    return [node(n.id, n.role, n.region, streams=n.load.streams, draining=n.region in drained) for n in nodes]


Get = Callable[..., Awaitable[tuple[int, Any]]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Get]]]:
    """serve(settings flags, nodes) -> get(path, source=ADDRESS, headers=...) -> (status, JSON or Location)."""
    async with AsyncExitStack() as stack:

        async def start(flags: dict[str, Any], nodes: list[Any]) -> Get:
            registry = MemoryRegistry()
            for info in nodes:
                await registry.heartbeat(info, TTL)
            settings: ControlSettings = load_settings(ControlSettings, flags)
            server = TestServer(control_app(settings, registry), host="127.0.0.1")
            await server.start_server()
            stack.push_async_callback(server.close)
            sessions: dict[str, aiohttp.ClientSession] = {}

            async def get(path: str, source: str = "127.0.0.1", headers: dict[str, str] | None = None) -> Any:
                if source not in sessions:
                    connector = aiohttp.TCPConnector(local_addr=(source, 0))
                    sessions[source] = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
                url = str(server.make_url(path))
                async with sessions[source].get(url, headers=headers, allow_redirects=False) as resp:
                    if resp.status == 302:
                        return resp.status, resp.headers["Location"]
                    if resp.content_type == "application/json":
                        return resp.status, await resp.json()
                    return resp.status, await resp.text()

            return get

        yield start


@pytest.fixture
async def get(serve: Callable[..., Awaitable[Get]], geoip_db: Path) -> Get:
    flags = {
        "region_map": REGION_MAP,
        "geoip_db": str(geoip_db),
        "geoip_regions": GEOIP_REGIONS,
        "default_region": "us",
        "trusted_proxies": "127.0.0.8/29",
    }
    return await serve(flags, cluster())


PLAY = "/v1/route/play?stream=live/x"
PUBLISH = "/v1/route/publish?stream=live/x"


@pytest.mark.parametrize(
    ("source", "region", "how"),
    [
        ("127.0.0.2", "eu", "network"),
        ("127.0.0.3", "us", "network"),
        ("127.0.0.4", "ap", "geoip"),  # Japan
        ("127.0.0.5", "us", "geoip"),  # Brazil: by its continent
        ("127.0.0.6", "us", "default"),
        ("127.0.0.18", "ap", "network"),
        ("127.0.0.17", "eu", "network"),  # the most specific range wins
    ],
)
async def test_each_address_plays_and_publishes_in_its_region(get: Get, source: str, region: str, how: str) -> None:
    status, play = await get(PLAY, source)
    assert status == 200, play
    assert play["region"] == region and play["edge"].startswith(f"edge-{region}-")
    assert play["client_region"] == region and play["region_source"] == how
    status, publish = await get(PUBLISH, source)
    assert status == 200, publish
    assert publish["origin"] == f"origin-{region}" and publish["region_source"] == how
    status, location = await get("/play/live/x", source)
    assert status == 302 and location == f"http://{play['edge']}.test:8080/live/x.flv"


async def test_an_explicit_region_still_wins(get: Get) -> None:
    status, play = await get(PLAY + "&region=ap", "127.0.0.2")
    assert status == 200 and play["region"] == "ap" and play["region_source"] == "query"
    status, location = await get("/play/live/x?region=us&format=rtmp", "127.0.0.2")
    assert status == 302 and location == "rtmp://edge-us-1.test:1935/live/x"
    status, body = await get(PLAY + "&region=..", "127.0.0.2")
    assert status == 400 and "region" in body["error"]


async def test_a_forged_header_from_an_untrusted_peer_changes_nothing(get: Get) -> None:
    for header in ("X-Forwarded-For", "Forwarded"):
        forged = "127.0.0.2" if header == "X-Forwarded-For" else "for=127.0.0.2"
        status, play = await get(PLAY, "127.0.0.3", {header: forged})
        assert status == 200 and play["region"] == "us" and play["region_source"] == "network"


async def test_a_trusted_proxy_is_believed_from_the_right(get: Get) -> None:
    status, play = await get(PLAY, PROXY, {"X-Forwarded-For": "127.0.0.2"})
    assert play["region"] == "eu" and play["region_source"] == "network"
    # The client wrote 127.0.0.2 itself; the proxy appended 127.0.0.4 (Japan), the address it saw.
    status, play = await get(PLAY, PROXY, {"X-Forwarded-For": "127.0.0.2, 127.0.0.4"})
    assert play["region"] == "ap" and play["region_source"] == "geoip"
    # Two proxies, both trusted: the hop before them.
    status, play = await get(PUBLISH, PROXY, {"X-Forwarded-For": "127.0.0.3, 127.0.0.10"})
    assert play["origin"] == "origin-us" and play["region_source"] == "network"
    # A proxy that sends no header is itself the client (Germany in the GeoIP database).
    status, play = await get(PLAY, PROXY)
    assert play["region"] == "eu" and play["region_source"] == "geoip"
    # An address nobody can read: no region from the address, the default.
    status, play = await get(PLAY, PROXY, {"X-Forwarded-For": "127.0.0.2, unknown"})
    assert play["region"] == "us" and play["region_source"] == "default"
    # Forwarded is not the header this cluster's proxies set: ignored, even from a trusted proxy.
    status, play = await get(PLAY, PROXY, {"Forwarded": "for=127.0.0.2"})
    assert status == 200 and play["region_source"] == "geoip" and play["region"] == "eu"


async def test_forwarded_header_when_the_proxies_set_it(serve: Callable[..., Awaitable[Get]]) -> None:
    get = await serve({"region_map": REGION_MAP, "trusted_proxies": PROXY, "proxy_header": "forwarded"}, cluster())
    status, play = await get(PLAY, PROXY, {"Forwarded": 'for="127.0.0.66:4711", for=127.0.0.3;proto=https'})
    assert play["region"] == "us" and play["region_source"] == "network"
    status, play = await get(PLAY, PROXY, {"X-Forwarded-For": "127.0.0.3"})
    assert play["client_region"] is None and play["region_source"] == "none"  # unmapped, no default
    status, play = await get(PLAY, "127.0.0.2", {"Forwarded": "for=127.0.0.3"})
    assert status == 200 and play["region"] == "eu"  # from an untrusted peer


async def test_a_region_whose_edges_are_down_falls_back_along_the_list(
    serve: Callable[..., Awaitable[Get]],
) -> None:
    flags = {"region_map": REGION_MAP, "region_fallback": "eu=ap|us"}
    # eu's edges and origin are draining: ap, the first on eu's list, though us is less loaded.
    get = await serve(flags, cluster(drained=("eu",)))
    for i in range(20):
        status, play = await get(f"/v1/route/play?stream=live/s{i}", "127.0.0.2")
        assert status == 200 and play["edge"] == "edge-ap-1", play
        assert play["client_region"] == "eu" and play["region_source"] == "network"
    status, publish = await get(PUBLISH, "127.0.0.2")
    assert publish["origin"] == "origin-ap"
    # eu and ap both down, or absent: us, the next on the list.
    get = await serve(flags, [n for n in cluster(drained=("eu",)) if n.region != "ap"])
    status, play = await get(PLAY, "127.0.0.2")
    assert play["edge"] == "edge-us-1"
    # Nothing left on the list: 503, never a region the operator left out (sa).
    get = await serve(flags, [*cluster(drained=("eu", "ap", "us")), node("edge-sa-1", "edge", "sa")])
    status, body = await get(PLAY, "127.0.0.2")
    assert status == 503
    assert body == {"error": "no healthy edge available to play from in region eu or its fallback regions ap, us"}
    status, body = await get("/play/live/x", "127.0.0.2")
    assert status == 503 and "fallback regions ap, us" in body["error"]
    # ...unless the list ends with '*'.
    get = await serve(
        {**flags, "region_fallback": "eu=ap|us|*"},
        [*cluster(drained=("eu", "ap", "us")), node("edge-sa-1", "edge", "sa")],
    )
    status, play = await get(PLAY, "127.0.0.2")
    assert status == 200 and play["edge"] == "edge-sa-1"


def region_counts(text: str) -> dict[tuple[str, str], float]:
    counts = {}
    for family in text_string_to_metric_families(text):
        if family.name == "livecdn_control_region_source":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[(sample.labels["route"], sample.labels["source"])] = sample.value
    return counts


async def test_metrics_count_each_source_per_app(serve: Callable[..., Awaitable[Get]], get: Get) -> None:
    for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.6"):
        await get(PLAY, source)
    await get("/play/live/x", "127.0.0.2")
    await get(PLAY + "&region=eu", "127.0.0.2")
    await get(PUBLISH, "127.0.0.5")
    await get(PLAY + "&region=bad/", "127.0.0.2")  # a 400 decides nothing
    status, text = await get("/metrics")
    assert status == 200
    counts = region_counts(text)
    assert counts[("play", "network")] == 3
    assert counts[("play", "geoip")] == 1
    assert counts[("play", "default")] == 1
    assert counts[("play", "query")] == 1
    assert counts[("play", "none")] == 0
    assert counts[("publish", "geoip")] == 1
    assert counts[("publish", "network")] == 0
    # Another app in the same process counts on its own registry.
    other = await serve({}, cluster())
    await other(PLAY, "127.0.0.2")
    status, text = await other("/metrics")
    assert region_counts(text)[("play", "none")] == 1 and region_counts(text)[("play", "network")] == 0


async def test_without_region_settings_nothing_changes(serve: Callable[..., Awaitable[Get]]) -> None:
    get = await serve({}, cluster())
    spread = set()
    for i in range(30):
        status, play = await get(f"/v1/route/play?stream=live/s{i}", "127.0.0.2", {"X-Forwarded-For": "127.0.0.3"})
        assert status == 200 and play["client_region"] is None and play["region_source"] == "none"
        spread.add(play["region"])
    assert spread == {"eu", "us", "ap"}  # every healthy edge is a candidate, as before
