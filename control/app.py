"""The control plane's HTTP API: publish/play routing, the 302 form for players, the cluster view,
health, metrics and a small status page. Routing decisions live in common.placement (pure functions),
the edges' view for them in control.edges, a client's address and region in control.client_address and
control.client_region; this module only reads the registry, validates input and shapes answers.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from common.keys import StreamKey, valid_name
from common.placement.choice import RegionFallback, choose_origin
from common.placement.hashing import DEFAULT_EPSILON
from common.redact import redact_url
from common.registry.base import NodeInfo, Registry, RegistryError
from common.registry.pending import PendingCounts, open_pending_counts
from control.client_address import ProxyTrust
from control.client_region import ClientRegions, RegionChoice
from control.coalesce import Coalesced
from control.edges import EdgeRouting
from control.metrics import ControlMetrics
from control.status import STATUS_FEED_KEY, StatusFeed, status_events, status_snapshot
from control.watch import add_web_routes

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


REGISTRY_KEY: web.AppKey[Registry] = web.AppKey("registry", Registry)
ORIGINS_KEY: web.AppKey[Coalesced[list[NodeInfo]]] = web.AppKey("origins")
EDGES_KEY: web.AppKey[EdgeRouting] = web.AppKey("edges", EdgeRouting)
PENDING_KEY: web.AppKey[PendingCounts] = web.AppKey("pending", PendingCounts)
EPSILON_KEY: web.AppKey[float] = web.AppKey("epsilon", float)
REGIONS_KEY: web.AppKey[ClientRegions] = web.AppKey("regions", ClientRegions)
PROXIES_KEY: web.AppKey[ProxyTrust] = web.AppKey("proxies", ProxyTrust)
FALLBACK_KEY: web.AppKey[RegionFallback] = web.AppKey("region_fallback")
METRICS_KEY: web.AppKey[ControlMetrics] = web.AppKey("metrics", ControlMetrics)


class BadRequest(Exception):
    """Invalid input; the text goes to the client with a 400."""


class Unavailable(Exception):
    """No node can take the request; the text goes to the client with a 503."""


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Translate failures once, at the boundary, into JSON errors with a clear text."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return error_response(400, str(exc))
    except Unavailable as exc:
        return error_response(503, str(exc))
    except RegistryError as exc:
        log.warning("registry error on %s %s: %s", request.method, request.path, exc)
        return error_response(503, f"cluster registry unavailable, retry later: {exc}")
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            response = error_response(exc.status, exc.reason)
            if "Allow" in exc.headers:  # 405 keeps telling which methods are allowed
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        raise


# -- input -----------------------------------------------------------------------------------------


def parse_stream(value: str | None) -> StreamKey:
    """`APP/NAME`, both path-safe names, nothing else (no query string, no extra segments)."""
    if not value:
        raise BadRequest("missing stream: pass stream=APP/NAME")
    if "?" in value or "&" in value:
        raise BadRequest(
            f"invalid stream {value!r}: give it as APP/NAME without a query string "
            "(a publish key belongs in the publisher's RTMP URL)"
        )
    try:
        key = StreamKey.parse(value)
    except ValueError:
        raise BadRequest(f"invalid stream {value!r}: expected exactly APP/NAME") from None
    return checked_stream(key)


def checked_stream(key: StreamKey) -> StreamKey:
    for label, part in (("app", key.app), ("name", key.name)):
        if not valid_name(part):
            raise BadRequest(
                f"invalid stream {label} {part!r}: use letters, digits, '_', '-', '.' "
                "(up to 128, not starting with '.' or '-', no '..')"
            )
    return key


def parse_region(request: web.Request) -> str | None:
    value = request.query.get("region")
    if value is None or value == "":
        return None
    if not valid_name(value):
        raise BadRequest(f"invalid region {value!r}: use letters, digits, '_', '-', '.' (up to 128)")
    return value


def client_region(request: web.Request, route: str) -> RegionChoice:
    """The region the client asked for (?region=), else the one its address is in, else the default;
    counted per route and source."""
    app = request.app
    asked = parse_region(request)
    address = None
    if asked is None:
        proxies = app[PROXIES_KEY]
        address = proxies.client(request.remote, request.headers.getall(proxies.header_name, []))
    choice = app[REGIONS_KEY].decide(asked, address)
    app[METRICS_KEY].region_decided(route, choice.source)
    return choice


# -- routing ---------------------------------------------------------------------------------------


def _placement(choice: RegionChoice) -> dict[str, Any]:
    """Where the client was placed, beside the node's own region: tells an operator why it went there."""
    return {"client_region": choice.region, "region_source": choice.source.value}


def _origin_answer(key: StreamKey, origin: NodeInfo, choice: RegionChoice) -> dict[str, Any]:
    stream = str(key)
    return {
        "stream": stream,
        "origin": origin.id,
        "region": origin.region,
        "rtmp": f"rtmp://{origin.rtmp}/{stream}",
        **_placement(choice),
    }


