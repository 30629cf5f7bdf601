"""What the simulation reports: edge balance, pulls per stream, routing rate and the registry load it implies."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtest.simulate_config import SimConfig

CLAIM_RENEWALS_PER_STREAM = 0.3  # an origin renews each claim every third of claim_ttl (10 s)

# Redis commands per registry operation (common/registry/redis.py, common/registry/pending.py):
COMMANDS = {
    "heartbeat": 4,  # MULTI, SET PX, SADD, EXEC
    "node_list": 2,  # SMEMBERS, MGET of every record
    "pending_exchange": 1,  # one EVALSHA (INCRBY + PEXPIRE per edge sent to, GET per edge read: pending_keys)
    "pull_lookup": 1,  # GET of the stream's claim
    "pull_node_list": 2,  # a mid-tier pull lists the parent region's edges: SMEMBERS, MGET
}


def registry_commands(ops: dict[str, int]) -> int:
    return sum(COMMANDS[kind] * count for kind, count in ops.items() if kind in COMMANDS)


@dataclass(frozen=True, slots=True)
class Sample:
    """One simulated second."""

    at: float
    watching: int
    decisions: int
    max_over_mean: float  # the worst region's busiest edge over its mean
    excess: float  # the worst region's busiest edge minus (1 + epsilon) x its mean (viewers)
    edge_pulls_max: int  # pulls of one stream by edges (what the mid tier serves), the busiest stream
    edge_pulls_mean: float  # ... averaged over streams being watched
    origin_pulls_max: int  # pulls of one stream at the origins
    origin_pulls_mean: float
    registry_commands: int = 0  # Redis commands this second (heartbeats, routing, pulls; see COMMANDS)


@dataclass(frozen=True, slots=True)
class SimReport:
    config: SimConfig
    samples: list[Sample]
    decisions: int
    outside_region: int  # viewers routed to an edge of another region than theirs
    wall_seconds: float
    ops: dict[str, int]
    edge_pull_starts: int
    mid_pull_starts: int

    @classmethod
    def build(
        cls,
        config: SimConfig,
        samples: list[Sample],
        decisions: int,
        outside: int,
        wall: float,
        ops: dict[str, int],
        edge_starts: int,
        mid_starts: int,
    ) -> SimReport:
        return cls(config, samples, decisions, outside, wall, dict(ops), edge_starts, mid_starts)

    # -- figures -----------------------------------------------------------------------------------

    @property
    def seconds(self) -> int:
        return max(1, len(self.samples))

    @property
    def peak_watching(self) -> int:
        return max((s.watching for s in self.samples), default=0)

    @property
    def peak_decisions(self) -> int:
        return max((s.decisions for s in self.samples), default=0)

    @property
    def worst_max_over_mean(self) -> float:
        return max((s.max_over_mean for s in self.samples), default=0.0)

    @property
    def worst_excess(self) -> float:
        """Viewers above (1 + epsilon) x mean on the worst edge at the worst second (<= 0: within)."""
        return max((s.excess for s in self.samples), default=0.0)

    @property
    def origin_pulls_per_stream(self) -> int:
        return max((s.origin_pulls_max for s in self.samples), default=0)

    @property
    def edge_pulls_per_stream(self) -> int:
        return max((s.edge_pulls_max for s in self.samples), default=0)

    def registry_per_second(self) -> dict[str, float]:
        """Mean registry operations per simulated second, by kind, with the analytic ones added: the mid
        tier's heartbeats and the origins' claim renewals."""
        c = self.config
        rates = {kind: count / self.seconds for kind, count in self.ops.items()}
        rates["heartbeat"] += c.regions * c.mid_tier / c.heartbeat
        rates["claim_renewal"] = c.streams * CLAIM_RENEWALS_PER_STREAM
        return rates

    def redis_commands_per_second(self) -> tuple[float, int]:
        """(mean, peak second) of Redis commands, claim renewals and mid-tier heartbeats included."""
        c = self.config
        steady = c.streams * CLAIM_RENEWALS_PER_STREAM + COMMANDS["heartbeat"] * c.regions * c.mid_tier / c.heartbeat
        mean = registry_commands(self.ops) / self.seconds + steady
        peak = max((s.registry_commands for s in self.samples), default=0) + round(steady)
        return mean, peak

    def summary(self) -> dict[str, Any]:
        mean_cmds, peak_cmds = self.redis_commands_per_second()
        return {
            "viewers": self.config.viewers,
            "peak_watching": self.peak_watching,
            "simulated_seconds": len(self.samples),
            "route_decisions": self.decisions,
            "route_decisions_per_s_peak": self.peak_decisions,
            "route_decisions_per_s_mean": round(self.decisions / self.seconds),
            "simulator_decisions_per_wall_s": round(self.decisions / self.wall_seconds) if self.wall_seconds else 0,
            "wall_seconds": round(self.wall_seconds, 1),
            "edge_max_over_mean_worst": round(self.worst_max_over_mean, 3),
            "edge_excess_over_bound_worst": round(self.worst_excess, 1),
            "outside_region": self.outside_region,
            "origin_pulls_per_stream_max": self.origin_pulls_per_stream,
            "mid_tier_nodes": self.config.mid_tier * self.config.regions,
            "edge_pulls_per_stream_max": self.edge_pulls_per_stream,
            "edge_pull_starts": self.edge_pull_starts,
            "mid_pull_starts": self.mid_pull_starts,
            "registry_ops_per_s": {k: round(v, 1) for k, v in self.registry_per_second().items()},
            "redis_commands_per_s_mean": round(mean_cmds),
            "redis_commands_per_s_peak": peak_cmds,
            "pending_keys_touched_per_s": round(self.ops["pending_keys"] / self.seconds),
        }

    def table(self) -> str:
        c, s = self.config, self.summary()
        tier = f"mid tier {c.mid_tier}/region" if c.mid_tier else "no mid tier"
        pending = "off" if not c.pending else ("shared" if c.shared else "per replica")
        lines = [
            f"simulated {c.viewers:,} viewers, {c.streams:,} streams (Zipf {c.zipf}), {c.edges} edges in {c.regions} "
            f"regions, {tier}, {c.replicas} control-plane replicas, pending counts {pending}, epsilon {c.epsilon}",
            f"  peak watching            {s['peak_watching']:,} (over {s['simulated_seconds']} simulated s)",
            f"  route decisions          {s['route_decisions']:,}: peak {s['route_decisions_per_s_peak']:,}/s, "
            f"mean {s['route_decisions_per_s_mean']:,}/s (simulator: {s['simulator_decisions_per_wall_s']:,}/s wall, "
            f"{s['wall_seconds']} s)",
            f"  edge load                worst max/mean {s['edge_max_over_mean_worst']}, worst excess over "
            f"(1+eps) x mean {s['edge_excess_over_bound_worst']} viewers",
            f"  outside their region     {s['outside_region']:,}",
            f"  pulls per stream         origins: max {s['origin_pulls_per_stream_max']} "
            f"({s['mid_tier_nodes']} mid-tier nodes); "
            f"{'mid tier' if c.mid_tier else 'origins'} serve edges: max {s['edge_pulls_per_stream_max']}",
            f"  registry                 {s['redis_commands_per_s_mean']:,} Redis commands/s mean, "
            f"{s['redis_commands_per_s_peak']:,} peak second; "
            + ", ".join(f"{k} {v:,}/s" for k, v in s["registry_ops_per_s"].items()),
        ]
        return "\n".join(lines)

    def write_json(self, path: Path) -> None:
        data = {"config": asdict(self.config), "summary": self.summary(), "samples": [asdict(x) for x in self.samples]}
        path.write_text(json.dumps(data, indent=1) + "\n")
