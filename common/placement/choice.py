"""Routing decisions over registry snapshots: which origin a publisher goes to, which edge a viewer goes to.

- Region: a client's region first; when it has no healthy node, the regions of the operator's fallback
  list for it, in order (`*` at its end: then any region); with no list, any region.
- Publish: the origin that already holds the stream; else the least-loaded healthy origin, region first.
- Play: region first, then consistent hashing with bounded loads (common.placement.hashing) over that
  region's edges, load = the viewers the edge reported plus those routed to it since (passed in).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from common.placement.hashing import DEFAULT_EPSILON, DEFAULT_VNODES, Ring, pick_bounded, ring_for
from common.registry.base import NodeInfo, StreamClaim

ANY_REGION: Final = "*"  # in a region's fallback list: after the listed regions, any region

RegionFallback = Mapping[str, Sequence[str]]  # region -> the regions to try next, in order ('*': any)


def healthy(nodes: Iterable[NodeInfo], role: str) -> list[NodeInfo]:
    """Nodes of that role that take new work (not draining)."""
    return [node for node in nodes if node.role == role and not node.draining]


def in_region(nodes: list[NodeInfo], region: str | None, fallback: RegionFallback | None = None) -> list[NodeInfo]:
    """The nodes a client of `region` should use: those of `region` when there are any; else, when the
    operator gave `region` a fallback list, those of the first listed region that has some (none if no
    listed region has any, unless the list ends with '*': then all of them); else all of them.

    With no region (nothing placed the client) every node is a candidate.
    """
    if region is None:
        return nodes
    by_region: dict[str, list[NodeInfo]] = {}
    for node in nodes:
        by_region.setdefault(node.region, []).append(node)
    order = (fallback or {}).get(region)
    if order is None:
        return by_region.get(region) or nodes
    for choice in (region, *order):
        if choice == ANY_REGION:
            return nodes
        if choice in by_region:
            return by_region[choice]
    # The list is the operator's word on where this region's clients may go: a far region they left
    # out is not a better answer than "no node" (a 503 the client retries).
    return []


def _origin_load(node: NodeInfo) -> tuple[int, int, float, str]:
    return (node.load.streams, node.load.viewers, node.load.bits_out, node.id)


def choose_origin(
    origins: Sequence[NodeInfo],
    claim: StreamClaim | None,
    region: str | None,
    fallback: RegionFallback | None = None,
) -> NodeInfo | None:
    """Where a publisher of a stream goes.

    The origin holding the stream's claim, when it is alive and not draining (a publisher that comes back
    belongs where its stream is); else the least-loaded healthy origin of `region` (any region if that
    one has none), by (streams, viewers, bits_out), ties broken by id. An origin may take over the claim
    of one that is draining or gone, so a reconnecting publisher moves off a draining origin. With no
    healthy origin in `region`, `fallback` says which regions to try (see in_region).
    """
    if claim is not None:
        for node in origins:
            if node.id == claim.origin and node.role == "origin" and not node.draining:
                return node
    candidates = in_region(healthy(origins, "origin"), region, fallback)
    if not candidates:
        return None
    return min(candidates, key=_origin_load)


_NONE: Mapping[str, int] = {}


class EdgeTable:
    """The healthy edges of one node-list snapshot, arranged for play routing. Each client region's
    candidates and ring are worked out on its first decision and reused by every later one on the same
    snapshot, so a decision costs one ring walk (a burst of requests shares one snapshot)."""

    __slots__ = ("_fallback", "_healthy", "_regions", "_vnodes", "viewers")

    def __init__(
        self, edges: Iterable[NodeInfo], fallback: RegionFallback | None = None, vnodes: int = DEFAULT_VNODES
    ) -> None:
        self._healthy = healthy(edges, "edge")
        self._fallback = fallback
        self._vnodes = vnodes
        self._regions: dict[str | None, tuple[Ring, dict[str, NodeInfo]]] = {}
        # The loads the edges reported in their heartbeats (a duplicate id: the first record wins).
        self.viewers: dict[str, int] = {}
        for node in self._healthy:
            self.viewers.setdefault(node.id, node.load.viewers)

    @property
    def edges(self) -> list[NodeInfo]:
        """The healthy edges, as listed."""
        return self._healthy

    def _candidates(self, region: str | None) -> tuple[Ring, dict[str, NodeInfo]]:
        found = self._regions.get(region)
        if found is None:
            by_id: dict[str, NodeInfo] = {}
            for node in in_region(self._healthy, region, self._fallback):
                by_id.setdefault(node.id, node)
            found = self._regions[region] = (ring_for(by_id, self._vnodes), by_id)
        return found

    def choose(
        self,
        stream_key: str,
        region: str | None,
        *,
        epsilon: float = DEFAULT_EPSILON,
        unreported: Mapping[str, int] = _NONE,
    ) -> NodeInfo | None:
        """Where a viewer of `stream_key` from `region` goes: bounded-load consistent hashing over the
        region's candidates, each loaded with its reported viewers plus `unreported[id]` (viewers routed
        to it that its heartbeat does not count yet)."""
        ring, by_id = self._candidates(region)
        chosen = pick_bounded(ring, stream_key, self.viewers, epsilon, unreported)
        return None if chosen is None else by_id[chosen]


def choose_edge(
    stream_key: str,
    edges: Sequence[NodeInfo],
    region: str | None,
    *,
    epsilon: float = DEFAULT_EPSILON,
    vnodes: int = DEFAULT_VNODES,
    fallback: RegionFallback | None = None,
    unreported: Mapping[str, int] = _NONE,
) -> NodeInfo | None:
    """Where a viewer of a stream goes: the healthy edges of `region` (if it has none: of the regions
    `fallback` lists for it, else all healthy edges; see in_region), then consistent hashing with
    bounded loads over them, load = reported viewers + `unreported` ones. One decision on its own; many
    decisions on one snapshot share an EdgeTable instead."""
    return EdgeTable(edges, fallback, vnodes).choose(stream_key, region, epsilon=epsilon, unreported=unreported)
