"""The small aiohttp app every node runs: /healthz, /readyz, /metrics, /v1/stats.

A worker process of a node answers /metrics and /v1/stats for the whole node (a WholeNode view of every
worker), and its own at /v1/worker/metrics and /v1/worker/stats.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from common.runtime.metrics import make_registry, render

StatsFn = Callable[[], dict[str, Any]]
ReadyFn = Callable[[], Awaitable[dict[str, Any]]]

STATS_KEY: web.AppKey[StatsFn] = web.AppKey("stats")
READY_KEY: web.AppKey[ReadyFn] = web.AppKey("ready")
METRICS_KEY = web.AppKey("metrics", CollectorRegistry)


class WholeNode(Protocol):
    """The node all of whose workers this process is one of (common.runtime.workerview.WorkerView)."""

    async def stats(self) -> dict[str, Any]: ...
    async def metrics(self) -> bytes: ...


WHOLE_NODE_KEY: web.AppKey[WholeNode] = web.AppKey("whole_node")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 while the node takes new work; 503 with the reason (registry unreachable, draining) otherwise."""
    status = await request.app[READY_KEY]()
    return web.json_response(status, status=200 if status.get("ready") else 503)


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS_KEY]())


async def metrics(request: web.Request) -> web.Response:
    body = render(request.app[METRICS_KEY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def node_stats(request: web.Request) -> web.Response:
    return web.json_response(await request.app[WHOLE_NODE_KEY].stats())


async def node_metrics(request: web.Request) -> web.Response:
    body = await request.app[WHOLE_NODE_KEY].metrics()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _always_ready() -> dict[str, Any]:
    return {"ready": True}


def make_node_app(
    stats_fn: StatsFn, ready_fn: ReadyFn = _always_ready, whole_node: WholeNode | None = None
) -> web.Application:
    app = web.Application()
    app[STATS_KEY] = stats_fn
    app[READY_KEY] = ready_fn
    app[METRICS_KEY] = make_registry(stats_fn)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if whole_node is None:
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/v1/stats", stats)
    else:
        app[WHOLE_NODE_KEY] = whole_node
        app.router.add_get("/metrics", node_metrics)
        app.router.add_get("/v1/stats", node_stats)
        app.router.add_get("/v1/worker/metrics", metrics)
        app.router.add_get("/v1/worker/stats", stats)
    return app
