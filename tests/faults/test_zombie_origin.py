"""An origin frozen (SIGSTOP: no FIN, no heartbeat) past its lease while its stream moves to another origin,
then resumed, on default settings: the edge leaves the frozen origin and follows the new owner; the
resumed origin finds itself fenced off (its epoch is stale) and stops acting as the owner."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from tests.faults.cluster import Cluster, Encoder, Watcher, publisher, wait_until
from tests.faults.figures import record
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

FROZEN_FOR = 12.0  # longer than the default claim_ttl (10 s)


def test_a_frozen_origin_is_fenced_off_and_edges_follow_the_new_owner(test_flv: Path, tmp_path: Path) -> None:
    with Cluster(tmp_path) as cluster:
        zombie = cluster.start("origin-a", "origin")
        spare = cluster.start("origin-b", "origin")
        edge = cluster.start("edge-1", "edge")
        cluster.start("control", "control")
        with (
            publisher(test_flv, f"{zombie.rtmp}/live/main") as first,
            publisher(test_flv, f"{spare.rtmp}/live/other"),
        ):
            wait_for(lambda: cluster.claim("live/main") and cluster.claim("live/other"), 10, "both streams")
            asyncio.run(_freeze_and_resume(cluster, edge.rtmp, test_flv))
            wait_for(lambda: first.poll() is not None, 10, "the zombie to drop its publisher")
        assert "lost the lease on live/main" in zombie.log()  # fenced by its stale epoch, nothing else


async def _freeze_and_resume(cluster: Cluster, edge_rtmp: str, flv: Path) -> None:
    zombie, spare = cluster.nodes["origin-a"], cluster.nodes["origin-b"]
    main = await Watcher(f"{edge_rtmp}/live/main").start()
    other = await Watcher(f"{edge_rtmp}/live/other").start()
    await asyncio.sleep(2)
    old = cluster.claim("live/main") or {}
    assert zombie.proc is not None
    os.kill(zombie.proc.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        # The stream moves: its encoder publishes to the other origin, retrying while it is refused.
        with Encoder(flv, "", "live/main", url=f"{spare.rtmp}/live/main"):
            moved = await wait_until(
                lambda: (c := cluster.claim("live/main")) is not None and c["origin"] == "origin-b", 15, "take-over"
            )
            await wait_until(lambda: main.frames_since(frozen_at + moved) > 25, 15, "the edge on the new owner")
            await asyncio.sleep(max(0.0, FROZEN_FOR - (time.monotonic() - frozen_at)))
            os.kill(zombie.proc.pid, signal.SIGCONT)
            resumed_at = time.monotonic()
            fenced = await wait_until(
                lambda: not ((s := zombie.stream("main")) and s["publisher"]), 10, "the zombie to stop owning it"
            )
            new = cluster.claim("live/main") or {}
            assert new["origin"] == "origin-b" and new["epoch"] > old["epoch"], (old, new)
            edge_stream = cluster.nodes["edge-1"].stream("main") or {}
            assert str(edge_stream.get("upstream", "")).startswith(spare.rtmp), edge_stream
            await asyncio.sleep(2)  # the zombie's wake-up must not reach the edge's viewers
    finally:
        os.kill(zombie.proc.pid, signal.SIGCONT)
    main.assert_kept()
    other.assert_kept()
    stall = main.longest_gap(since=frozen_at - 1)
    record(
        "origin frozen (SIGSTOP) past its lease, then resumed",
        claim_taken_over_after_s=round(moved, 2),
        stall_s=round(stall, 2),
        zombie_stopped_owning_after_resume_s=round(fenced, 2),
        unrelated_stream_longest_gap_s=round(other.longest_gap(since=frozen_at), 2),
    )
    assert stall <= 8.0, stall
    assert other.longest_gap(since=frozen_at) < 1.5
    assert time.monotonic() - resumed_at < 15
    main.close()
    other.close()
