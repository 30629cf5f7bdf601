"""Run the control plane: open the registry, serve the API until told to stop, clean up."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable

from aiohttp import web

from common.redact import redact_url
from common.registry import Registry, open_registry
from common.runtime.run import start_app
from control.app import make_control_app
from control.client_address import ProxyTrust
from control.client_region import ClientRegions
from control.settings import ControlSettings

log = logging.getLogger(__name__)


def control_app(settings: ControlSettings, registry: Registry, *, close_registry: bool = True) -> web.Application:
    """The control plane app as the settings describe it (opens the GeoIP database, if any)."""
    return make_control_app(
        registry,
        epsilon=settings.epsilon,
        close_registry=close_registry,
        regions=ClientRegions.from_settings(settings),
        proxies=ProxyTrust(settings.trusted_proxies, settings.proxy_header),
        region_fallback=settings.region_fallback,
        pending_ttl=settings.pending_ttl,
        pending_interval=settings.pending_interval,
        pending_lag=settings.pending_lag,
        node_list_max_age=settings.node_list_max_age,
    )


def http_url(host: str, port: int) -> str:
    """http://HOST:PORT, with an IPv6 literal in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def serve_control(
    settings: ControlSettings,
    stop: asyncio.Event,
    *,
    registry: Registry | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the control plane on settings.http (port 0: any free port) until `stop` is set.

    Opens the registry from settings.registry unless `registry` is given; a registry opened here is closed
    here, a given one is started (idempotent) but left open for its owner to close. `on_ready` gets the
    base URL once the socket listens.
    """
    owned = registry is None
    reg = open_registry(settings.registry) if registry is None else registry
    app = control_app(settings, reg, close_registry=owned)
    runner, bound = await start_app(app, settings.http)
    # Everything alive now (modules, settings, the app) lives as long as the process: out of the
    # collector's sight, a full collection stops the loop for a few ms instead of tens (routing
    # allocates fast, so full collections come often; p99 at 7,000 routes/s: 230 ms -> 14 ms).
    gc.collect()
    gc.freeze()
    try:
        url = http_url(bound.host, bound.port)
        log.info("control plane listening on %s (registry %s)", url, redact_url(reg.url))
        if on_ready is not None:
            on_ready(url)
        await stop.wait()
    finally:
        await runner.cleanup()