def _edge_answer(key: StreamKey, edge: NodeInfo, choice: RegionChoice, token: str) -> dict[str, Any]:
    stream = str(key)
    query = f"?{token}" if token else ""
    return {
        "stream": stream,
        "edge": edge.id,
        "region": edge.region,
        "rtmp": f"rtmp://{edge.rtmp}/{stream}{query}",
        "flv": f"http://{edge.http}/{stream}.flv{query}",
        "hls": f"http://{edge.http}/{stream}.m3u8{query}",  # LL-HLS, where the edge serves it
        **_placement(choice),
    }


def play_token(request: web.Request) -> str:
    """The viewer's play token (exp, sig), passed on to the URLs we answer: the edge checks it, we do not."""
    expires, sig = request.query.get("exp", ""), request.query.get("sig", "")
    if not expires and not sig:
        return ""
    if not expires.isdigit() or len(expires) > 12 or not sig or len(sig) > 128:
        raise BadRequest("invalid play token: pass the exp and sig that livecdn sign printed")
    return urlencode({"exp": expires, "sig": sig})


def _none_available(what: str, choice: RegionChoice, fallback: RegionFallback) -> Unavailable:
    order: Sequence[str] | None = fallback.get(choice.region) if choice.region is not None else None
    if order is None:
        return Unavailable(f"no healthy {what}")
    return Unavailable(f"no healthy {what} in region {choice.region} or its fallback regions {', '.join(order)}")


async def _route_play(request: web.Request, key: StreamKey) -> dict[str, Any]:
    choice = client_region(request, "play")
    # Deliberately no registry.lookup: an edge answers StreamNotFound itself, and routing stays one read.
    edge = await request.app[EDGES_KEY].choose(str(key), choice.region)
    if edge is None:
        raise _none_available("edge available to play from", choice, request.app[FALLBACK_KEY])
    return _edge_answer(key, edge, choice, play_token(request))


async def route_publish(request: web.Request) -> web.Response:
    key = parse_stream(request.query.get("stream"))
    choice = client_region(request, "publish")
    registry = request.app[REGISTRY_KEY]
    claim, origins = await asyncio.gather(registry.lookup(str(key)), request.app[ORIGINS_KEY].get())
    fallback = request.app[FALLBACK_KEY]
    origin = choose_origin(origins, claim, choice.region, fallback)
    if origin is None:
        raise _none_available("origin available to publish to", choice, fallback)
    return web.json_response(_origin_answer(key, origin, choice))


async def route_play(request: web.Request) -> web.Response:
    key = parse_stream(request.query.get("stream"))
    return web.json_response(await _route_play(request, key))


async def play_redirect(request: web.Request) -> web.StreamResponse:
    key = checked_stream(StreamKey(request.match_info["app"], request.match_info["name"]))
    # An HTTP redirect is followed by HTTP clients, and players do not follow one to rtmp:// (ffmpeg
    # refuses it): HTTP-FLV unless the client asks for RTMP.
    fmt = request.query.get("format", "flv")
    if fmt not in ("rtmp", "flv"):
        raise BadRequest(f"invalid format {fmt!r}: use rtmp or flv")
    answer = await _route_play(request, key)
    raise web.HTTPFound(answer[fmt], headers={"Cache-Control": "no-store"})


# -- cluster view and health -----------------------------------------------------------------------


async def list_nodes(request: web.Request) -> web.Response:
    nodes = await request.app[REGISTRY_KEY].nodes()
    return web.json_response({"nodes": [asdict(node) for node in nodes]})


async def list_streams(request: web.Request) -> web.Response:
    claims = await request.app[REGISTRY_KEY].streams()
    return web.json_response({"streams": [asdict(claim) for claim in claims]})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS_KEY].render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def readyz(request: web.Request) -> web.Response:
    try:
        ready = await request.app[REGISTRY_KEY].ping()
    except RegistryError as exc:
        return web.json_response({"ready": False, "error": f"cluster registry unavailable: {exc}"}, status=503)
    return web.json_response({"ready": ready}, status=200 if ready else 503)


def _row(cells: list[object]) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells) + "</tr>"


