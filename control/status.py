"""The live status page's data: the registry's nodes and stream claims, plus each node's /v1/stats (viewers
per stream, and whether it answers at all), pushed to browsers as server-sent events (aiohttp-sse).

One snapshot is built at most every `interval` seconds whoever asks, so any number of open status pages
cost the cluster one registry read and one stats request per node per interval. Nothing secret is in it:
node addresses are on /v1/nodes already, and the registry URL is redacted.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp_sse import sse_response

from common.redact import redact_url
from common.registry.base import NodeInfo, Registry, StreamClaim
from control.coalesce import Coalesced

STATS_TIMEOUT = 1.0  # a node slower than this to answer its stats is shown as not answering


@dataclass(frozen=True, slots=True)
class NodeStats:
    answered: bool
    viewers: dict[str, int]  # stream key -> viewers on that node


def _node_row(node: NodeInfo, stats: NodeStats, now: float) -> dict[str, Any]:
    if node.draining:
        state = "draining"
    elif stats.answered:
        state = "ok"
    else:
        state = "not answering"
    return {
        "id": node.id,
        "role": node.role,
        "region": node.region,
        "rtmp": node.rtmp,
        "http": node.http,
        "viewers": node.load.viewers,
        "streams": node.load.streams,
        "mbps_out": round(node.load.bits_out / 1e6, 3),
        "draining": node.draining,
        "state": state,
        "heartbeat_age_s": round(max(0.0, now - node.updated), 1) if node.updated else None,
    }


def _stream_row(claim: StreamClaim, edges: list[tuple[NodeInfo, NodeStats]]) -> dict[str, Any]:
    on_edges = [
        {"id": edge.id, "region": edge.region, "viewers": stats.viewers[claim.key]}
        for edge, stats in edges
        if claim.key in stats.viewers
    ]
    return {
        "stream": claim.key,
        "origin": claim.origin,
        "epoch": claim.epoch,
        "since": claim.since,
        "edges": on_edges,
        "viewers": sum(edge["viewers"] for edge in on_edges),
    }


def build_snapshot(
    registry_url: str, nodes: list[NodeInfo], claims: list[StreamClaim], stats: list[NodeStats], now: float
) -> dict[str, Any]:
    """The page's whole state, as JSON-ready data (pure: the tests feed it records directly)."""
    edges = [(node, st) for node, st in zip(nodes, stats, strict=True) if node.role == "edge"]
    return {
        "registry": redact_url(registry_url),
        "nodes": sorted(
            (_node_row(node, st, now) for node, st in zip(nodes, stats, strict=True)),
            key=lambda row: (row["role"], row["region"], row["id"]),
        ),
        "streams": sorted((_stream_row(claim, edges) for claim in claims), key=lambda row: row["stream"]),
    }


class StatusFeed:
    """Builds snapshots on demand, one at a time, reused for `interval` seconds."""

    def __init__(self, registry: Registry, interval: float = 1.0) -> None:
        self.registry = registry
        self.interval = interval
        self._session: aiohttp.ClientSession | None = None
        self._build = Coalesced(self._snapshot)
        self._last: tuple[float, dict[str, Any]] | None = None
        self.streams: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()  # open SSE handlers

    async def get(self) -> dict[str, Any]:
        if self._last is not None and time.monotonic() - self._last[0] < self.interval:
            return self._last[1]
        snapshot = await self._build.get()
        self._last = (time.monotonic(), snapshot)
        return snapshot

    async def _snapshot(self) -> dict[str, Any]:
        nodes, claims = await asyncio.gather(self.registry.nodes(), self.registry.streams())
        stats = await asyncio.gather(*(self._node_stats(node) for node in nodes))
        return build_snapshot(self.registry.url, nodes, claims, list(stats), time.time())

    async def _node_stats(self, node: NodeInfo) -> NodeStats:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STATS_TIMEOUT))
        try:
            async with self._session.get(f"http://{node.http}/v1/stats") as response:
                body = await response.json()
            viewers = {f"{s['app']}/{s['name']}": int(s["viewers"]) for s in body["streams"]}
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            return NodeStats(False, {})
        return NodeStats(True, viewers)

    async def close(self) -> None:
        for task in list(self.streams):  # an open event stream would hold the shutdown up
            task.cancel()
        await self._build.close()
        if self._session is not None:
            await self._session.close()


STATUS_FEED_KEY: web.AppKey[StatusFeed] = web.AppKey("status_feed", StatusFeed)


async def status_snapshot(request: web.Request) -> web.Response:
    return web.json_response(await request.app[STATUS_FEED_KEY].get())


async def status_events(request: web.Request) -> web.StreamResponse:
    """GET /v1/events: a `status` event with the whole snapshot whenever it changed (checked every
    interval); the page re-renders from each one, so a reconnect needs no replay."""
    feed = request.app[STATUS_FEED_KEY]
    task = asyncio.current_task()
    if task is not None:
        feed.streams.add(task)
    async with sse_response(request) as response:
        last = ""
        while response.is_connected():
            data = json.dumps(await feed.get(), separators=(",", ":"))
            if data != last:
                await response.send(data, event="status")
                last = data
            await asyncio.sleep(feed.interval)
    return response
