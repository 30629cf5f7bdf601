"""Viewers routed to edges that the edges' heartbeats do not count yet.

Edges report their viewers once per heartbeat (1 s). A flash crowd arrives inside one heartbeat
period, so a router that balanced on reported loads alone would send all of it to the same "least
loaded" edge. The router therefore adds, per edge, the viewers routed to it since the heartbeat it
decides with; this class keeps those counts.

Counts are kept per heartbeat *version*: the `updated` stamp of the edge's record. Viewers routed
while a router sees version V of an edge count on top of V's load; once the router sees the next
version, that heartbeat counts them (the viewers have connected by then) and the count starts again
from zero. No clocks are compared: `updated` is an opaque version, the same for every router that
reads the same record.

A heartbeat misses the viewers routed in the last `lag` seconds before the router saw it: those
routed before it was sent that had not connected yet (the routing -> connect latency), and those routed
after it was sent while the router still routed on the previous version (the node list's age). In a
flash crowd those are many, and without them the edge would look emptier than it is and take more
than its bound. So when an edge's version moves, its count starts again not from zero but from the
decisions of the last `lag` seconds on the previous version (the count's history is sampled every
lag/8), and keeps them until the next version. Set `lag` too short and those viewers are missed for a
heartbeat period; too long and some are counted twice that long (the edge looks a little fuller:
bounded loads spill a little early, the safe side).

Several routers (control-plane replicas) share counts through a store (common.registry.pending): each
exchange sends the viewers this router routed since the last one, and reads back everyone's totals,
under store keys ``EDGE@VERSION``. Between exchanges a router adds its own decisions locally, so its
view is exact for its own traffic and behind others' by one exchange.

Use: ``plan(edges)`` -> exchange with the store -> ``settle(plan, totals)`` (None if it failed), one
exchange at a time; ``assigned(edge_id)`` after each decision; ``counts`` is what routing adds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from common.registry.base import NodeInfo


def counter_key(edge_id: str, version: float) -> str:
    """The store key of an edge's count on one heartbeat version (repr: the same float reads the same)."""
    return f"{edge_id}@{version!r}"


@dataclass(frozen=True, slots=True)
class Exchange:
    """One round with the store: add `add` (key -> viewers), then read the totals of `read`."""

    add: dict[str, int]
    read: list[str]
    versions: dict[str, float]  # edge id -> the heartbeat version the read keys are for
    sent: dict[str, int] = field(default_factory=dict)  # edge id -> viewers in `add` (kept if it fails)


class UnreportedViewers:
    """Per edge, the viewers routed to it since the heartbeat version routing uses for it."""

    def __init__(self, lag: float = 0.0) -> None:
        self._lag = lag
        self._base: dict[str, int] = {}  # edge id -> decisions of the previous version's last `lag` s
        self._history: dict[str, deque[tuple[float, int]]] = {}  # edge id -> (when, its count then)
        self._versions: dict[str, float] = {}  # edge id -> version the counts are on top of
        self._totals: dict[str, int] = {}  # edge id -> everyone's count, as read at the last exchange
        self._unsent: dict[str, int] = {}  # edge id -> this router's decisions the store has not seen
        self._sending: dict[str, int] = {}  # edge id -> this router's decisions in the exchange under way
        self._exchanging = False
        self.counts: dict[str, int] = {}  # edge id -> totals + sending + unsent: what routing adds

    @property
    def unsent(self) -> bool:
        """Whether this router made decisions the store has not been sent yet."""
        return bool(self._unsent)

    def assigned(self, edge_id: str, viewers: int = 1) -> None:
        """This router sent `viewers` more viewers to the edge."""
        self._unsent[edge_id] = self._unsent.get(edge_id, 0) + viewers
        self.counts[edge_id] = self.counts.get(edge_id, 0) + viewers

    def plan(self, edges: Iterable[NodeInfo]) -> Exchange:
        """The next exchange, for the edges of a fresh node list: this router's decisions since the last
        exchange go out under the versions they were made on (routers that still see those versions
        count them), the read asks for each listed edge's current version."""
        if self._exchanging:
            raise RuntimeError("one exchange at a time: settle the previous one first")
        self._exchanging = True
        sending, self._unsent = self._unsent, {}
        self._sending = sending
        add: dict[str, int] = {}
        for edge_id, viewers in sending.items():
            version = self._versions.get(edge_id)
            if version is not None and viewers:
                add[counter_key(edge_id, version)] = viewers
        versions = {edge.id: edge.updated for edge in edges}
        return Exchange(add, [counter_key(e, v) for e, v in versions.items()], versions, sending)

    def settle(self, plan: Exchange, totals: Sequence[int] | None, now: float = 0.0) -> None:
        """Adopt the exchange's result: the node list's versions and the totals read, in `plan.read`
        order. None: the exchange failed (the store is unreachable); its decisions are kept to be sent
        next time, and the last totals of edges whose version did not move stay in use. An edge whose
        version moved starts again from its decisions of the last `lag` seconds (`now`: this router's
        clock, only ever compared with itself)."""
        old_versions, old_totals, unsent = self._versions, self._totals, self._unsent
        self._versions = versions = plan.versions
        moved = [e for e, v in versions.items() if e in old_versions and old_versions[e] != v]
        if self._lag > 0:
            for edge_id in moved:
                own = old_totals.get(edge_id, 0) + plan.sent.get(edge_id, 0) + unsent.get(edge_id, 0)
                recent = own - self._count_ago(edge_id, now)
                if recent > 0:
                    self._base[edge_id] = recent
                else:
                    self._base.pop(edge_id, None)
                self._history[edge_id] = deque([(now, 0)])
        else:
            for edge_id in moved:
                self._base.pop(edge_id, None)
        if totals is None:
            for edge_id, viewers in plan.sent.items():
                unsent[edge_id] = unsent.get(edge_id, 0) + viewers
            self._totals = {e: n for e, n in old_totals.items() if old_versions.get(e) == versions.get(e)}
        else:
            self._totals = {e: n for e, n in zip(versions, totals, strict=True) if n}
        self._sending = {}
        self._exchanging = False
        self._unsent = {e: n for e, n in unsent.items() if e in versions and old_versions.get(e) == versions[e]}
        for gone in [e for e in self._base if e not in versions]:
            del self._base[gone]
        for gone in [e for e in self._history if e not in versions]:
            del self._history[gone]
        counts = dict(self._totals)
        for source in (self._unsent, self._base):
            for edge_id, viewers in source.items():
                counts[edge_id] = counts.get(edge_id, 0) + viewers
        if self._lag > 0:
            self._remember(counts, now)
        self.counts = counts

    def _count_ago(self, edge_id: str, now: float) -> int:
        """This version's count `lag` seconds ago (the newest sample at least that old; 0 if none is)."""
        history = self._history.get(edge_id)
        past = 0
        if history:
            for when, count in history:
                if when > now - self._lag:
                    break
                past = count
        return past

    def _remember(self, counts: dict[str, int], now: float) -> None:
        """Sample each edge's count on its current version (without the carried base) every lag/8."""
        step, horizon = self._lag / 8, now - self._lag
        base = self._base
        for edge_id in self._versions:
            history = self._history.get(edge_id)
            if history is None:
                history = self._history[edge_id] = deque()
            if history and now - history[-1][0] < step:
                continue
            history.append((now, counts.get(edge_id, 0) - base.get(edge_id, 0)))
            while len(history) > 1 and history[1][0] <= horizon:
                history.popleft()
