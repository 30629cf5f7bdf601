"""The origin's role: publishing a stream requires its lease (claim) in the registry, held as long as the
publisher stays, renewed every third of its TTL, released when the publisher leaves or the node stops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from common.hub.stream import Stream
from common.keys import StreamKey
from common.registry import RegistryError, StreamClaim
from common.runtime.role import CleanupContext, NodeContext
from common.serving.policy import Rejected

log = logging.getLogger(__name__)


class OriginRole:
    name = "origin"
    accepts_publishes = True

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.claims: dict[StreamKey, StreamClaim] = {}

    # -- the stream policy ---------------------------------------------------------------------------

    async def admit_publisher(self, stream: Stream, query: str, peer: str) -> None:
        ctx = self.ctx
        url = ctx.addresses.rtmp_url(stream.app, stream.name)
        try:
            async with asyncio.timeout(5):
                claim = await ctx.registry.claim(str(stream.key), ctx.settings.node_id, url, ctx.settings.claim_ttl)
        except (RegistryError, TimeoutError) as exc:
            raise Rejected("NetStream.Publish.Failed", f"registry unavailable, try again: {exc}") from None
        if claim is None:
            holder = await self._holder(stream.key)
            raise Rejected("NetStream.Publish.BadName", f"{stream.key} is already being published{holder}")
        self.claims[stream.key] = claim
        log.info("claimed %s (epoch %d)", stream.key, claim.epoch)

    def publisher_left(self, stream: Stream) -> None:
        claim = self.claims.pop(stream.key, None)
        if claim is not None:
            self.ctx.tasks.spawn(self._release(claim), name=f"release {claim.key}")

    async def find_source(self, key: StreamKey, query: str) -> Stream | None:
        return None  # an origin plays only what is published to it

    def viewer_joined(self, stream: Stream) -> None:
        return None

    def viewer_left(self, stream: Stream) -> None:
        return None

    # -- claims --------------------------------------------------------------------------------------

    async def _holder(self, key: StreamKey) -> str:
        try:
            claim = await self.ctx.registry.lookup(str(key))
        except RegistryError:
            return ""
        return f" on origin {claim.origin}" if claim is not None else ""

    async def _release(self, claim: StreamClaim) -> None:
        try:
            async with asyncio.timeout(5):
                released = await self.ctx.registry.release(claim)
        except (RegistryError, TimeoutError) as exc:
            log.warning("could not release %s (it lapses in %gs): %s", claim.key, self.ctx.settings.claim_ttl, exc)
            return
        log.info("released %s (epoch %d)%s", claim.key, claim.epoch, "" if released else ": it had already lapsed")

    async def renew_all(self) -> None:
        for key, claim in list(self.claims.items()):
            try:
                held = await self.ctx.registry.renew(claim, self.ctx.settings.claim_ttl)
            except RegistryError as exc:
                log.warning("could not renew %s (retrying; media keeps flowing): %s", key, exc)
                continue
            if not held and self.claims.get(key) is claim:
                self._lost(key, claim)

    def _lost(self, key: StreamKey, claim: StreamClaim) -> None:
        """Fenced off: another origin owns the stream now. Stop being its source here."""
        log.error("lost the lease on %s (epoch %d): disconnecting its publisher", key, claim.epoch)
        del self.claims[key]
        stream = self.ctx.hub.get(key)
        if stream is not None and stream.source is not None:
            stream.source.stop(f"lost the lease on {key}")

    async def release_all(self) -> None:
        claims = list(self.claims.values())
        self.claims.clear()
        await asyncio.gather(*(self._release(c) for c in claims))

    # -- resources, views ----------------------------------------------------------------------------

    def contexts(self) -> list[CleanupContext]:
        return [self._claims_ctx]

    async def _claims_ctx(self, app: web.Application) -> AsyncIterator[None]:
        renewals = asyncio.create_task(self._renew_loop(), name="claim renewals")
        try:
            yield
        finally:
            renewals.cancel()
            await asyncio.gather(renewals, return_exceptions=True)
            await self.release_all()

    async def _renew_loop(self) -> None:
        interval = self.ctx.settings.claim_ttl / 3
        while True:
            await asyncio.sleep(interval)
            await self.renew_all()

    def stream_extra(self, stream: Stream) -> dict[str, Any]:
        return {}

    def node_extra(self) -> dict[str, Any]:
        return {}

    def banner_lines(self) -> list[str]:
        return []
