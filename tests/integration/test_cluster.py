"""A real cluster of subprocess nodes on loopback: redis-server, two origins, two edges in two
regions, the control plane. ffmpeg publishes where the control plane says; players decode on both edges."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.media.flv import is_video_keyframe
from common.rtmp.events import MediaReceived
from common.serving.client import RtmpClient
from tests.helpers import (
    LOW_LATENCY_INPUT,
    NodeProcess,
    finish_play,
    http_json,
    play_and_decode,
    publishing,
    start_play,
    wait_for,
)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

FAST = {  # short timers so the test sees expiries and idle teardown quickly
    "LIVECDN_CLAIM_TTL": "3",
    "LIVECDN_HEARTBEAT_INTERVAL": "0.5",
    "LIVECDN_NODE_TTL": "2",
    "LIVECDN_IDLE_GRACE": "2",
    "LIVECDN_LOG_LEVEL": "info",
}


class Cluster:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.redis = RedisServer().start()
        registry = ["--registry", self.redis.url]
        self.origin_eu = NodeProcess("origin", [*registry, "--region", "eu", "--node-id", "origin-eu"], FAST)
        self.origin_us = NodeProcess("origin", [*registry, "--region", "us", "--node-id", "origin-us"], FAST)
        self.edge_eu = NodeProcess("edge", [*registry, "--region", "eu", "--node-id", "edge-eu"], FAST)
        self.edge_us = NodeProcess("edge", [*registry, "--region", "us", "--node-id", "edge-us"], FAST)
        self.control = NodeProcess("control", registry, FAST)
        self.nodes = [self.origin_eu, self.origin_us, self.edge_eu, self.edge_us, self.control]
        for node in self.nodes:
            node.start(log_dir)
        wait_for(lambda: len(self.api("/v1/nodes")["nodes"]) == 4, 10, "all four nodes registered")

    def api(self, path: str) -> Any:
        return http_json(self.control.http + path)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        self.redis.cleanup()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


def origin_viewers(origin: NodeProcess, name: str) -> int:
    stream = origin.stream(name)
    return stream["viewers"] if stream else 0


def test_publish_where_routed_and_play_on_both_edges(cluster: Cluster, test_flv: Path) -> None:
    route = cluster.api("/v1/route/publish?stream=live/show&region=eu")
    assert route["origin"] == "origin-eu"
    assert route["rtmp"] == f"{cluster.origin_eu.rtmp}/live/show"
    with publishing(test_flv, route["rtmp"] + "?key=k"):
        wait_for(lambda: cluster.api("/v1/streams")["streams"], 10, "the claim in the registry")
        [claim] = cluster.api("/v1/streams")["streams"]
        assert (claim["key"], claim["origin"]) == ("live/show", "origin-eu")
        assert claim["epoch"] >= 1
        # The same stream routes back to the origin that holds it, whatever the region asked.
        assert cluster.api("/v1/route/publish?stream=live/show&region=us")["origin"] == "origin-eu"

        eu = cluster.api("/v1/route/play?stream=live/show&region=eu")
        us = cluster.api("/v1/route/play?stream=live/show&region=us")
        assert (eu["edge"], us["edge"]) == ("edge-eu", "edge-us")
        players = [start_play(eu["rtmp"], video_frames=40), start_play(us["flv"], video_frames=40)]
        results = [finish_play(p, timeout=30) for p in players]
        for result in results:
            assert result.returncode == 0, result.output
            assert result.video_frames == 40 and result.audio_frames > 10
        # Each edge pulls once: the origin sees one viewer per edge that carries the stream.
        assert cluster.edge_eu.stream("show")["upstream"] == f"{cluster.origin_eu.rtmp}/live/show"
        assert cluster.edge_us.stream("show")["upstream"] == f"{cluster.origin_eu.rtmp}/live/show"
        assert origin_viewers(cluster.origin_eu, "show") == 2
    wait_for(lambda: cluster.api("/v1/streams")["streams"] == [], 5, "the claim released on unpublish")


def test_fifty_simultaneous_viewers_make_one_pull_which_stops_after_the_grace(cluster: Cluster, test_flv: Path) -> None:
    edge = cluster.edge_eu
    with publishing(test_flv, f"{cluster.origin_eu.rtmp}/live/crowd"):
        wait_for(lambda: cluster.origin_eu.stream("crowd"), 10, "stream live on the origin")
        time.sleep(1.5)  # mid-GOP
        pulls_before = edge.stats()["node"]["pulls_started"]
        first_frames = asyncio.run(_crowd(f"{edge.rtmp}/live/crowd", 50, hold=1.0, check=lambda: None))
        assert len(first_frames) == 50, "every viewer got a key frame"
        assert edge.stats()["node"]["pulls_started"] == pulls_before + 1
        assert max(first_frames) < 3.0
        # Viewers gone: the pull lingers for the grace period (2 s here), then stops.
        assert origin_viewers(cluster.origin_eu, "crowd") == 1
        wait_for(lambda: origin_viewers(cluster.origin_eu, "crowd") == 0, 8, "the pull to stop after the grace")
        assert edge.stream("crowd") is None
    assert "idle for 2s, stopping the pull" in edge.log()


async def _crowd(url: str, count: int, *, hold: float, check: Any) -> list[float]:
    """count RTMP viewers that connect and play at the same moment; their first key frame times."""
    start = time.monotonic()
    firsts: list[float] = []

    async def viewer() -> None:
        got = asyncio.get_running_loop().create_future()

        def on_media(event: MediaReceived) -> None:
            if event.type_id == 9 and event.payload[1:2] == b"\x01" and is_video_keyframe(event.payload):
                if not got.done():
                    got.set_result(time.monotonic() - start)

        client = await RtmpClient.connect(url, timeout=10)
        try:
            await client.play(on_media, timeout=10)
            firsts.append(await asyncio.wait_for(got, 10))
            await asyncio.sleep(hold)
        finally:
            client.close()

    results = await asyncio.gather(*(viewer() for _ in range(count)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    return firsts


def test_cold_and_warm_edge_first_frame(cluster: Cluster, test_flv: Path) -> None:
    edge = cluster.edge_us
    with publishing(test_flv, f"{cluster.origin_eu.rtmp}/live/cold"):
        wait_for(lambda: cluster.origin_eu.stream("cold"), 10, "stream live on the origin")
        time.sleep(1.5)
        cold = play_and_decode(f"{edge.rtmp}/live/cold", video_frames=1, input_args=LOW_LATENCY_INPUT, timeout=15)
        warm = play_and_decode(f"{edge.rtmp}/live/cold", video_frames=1, input_args=LOW_LATENCY_INPUT, timeout=15)
        cold_rtmp = asyncio.run(_crowd(f"{edge.rtmp}/live/cold", 1, hold=0, check=None))[0]
    assert cold.returncode == 0 and cold.video_frames == 1, cold.output
    assert warm.returncode == 0 and warm.video_frames == 1, warm.output
    assert cold.seconds < 2.0 and warm.seconds < 1.0
    print(
        f"\nfirst decoded frame (ffmpeg, low-latency probe): cold edge {cold.seconds:.3f}s, "
        f"warm edge {warm.seconds:.3f}s; RTMP first key frame on warm edge {cold_rtmp:.3f}s"
    )


def test_second_origin_cannot_take_a_live_stream(cluster: Cluster, test_flv: Path) -> None:
    with publishing(test_flv, f"{cluster.origin_eu.rtmp}/live/owned") as first:
        wait_for(lambda: cluster.api("/v1/streams")["streams"], 10, "the claim")
        with publishing(test_flv, f"{cluster.origin_us.rtmp}/live/owned", loop=False) as second:
            assert second.wait(15) != 0
        assert first.poll() is None
        [claim] = cluster.api("/v1/streams")["streams"]
        assert claim["origin"] == "origin-eu"
    assert "already being published on origin origin-eu" in cluster.origin_us.log()


def test_unknown_stream_on_an_edge_fails_promptly(cluster: Cluster) -> None:
    t0 = time.monotonic()
    result = play_and_decode(f"{cluster.edge_eu.rtmp}/live/ghost", video_frames=1, timeout=15)
    assert result.returncode != 0
    assert time.monotonic() - t0 < 3
    assert cluster.edge_eu.stream("ghost") is None


def test_dead_origins_claim_expires_and_another_origin_takes_over(
    cluster: Cluster, test_flv: Path, tmp_path: Path
) -> None:
    doomed = NodeProcess(
        "origin", ["--registry", cluster.redis.url, "--region", "eu", "--node-id", "origin-doomed"], FAST
    ).start(tmp_path)
    with publishing(test_flv, f"{doomed.rtmp}/live/phoenix"):
        wait_for(lambda: any(s["key"] == "live/phoenix" for s in cluster.api("/v1/streams")["streams"]), 10, "claim")
        doomed.kill()  # kill -9: no release
        killed_at = time.monotonic()
    wait_for(lambda: not cluster.api("/v1/streams")["streams"], 6, "the dead origin's claim to lapse")
    lapsed = time.monotonic() - killed_at
    assert lapsed <= 3 + 1.0, f"claim lasted {lapsed:.1f}s past the kill (TTL 3s)"
    with publishing(test_flv, f"{cluster.origin_us.rtmp}/live/phoenix"):
        wait_for(lambda: cluster.api("/v1/streams")["streams"], 10, "the new claim")
        [claim] = cluster.api("/v1/streams")["streams"]
        assert claim["origin"] == "origin-us"
        result = play_and_decode(f"{cluster.edge_eu.rtmp}/live/phoenix", video_frames=10)
        assert result.returncode == 0 and result.video_frames == 10, result.output
    wait_for(lambda: "origin-doomed" not in str(cluster.api("/v1/nodes")), 5, "the dead node to lapse")


def test_mid_tier_chain_origin_to_parent_edge_to_child_edge(cluster: Cluster, test_flv: Path, tmp_path: Path) -> None:
    child = NodeProcess(
        "edge",
        ["--registry", cluster.redis.url, "--region", "leaf", "--node-id", "edge-leaf", "--parent-region", "eu"],
        FAST,
    ).start(tmp_path)
    try:
        with publishing(test_flv, f"{cluster.origin_us.rtmp}/live/chain"):
            wait_for(lambda: cluster.origin_us.stream("chain"), 10, "stream live")
            result = play_and_decode(f"{child.rtmp}/live/chain", video_frames=20)
            assert result.returncode == 0 and result.video_frames == 20, result.output
            assert child.stream("chain")["upstream"] == f"{cluster.edge_eu.rtmp}/live/chain"
            assert cluster.edge_eu.stream("chain")["upstream"] == f"{cluster.origin_us.rtmp}/live/chain"
    finally:
        child.stop()


def test_static_upstream_needs_no_registry(cluster: Cluster, test_flv: Path, tmp_path: Path) -> None:
    lone = NodeProcess("edge", ["--upstream", f"{cluster.origin_us.rtmp}/live", "--node-id", "edge-static"]).start(
        tmp_path
    )
    try:
        with publishing(test_flv, f"{cluster.origin_us.rtmp}/live/fixed"):
            wait_for(lambda: cluster.origin_us.stream("fixed"), 10, "stream live")
            result = play_and_decode(f"{lone.http}/live/fixed.flv", video_frames=20)
            assert result.returncode == 0 and result.video_frames == 20, result.output
            missing = play_and_decode(f"{lone.rtmp}/live/absent", video_frames=1, timeout=10)
            assert missing.returncode != 0
        assert lone.stats()["node"]["upstream"] == f"static {cluster.origin_us.rtmp}/live"
    finally:
        lone.stop()
