"""Where an edge pulls a stream from: the registry's owning origin, a parent edge tier, or a static server."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from common.keys import StreamKey
from common.placement.hashing import rendezvous_weight
from common.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where to pull a stream from. ``epoch`` and ``origin``: the registry claim it comes from, when the
    edge pulls the owning origin directly (a newer claim elsewhere fences this one off)."""

    url: str
    epoch: int | None = None
    origin: str | None = None


class Resolver(Protocol):
    """Answers where to play a stream from, or None when nobody publishes it."""

    description: str

    async def resolve(self, key: StreamKey) -> Upstream | None: ...


class RegistryResolver:
    """The default: the origin that holds the stream's claim."""

    description = "registry"

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def resolve(self, key: StreamKey) -> Upstream | None:
        claim = await self.registry.lookup(str(key))
        return Upstream(claim.rtmp_url, claim.epoch, claim.origin) if claim is not None else None


class StaticResolver:
    """A fixed upstream rtmp://host:port/app: any RTMP server, ours or not. It says itself whether a stream exists."""

    def __init__(self, upstream: str) -> None:
        self.base = upstream.rstrip("/")
        self.description = f"static {self.base}"

    async def resolve(self, key: StreamKey) -> Upstream | None:
        return Upstream(f"{self.base}/{key.name}")


class ParentTierResolver:
    """A mid tier: pull through an edge of the parent region, the same one for a given stream (rendezvous
    hashing), so each stream crosses to the parent tier once however many child edges carry it."""

    def __init__(self, registry: Registry, parent_region: str, own_id: str) -> None:
        self.registry = registry
        self.parent_region = parent_region
        self.own_id = own_id
        self.description = f"parent region {parent_region}"

    async def resolve(self, key: StreamKey) -> Upstream | None:
        if await self.registry.lookup(str(key)) is None:
            return None
        parents = [
            n
            for n in await self.registry.nodes("edge")
            if n.region == self.parent_region and not n.draining and n.id != self.own_id
        ]
        if not parents:
            log.warning("no live edge in parent region %s for %s", self.parent_region, key)
            return None
        # Rendezvous hashing, the one implementation (the cluster simulation runs the same function).
        best = max(parents, key=lambda n: rendezvous_weight(n.id, str(key)))
        return Upstream(f"rtmp://{best.rtmp}/{key}")  # the parent follows the owner; no epoch to track here
