"""Running a node: settings -> hub + RTMP service + HTTP app, started and stopped in order."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from aiohttp import web

from common.config import HostPort, NodeSettings
from common.http import make_node_app
from common.rtmp.session import SessionLimits
from common.server import RtmpService, Timeouts
from common.stream import Hub, HubLimits

log = logging.getLogger(__name__)


class Node:
    """Shared wiring of origin and edge nodes; subclasses pick the service and add cluster tasks."""

    role: ClassVar[str] = "node"

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.hub = Hub(
            HubLimits(
                chunk_size=settings.chunk_size,
                gop_max_bytes=settings.gop_max_bytes,
                gop_max_packets=settings.gop_max_packets,
                viewer_high_water=settings.viewer_high_water,
                viewer_max_buffer=settings.viewer_max_buffer,
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

    def make_service(self) -> RtmpService:
        return RtmpService(self.hub, session_limits=self.session_limits, timeouts=self.timeouts)

    # -- views ---------------------------------------------------------------------------------------

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
                "has_metadata": s.metadata is not None,
                "has_video_header": s.video_header is not None,
                "has_audio_header": s.audio_header is not None,
            }
            for s in self.hub
        ]

    def stats(self) -> dict[str, Any]:
        return {
            "node": {
                "id": self.settings.node_id,
                "role": self.role,
                "region": self.settings.region,
                "rtmp": str(self.rtmp_address),
                "http": str(self.http_address),
                "uptime_s": round(time.time() - self.started_at, 3),
                "connections": len(self.service.connections),
                "connections_total": self.service.connections_total,
                "protocol_errors": self.service.protocol_errors,
            },
            "streams": self.stream_stats(),
        }

    def rtmp_url(self, app: str = "live", name: str = "STREAM") -> str:
        return f"rtmp://{self.rtmp_address.public_host}:{self.rtmp_address.port}/{app}/{name}"

    def http_url(self, path: str = "") -> str:
        return f"http://{self.http_address.public_host}:{self.http_address.port}{path}"

    def banner(self) -> str:
        return "\n".join(
            [
                f"livecdn {self.role} {self.settings.node_id} (region {self.settings.region})",
                f"  publish to: {self.rtmp_url()}",
                f"  play from:  {self.rtmp_url()}",
                f"  stats:      {self.http_url('/v1/stats')}",
            ]
        )

    # -- lifecycle -----------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = make_node_app(self.stats, self.ready)
        app.cleanup_ctx.append(self._rtmp_listener)
        return app

    async def ready(self) -> bool:
        return True

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
            await self.service.close_all("node shutting down")
            await server.wait_closed()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


async def serve(node: Node, stop: asyncio.Event | None = None) -> None:
    """Start the node's HTTP app (whose cleanup_ctx starts everything else) and run until stopped."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    runner = web.AppRunner(node.build_app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, node.settings.http.host, node.settings.http.port, reuse_address=True)
        await site.start()
        bound = runner.addresses[0]
        node.http_address = HostPort(node.settings.http.host, bound[1])
        print(node.banner(), flush=True)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def run(node: Node) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency on Linux
        asyncio.run(serve(node))
    else:
        uvloop.run(serve(node))
