"""The edge's role: refuses publishes, serves every stream from one local upstream pull per stream, kept
while it has viewers (of any format) and let go an idle grace period after the last one leaves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from common.aio import cancel_and_wait
from common.backoff import Backoff
from common.hub.stream import Stream
from common.keys import StreamKey
from common.registry import Registry, RegistryError
from common.runtime.config import EdgeSettings, secret
from common.runtime.role import CleanupContext, NodeContext
from common.runtime.workerplan import WorkerPlan
from common.serving.policy import Rejected
from edge.puller import PullManager, PullSettings
from edge.upstream import ParentTierResolver, RegistryResolver, Resolver, SiblingResolver, StaticResolver

log = logging.getLogger(__name__)


def make_resolver(settings: EdgeSettings, registry: Registry, worker: WorkerPlan | None = None) -> Resolver:
    resolver: Resolver
    if settings.upstream:
        resolver = StaticResolver(settings.upstream)
    elif settings.parent_region:
        resolver = ParentTierResolver(registry, settings.parent_region, settings.node_id)
    else:
        resolver = RegistryResolver(registry)
    if worker is not None:
        return SiblingResolver(resolver, worker, secret(settings.cluster_secret))
    return resolver


class EdgeRole:
    name = "edge"
    accepts_publishes = False
    viewers_through_edges = False

    def __init__(self, ctx: NodeContext) -> None:
        settings = ctx.settings
        if not isinstance(settings, EdgeSettings):
            raise TypeError("an edge needs EdgeSettings")
        self.registry = ctx.registry
        self.worker = ctx.worker
        self.pulls = PullManager(
            ctx.hub,
            make_resolver(settings, ctx.registry, ctx.worker),
            PullSettings(
                ctx.session_limits,
                settings.idle_grace,
                settings.pull_timeout,
                settings.reconnect_window,
                settings.upstream_timeout,
                settings.publish_grace,
                secret(settings.cluster_secret),
            ),
            internal=self._from_sibling if ctx.worker is not None else None,
        )

    def _from_sibling(self, key: StreamKey) -> bool:
        """Whether this worker pulls ``key`` from the worker that owns it rather than from the cluster."""
        return self.worker is not None and self.worker.owner_of(key) != self.worker.index

    # -- the stream policy ---------------------------------------------------------------------------

    async def admit_publisher(self, stream: Stream, query: str, peer: str) -> None:
        raise Rejected("NetStream.Publish.Denied", "edges do not take publishes; publish to an origin")

    def publisher_left(self, stream: Stream) -> None:
        return None

    async def find_source(self, key: StreamKey, query: str) -> Stream | None:
        return await self.pulls.acquire(key)

    def viewer_joined(self, stream: Stream) -> None:
        puller = self.pulls.puller_of(stream)
        if puller is not None:
            puller.viewer_joined()

    def viewer_left(self, stream: Stream) -> None:
        puller = self.pulls.puller_of(stream)
        if puller is not None:
            puller.viewers_changed()

    # -- resources, views ----------------------------------------------------------------------------

    def contexts(self) -> list[CleanupContext]:
        return [self._pulls_ctx]

    async def _pulls_ctx(self, app: web.Application) -> AsyncIterator[None]:
        events = asyncio.create_task(self._follow_events(), name="registry events")
        try:
            yield
        finally:
            await cancel_and_wait(events)
            await self.pulls.stop_all()

    async def _follow_events(self) -> None:
        """Publish events wake pullers that wait for a source, so a re-published stream resumes at once, and
        move a pull off an origin that a newer claim fenced off."""
        backoff = Backoff(initial=0.5, maximum=10.0)
        while True:
            try:
                async for event in self.registry.events():
                    backoff.reset()
                    try:
                        key = StreamKey.parse(event.key)
                    except ValueError:
                        log.warning("registry event for a malformed stream key %r: ignored", event.key)
                        continue
                    if event.kind == "publish":
                        self.pulls.published(key, event.origin, event.epoch)
                    else:
                        self.pulls.unpublished(key, event.origin, event.epoch)
            except RegistryError as exc:
                log.debug("registry events unavailable (lookups still poll): %s", exc)
            await asyncio.sleep(backoff.next_delay())

    def stream_extra(self, stream: Stream) -> dict[str, Any]:
        puller = self.pulls.puller_of(stream)
        url, connects = (puller.url, puller.connects) if puller is not None else (None, 0)
        if self._from_sibling(stream.key):
            # Not an upstream of the node: the node's pull of the stream is its owner's (/metrics sums pulls).
            return {"upstream": None, "upstream_connects": 0, "sibling_upstream": url, "sibling_connects": connects}
        return {"upstream": url, "upstream_connects": connects}

    def node_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"upstream": self.pulls.resolver.description, "pulls_started": self.pulls.pulls_started}
        if self.worker is not None:
            extra["sibling_pulls_started"] = self.pulls.internal_pulls_started
        return extra

    def banner_lines(self) -> list[str]:
        return [f"  upstream:   {self.pulls.resolver.description}"]
