"""Origin node: accepts RTMP publishes, claims each stream in the registry, serves edges and players."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from common.net import RtmpServerProtocol
from common.node import Node
from common.registry import RegistryError, StreamClaim
from common.server import Rejected, RtmpService
from common.stream import Stream

log = logging.getLogger(__name__)


class OriginService(RtmpService):
    """Publishing requires the stream's lease in the registry; the lease lives as long as the publisher."""

    def __init__(self, node: OriginNode, **kwargs: Any) -> None:
        super().__init__(node.hub, **kwargs)
        self.node = node
        self.claims: dict[str, StreamClaim] = {}

    async def authorize_publish(self, conn: RtmpServerProtocol, stream: Stream, query: str) -> None:
        node = self.node
        try:
            async with asyncio.timeout(5):
                claim = await node.registry.claim(
                    stream.key, node.settings.node_id, node.rtmp_url(stream.app, stream.name), node.settings.claim_ttl
                )
        except (RegistryError, TimeoutError) as exc:
            raise Rejected("NetStream.Publish.Failed", f"registry unavailable, try again: {exc}") from None
        if claim is None:
            holder = await _holder(node, stream.key)
            raise Rejected("NetStream.Publish.BadName", f"{stream.key} is already being published{holder}")
        self.claims[stream.key] = claim
        log.info("claimed %s (epoch %d)", stream.key, claim.epoch)

    def unpublished(self, stream: Stream) -> None:
        claim = self.claims.pop(stream.key, None)
        if claim is not None:
            self.node.spawn(self._release(claim), name=f"release {claim.key}")

    async def _release(self, claim: StreamClaim) -> None:
        try:
            async with asyncio.timeout(5):
                released = await self.node.registry.release(claim)
        except (RegistryError, TimeoutError) as exc:
            log.warning("could not release %s (it lapses in %gs): %s", claim.key, self.node.settings.claim_ttl, exc)
            return
        log.info("released %s (epoch %d)%s", claim.key, claim.epoch, "" if released else ": it had already lapsed")

    async def renew_all(self) -> None:
        for key, claim in list(self.claims.items()):
            try:
                held = await self.node.registry.renew(claim, self.node.settings.claim_ttl)
            except RegistryError as exc:
                log.warning("could not renew %s (retrying; media keeps flowing): %s", key, exc)
                continue
            if not held and self.claims.get(key) is claim:
                self._lost(claim)

    def _lost(self, claim: StreamClaim) -> None:
        """Fenced off: another origin owns the stream now. Stop being its source here."""
        log.error("lost the lease on %s (epoch %d): disconnecting its publisher", claim.key, claim.epoch)
        del self.claims[claim.key]
        app, _, name = claim.key.partition("/")
        stream = self.hub.get(app, name)
        if stream is not None and isinstance(stream.publisher, RtmpServerProtocol):
            stream.publisher.close(f"lost the lease on {claim.key}")

    async def release_all(self) -> None:
        claims = list(self.claims.values())
        self.claims.clear()
        await asyncio.gather(*(self._release(c) for c in claims))


async def _holder(node: OriginNode, key: str) -> str:
    try:
        claim = await node.registry.lookup(key)
    except RegistryError:
        return ""
    return f" on origin {claim.origin}" if claim is not None else ""


class OriginNode(Node):
    role: ClassVar[str] = "origin"
    service: OriginService

    def make_service(self) -> OriginService:
        return OriginService(self, **self.service_options())

    def build_app(self) -> Any:
        app = super().build_app()
        app.on_startup.append(self._start_renewals)
        return app

    async def _start_renewals(self, app: Any) -> None:
        self.spawn(self._renew_loop(), name="claim renewals")

    async def _renew_loop(self) -> None:
        interval = self.settings.claim_ttl / 3
        while True:
            await asyncio.sleep(interval)
            await self.service.renew_all()

    async def before_close(self) -> None:
        await self.service.release_all()
