"""Run the control plane: open the registry, serve the API until told to stop, clean up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from common.registry import Registry, open_registry
from control.app import make_control_app
from control.routing import DEFAULT_EPSILON

log = logging.getLogger(__name__)


def http_url(host: str, port: int) -> str:
    """http://HOST:PORT, with an IPv6 literal in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def serve_control(
    registry_url: str,
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    epsilon: float = DEFAULT_EPSILON,
    registry: Registry | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the control plane on host:port (0: any free port) until `stop` is set.

    Opens the registry from `registry_url` unless `registry` is given; a registry opened here is closed
    here, a given one is started (idempotent) but left open for its owner to close. `on_ready` gets the
    base URL once the socket listens.
    """
    owned = registry is None
    reg = open_registry(registry_url) if registry is None else registry
    app = make_control_app(reg, epsilon=epsilon, close_registry=owned)
    runner = web.AppRunner(app, handle_signals=False)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1]) if runner.addresses else port
        url = http_url(host, bound_port)
        log.info("control plane listening on %s (registry %s)", url, reg.url)
        if on_ready is not None:
            on_ready(url)
        await stop.wait()
    finally:
        await runner.cleanup()
