"""The small aiohttp app every node runs: /healthz, /readyz, /metrics, /v1/stats."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from common.runtime.metrics import make_registry, render

StatsFn = Callable[[], dict[str, Any]]
ReadyFn = Callable[[], Awaitable[dict[str, Any]]]

STATS_KEY: web.AppKey[StatsFn] = web.AppKey("stats")
READY_KEY: web.AppKey[ReadyFn] = web.AppKey("ready")
METRICS_KEY = web.AppKey("metrics", CollectorRegistry)


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


async def _always_ready() -> dict[str, Any]:
    return {"ready": True}


def make_node_app(stats_fn: StatsFn, ready_fn: ReadyFn = _always_ready) -> web.Application:
    app = web.Application()
    app[STATS_KEY] = stats_fn
    app[READY_KEY] = ready_fn
    app[METRICS_KEY] = make_registry(stats_fn)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/stats", stats)
    return app
