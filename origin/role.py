"""The origin's role: publishing a stream requires its lease (claim) in the registry, held as long as the
publisher stays, renewed every third of its TTL, released when the publisher leaves or the node stops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from common.aio import cancel_and_wait
from common.hub.stream import Stream
from common.keys import StreamKey
from common.registry import RegistryError, StreamClaim
from common.runtime.config import OriginSettings
from common.runtime.role import CleanupContext, NodeContext
from common.serving.policy import Rejected
from origin.liveness import why_owner_is_gone
from origin.publish_auth import PublishAuth

log = logging.getLogger(__name__)


class OriginRole:
    name = "origin"
    accepts_publishes = True
    viewers_through_edges = True

    def __init__(self, ctx: NodeContext) -> None:
        if not isinstance(ctx.settings, OriginSettings):
            raise TypeError("an origin needs OriginSettings")
        self.ctx = ctx
        self.auth = PublishAuth(ctx.settings)
        self.claims: dict[StreamKey, StreamClaim] = {}

    # -- the stream policy ---------------------------------------------------------------------------

    async def admit_publisher(self, stream: Stream, query: str, peer: str) -> None:
        await self.auth.check(stream.key, query, peer)  # before anything is claimed
        try:
            async with asyncio.timeout(5):
                claim, holder = await self._take(stream.key, self.ctx.addresses.rtmp_url(stream.app, stream.name))
        except (RegistryError, TimeoutError) as exc:
            raise Rejected("NetStream.Publish.Failed", f"registry unavailable, try again: {exc}") from None
        if claim is None:
            where = f" on origin {holder.origin}" if holder is not None else ""
            raise Rejected("NetStream.Publish.BadName", f"{stream.key} is already being published{where}")
        self.claims[stream.key] = claim
        log.info("claimed %s (epoch %d)", stream.key, claim.epoch)

    async def _take(self, key: StreamKey, url: str) -> tuple[StreamClaim | None, StreamClaim | None]:
        """Claim ``key``; if another origin holds it and that origin is gone (its node record lapsed, it is
        draining, or nothing listens where it served), take the claim over by its epoch. Returns the claim
        taken (or None) and the other origin's claim that stood in the way."""
        registry, settings = self.ctx.registry, self.ctx.settings
        claim = await registry.claim(str(key), settings.node_id, url, settings.claim_ttl)
        if claim is not None:
            return claim, None
        holder = await registry.lookup(str(key))
        if holder is None:  # it lapsed in between
            return await registry.claim(str(key), settings.node_id, url, settings.claim_ttl), None
        why = await why_owner_is_gone(registry, holder)
        if why is None:
            return None, holder
        claim = await registry.claim(str(key), settings.node_id, url, settings.claim_ttl, take_over=holder.epoch)
        if claim is not None:
            log.warning(
                "took %s over from origin %s (epoch %d -> %d): %s", key, holder.origin, holder.epoch, claim.epoch, why
            )
        return claim, holder

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
                await self._renew(key, claim)
            except RegistryError as exc:
                # An unreachable registry is not a lost lease: the stream flows on, and the claim is renewed
                # (or re-asserted) once the registry answers again.
                log.warning("could not renew %s (retrying; media keeps flowing): %s", key, exc)

    async def _renew(self, key: StreamKey, claim: StreamClaim) -> None:
        registry, settings = self.ctx.registry, self.ctx.settings
        if await registry.renew(claim, settings.claim_ttl):
            return
        # Not held with our epoch any more. Either nobody holds it (it lapsed while the registry was away,
        # or a restarted registry lost it): take it again; or another origin took it over: we are fenced off.
        fresh = await registry.claim(str(key), settings.node_id, claim.rtmp_url, settings.claim_ttl)
        if self.claims.get(key) is not claim:  # the publisher left meanwhile: give back what we just took
            if fresh is not None:
                await registry.release(fresh)
            return
        if fresh is None:
            self._lost(key, claim)
            return
        self.claims[key] = fresh
        log.warning(
            "re-asserted the claim on %s after the registry lost it (epoch %d -> %d)", key, claim.epoch, fresh.epoch
        )

    def _lost(self, key: StreamKey, claim: StreamClaim) -> None:
        """Fenced off: another origin owns the stream now. Stop being its source here."""
        log.error("lost the lease on %s (epoch %d): disconnecting its publisher", key, claim.epoch)
        del self.claims[key]
        stream = self.ctx.hub.get(key)
        if stream is not None and stream.source is not None:
            source = stream.source
            stream.end_of_source()  # no grace here: the stream lives on at its new owner
            source.stop(f"lost the lease on {key}")
            self.ctx.hub.discard_if_idle(stream)

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
            await cancel_and_wait(renewals)
            await self.release_all()
            await self.auth.close()

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
