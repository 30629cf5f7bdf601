"""Running a node: settings -> hub + RTMP service + HTTP app + registry, started and stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, ClassVar

from aiohttp import web

from common.backoff import Backoff
from common.config import HostPort, NodeSettings
from common.http import make_node_app
from common.httpflv import SERVICE_KEY, play_flv
from common.registry import NodeInfo, NodeLoad, Registry, RegistryError, open_registry
from common.rtmp.session import SessionLimits
from common.server import RtmpService, Timeouts
from common.stream import Hub, HubLimits, Stream

log = logging.getLogger(__name__)


class Node:
    """Shared wiring of origin and edge nodes; subclasses pick the service and add cluster tasks."""

    role: ClassVar[str] = "node"
    accepts_publishes: ClassVar[bool] = True

    def __init__(self, settings: NodeSettings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else open_registry(settings.registry)
        self.hub = Hub(
            HubLimits(
                chunk_size=settings.chunk_size,
                gop_max_bytes=settings.gop_max_bytes,
                gop_max_packets=settings.gop_max_packets,
                viewer_high_water=settings.viewer_high_water,
                viewer_max_buffer=settings.viewer_max_buffer,
                viewer_max_stall=settings.viewer_max_stall,
                merge_window=settings.merge_window,
                merge_phases=settings.merge_phases,
            )
        )
        self.session_limits = SessionLimits(
            max_chunk_size=settings.max_in_chunk_size,
            max_message_size=settings.max_message_size,
            max_chunk_streams=settings.max_chunk_streams,
            max_amf_depth=settings.max_amf_depth,
            out_chunk_size=settings.chunk_size,
        )
        self.timeouts = Timeouts(handshake=settings.handshake_timeout, idle=settings.idle_timeout)
        self.service = self.make_service()
        self.started_at = time.time()
        self.rtmp_address: HostPort = settings.rtmp
        self.http_address: HostPort = settings.http
        self.draining = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bytes_out_seen = 0
        self._bits_out = 0.0

    def service_options(self) -> dict[str, Any]:
        """What every role's RtmpService is built with."""
        return {
            "session_limits": self.session_limits,
            "timeouts": self.timeouts,
            "viewer_sndbuf": self.settings.viewer_sndbuf,
        }

    def make_service(self) -> RtmpService:
        return RtmpService(self.hub, **self.service_options())

    # -- views ---------------------------------------------------------------------------------------

    def stream_extra(self, stream: Stream) -> dict[str, Any]:
        """Role-specific fields of a stream in /v1/stats."""
        return {}

    def stream_stats(self) -> list[dict[str, Any]]:
        return [
            {
                "app": s.app,
                "name": s.name,
                "publisher": s.publisher is not None,
                "viewers": s.viewers,
                "bytes_in": s.bytes_in,
                "bytes_out": s.bytes_out,
                "packets_in": s.packets_in,
                "gop_packets": len(s.gop),
                "gop_bytes": s.gop.nbytes,
                "viewers_dropped": s.viewers_dropped,
                "viewer_skips": s.viewer_skips,
                "has_metadata": s.metadata is not None,
                "has_video_header": s.video_header is not None,
                "has_audio_header": s.audio_header is not None,
                **self.stream_extra(s),
            }
            for s in self.hub
        ]

    def stats(self) -> dict[str, Any]:
        return {
            "node": {
                "id": self.settings.node_id,
                "role": self.role,
                "region": self.settings.region,
                "rtmp": self.advertised_rtmp,
                "http": self.advertised_http,
                "registry": _redact(self.registry.url),
                "uptime_s": round(time.time() - self.started_at, 3),
                "connections": len(self.service.connections),
                "connections_total": self.service.connections_total,
                "protocol_errors": self.service.protocol_errors,
                "bits_out": round(self._bits_out),
                "draining": self.draining,
            },
            "streams": self.stream_stats(),
        }

    @property
    def advertised_host(self) -> str:
        return self.settings.advertise_host or self.rtmp_address.public_host

    @property
    def advertised_rtmp(self) -> str:
        return f"{self.advertised_host}:{self.rtmp_address.port}"

    @property
    def advertised_http(self) -> str:
        host = self.settings.advertise_host or self.http_address.public_host
        return f"{host}:{self.http_address.port}"

    def rtmp_url(self, app: str = "live", name: str = "STREAM") -> str:
        return f"rtmp://{self.advertised_rtmp}/{app}/{name}"

    def http_url(self, path: str = "") -> str:
        return f"http://{self.advertised_http}{path}"

    def banner(self) -> str:
        lines = [
            f"livecdn {self.role} {self.settings.node_id} (region {self.settings.region}, "
            f"registry {_redact(self.registry.url)})"
        ]
        if self.accepts_publishes:
            lines.append(f"  publish to: {self.rtmp_url()}")
        lines += [
            f"  play from:  {self.rtmp_url()}   or   {self.http_url('/live/STREAM.flv')}",
            f"  stats:      {self.http_url('/v1/stats')}",
            *self.banner_extra(),
        ]
        return "\n".join(lines)

    def banner_extra(self) -> list[str]:
        return []

    def node_info(self) -> NodeInfo:
        streams = list(self.hub)
        return NodeInfo(
            id=self.settings.node_id,
            role=self.role,
            region=self.settings.region,
            rtmp=self.advertised_rtmp,
            http=self.advertised_http,
            load=NodeLoad(
                viewers=sum(s.viewers for s in streams), streams=len(streams), bits_out=round(self._bits_out)
            ),
            draining=self.draining,
        )

    # -- lifecycle -----------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = make_node_app(self.stats, self.ready)
        app[SERVICE_KEY] = self.service
        app.router.add_get("/{app}/{name}.flv", play_flv)
        app.cleanup_ctx.extend([self._registry_ctx, self._rtmp_listener, self._heartbeat_ctx])
        return app

    async def ready(self) -> bool:
        return await self.registry.ping()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Background work owned by the node: kept in a set, cancelled and awaited at shutdown."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _registry_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.registry.start()
        try:
            yield
        finally:
            await self.registry.close()

    async def _rtmp_listener(self, app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        address = self.settings.rtmp
        server = await loop.create_server(
            self.service.protocol_factory, address.host, address.port, reuse_address=True, backlog=1024
        )
        bound = server.sockets[0].getsockname()
        self.rtmp_address = HostPort(address.host, bound[1])
        log.info("RTMP listening on %s", self.rtmp_address)
        try:
            yield
        finally:
            server.close()
            await self.before_close()
            await self.service.close_all("node shutting down")
            await self.cancel_tasks()
            await server.wait_closed()

    async def before_close(self) -> None:
        """Role-specific shutdown work while the registry is still open (release claims, stop pulls)."""

    async def _heartbeat_ctx(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(RegistryError, TimeoutError):
                async with asyncio.timeout(2):
                    await self.registry.remove_node(self.settings.node_id)

    async def _heartbeat_loop(self) -> None:
        backoff = Backoff(initial=0.5, maximum=self.settings.heartbeat_interval)
        failing = False
        last = time.monotonic()
        while True:
            now = time.monotonic()
            total_out = sum(s.bytes_out for s in self.hub)
            self._bits_out = max(0, total_out - self._bytes_out_seen) * 8 / max(now - last, 1e-3)
            self._bytes_out_seen, last = total_out, now
            try:
                await self.registry.heartbeat(self.node_info(), self.settings.node_ttl)
            except RegistryError as exc:
                if not failing:
                    log.warning("registry heartbeat failed (streams keep flowing; retrying): %s", exc)
                failing = True
                await asyncio.sleep(backoff.next_delay())
                continue
            if failing:
                log.info("registry heartbeat works again")
                failing = False
                backoff.reset()
            await asyncio.sleep(self.settings.heartbeat_interval)


def _redact(url: str) -> str:
    """Hide a password in a registry URL before printing it."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


async def start_node(node: Node) -> web.AppRunner:
    """Start a node's HTTP app (whose cleanup_ctx starts everything else); returns the runner to clean up."""
    runner = web.AppRunner(node.build_app(), access_log=None, handle_signals=False, handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, node.settings.http.host, node.settings.http.port, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0]
    node.http_address = HostPort(node.settings.http.host, bound[1])
    return runner


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def serve(node: Node, stop: asyncio.Event | None = None) -> None:
    """Run one node until SIGINT/SIGTERM (or ``stop``)."""
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    runner = await start_node(node)
    try:
        print(node.banner(), flush=True)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def raise_fd_limit() -> None:
    """Every viewer is a socket: lift the soft open-files limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("open-files limit stays at %d (%s): at most that many viewers", soft, exc)
            return
        log.info("open-files limit raised from %d to %d", soft, target)


def run_forever(main: Coroutine[Any, Any, None]) -> None:
    """Run the top-level coroutine on uvloop when it is installed."""
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency on Linux
        asyncio.run(main)
    else:
        uvloop.run(main)


def run(node: Node) -> None:
    run_forever(serve(node))
