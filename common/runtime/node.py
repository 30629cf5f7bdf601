"""A media node (origin or edge), built in one place and run as one aiohttp application.

Built in this order: settings -> registry -> hub -> the role (origin claims, edge pulls) -> the RTMP
service and the HTTP app that both play through one Playback path. Every resource is an aiohttp
cleanup context, started in the order below and stopped in reverse:

    registry -> open connections -> the role's resources -> RTMP listener -> heartbeat

so at shutdown the node leaves the registry's node list first, stops accepting, lets the role release
its claims and stop its pulls while the registry is still open, then closes the remaining connections.
Viewers (RTMP and HTTP-FLV alike) are let go before all of that, when aiohttp begins to shut down: they
are disconnected without Play.Stop (the stream goes on; players reconnect through the router), and an
HTTP-FLV response never holds shutdown up.

Draining (SIGTERM, ``POST /v1/drain``): the node is marked draining in the registry at once, so the
router sends it nothing new; it keeps its viewers and publishers until they leave or ``drain_timeout``
passes, then it stops.

A Node built with a WorkerPlan is one of several worker processes of an edge (common.runtime.supervisor):
it shares the public ports (SO_REUSEPORT), serves its sibling workers' pulls on a private loopback port,
leaves the registry record to its supervisor and answers /v1/stats and /metrics for the whole node.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from common.hub.packet import HubLimits
from common.hub.stream import Hub
from common.keys import StreamKey
from common.redact import redact_url
from common.registry import NodeInfo, NodeLoad, Registry, RegistryError, open_registry
from common.rtmp.session import SessionLimits
from common.runtime.admin import require_admin
from common.runtime.config import HostPort, NodeSettings, secret
from common.runtime.heartbeat import Heartbeat, node_record
from common.runtime.hlsowner import HlsToOwner
from common.runtime.http import make_node_app
from common.runtime.pacer import merge_window, pacer_context, pacing_stats
from common.runtime.role import Addresses, NodeContext, RoleFactory
from common.runtime.tasks import BackgroundTasks
from common.runtime.workerplan import WorkerPlan
from common.runtime.workerview import WorkerView
from common.serving.access import ConnectionLimiter, PlayGate
from common.serving.connection import Bounds, Timeouts
from common.serving.hls import HlsService
from common.serving.httpflv import LIMITER_KEY, PLAYBACK_KEY, play_flv
from common.serving.playback import Playback
from common.serving.service import RtmpOptions, RtmpService
from common.serving.sockets import ViewerSockets

log = logging.getLogger(__name__)


def hub_limits(settings: NodeSettings) -> HubLimits:
    return HubLimits(
        chunk_size=settings.chunk_size,
        gop_max_bytes=settings.gop_max_bytes,
        gop_max_packets=settings.gop_max_packets,
        viewer_high_water=settings.viewer_high_water,
        viewer_max_buffer=settings.viewer_max_buffer,
        viewer_max_stall=settings.viewer_max_stall,
        merge_phases=settings.merge_phases,  # the window itself is the node's MergeWindow (pacer.merge_window)
    )


def session_limits(settings: NodeSettings) -> SessionLimits:
    return SessionLimits(
        max_chunk_size=settings.max_in_chunk_size,
        max_message_size=settings.max_message_size,
        max_chunk_streams=settings.max_chunk_streams,
        max_amf_depth=settings.max_amf_depth,
        out_chunk_size=settings.chunk_size,
        min_chunk_size=settings.min_in_chunk_size,
    )


class Node:
    def __init__(
        self,
        settings: NodeSettings,
        make_role: RoleFactory,
        registry: Registry | None = None,
        worker: WorkerPlan | None = None,
    ) -> None:
        self.settings = settings
        self.worker = worker
        self.registry = registry if registry is not None else open_registry(settings.registry)
        self.hub = Hub(hub_limits(settings), pacing=merge_window(settings))
        self.addresses = Addresses(settings)
        self.tasks = BackgroundTasks()
        limits = session_limits(settings)
        context = NodeContext(settings, self.registry, self.hub, limits, self.addresses, self.tasks, worker)
        self.role = make_role(context)
        gate = PlayGate(
            secret(settings.play_secret),
            secret(settings.cluster_secret),
            self.role.viewers_through_edges,
            node_secret=worker.secret if worker is not None else None,
        )
        sockets = ViewerSockets(settings.viewer_sndbuf, settings.viewer_nodelay)
        self.playback = Playback(self.hub, self.role, gate, sockets)
        self.hls = HlsService(self.playback, settings.hls_part_duration)
        self.hls_owner = HlsToOwner(worker, self.hls) if worker is not None else None
        self.limiter = ConnectionLimiter(settings.max_connections, settings.max_connections_per_ip)
        timeouts = Timeouts(settings.handshake_timeout, settings.idle_timeout, settings.publisher_timeout)
        bounds = Bounds(settings.max_commands_per_second, settings.max_unsent_bytes)
        options = RtmpOptions(limits, timeouts, settings.publish_grace, bounds)
        self.rtmp = RtmpService(self.playback, options, self.limiter)
        # A worker's sibling workers pull over its private port, through a service of their own: they are
        # not the node's clients (not counted as viewers, not held to the limits of one client address).
        self.siblings = (
            RtmpService(self.playback, options, ConnectionLimiter(settings.max_connections))
            if worker is not None
            else None
        )
        self.view = WorkerView(worker.http_ports) if worker is not None else None
        self.heartbeat = Heartbeat(self.registry, settings, self._record)
        self.app = self._make_app()
        self.started_at = time.time()
        self.draining = False
        self.finished = asyncio.Event()  # set when a drain is over: whoever runs the node stops it
        self._server: asyncio.Server | None = None
        self._bytes_out_seen = 0
        self._bits_out = 0.0
        self._measured_at = time.monotonic()

    # -- views ---------------------------------------------------------------------------------------

    def stream_stats(self) -> list[dict[str, Any]]:
        siblings = self.sibling_viewers()
        return [
            {
                "app": s.app,
                "name": s.name,
                "publisher": s.live,
                "viewers": s.viewers - siblings[s.key],
                "viewers_hls": self.hls.viewers_of(s),
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
                **self.role.stream_extra(s),
                **({"sibling_viewers": siblings[s.key]} if self.worker is not None else {}),
            }
            for s in self.hub
        ]

    def sibling_viewers(self) -> Counter[StreamKey]:
        """Per stream, the pulls of this worker's sibling workers it serves: viewers of the node's other
        processes, not of the node."""
        if self.siblings is None:
            return Counter()
        return Counter(conn.viewer.stream.key for conn in self.siblings.connections if conn.viewer is not None)

    def worker_fields(self) -> dict[str, Any]:
        if self.worker is None:
            return {}
        return {
            "worker": self.worker.index,
            "pid": os.getpid(),
            "sibling_viewers": self.sibling_viewers().total(),
            "hls_passed_on": self.hls_owner.passed_on if self.hls_owner is not None else 0,
        }

    def stats(self) -> dict[str, Any]:
        return {
            "node": {
                "id": self.settings.node_id,
                "role": self.role.name,
                "region": self.settings.region,
                "rtmp": self.addresses.rtmp_hostport,
                "http": self.addresses.http_hostport,
                "registry": redact_url(self.registry.url),
                "uptime_s": round(time.time() - self.started_at, 3),
                "connections": len(self.rtmp.connections),
                "connections_total": self.rtmp.connections_total,
                "protocol_errors": self.rtmp.protocol_errors,
                "connections_refused": self.rtmp.connections_refused,
                "bits_out": round(self.bits_out()),
                "merge_window": pacing_stats(self.hub.pacing),
                "draining": self.draining,
                "viewers": len(self.playback.viewers) + self.playback.polled_viewers - self.sibling_viewers().total(),
                "viewers_hls": self.playback.polled_viewers,
                "hls_parts_served": self.hls.counters.parts_served,
                "hls_segments_served": self.hls.counters.segments_served,
                "hls_blocking_reloads": self.hls.counters.blocking_reloads,
                "hls_blocking_wait_seconds": round(self.hls.counters.blocking_wait_seconds, 3),
                "hls_blocking_timeouts": self.hls.counters.blocking_timeouts,
                "asyncio_tasks": len(asyncio.all_tasks()),
                **self.role.node_extra(),
                **self.worker_fields(),
            },
            "streams": self.stream_stats(),
        }

    def banner(self) -> str:
        urls = self.addresses
        lines = [
            f"livecdn {self.role.name} {self.settings.node_id} (region {self.settings.region}, "
            f"registry {redact_url(self.registry.url)})"
        ]
        if self.role.accepts_publishes:
            lines.append(f"  publish to: {urls.rtmp_url()}")
        lines += [
            f"  play from:  {urls.rtmp_url()}   or   {urls.http_url('/live/STREAM.flv')}",
            f"  LL-HLS:     {urls.http_url('/live/STREAM.m3u8')}",
            f"  stats:      {urls.http_url('/v1/stats')}",
            *self.role.banner_lines(),
        ]
        return "\n".join(lines)

    def node_info(self) -> NodeInfo:
        streams = list(self.hub)
        viewers = sum(s.viewers for s in streams) - self.sibling_viewers().total()
        load = NodeLoad(viewers=viewers, streams=len(streams), bits_out=round(self.bits_out()))
        return node_record(self.settings, self.role.name, self.addresses, load, self.draining)

    async def _record(self) -> NodeInfo:
        return self.node_info()

    def bits_out(self) -> float:
        """Bits per second sent to viewers, over the last heartbeat interval or more: measured again when one
        has passed since the last measure (at each heartbeat, or each stats poll of a worker's supervisor)."""
        now = time.monotonic()
        if now - self._measured_at >= self.settings.heartbeat_interval:
            total_out = sum(s.bytes_out for s in self.hub)
            self._bits_out = max(0, total_out - self._bytes_out_seen) * 8 / (now - self._measured_at)
            self._bytes_out_seen, self._measured_at = total_out, now
        return self._bits_out

    async def ready(self) -> dict[str, Any]:
        if self.draining:
            return {"ready": False, "draining": True}
        try:
            reachable = await self.registry.ping()
        except RegistryError as exc:
            return {"ready": False, "draining": False, "error": f"cluster registry unavailable: {exc}"}
        return {"ready": reachable, "draining": False}

    # -- draining ------------------------------------------------------------------------------------

    def busy(self) -> int:
        """What a drain waits for: viewers of any format, and publishers."""
        publishers = sum(1 for conn in self.rtmp.connections if conn.publishing)
        return len(self.playback.viewers) + self.playback.polled_viewers + publishers

    def start_drain(self, reason: str) -> bool:
        """Begin draining (once); False if it was already under way."""
        if self.draining:
            return False
        self.draining = True
        self.heartbeat.now()  # tell the registry now, not at the next heartbeat
        if self.worker is not None:
            self.worker.ask_node_to_drain()  # every worker drains with this one
        log.warning(
            "draining (%s): no new viewers or publishers are routed here; %d still connected, stopping when they "
            "leave or in %gs",
            reason,
            self.busy(),
            self.settings.drain_timeout,
            extra={"event": "drain"},
        )
        self.tasks.spawn(self._drain(), name="drain")
        return True

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.settings.drain_timeout
        # Polled: viewers and publishers leave through several paths, and five looks a second cost nothing.
        while self.busy() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        left = self.busy()
        log.warning(
            "drained: %s",
            f"{left} still connected at the deadline" if left else "everyone left",
            extra={"event": "drained"},
        )
        self.finished.set()

    async def _drain_request(self, request: web.Request) -> web.Response:
        started = self.start_drain(f"requested by {request.remote}")
        body = {"draining": True, "started": started, "drain_timeout_s": self.settings.drain_timeout}
        return web.json_response(body, status=202)

    async def _kick_request(self, request: web.Request) -> web.Response:
        key = StreamKey(request.match_info["app"], request.match_info["name"])
        stream = self.hub.get(key) if key.valid else None
        if stream is None or stream.source is None:
            return web.json_response({"error": f"{key} has no source on this node"}, status=404)
        log.warning("%s: its source is stopped by the admin API (from %s)", key, request.remote)
        stream.source.stop(f"kicked by the admin API from {request.remote}")
        return web.json_response({"stream": str(key), "kicked": True})

    # -- lifecycle -----------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = make_node_app(self.stats, self.ready, self.view)
        app[PLAYBACK_KEY] = self.playback
        app[LIMITER_KEY] = self.limiter
        app.router.add_get("/{app}/{name}.flv", play_flv)
        self.hls.add_routes(app)  # /{app}/{name}.m3u8 and its init segment, parts and segments
        if self.hls_owner is not None:  # a worker passes LL-HLS requests on to the stream's owner
            app.middlewares.append(self.hls_owner.middleware)
        admin = secret(self.settings.admin_token)
        app.router.add_post("/v1/drain", require_admin(admin, self._drain_request))
        app.router.add_post("/v1/streams/{app}/{name}/kick", require_admin(admin, self._kick_request))
        # on_shutdown, not a cleanup context: aiohttp runs it before it waits (up to a minute) for open
        # request handlers, which HTTP-FLV responses are.
        app.on_shutdown.append(self._let_viewers_go)
        app.cleanup_ctx.extend([self._registry_ctx, self._connections_ctx, *self.role.contexts(), self._listener_ctx])
        app.cleanup_ctx.append(pacer_context(self.hub.pacing))
        if self.worker is None:  # a worker's supervisor keeps the node's one record
            app.cleanup_ctx.append(self._heartbeat_ctx)
        return app

    async def _let_viewers_go(self, app: web.Application) -> None:
        if self.playback.viewers:
            log.info("disconnecting %d viewers", len(self.playback.viewers))
        self.playback.disconnect_all("node shutting down")

    async def _registry_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.registry.start()
        try:
            yield
        finally:
            await self.registry.close()

    async def _connections_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Closes what is still connected (players, publishers) and the node's background work, last."""
        try:
            yield
        finally:
            await self.rtmp.close_all("node shutting down")
            if self.siblings is not None:
                await self.siblings.close_all("node shutting down")
            if self.view is not None:
                await self.view.close()
            if self.hls_owner is not None:
                await self.hls_owner.close()
            await self.tasks.cancel_all()
            if self._server is not None:
                await self._server.wait_closed()

    async def _listener_ctx(self, app: web.Application) -> AsyncIterator[None]:
        address = self.settings.rtmp
        loop = asyncio.get_running_loop()
        # The workers of a node each listen on its public port; the kernel spreads connections among them.
        self._server = await loop.create_server(
            self.rtmp.protocol_factory,
            address.host,
            address.port,
            reuse_address=True,
            reuse_port=self.worker is not None,
            backlog=1024,
        )
        self.addresses.rtmp = HostPort(address.host, self._server.sockets[0].getsockname()[1])
        log.info("RTMP listening on %s", self.addresses.rtmp)
        private: asyncio.Server | None = None
        if self.worker is not None and self.siblings is not None:
            private = await loop.create_server(
                self.siblings.protocol_factory, sock=self.worker.private_rtmp_socket(), backlog=1024
            )
        try:
            yield
        finally:
            self._server.close()  # stop accepting; open connections close after the role's cleanup
            if private is not None:
                private.close()  # the supervisor holds the socket on: a restarted worker listens on it again

    async def _heartbeat_ctx(self, app: web.Application) -> AsyncIterator[None]:
        async with self.heartbeat.running():
            yield
