"""What `python -m loadtest simulate` simulates: the cluster, the crowd and the router's settings."""

from __future__ import annotations

from dataclasses import dataclass

REGION_NAMES = ("eu", "us", "ap", "sa", "af", "me", "oc", "in")


@dataclass(frozen=True, slots=True)
class SimConfig:
    viewers: int = 1_000_000  # viewer sessions that join over `duration`
    streams: int = 1000
    zipf: float = 1.0  # popularity of the stream of rank k ~ 1 / k**zipf
    edges: int = 200
    regions: int = 5  # viewers and edges are split over them 30/25/20/15/10 % (more: evenly)
    mid_tier: int = 4  # mid-tier nodes per region (rendezvous per stream); 0: edges pull from origins
    replicas: int = 2  # control-plane replicas
    balancer: str = "round-robin"  # how requests reach them; "stream": hashed on the stream's name
    duration: float = 60.0  # seconds over which viewers join; the simulation runs `tail` s longer
    tail: float = 20.0
    burst_share: float = 0.5  # viewers that arrive in their stream's flash crowd (the rest: uniformly)
    burst_seconds: float = 1.0  # a flash crowd arrives within this
    watch_mean: float = 300.0  # seconds a viewer stays (exponential)
    epsilon: float = 0.25
    heartbeat: float = 1.0  # edges report their viewers this often (staggered)
    connect_delay: float = 0.2  # from the router's answer to the viewer counted by its edge
    pending: bool = True  # count viewers routed since each edge's heartbeat
    shared: bool = True  # replicas share those counts (Redis); False: each its own (other backends)
    pending_interval: float = 0.005  # seconds between a replica's exchanges of pending counts
    lag: float = 0.3  # seconds of decisions a new heartbeat version misses (UnreportedViewers)
    node_list_max_age: float = 0.1  # seconds a replica routes on one node list
    idle_grace: float = 15.0  # a pull outlives its last viewer this long
    tick: float = 0.005  # simulated time step
    outage: str | None = None  # REGION:START:END: that region's edges drain from START to END
    seed: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.regions <= len(REGION_NAMES):
            raise ValueError(f"regions must be 1..{len(REGION_NAMES)}")
        if self.edges < self.regions:
            raise ValueError("at least one edge per region")
        if self.viewers < 1 or self.streams < 1 or self.replicas < 1 or self.mid_tier < 0:
            raise ValueError("viewers, streams and replicas must be >= 1, mid_tier >= 0")
        if self.tick <= 0 or self.duration <= self.burst_seconds:
            raise ValueError("tick must be > 0 and duration longer than a burst")
        if self.balancer not in ("round-robin", "stream"):
            raise ValueError(f"balancer {self.balancer!r}: round-robin or stream")
        if self.outage is not None:
            self.outage_window()

    @property
    def region_names(self) -> tuple[str, ...]:
        return REGION_NAMES[: self.regions]

    def region_weights(self) -> list[float]:
        if self.regions == 5:
            return [0.30, 0.25, 0.20, 0.15, 0.10]
        return [1.0 / self.regions] * self.regions

    def outage_window(self) -> tuple[str, float, float] | None:
        if self.outage is None:
            return None
        try:
            region, start, end = self.outage.split(":")
            window = (region, float(start), float(end))
        except ValueError:
            raise ValueError(f"outage {self.outage!r}: expected REGION:START:END") from None
        if region not in self.region_names or not window[1] < window[2]:
            raise ValueError(f"outage {self.outage!r}: unknown region or empty window")
        return window
