"""Edge node: serves viewers (RTMP, HTTP-FLV) from local pulls of each stream, one pull per stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from aiohttp import web

from common.backoff import Backoff
from common.config import EdgeSettings
from common.net import RtmpServerProtocol
from common.node import Node
from common.registry import Registry, RegistryError
from common.server import Rejected, RtmpService
from common.stream import Stream
from edge.puller import Puller, PullManager, PullSettings
from edge.upstream import ParentTierResolver, RegistryResolver, Resolver, StaticResolver

log = logging.getLogger(__name__)


class EdgeService(RtmpService):
    def __init__(self, node: EdgeNode, **kwargs: Any) -> None:
        super().__init__(node.hub, **kwargs)
        self.pulls = node.pulls

    async def authorize_publish(self, conn: RtmpServerProtocol, stream: Stream, query: str) -> None:
        raise Rejected("NetStream.Publish.Denied", "edges do not take publishes; publish to an origin")

    async def find_source(self, app: str, name: str, query: str) -> Stream | None:
        return await self.pulls.acquire(app, name)

    def viewer_joined(self, stream: Stream) -> None:
        if isinstance(stream.publisher, Puller):
            stream.publisher.viewer_joined()

    def viewer_left(self, stream: Stream) -> None:
        if isinstance(stream.publisher, Puller):
            stream.publisher.viewers_changed()


class EdgeNode(Node):
    role: ClassVar[str] = "edge"
    accepts_publishes: ClassVar[bool] = False  # EdgeService refuses them
    settings: EdgeSettings
    service: EdgeService

    def __init__(self, settings: EdgeSettings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.pulls: PullManager  # set in make_service, which Node.__init__ calls
        super().__init__(settings, registry)

    def make_resolver(self) -> Resolver:
        if self.settings.upstream:
            return StaticResolver(self.settings.upstream)
        if self.settings.parent_region:
            return ParentTierResolver(self.registry, self.settings.parent_region, self.settings.node_id)
        return RegistryResolver(self.registry)

    def make_service(self) -> EdgeService:
        settings = self.settings
        self.pulls = PullManager(
            self.hub,
            self.make_resolver(),
            PullSettings(self.session_limits, settings.idle_grace, settings.pull_timeout, settings.reconnect_window),
        )
        return EdgeService(self, **self.service_options())

    def stream_extra(self, stream: Stream) -> dict[str, Any]:
        puller = stream.publisher if isinstance(stream.publisher, Puller) else None
        return {"upstream": puller.url if puller else None, "upstream_connects": puller.connects if puller else 0}

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        stats["node"]["upstream"] = self.pulls.resolver.description
        stats["node"]["pulls_started"] = self.pulls.pulls_started
        return stats

    def banner_extra(self) -> list[str]:
        return [f"  upstream:   {self.pulls.resolver.description}"]

    def build_app(self) -> web.Application:
        app = super().build_app()
        app.cleanup_ctx.append(self._registry_events)
        return app

    async def before_close(self) -> None:
        await self.pulls.stop_all()

    async def _registry_events(self, app: web.Application) -> AsyncIterator[None]:
        task = self.spawn(self._follow_events(), name="registry events")
        yield
        task.cancel()

    async def _follow_events(self) -> None:
        """Publish events wake pullers that wait for a source, so a re-published stream resumes at once."""
        backoff = Backoff(initial=0.5, maximum=10.0)
        while True:
            try:
                async for event in self.registry.events():
                    backoff.reset()
                    if event.kind == "publish":
                        self.pulls.wake(event.key)
            except RegistryError as exc:
                log.debug("registry events unavailable (lookups still poll): %s", exc)
            await asyncio.sleep(backoff.next_delay())
