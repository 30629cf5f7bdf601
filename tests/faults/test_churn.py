"""No leaks under churn, on default settings: thousands of viewer joins and leaves (RTMP and HTTP-FLV, at the
edge and at the origin) and dozens of publisher restarts leave each node's RSS, open file descriptors and
asyncio task count back near where they started. Bounded in count and time."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from common.serving.client import RtmpClient
from common.system import stop_process
from tests.faults.cluster import Cluster, publisher
from tests.faults.figures import record
from tests.helpers import NodeProcess, ffmpeg_path, wait_for

pytestmark = pytest.mark.integration

RTMP_JOINS = 2000
FLV_JOINS = 500
PUBLISHER_RESTARTS = 24
WAVE = 100  # viewers joining at once


def footprint(node: NodeProcess) -> dict[str, Any]:
    assert node.proc is not None
    process = psutil.Process(node.proc.pid)
    return {
        "rss_mb": round(process.memory_info().rss / 2**20, 1),
        "fds": len(os.listdir(f"/proc/{node.proc.pid}/fd")),
        "tasks": node.stats()["node"]["asyncio_tasks"],
        "viewers": node.stats()["node"]["viewers"],
    }


def test_churn_leaves_no_leaks(test_flv: Path, tmp_path: Path) -> None:
    with Cluster(tmp_path) as cluster:
        origin = cluster.start("origin-a", "origin")
        edge = cluster.start("edge-1", "edge")
        with publisher(test_flv, f"{origin.rtmp}/live/main"):
            wait_for(lambda: origin.stream("main"), 10, "the stream")
            asyncio.run(_joins(edge, origin, 2 * WAVE, 20))  # warm up every code path once
            time.sleep(2)
            before = {"origin": footprint(origin), "edge": footprint(edge)}
            started = time.monotonic()
            asyncio.run(_churn(edge, origin, test_flv))
            churn_seconds = time.monotonic() - started
            # Let what the churn left behind settle: closed sockets, finished handlers, idle-grace timers.
            wait_for(lambda: not (origin.stream("churn0") or origin.stream("churn1")), 15, "restarted streams gone")
            wait_for(lambda: edge.stats()["node"]["connections"] <= 1, 10, "edge connections closed")
            time.sleep(2)
            after = {"origin": footprint(origin), "edge": footprint(edge)}
    record(
        "churn",
        joins=RTMP_JOINS + FLV_JOINS,
        publisher_restarts=PUBLISHER_RESTARTS,
        seconds=round(churn_seconds, 1),
        before=before,
        after=after,
    )
    for role in ("origin", "edge"):
        b, a = before[role], after[role]
        assert a["viewers"] == b["viewers"], (role, b, a)  # everyone who left is forgotten
        assert a["tasks"] <= b["tasks"] + 3, (role, b, a)
        assert a["fds"] <= b["fds"] + 5, (role, b, a)
        assert a["rss_mb"] <= b["rss_mb"] + 25, (role, b, a)


async def _churn(edge: NodeProcess, origin: NodeProcess, flv: Path) -> None:
    restarts = asyncio.get_running_loop().run_in_executor(None, _restart_publishers, origin, flv)
    await _joins(edge, origin, RTMP_JOINS, FLV_JOINS)
    await restarts


async def _joins(edge: NodeProcess, origin: NodeProcess, rtmp_joins: int, flv_joins: int) -> None:
    deadline = time.monotonic() + 90
    urls = [f"{edge.rtmp}/live/main", f"{edge.rtmp}/live/main", f"{edge.rtmp}/live/main", f"{origin.rtmp}/live/main"]
    done = 0
    async with aiohttp.ClientSession() as session:
        while done < rtmp_joins and time.monotonic() < deadline:
            wave = min(WAVE, rtmp_joins - done)
            await asyncio.gather(*(_rtmp_join(urls[(done + i) % len(urls)]) for i in range(wave)))
            done += wave
        done = 0
        while done < flv_joins and time.monotonic() < deadline:
            wave = min(WAVE, flv_joins - done)
            await asyncio.gather(*(_flv_join(session, f"{edge.http}/live/main.flv") for _ in range(wave)))
            done += wave
    assert time.monotonic() < deadline, "the churn did not finish in time"


async def _rtmp_join(url: str) -> None:
    client = await RtmpClient.connect(url)
    try:
        await client.play(lambda event: None)
        await asyncio.sleep(0.05)
    finally:
        client.close()


async def _flv_join(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(url) as response:
        assert response.status == 200
        await response.content.read(4096)


def _restart_publishers(origin: NodeProcess, flv: Path) -> None:
    """Publishers come and go: two streams, each restarted in turn; each run publishes ~0.5 s."""
    for i in range(PUBLISHER_RESTARTS):
        stream = f"churn{i % 2}"
        args = [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-re", "-i", str(flv), "-c", "copy"]
        proc = subprocess.Popen(
            [*args, "-f", "flv", f"{origin.rtmp}/live/{stream}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda s=stream: (st := origin.stream(s)) and st["publisher"], 10, f"publish #{i}")
            time.sleep(0.3)
        finally:
            proc.kill()
            stop_process(proc)
