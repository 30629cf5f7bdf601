"""The cluster simulated at scale: a million viewers routed one by one by the project's own routing code.

What runs for real: common.placement's EdgeTable.choose (region choice and bounded-load consistent
hashing, as the control plane's play route), UnreportedViewers (the control plane's pending counts)
over an InProcessPendingCounts store on the simulation's clock (shared by the replicas as Redis shares
them, or one per replica), and rendezvous_pick (the edges' mid-tier choice, edge.upstream). What is
modelled: time (ticks), heartbeats (staggered; an edge reports the viewers that have connected), the
connect latency, the replicas' node-list and exchange periods, and pulls (one per stream per edge,
lingering `idle_grace`; one per stream per mid-tier node).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from common.placement.choice import EdgeTable
from common.placement.hashing import rendezvous_pick
from common.placement.unreported import UnreportedViewers
from common.registry.base import NodeInfo, NodeLoad
from common.registry.pending import InProcessPendingCounts
from loadtest.simulate_config import SimConfig
from loadtest.simulate_report import Sample, SimReport, registry_commands
from loadtest.simulate_workload import Workload, make_workload


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(slots=True)
class Replica:
    """One control-plane replica: its pending-count accounting, and the node list it routes on."""

    unreported: UnreportedViewers
    store: InProcessPendingCounts
    table: EdgeTable | None = None
    edges: list[NodeInfo] = field(default_factory=list)  # the node list the table (and the versions) come from
    read_at: float = float("-inf")
    exchanged_at: float = float("-inf")


def split(total: int, weights: list[float]) -> list[int]:
    """`total` over the weights, largest remainders first, at least 1 each."""
    raw = [total * w / sum(weights) for w in weights]
    counts = [max(1, int(x)) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - int(raw[i]), reverse=True):
        if sum(counts) >= total:
            break
        counts[i] += 1
    return counts


@dataclass(slots=True)
class Pulls:
    """Upstream pulls: one per stream per edge that has its viewers (lingering `grace` ticks after the last
    one), and through the mid tier one per stream per mid-tier node that has child pulls."""

    streams: int
    edge_per_stream: list[int]  # stream -> edges pulling it (= pulls the mid tier, or the origins, serve)
    origin_per_stream: list[int]  # stream -> pulls the origins serve
    viewers: dict[int, int] = field(default_factory=dict)  # edge * streams + stream -> viewers
    active: set[int] = field(default_factory=set)  # edge pulls running (with viewers, or lingering)
    children: dict[int, int] = field(default_factory=dict)  # mid * streams + stream -> child pulls
    mid_active: set[int] = field(default_factory=set)
    edge_starts: int = 0
    mid_starts: int = 0


class Simulation:
    def __init__(self, config: SimConfig, workload: Workload | None = None) -> None:
        self.config = c = config
        self.workload = workload if workload is not None else make_workload(config)
        self.clock = SimClock()
        names = c.region_names
        self.per_region = split(c.edges, c.region_weights())
        self.edge_ids = [f"{names[r]}-{i}" for r in range(c.regions) for i in range(self.per_region[r])]
        self.edge_region = array("b", [r for r in range(c.regions) for _ in range(self.per_region[r])])
        self.index = {edge_id: i for i, edge_id in enumerate(self.edge_ids)}
        self.mids = [[f"{names[r]}-mid-{j}" for j in range(c.mid_tier)] for r in range(c.regions)]
        self.mid_index = {m: i for i, m in enumerate(m for region in self.mids for m in region)}
        self.stream_keys = [f"live/s{s}" for s in range(c.streams)]
        n = len(self.edge_ids)
        self.load = [0] * n  # viewers routed to the edge and not gone (connected or about to)
        self.connected = [0] * n  # what the edge reports in its heartbeats
        self.records = [self._record(i, 0.0) for i in range(n)]
        shared = InProcessPendingCounts(clock=self.clock)
        self.replicas = [
            Replica(UnreportedViewers(c.lag), shared if c.shared else InProcessPendingCounts(clock=self.clock))
            for _ in range(c.replicas)
        ]
        self.pulls = Pulls(c.streams, [0] * c.streams, [0] * c.streams)
        self._mid_for: dict[int, int] = {}  # region * streams + stream -> mid index
        self.ops: dict[str, int] = dict.fromkeys(
            ("heartbeat", "node_list", "pending_exchange", "pending_keys", "pull_lookup", "pull_node_list"), 0
        )
        self._commands = 0

    def _record(self, edge: int, now: float, draining: bool = False) -> NodeInfo:
        edge_id, region = self.edge_ids[edge], self.config.region_names[self.edge_region[edge]]
        load = NodeLoad(viewers=self.connected[edge])
        return NodeInfo(edge_id, "edge", region, f"{edge_id}:1935", f"{edge_id}:8080", load, draining, now)

    # -- the control plane -------------------------------------------------------------------------

    def _refresh(self, replica: Replica, now: float) -> EdgeTable:
        """A node-list read, with the pending exchange that moves the counts to the new versions."""
        self.ops["node_list"] += 1
        replica.edges = list(self.records)
        replica.table = table = EdgeTable(replica.edges)
        replica.read_at = now
        self._exchange(replica, now)
        return table

    def _exchange(self, replica: Replica, now: float) -> None:
        if not self.config.pending:
            return
        plan = replica.unreported.plan(replica.edges)
        totals = replica.store.exchange_now(plan.add, plan.read, 3.0)
        replica.unreported.settle(plan, totals, now)
        replica.exchanged_at = now
        self.ops["pending_exchange"] += 1
        self.ops["pending_keys"] += 2 * len(plan.add) + len(plan.read)

    # -- pulls -------------------------------------------------------------------------------------

    def _mid(self, region: int, stream: int) -> int:
        key = region * self.config.streams + stream
        mid = self._mid_for.get(key)
        if mid is None:
            picked = rendezvous_pick(self.stream_keys[stream], self.mids[region])
            assert picked is not None
            mid = self._mid_for[key] = self.mid_index[picked]
        return mid

    def _pull_start(self, edge: int, stream: int) -> None:
        p, s = self.pulls, self.config.streams
        key = edge * s + stream
        if key in p.active:
            return  # a lingering pull is picked up again
        p.active.add(key)
        p.edge_per_stream[stream] += 1
        p.edge_starts += 1
        self.ops["pull_lookup"] += 1
        if not self.config.mid_tier:
            p.origin_per_stream[stream] += 1
            return
        self.ops["pull_node_list"] += 1  # ParentTierResolver lists the parent region's edges
        mkey = self._mid(self.edge_region[edge], stream) * s + stream
        p.children[mkey] = p.children.get(mkey, 0) + 1
        if mkey not in p.mid_active:
            p.mid_active.add(mkey)
            p.origin_per_stream[stream] += 1
            p.mid_starts += 1
            self.ops["pull_lookup"] += 1

    def _pull_stop(self, key: int, stops: list[list[int]], tick: int, grace: int) -> None:
        """An edge pull whose grace ran out (negative keys: a mid-tier pull's)."""
        p, s = self.pulls, self.config.streams
        if key < 0:
            mkey = -key - 1
            if p.children.get(mkey, 0) == 0 and mkey in p.mid_active:
                p.mid_active.discard(mkey)
                p.origin_per_stream[mkey % s] -= 1
            return
        if p.viewers.get(key, 0) or key not in p.active:
            return
        p.active.discard(key)
        stream = key % s
        p.edge_per_stream[stream] -= 1
        if not self.config.mid_tier:
            p.origin_per_stream[stream] -= 1
            return
        mkey = self._mid(self.edge_region[key // s], stream) * s + stream
        p.children[mkey] -= 1
        if p.children[mkey] == 0:
            stops[min(tick + grace, len(stops) - 1)].append(-mkey - 1)

    # -- the run -----------------------------------------------------------------------------------

    def run(self, progress: Callable[[str], None] | None = None) -> SimReport:
        c, w = self.config, self.workload
        tick_s, ticks = c.tick, len(w.joins)
        per_second = max(1, round(1.0 / tick_s))
        delay = max(1, round(c.connect_delay / tick_s))
        grace = max(1, round(c.idle_grace / tick_s))
        beat = max(1, round(c.heartbeat / tick_s))
        outage = c.outage_window()
        out_region = c.region_names.index(outage[0]) if outage else -1
        n = len(self.edge_ids)
        beats: list[list[int]] = [[] for _ in range(ticks + beat)]
        for e in range(n):
            beats[(e * beat) // n].append(e)
        connects: list[list[int]] = [[] for _ in range(ticks + delay)]
        stops: list[list[int]] = [[] for _ in range(ticks + 1)]
        viewer_edge = array("i", [-1]) * c.viewers
        stream_of, region_of, edge_region = w.stream, w.region, self.edge_region
        keys, names, eps = self.stream_keys, c.region_names, c.epsilon
        load, connected, pulls, s_count = self.load, self.connected, self.pulls, c.streams
        replicas, n_rep = self.replicas, len(self.replicas)
        pending, max_age, interval = c.pending, c.node_list_max_age, c.pending_interval
        by_stream = c.balancer == "stream"
        samples: list[Sample] = []
        outside = decisions = decisions_this_second = 0
        turn = 0
        started = time.perf_counter()
        for k in range(ticks):
            now = self.clock.now = k * tick_s
            draining = outage is not None and outage[1] <= now < outage[2]
            for e in beats[k]:  # heartbeats: the viewers that have connected
                self.records[e] = self._record(e, now, draining and edge_region[e] == out_region)
                beats[k + beat].append(e)
                self.ops["heartbeat"] += 1
            for e in connects[k]:
                connected[e] += 1
            for replica in replicas:  # node-list reads and pending exchanges, on each replica's period
                if now - replica.read_at >= max_age:
                    self._refresh(replica, now)
                elif pending and replica.unreported.unsent and now - replica.exchanged_at >= interval:
                    self._exchange(replica, now)
            joining = w.joins[k]
            for v in joining:
                stream, region = stream_of[v], region_of[v]
                if by_stream:
                    replica = replicas[stream % n_rep]
                else:
                    replica = replicas[turn]
                    turn = (turn + 1) % n_rep
                table = replica.table
                assert table is not None
                chosen = table.choose(keys[stream], names[region], epsilon=eps, unreported=replica.unreported.counts)
                assert chosen is not None
                if pending:
                    replica.unreported.assigned(chosen.id)
                e = self.index[chosen.id]
                viewer_edge[v] = e
                load[e] += 1
                connects[k + delay].append(e)
                if edge_region[e] != region:
                    outside += 1
                key = e * s_count + stream
                held = pulls.viewers.get(key, 0)
                pulls.viewers[key] = held + 1
                if held == 0:
                    self._pull_start(e, stream)
            decisions += len(joining)
            decisions_this_second += len(joining)
            for v in w.leaves[k]:
                e = viewer_edge[v]
                load[e] -= 1
                connected[e] -= 1
                key = e * s_count + stream_of[v]
                left = pulls.viewers[key] - 1
                if left:
                    pulls.viewers[key] = left
                else:
                    del pulls.viewers[key]
                    stops[min(k + grace, ticks)].append(key)
            for key in stops[k]:
                self._pull_stop(key, stops, k, grace)
            if k % per_second == per_second - 1:
                samples.append(self._sample(now + tick_s, decisions_this_second, out_region if draining else -1))
                decisions_this_second = 0
                if progress is not None and len(samples) % 10 == 0:
                    progress(f"t={now + tick_s:.0f} s: {decisions:,} routed, {sum(load):,} watching")
        wall = time.perf_counter() - started
        return SimReport.build(
            c, samples, decisions, outside, wall, self.ops, self.pulls.edge_starts, self.pulls.mid_starts
        )

    def _sample(self, at: float, decisions: int, skip_region: int) -> Sample:
        c, load, p = self.config, self.load, self.pulls
        worst_ratio, worst_excess = 0.0, float("-inf")
        start = 0
        for r, count in enumerate(self.per_region):
            loads = load[start : start + count]
            start += count
            mean = sum(loads) / count
            if r == skip_region or mean == 0:
                continue
            worst_ratio = max(worst_ratio, max(loads) / mean)
            worst_excess = max(worst_excess, max(loads) - (1 + c.epsilon) * mean)
        commands = registry_commands(self.ops)
        this_second, self._commands = commands - self._commands, commands
        carried = [x for x in p.edge_per_stream if x]
        origin = [x for x in p.origin_per_stream if x]
        return Sample(
            at=at,
            watching=sum(load),
            decisions=decisions,
            max_over_mean=worst_ratio,
            excess=worst_excess if worst_excess != float("-inf") else 0.0,
            edge_pulls_max=max(carried, default=0),
            edge_pulls_mean=sum(carried) / len(carried) if carried else 0.0,
            origin_pulls_max=max(origin, default=0),
            origin_pulls_mean=sum(origin) / len(origin) if origin else 0.0,
            registry_commands=this_second,
        )


def simulate(config: SimConfig, progress: Callable[[str], None] | None = None) -> SimReport:
    return Simulation(config).run(progress)
