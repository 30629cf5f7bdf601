"""Hashing for placement: a consistent-hash ring with bounded loads, and rendezvous hashing.

- Ring + pick_bounded: consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam,
  "Consistent Hashing with Bounded Loads", 2016). A key stays on its home member until that one holds
  ceil((1 + epsilon) * average) units, then spills clockwise to the next members on the ring. No member
  goes above (1 + epsilon) times the average, and adding or removing one member moves only about 1/n of
  the keys' homes.
- rendezvous_pick: highest random weight. Every caller picks the same member for a key without a ring;
  removing a member moves only the keys it had.
- owner_worker: which of a node's worker processes pulls a stream from the cluster (the others pull it
  from that one), the same answer in every worker.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from itertools import repeat

DEFAULT_EPSILON = 0.25
DEFAULT_VNODES = 64
RING_CACHE_SIZE = 64  # distinct (member set, vnodes) rings kept; edge sets change rarely

_NO_EXTRA: Mapping[str, int] = {}


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


def pick_bounded(
    ring: Ring,
    key: str,
    loads: Mapping[str, int],
    epsilon: float = DEFAULT_EPSILON,
    extra: Mapping[str, int] = _NO_EXTRA,
) -> str | None:
    """The first member clockwise from `key` whose load + 1 stays within the bounded capacity.

    A member's load is loads[member] (missing: 0; negative: 0) plus extra[member]: what the caller knows
    on top of the reported loads (the viewers routed since the last heartbeat). Some member always fits,
    since not all n can hold capacity >= (1 + epsilon) * (total + 1) / n when their loads add up to total.
    """
    if len(ring) == 0:
        return None
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    members = ring.members
    capacity = bounded_capacity(_total(members, loads) + _total(members, extra), len(members), epsilon)
    first: str | None = None
    for member in ring.walk(key):
        if first is None:
            first = member
        if max(0, loads.get(member, 0)) + max(0, extra.get(member, 0)) + 1 <= capacity:
            return member
    return first  # unreachable with consistent loads; stay total anyway


def _total(members: tuple[str, ...], loads: Mapping[str, int]) -> int:
    """Sum of the members' loads, negative ones as 0. This runs for every routing decision: map/sum keep
    the loop in C (a comprehension over 40 edges was the router's largest cost after HTTP itself)."""
    values = list(map(loads.get, members, repeat(0)))
    if not values or min(values) >= 0:
        return sum(values)
    return sum(value for value in values if value > 0)


def rendezvous_weight(member: str, key: str) -> bytes:
    """The weight of `member` for `key` in rendezvous hashing (compared as bytes, the same everywhere)."""
    return hashlib.blake2b(f"{member}|{key}".encode(), digest_size=8).digest()


def rendezvous_pick(key: str, members: Iterable[str]) -> str | None:
    """The member with the highest weight for `key` (None when there is none)."""
    return max(members, key=lambda member: rendezvous_weight(member, key), default=None)


def owner_worker(key: str, workers: int) -> int:
    """The index of the worker that owns stream ``key`` among ``workers``: every worker process of a node
    computes the same one, in any run (a node's worker count is fixed while it runs, so a plain modulo
    is enough; nothing moves when it changes but the node's own restart)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return stable_hash(key) % workers
