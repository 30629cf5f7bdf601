"""Where an edge pulls a stream from: the registry's owning origin, a parent edge tier, or a static server;
and, in a node of several worker processes, the worker that owns the stream."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from common.keys import StreamKey
from common.placement.hashing import rendezvous_weight
from common.registry import Registry
from common.runtime.workerplan import WorkerPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where to pull a stream from. ``epoch`` and ``origin``: the registry claim it comes from, when the
    edge pulls the owning origin directly (a newer claim elsewhere fences this one off). ``pull_secret``:
    signs the pull instead of the cluster secret (a sibling worker's, where the node has no cluster secret)."""

    url: str
    epoch: int | None = None
    origin: str | None = None
    pull_secret: str | None = None


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


class SiblingResolver:
    """One pull per stream per node of several worker processes: the worker that owns a stream
    (WorkerPlan.owner_of) pulls it as a node of one process would (``owner``); every other worker pulls it
    from that worker's private loopback port, as a child edge pulls from a parent edge. Its pull is one
    viewer of the owner's, so the owner's pull outlives it by ``idle_grace`` as for any viewer."""

    def __init__(self, owner: Resolver, plan: WorkerPlan, cluster_secret: str | None) -> None:
        self.owner = owner
        self.plan = plan
        # Signed like any edge's pull when the cluster has a secret; with the node's own secret otherwise,
        # since an owner with a play secret lets no unsigned viewer in.
        self.pull_secret = None if cluster_secret is not None else plan.secret
        self.description = f"{owner.description}, through worker {plan.index} of {plan.count} for its streams"

    async def resolve(self, key: StreamKey) -> Upstream | None:
        if self.plan.owner_of(key) == self.plan.index:
            return await self.owner.resolve(key)
        return Upstream(self.plan.sibling_url(key), pull_secret=self.pull_secret)
