"""The crowd: who joins when, watching what, from where, and when they leave (seeded, reproducible).

Stream popularity is Zipf; part of each stream's audience arrives in its flash crowd (all within
`burst_seconds` of the stream's start), the rest uniformly; watch times are exponential. Viewers are
bucketed by simulated tick, so the simulation never sorts a million events.
"""

from __future__ import annotations

import random
from array import array
from dataclasses import dataclass
from itertools import accumulate

from loadtest.simulate_config import SimConfig


@dataclass(slots=True)
class Workload:
    stream: array[int]  # viewer -> stream index (0: the most popular)
    region: array[int]  # viewer -> region index
    joins: list[list[int]]  # tick -> viewers that join in it
    leaves: list[list[int]]  # tick -> viewers that leave in it (within the simulated time)
    crowd_start: list[float]  # stream -> when its flash crowd arrives


def zipf_weights(streams: int, exponent: float) -> list[float]:
    return [1.0 / (rank**exponent) for rank in range(1, streams + 1)]


def make_workload(config: SimConfig) -> Workload:
    rng = random.Random(config.seed)
    n, ticks = config.viewers, int((config.duration + config.tail) / config.tick) + 1
    stream = array(
        "i",
        rng.choices(
            range(config.streams), cum_weights=list(accumulate(zipf_weights(config.streams, config.zipf))), k=n
        ),
    )
    region = array("b", rng.choices(range(config.regions), weights=config.region_weights(), k=n))
    crowd_start = [rng.uniform(0.0, config.duration - config.burst_seconds) for _ in range(config.streams)]
    joins: list[list[int]] = [[] for _ in range(ticks)]
    leaves: list[list[int]] = [[] for _ in range(ticks)]
    tick, burst, share, span = config.tick, config.burst_seconds, config.burst_share, config.duration
    shortest, rate = 2 * config.connect_delay + tick, 1.0 / config.watch_mean
    rand, expo = rng.random, rng.expovariate
    for viewer in range(n):
        if rand() < share:
            at = crowd_start[stream[viewer]] + rand() * burst
        else:
            at = rand() * span
        joins[int(at / tick)].append(viewer)
        leave = int((at + max(shortest, expo(rate))) / tick)
        if leave < ticks:
            leaves[leave].append(viewer)
    return Workload(stream, region, joins, leaves, crowd_start)
