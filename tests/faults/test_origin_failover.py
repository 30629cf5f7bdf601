"""kill -9 the origin of a watched stream, on default settings: the encoder (retrying as OBS does) is
accepted by another origin within seconds, the edge follows the new owner, and its viewers never notice
more than a stall: no disconnect, no Play.Stop, timestamps forward. An unrelated stream does not stall."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.faults.cluster import Cluster, Encoder, Watcher, publisher, wait_until
from tests.faults.figures import record
from tests.helpers import finish_play, start_play, wait_for

pytestmark = pytest.mark.integration

STALL_GOAL = 8.0  # seconds, last frame before -> first frame after, with an encoder retrying every 2 s


def test_viewers_keep_watching_through_an_origin_kill(test_flv: Path, tmp_path: Path) -> None:
    with Cluster(tmp_path) as cluster:
        for name in ("origin-a", "origin-b"):
            cluster.start(name, "origin")
        edge = cluster.start("edge-1", "edge")
        control = cluster.start("control", "control")
        with Encoder(test_flv, control.http, "live/main") as encoder:
            owner = wait_for(lambda: (c := cluster.claim("live/main")) and c["origin"], 15, "the first publish")
            survivor = "origin-b" if owner == "origin-a" else "origin-a"
            with publisher(test_flv, f"{cluster.nodes[survivor].rtmp}/live/other"):
                wait_for(lambda: cluster.claim("live/other"), 10, "the unrelated stream")
                result = asyncio.run(_kill_under_viewers(cluster, owner, survivor, encoder, edge.rtmp))
    stall, other_gap, accepted_after, decoded = result
    record(
        "origin SIGKILL",
        stall_s=round(stall, 2),
        encoder_accepted_after_s=round(accepted_after, 2),
        unrelated_stream_longest_gap_s=round(other_gap, 2),
    )
    assert stall <= STALL_GOAL, f"viewers stalled {stall:.1f}s"
    assert other_gap < 1.5, f"the unrelated stream stalled {other_gap:.1f}s"
    assert decoded.returncode == 0 and decoded.video_frames == 300, decoded.output[-2000:]


async def _kill_under_viewers(
    cluster: Cluster, owner: str, survivor: str, encoder: Encoder, edge_rtmp: str
) -> tuple[float, float, float, object]:
    main = await Watcher(f"{edge_rtmp}/live/main").start()
    other = await Watcher(f"{edge_rtmp}/live/other").start()
    # A real player too: it must decode 12 s of video (300 frames) straight through the fault.
    player = start_play(f"{edge_rtmp}/live/main", video_frames=300)
    await asyncio.sleep(3)
    killed_at = time.monotonic()
    cluster.nodes[owner].kill()  # kill -9: no release, its claim and node record stay until they lapse
    accepted_after = await wait_until(
        lambda: (c := cluster.claim("live/main")) is not None and c["origin"] == survivor, 15, "the re-publish"
    )
    await wait_until(lambda: main.frames_since(killed_at + accepted_after) > 50, 15, "video after the move")
    main.assert_kept()
    other.assert_kept()
    stall = main.longest_gap(since=killed_at - 1)
    other_gap = other.longest_gap(since=killed_at - 1)
    decoded = await asyncio.get_running_loop().run_in_executor(None, finish_play, player, 30)
    main.close()
    other.close()
    assert any(origin == survivor for _, origin in encoder.attempts), encoder.attempts
    return stall, other_gap, accepted_after, decoded
