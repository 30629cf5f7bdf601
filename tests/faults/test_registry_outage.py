"""Redis restarted (losing every key), then down for 30 s, on default settings: streams that flow keep
flowing to every viewer, no publisher is kicked, node records and claims come back by themselves, and a
lookup that needs Redis while it is down fails fast and clearly, then works again with no restart."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from common.serving.client import RtmpClient, RtmpClientError
from tests.faults.cluster import Cluster, Watcher, publisher, wait_until
from tests.faults.figures import record
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

OUTAGE = 30.0


def test_streams_flow_through_a_redis_restart_and_a_30s_outage(test_flv: Path, tmp_path: Path) -> None:
    with Cluster(tmp_path) as cluster:
        origin = cluster.start("origin-a", "origin")
        edge = cluster.start("edge-1", "edge")
        cluster.start("control", "control")
        with (
            publisher(test_flv, f"{origin.rtmp}/live/main") as main_publisher,
            publisher(test_flv, f"{origin.rtmp}/live/other") as other_publisher,
        ):
            wait_for(lambda: cluster.claim("live/main") and cluster.claim("live/other"), 10, "both streams claimed")
            asyncio.run(_through_outages(cluster, edge.rtmp, edge.http, origin.rtmp))
            assert main_publisher.poll() is None and other_publisher.poll() is None, "a publisher was kicked"
        assert "lost the lease" not in origin.log()


async def _through_outages(cluster: Cluster, edge_rtmp: str, edge_http: str, origin_rtmp: str) -> None:
    watchers = [await Watcher(url).start() for url in (f"{edge_rtmp}/live/main", f"{origin_rtmp}/live/other")]
    await asyncio.sleep(2)
    epoch = (cluster.claim("live/main") or {})["epoch"]

    restarted_at = time.monotonic()
    cluster.redis.restart()  # every key is gone: node records, claims, the epoch counter
    await wait_until(lambda: {"origin-a", "edge-1"} <= set(cluster.registry_nodes()), 10, "node records")
    nodes_back = time.monotonic() - restarted_at
    await wait_until(
        lambda: (c := cluster.claim("live/main")) is not None and c["origin"] == "origin-a" and c["epoch"] > epoch,
        15,
        "the claim re-asserted",
    )
    claims_back = time.monotonic() - restarted_at
    await asyncio.sleep(1)

    cluster.redis.stop()
    down_at = time.monotonic()
    await asyncio.sleep(3)  # long enough for every node to notice
    rtmp_answer, rtmp_after = await _play_unknown(f"{edge_rtmp}/live/other")
    http_status, http_after = await asyncio.get_running_loop().run_in_executor(
        None, _http_status, f"{edge_http}/live/other.flv"
    )
    route_status, _ = await asyncio.get_running_loop().run_in_executor(
        None, _http_status, f"{cluster.nodes['control'].http}/v1/route/play?stream=live/other"
    )
    await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
    cluster.redis.start()
    back_at = time.monotonic()
    claims_back_after_outage = await wait_until(
        lambda: cluster.claim("live/main") is not None and cluster.claim("live/other") is not None, 15, "claims"
    )
    # A lookup works again without restarting anything: a new edge viewer of a stream not pulled yet.
    late = await Watcher(f"{edge_rtmp}/live/other").start()
    await wait_until(lambda: late.frames_since(back_at) > 25, 10, "a new pull after the outage")

    for watcher in watchers:
        watcher.assert_kept()
    gaps = [round(w.longest_gap(since=restarted_at), 2) for w in watchers]
    record(
        "registry restart, then 30 s outage",
        node_records_back_after_restart_s=round(nodes_back, 2),
        claims_back_after_restart_s=round(claims_back, 2),
        claims_back_after_outage_s=round(claims_back_after_outage, 2),
        viewers_longest_gap_s=gaps,
        rtmp_play_while_down=f"{rtmp_answer} after {rtmp_after:.2f}s",
        http_flv_while_down=f"{http_status} after {http_after:.2f}s",
    )
    assert all(gap < 1.5 for gap in gaps), gaps
    assert rtmp_answer == "NetStream.Play.StreamNotFound" and rtmp_after < 5, (rtmp_answer, rtmp_after)
    assert http_status == 503 and http_after < 5, (http_status, http_after)
    assert route_status == 503
    for watcher in [*watchers, late]:
        watcher.close()


async def _play_unknown(url: str) -> tuple[str, float]:
    started = time.monotonic()
    client = await RtmpClient.connect(url)
    try:
        await client.play(lambda event: None)
    except RtmpClientError as exc:
        return exc.code, time.monotonic() - started
    finally:
        client.close()
    return "played", time.monotonic() - started


def _http_status(url: str) -> tuple[int, float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, time.monotonic() - started
