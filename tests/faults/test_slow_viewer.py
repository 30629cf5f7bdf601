"""One viewer stops reading: it is skipped, then disconnected; the others' lag does not move and the
node's memory stays bounded."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from pathlib import Path

import psutil
import pytest

from common.rtmp.events import MediaReceived
from common.serving.client import RtmpClient
from tests.helpers import NodeProcess, publishing, wait_for

pytestmark = pytest.mark.integration

LIMITS = {
    "LIVECDN_VIEWER_HIGH_WATER": str(128 * 1024),
    "LIVECDN_VIEWER_MAX_BUFFER": str(512 * 1024),
    "LIVECDN_VIEWER_SNDBUF": str(64 * 1024),
    "LIVECDN_VIEWER_MAX_STALL": "3",
}


def test_stalled_viewer_is_cut_off_and_others_keep_their_lag(cbr_flv: Path, tmp_path: Path) -> None:
    node = NodeProcess("origin", env=LIMITS).start(tmp_path)
    try:
        with publishing(cbr_flv, f"{node.rtmp}/live/busy"):
            wait_for(lambda: node.stream("busy"), 10, "stream live")
            rss_before = psutil.Process(node.proc.pid).memory_info().rss if node.proc else 0
            result = asyncio.run(_watch(node, healthy=20, seconds=12))
            rss_after = psutil.Process(node.proc.pid).memory_info().rss if node.proc else 0
            stream = node.stream("busy")
    finally:
        node.stop()
    baseline, during, stalled_closed_after, viewers_left = result
    assert stalled_closed_after is not None, "the stalled viewer was never disconnected"
    assert stalled_closed_after < 10, f"took {stalled_closed_after:.1f}s to cut off the stalled viewer"
    assert stream is not None and stream["viewers_dropped"] == 1
    assert viewers_left == 20, "every healthy viewer is still there"
    # The others' lag (arrival jitter against media time) is what it was before the stall.
    assert during <= baseline + 0.1, f"lag p95 went from {baseline * 1000:.0f} ms to {during * 1000:.0f} ms"
    assert rss_after - rss_before < 30 * 1024 * 1024, f"RSS grew {(rss_after - rss_before) >> 20} MiB"
    assert "dropping viewer of live/busy" in node.log()


async def _watch(node: NodeProcess, *, healthy: int, seconds: float) -> tuple[float, float, float | None, int]:
    """Returns (others' lag p95 before the stall, during it, seconds until the node cut the stalled viewer off)."""
    url = f"{node.rtmp}/live/busy"
    loop = asyncio.get_running_loop()
    samples: list[list[tuple[float, float]]] = [[] for _ in range(healthy)]
    clients = []
    for index in range(healthy):
        client = await RtmpClient.connect(url)

        def on_media(event: MediaReceived, box: list[tuple[float, float]] = samples[index]) -> None:
            if event.type_id == 9:
                box.append((time.monotonic(), event.timestamp / 1000))

        await client.play(on_media)
        clients.append(client)
    await asyncio.sleep(2)
    stall_at = time.monotonic()
    stalled = await RtmpClient.connect(url)
    sock = stalled.transport.get_extra_info("socket") if stalled.transport else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    await stalled.play(lambda event: None)
    assert stalled.transport is not None
    stalled.transport.pause_reading()  # stops reading; the server's buffers for it fill up
    closed_after: float | None = None
    deadline = stall_at + seconds
    while time.monotonic() < deadline:
        stream = await loop.run_in_executor(None, node.stream, "busy")
        if closed_after is None and stream and stream["viewers_dropped"]:
            closed_after = time.monotonic() - stall_at
        await asyncio.sleep(0.2)
    stream = await loop.run_in_executor(None, node.stream, "busy")
    viewers_left = stream["viewers"] if stream else 0
    for client in [*clients, stalled]:
        client.close()
    print(
        f"\nothers' lag p95: {_lag_p95(samples, None, stall_at) * 1000:.0f} ms before the stall, "
        f"{_lag_p95(samples, stall_at, None) * 1000:.0f} ms during; stalled viewer cut off after {closed_after}s"
    )
    return _lag_p95(samples, None, stall_at), _lag_p95(samples, stall_at, None), closed_after, viewers_left


def _lag_p95(samples: list[list[tuple[float, float]]], start: float | None, end: float | None) -> float:
    """Per viewer: how much later than its best frame each frame arrived (wall minus media time)."""
    lags: list[float] = []
    for box in samples:
        live = box[30:]  # skip the GOP burst at join
        if not live:
            continue
        best = min(wall - media for wall, media in live)
        lags.extend(
            wall - media - best
            for wall, media in live
            if (start is None or wall >= start) and (end is None or wall < end)
        )
    return statistics.quantiles(lags, n=20)[-1] if len(lags) >= 20 else 0.0
