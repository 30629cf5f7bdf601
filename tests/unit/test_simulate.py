"""The cluster simulation at a small size: the invariants it exists to show, and that they fail when the
mechanism behind them is taken away (pending counts, the mid tier, a region's edges)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from loadtest.simulate import simulate
from loadtest.simulate_config import SimConfig
from loadtest.simulate_report import SimReport

SMALL = SimConfig(viewers=30_000, streams=100, edges=30, mid_tier=2, duration=15.0, tail=5.0, seed=7)
# The busiest edge of a region may exceed (1 + epsilon) x the region's mean by this many viewers: the
# rounding, the replicas' exchange period, and pending_lag's deliberate over-count (see docs/SCALE.md;
# the full-size run stays within ~65 of means in the thousands).
SLACK = 40


@pytest.fixture(scope="module")
def small() -> SimReport:
    return simulate(SMALL)


def test_every_viewer_is_routed_and_stays_in_region(small: SimReport) -> None:
    assert small.decisions == SMALL.viewers
    assert small.outside_region == 0
    assert small.peak_decisions > 2_000  # flash crowds happened


def test_edges_stay_within_the_bound(small: SimReport) -> None:
    assert small.worst_excess <= SLACK, [s for s in small.samples if s.excess > SLACK]


def test_origin_pulls_per_stream_are_bounded_by_the_mid_tier(small: SimReport) -> None:
    mid_nodes = SMALL.mid_tier * SMALL.regions
    assert 1 <= small.origin_pulls_per_stream <= mid_nodes
    assert small.edge_pulls_per_stream > mid_nodes  # the mid tier absorbs what the edges would pull


def test_without_a_mid_tier_the_origins_serve_every_edge() -> None:
    report = simulate(replace(SMALL, mid_tier=0, viewers=10_000))
    assert report.origin_pulls_per_stream == report.edge_pulls_per_stream > SMALL.regions * 2


def test_without_pending_counts_flash_crowds_break_the_bound() -> None:
    report = simulate(replace(SMALL, pending=False))
    assert report.worst_excess > 10 * SLACK


def test_counts_per_replica_cost_balance_under_flash_crowds() -> None:
    """The fallback of registries without shared counters (docs/SCALE.md): worse than shared, better than none."""
    alone = simulate(replace(SMALL, shared=False))
    assert alone.worst_excess > 2 * SLACK


def test_a_region_without_edges_sends_its_viewers_elsewhere() -> None:
    report = simulate(replace(SMALL, viewers=10_000, outage="af:5:10"))
    assert 0 < report.outside_region < 10_000 * 0.10  # af's share, only while it is out


def test_the_report_reads_well(small: SimReport) -> None:
    text = small.table()
    assert "route decisions" in text and "Redis commands/s" in text
    summary = small.summary()
    assert summary["redis_commands_per_s_peak"] >= summary["redis_commands_per_s_mean"] > 0


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError):
        SimConfig(regions=9)
    with pytest.raises(ValueError):
        SimConfig(outage="mars:1:2")
