"""Where an edge pulls a stream from: the registry's owning origin, a parent edge tier, or a static server."""

from __future__ import annotations

import hashlib
import logging
from typing import Protocol

from common.keys import StreamKey
from common.registry import Registry

log = logging.getLogger(__name__)


class Resolver(Protocol):
    """Answers the RTMP URL to play a stream from, or None when nobody publishes it."""

    description: str

    async def resolve(self, key: StreamKey) -> str | None: ...


class RegistryResolver:
    """The default: the origin that holds the stream's claim."""

    description = "registry"

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def resolve(self, key: StreamKey) -> str | None:
        claim = await self.registry.lookup(str(key))
        return claim.rtmp_url if claim is not None else None


class StaticResolver:
    """A fixed upstream rtmp://host:port/app: any RTMP server, ours or not. It says itself whether a stream exists."""

    def __init__(self, upstream: str) -> None:
        self.base = upstream.rstrip("/")
        self.description = f"static {self.base}"

    async def resolve(self, key: StreamKey) -> str | None:
        return f"{self.base}/{key.name}"


class ParentTierResolver:
    """A mid tier: pull through an edge of the parent region, the same one for a given stream (rendezvous
    hashing), so each stream crosses to the parent tier once however many child edges carry it."""

    def __init__(self, registry: Registry, parent_region: str, own_id: str) -> None:
        self.registry = registry
        self.parent_region = parent_region
        self.own_id = own_id
        self.description = f"parent region {parent_region}"

    async def resolve(self, key: StreamKey) -> str | None:
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
        best = max(parents, key=lambda n: hashlib.blake2b(f"{n.id}|{key}".encode(), digest_size=8).digest())
        return f"rtmp://{best.rtmp}/{key}"
