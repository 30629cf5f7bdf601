"""Running processes: one HTTP runner for every node and the control plane, signals, logging, uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from common.runtime.config import HostPort
from common.runtime.node import Node
from common.system import raise_fd_limit

log = logging.getLogger(__name__)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The fields of a JSON line besides those the call site adds with extra= (event, stream, client, format...).
JSON_FIELDS = ("asctime", "levelname", "name", "message")


class _NodeField(logging.Filter):
    """Stamps every record with the node that wrote it, so a log shipper can tell the nodes' lines apart."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "node"):
            record.node = self.node
        return True


def configure_logging(level: str, log_format: str = "text", node: str | None = None) -> None:
    """Text lines for people, or one JSON object per line (``log_format="json"``) for log shippers: the
    stdlib records as they are, plus the fields call sites pass with ``extra=`` and ``node``."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(list(JSON_FIELDS), rename_fields={"levelname": "level", "asctime": "time"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    if node is not None:
        handler.addFilter(_NodeField(node))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


async def start_app(app: web.Application, address: HostPort) -> tuple[web.AppRunner, HostPort]:
    """Serve ``app`` on ``address`` (port 0: any free port). Its cleanup contexts start here; returns the
    runner (whose cleanup() stops everything) and the bound address."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, address.host, address.port, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, HostPort(address.host, int(runner.addresses[0][1]))


async def start_node(node: Node) -> web.AppRunner:
    runner, node.addresses.http = await start_app(node.app, node.settings.http)
    return runner


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def serve(node: Node, stop: asyncio.Event | None = None) -> None:
    """Run one node until SIGINT (or ``stop``): at once; or SIGTERM (or POST /v1/drain): after a drain.
    A second SIGTERM during a drain stops at once."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()

    def terminate() -> None:
        if not node.start_drain("SIGTERM"):
            stop.set()  # the second SIGTERM

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, terminate)
    runner = await start_node(node)
    try:
        print(node.banner(), flush=True)
        ends = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(node.finished.wait())]
        try:
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for end in ends:
                end.cancel()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def run_forever(main: Coroutine[Any, Any, None]) -> None:
    """Run the top-level coroutine on uvloop when it is installed."""
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency on Linux
        asyncio.run(main)
    else:
        uvloop.run(main)
