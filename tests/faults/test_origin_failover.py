"""kill -9 the origin under a watched stream: the edge keeps its viewers, re-resolves once the stream is
published again elsewhere, re-pulls, and the viewers' timestamps continue without going backwards."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from pathlib import Path

import pytest

from common.rtmp.events import MediaReceived
from common.serving.client import RtmpClient
from tests.helpers import NodeProcess, ffmpeg_path, publishing, wait_for
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

FAST = {"LIVECDN_CLAIM_TTL": "2", "LIVECDN_HEARTBEAT_INTERVAL": "0.5", "LIVECDN_NODE_TTL": "2"}


def test_viewer_survives_origin_kill_and_republish(test_flv: Path, tmp_path: Path) -> None:
    with RedisServer() as redis:
        registry = ["--registry", redis.url]
        doomed = NodeProcess("origin", [*registry, "--node-id", "origin-a"], FAST).start(tmp_path)
        spare = NodeProcess("origin", [*registry, "--node-id", "origin-b"], FAST).start(tmp_path)
        edge = NodeProcess("edge", [*registry, "--node-id", "edge-1"], {**FAST, "LIVECDN_RECONNECT_WINDOW": "15"})
        edge.start(tmp_path)
        try:
            with publishing(test_flv, f"{doomed.rtmp}/live/survivor"):
                wait_for(lambda: doomed.stream("survivor"), 10, "stream live on origin-a")
                timeline = asyncio.run(_watch_through_failover(edge, doomed, spare, test_flv))
        finally:
            for node in (edge, spare, doomed):
                node.stop()
    before, after, reconnects = timeline
    assert len(before) > 20 and len(after) > 20, (len(before), len(after))
    stamps = before + after
    assert all(b >= a for a, b in itertools.pairwise(stamps)), "timestamps went backwards across the re-pull"
    assert reconnects >= 1
    assert "reconnect #1" in edge.log()


async def _watch_through_failover(
    edge: NodeProcess, doomed: NodeProcess, spare: NodeProcess, flv: Path
) -> tuple[list[int], list[int], int]:
    video: list[int] = []
    client = await RtmpClient.connect(f"{edge.rtmp}/live/survivor")
    await client.play(lambda e: video.append(e.timestamp) if isinstance(e, MediaReceived) and e.type_id == 9 else None)
    await asyncio.sleep(2)
    before = list(video)
    doomed.kill()  # kill -9: the claim stays until its TTL
    loop = asyncio.get_running_loop()
    republisher = await loop.run_in_executor(None, _republish_until_accepted, spare, flv)
    try:
        deadline = time.monotonic() + 20
        while len(video) < len(before) + 40 and time.monotonic() < deadline:
            assert not client.closed.done(), f"viewer was disconnected: {client.closed.result()}"
            await asyncio.sleep(0.2)
        after = video[len(before) :]
        stats = await loop.run_in_executor(None, edge.stream, "survivor")
        return before, after, int(stats["upstream_connects"]) - 1 if stats else 0
    finally:
        client.close()
        republisher.terminate()
        republisher.wait(5)


def _republish_until_accepted(origin: NodeProcess, flv: Path) -> subprocess.Popen[str]:
    """What a publisher's retry loop does: try the other origin until the dead one's claim lapses."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        proc = subprocess.Popen(
            [
                ffmpeg_path(),
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-stream_loop",
                "-1",
                "-i",
                str(flv),
                "-c",
                "copy",
                "-f",
                "flv",
                f"{origin.rtmp}/live/survivor",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            proc.wait(1.5)  # refused (the old claim still lives): ffmpeg exits at once
        except subprocess.TimeoutExpired:
            return proc  # accepted: still publishing
        time.sleep(0.3)
    raise AssertionError("the spare origin never accepted the publish")
