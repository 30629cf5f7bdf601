"""Running processes: one HTTP runner for every node and the control plane, signals, logging, uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web

from common.aio import cancel_and_wait
from common.runtime.config import HostPort
from common.runtime.node import Node
from common.runtime.workerplan import DRAIN_SIGNAL
from common.system import raise_fd_limit

log = logging.getLogger(__name__)

T = TypeVar("T")
PARENT_CHECK_INTERVAL = 1.0  # seconds between looks at a worker's parent where the kernel cannot be asked


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The fields of a JSON line besides those the call site adds with extra= (event, stream, client, format...).
JSON_FIELDS = ("asctime", "levelname", "name", "message")


class _NodeField(logging.Filter):
    """Stamps every record with the node that wrote it, so a log shipper can tell the nodes' lines apart,
    and with the worker process of the node, if it is one."""

    def __init__(self, node: str, worker: int | None = None) -> None:
        super().__init__()
        self.node = node
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "node"):
            record.node = self.node
        if self.worker is not None and not hasattr(record, "worker"):
            record.worker = self.worker
        return True


def configure_logging(level: str, log_format: str = "text", node: str | None = None, worker: int | None = None) -> None:
    """Text lines for people, or one JSON object per line (``log_format="json"``) for log shippers: the
    stdlib records as they are, plus the fields call sites pass with ``extra=``, ``node`` and ``worker``
    (a worker process of a node; text lines name it too, since the node's processes share one output)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(list(JSON_FIELDS), rename_fields={"levelname": "level", "asctime": "time"}))
    elif worker is not None:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT.replace("%(name)s", f"worker {worker} %(name)s")))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    if node is not None:
        handler.addFilter(_NodeField(node, worker))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


async def start_app(
    app: web.Application, address: HostPort, *, reuse_port: bool = False
) -> tuple[web.AppRunner, HostPort]:
    """Serve ``app`` on ``address`` (port 0: any free port; ``reuse_port``: beside the other processes that
    listen on it, SO_REUSEPORT). Its cleanup contexts start here; returns the runner (whose cleanup() stops
    everything) and the bound address."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, address.host, address.port, reuse_address=True, reuse_port=reuse_port or None)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, HostPort(address.host, int(runner.addresses[0][1]))


async def start_node(node: Node) -> web.AppRunner:
    """Start a node's app and listeners. A worker of a node also serves its app on its private loopback
    port, where the node's other processes ask for its own stats and metrics."""
    worker = node.worker
    runner, node.addresses.http = await start_app(node.app, node.settings.http, reuse_port=worker is not None)
    if worker is not None:
        try:
            await web.SockSite(runner, worker.private_http_socket()).start()
        except BaseException:
            await runner.cleanup()
            raise
    return runner


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def serve(node: Node, stop: asyncio.Event | None = None, watch_parent: bool = False) -> None:
    """Run one node until SIGINT (or ``stop``): at once; or SIGTERM (or POST /v1/drain): after a drain.
    A second SIGTERM during a drain stops at once. A worker of a node also drains when its supervisor
    says so (DRAIN_SIGNAL), and with ``watch_parent`` stops once its supervisor is gone."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    sigterms = 0

    def terminate() -> None:
        nonlocal sigterms
        sigterms += 1
        # The second SIGTERM stops at once. A worker counts its own: the node's drain may have reached it
        # first, from its supervisor (systemd, for one, signals every process of a unit at once).
        if not node.start_drain("SIGTERM") and (node.worker is None or sigterms > 1):
            stop.set()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, terminate)
        if node.worker is not None:
            loop.add_signal_handler(DRAIN_SIGNAL, node.start_drain, "the node drains")
    runner = await start_node(node)
    watcher = asyncio.create_task(_until_orphaned(node, stop), name="parent watch") if watch_parent else None
    try:
        if node.worker is None:
            print(node.banner(), flush=True)
        else:
            log.info("worker %d (pid %d) serving", node.worker.index, os.getpid())
        ends = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(node.finished.wait())]
        try:
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for end in ends:
                end.cancel()
        log.info("shutting down")
    finally:
        if watcher is not None:
            await cancel_and_wait(watcher)
        await runner.cleanup()


async def _until_orphaned(node: Node, stop: asyncio.Event) -> None:
    """Where the kernel cannot stop a worker with its supervisor (no prctl): look at the parent instead."""
    while node.worker is not None and node.worker.supervised():  # noqa: ASYNC110
        await asyncio.sleep(PARENT_CHECK_INTERVAL)
    log.warning("the supervisor is gone: stopping")
    stop.set()


def run_forever(main: Coroutine[Any, Any, T]) -> T:
    """Run the top-level coroutine on uvloop when it is installed; returns what it returns."""
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency on Linux
        return asyncio.run(main)
    return uvloop.run(main)