def _table(headers: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(rows) or f'<tr><td colspan="{len(headers)}">none</td></tr>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


async def status_page(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY_KEY]
    nodes, claims = await asyncio.gather(registry.nodes(), registry.streams())
    node_rows = [
        _row(
            [
                n.id,
                n.role,
                n.region,
                n.rtmp,
                n.http,
                n.load.viewers,
                n.load.streams,
                f"{n.load.bits_out / 1e6:.2f}",
                "draining" if n.draining else "ok",
            ]
        )
        for n in nodes
    ]
    claim_rows = [_row([c.key, c.origin, c.rtmp_url, c.epoch]) for c in claims]
    # Rendered here too, so the page says something without JavaScript; static/status.js then replaces
    # #live with every snapshot from /v1/events (control.status).
    page = (
        '<!doctype html><html><head><meta charset="utf-8"><title>livecdn control</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="stylesheet" href="/static/style.css"><script defer src="/static/status.js"></script></head><body>'
        f'<h1>livecdn control</h1><p class="muted">registry: <span id="registry">'
        f'{html.escape(redact_url(registry.url))}</span> · <span id="updated">not live</span></p><div id="live">'
        f"<h2>Nodes ({len(nodes)})</h2>"
        + _table(["id", "role", "region", "rtmp", "http", "viewers", "streams", "Mbit/s out", "state"], node_rows)
        + f"<h2>Streams ({len(claims)})</h2>"
        + _table(["stream", "origin", "rtmp", "epoch"], claim_rows)
        + "</div></body></html>"
    )
    return web.Response(text=page, content_type="text/html")


# -- app -------------------------------------------------------------------------------------------


def make_control_app(
    registry: Registry,
    *,
    epsilon: float = DEFAULT_EPSILON,
    close_registry: bool = True,
    regions: ClientRegions | None = None,
    proxies: ProxyTrust | None = None,
    region_fallback: Mapping[str, Sequence[str]] | None = None,
    pending_ttl: float = 3.0,
    pending_interval: float = 0.005,
    pending_lag: float = 0.3,
    node_list_max_age: float = 0.1,
) -> web.Application:
    """The control plane app. The registry is started with the app; it is closed on shutdown unless
    close_registry is False (for a registry the caller shares with other components and closes itself).

    `regions` places clients that name no region (none given: only ?region= does, as before); the app
    owns it and closes it on shutdown. `proxies` says whose X-Forwarded-For/Forwarded to believe (none
    given: nobody's). `region_fallback` lists, per region, where its clients go when it has no healthy
    node (common.placement.choice.in_region). Viewers routed to an edge since its last heartbeat count
    on top of its reported load for `pending_ttl` seconds at most, shared with the other replicas through
    the registry's pending counters (common.registry.pending), exchanged every `pending_interval`; 0 turns
    that off. A new heartbeat keeps the decisions of the last `pending_lag` seconds before it (viewers not
    connected yet; common.placement.unreported). The edges' node list is routed on for `node_list_max_age`
    seconds (0: read for every burst).
    """
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    app = web.Application(middlewares=[errors_middleware])
    app[REGISTRY_KEY] = registry
    for name, value in (
        ("pending_ttl", pending_ttl),
        ("pending_interval", pending_interval),
        ("pending_lag", pending_lag),
        ("node_list_max_age", node_list_max_age),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    app[EPSILON_KEY] = float(epsilon)
    app[REGIONS_KEY] = ClientRegions() if regions is None else regions
    app[PROXIES_KEY] = ProxyTrust() if proxies is None else proxies
    app[FALLBACK_KEY] = fallback = dict(region_fallback or {})
    app[METRICS_KEY] = control_metrics = ControlMetrics()
    app[PENDING_KEY] = pending = open_pending_counts(registry)
    app[ORIGINS_KEY] = Coalesced(lambda: registry.nodes("origin"))
    app[STATUS_FEED_KEY] = StatusFeed(registry)
    app[EDGES_KEY] = EdgeRouting(
        registry,
        pending,
        control_metrics,
        epsilon=epsilon,
        fallback=fallback,
        pending_ttl=pending_ttl,
        pending_interval=pending_interval,
        pending_lag=pending_lag,
        node_list_max_age=node_list_max_age,
    )

    async def registry_ctx(app: web.Application) -> AsyncIterator[None]:
        await registry.start()
        try:
            yield
        finally:
            if close_registry:
                await registry.close()

    async def pending_ctx(app: web.Application) -> AsyncIterator[None]:
        await pending.start()
        try:
            yield
        finally:
            await pending.close()

    async def node_lists_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await app[ORIGINS_KEY].close()
        await app[EDGES_KEY].close()

    async def regions_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        app[REGIONS_KEY].close()

    async def close_status_feed(app: web.Application) -> None:
        await app[STATUS_FEED_KEY].close()  # on shutdown, before aiohttp waits for open handlers

    app.cleanup_ctx.append(registry_ctx)
    app.cleanup_ctx.append(pending_ctx)
    app.cleanup_ctx.append(node_lists_ctx)
    app.cleanup_ctx.append(regions_ctx)
    app.on_shutdown.append(close_status_feed)
    app.router.add_get("/", status_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/route/publish", route_publish)
    app.router.add_get("/v1/route/play", route_play)
    app.router.add_get("/play/{app}/{name}", play_redirect)
    app.router.add_get("/v1/nodes", list_nodes)
    app.router.add_get("/v1/streams", list_streams)
    app.router.add_get("/v1/status", status_snapshot)
    app.router.add_get("/v1/events", status_events)
    add_web_routes(app)
    return app
