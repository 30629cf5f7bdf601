"""Routing decisions of the control plane: pure functions over registry snapshots (no I/O, no clock).

- Region: a client's region first; when it has no healthy node, the regions of the operator's fallback
  list for it, in order (`*` at its end: then any region); with no list, any region.
- Publish: the origin that already holds the stream; else the least-loaded healthy origin, region first.
- Play: region first, then consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam,
  "Consistent Hashing with Bounded Loads", 2016) over that region's edges: a stream's viewers stay on
  its home edge until it holds ceil((1 + epsilon) * average) viewers, then spill clockwise to the next
  edges on the ring. No edge goes above (1 + epsilon) times the average load, and adding or removing
  one edge moves only about 1/n of the streams' home edges.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache

from common.registry.base import NodeInfo, StreamClaim
from control.settings import ANY_REGION

DEFAULT_EPSILON = 0.25
DEFAULT_VNODES = 64
RING_CACHE_SIZE = 64  # distinct (edge set, vnodes) rings kept; edge sets change rarely


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process and run (unlike the salted built-in hash())."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


class Ring:
    """A hash ring with `vnodes` points per member. Immutable once built; share it freely."""

    __slots__ = ("_hashes", "_owners", "members", "vnodes")

    def __init__(self, members: Iterable[str], vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, got {vnodes}")
        self.members: tuple[str, ...] = tuple(sorted(set(members)))
        self.vnodes = vnodes
        # Sort by (hash, member) so that even a 64-bit collision orders the same way everywhere.
        points = sorted((stable_hash(f"{member}#{i}"), member) for member in self.members for i in range(vnodes))
        self._hashes: list[int] = [h for h, _ in points]
        self._owners: list[str] = [m for _, m in points]

    def __len__(self) -> int:
        return len(self.members)

    def walk(self, key: str) -> Iterator[str]:
        """Distinct members in ring order, clockwise from the hash of `key`; the first is its home."""
        total = len(self._owners)
        if total == 0:
            return
        start = bisect_right(self._hashes, stable_hash(key))
        seen: set[str] = set()
        for offset in range(total):
            owner = self._owners[(start + offset) % total]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self.members):
                    return

    def home(self, key: str) -> str | None:
        return next(self.walk(key), None)


@lru_cache(maxsize=RING_CACHE_SIZE)
def _cached_ring(members: tuple[str, ...], vnodes: int) -> Ring:
    return Ring(members, vnodes)


def ring_for(members: Iterable[str], vnodes: int = DEFAULT_VNODES) -> Ring:
    """The ring over a set of member ids, built once per distinct set (order does not matter)."""
    return _cached_ring(tuple(sorted(set(members))), vnodes)


def bounded_capacity(total_load: int, members: int, epsilon: float) -> int:
    """Most load one member may hold after taking one more unit: ceil((1 + epsilon) * (total + 1) / n)."""
    return math.ceil((1.0 + epsilon) * (total_load + 1) / members)


def pick_bounded(ring: Ring, key: str, loads: Mapping[str, int], epsilon: float = DEFAULT_EPSILON) -> str | None:
    """The first member clockwise from `key` whose load + 1 stays within the bounded capacity.

    `loads` maps member ids to their current load (missing: 0). Some member always fits, since not
    all n can hold capacity >= (1 + epsilon) * (total + 1) / n when their loads add up to total.
    """
    if len(ring) == 0:
        return None
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    counts = {member: max(0, loads.get(member, 0)) for member in ring.members}
    capacity = bounded_capacity(sum(counts.values()), len(ring), epsilon)
    first: str | None = None
    for member in ring.walk(key):
        if first is None:
            first = member
        if counts[member] + 1 <= capacity:
            return member
    return first  # unreachable with consistent loads; stay total anyway


def healthy(nodes: Iterable[NodeInfo], role: str) -> list[NodeInfo]:
    """Nodes of that role that take new work (not draining)."""
    return [node for node in nodes if node.role == role and not node.draining]


RegionFallback = Mapping[str, Sequence[str]]  # region -> the regions to try next, in order ('*': any)


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


def choose_edge(
    stream_key: str,
    edges: Sequence[NodeInfo],
    region: str | None,
    *,
    epsilon: float = DEFAULT_EPSILON,
    vnodes: int = DEFAULT_VNODES,
    fallback: RegionFallback | None = None,
) -> NodeInfo | None:
    """Where a viewer of a stream goes: the healthy edges of `region` (if it has none: of the regions
    `fallback` lists for it, else all healthy edges; see in_region), then consistent hashing with
    bounded loads over them, load = viewers."""
    candidates = in_region(healthy(edges, "edge"), region, fallback)
    if not candidates:
        return None
    by_id: dict[str, NodeInfo] = {}
    for node in candidates:
        by_id.setdefault(node.id, node)
    ring = ring_for(by_id, vnodes)
    chosen = pick_bounded(ring, stream_key, {node_id: node.load.viewers for node_id, node in by_id.items()}, epsilon)
    return None if chosen is None else by_id[chosen]
