"""A publisher that goes away and comes back (an encoder restart, a Wi-Fi blip), on default settings:
viewers on the origin and on edges stay connected through the publish grace period, whether it comes back
to the same origin or another; only when nobody publishes again in time are they told the stream ended.
A half-open publisher (frozen, no FIN) does not block its replacement for long. One cluster serves every
test here, each on its own stream; an unrelated stream plays throughout and must never stall."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.cluster import Cluster, Encoder, Watcher, publisher, wait_until
from tests.faults.figures import record
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

GRACE = 10.0  # the default publish_grace


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, test_flv: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("reconnect")) as cluster:
        for name in ("origin-a", "origin-b"):
            cluster.start(name, "origin")
        cluster.start("edge-1", "edge")
        cluster.start("control", "control")
        with publisher(test_flv, f"{cluster.nodes['origin-b'].rtmp}/live/other"):
            wait_for(lambda: cluster.claim("live/other"), 10, "the unrelated stream")
            yield cluster


def _watchers(cluster: Cluster, stream: str) -> list[str]:
    return [f"{cluster.nodes['origin-a'].rtmp}/live/{stream}", f"{cluster.nodes['edge-1'].rtmp}/live/{stream}"]


async def _watch_a_reconnect(
    cluster: Cluster, flv: Path, stream: str, back_to: str, away: float
) -> tuple[list[Watcher], Watcher, float]:
    """Publish to origin-a, watch it on origin-a and the edge, kill the publisher, publish again to
    ``back_to`` after ``away`` seconds. Returns the watchers, the unrelated stream's, and when it was killed."""
    other = await Watcher(f"{cluster.nodes['edge-1'].rtmp}/live/other").start()
    with publisher(flv, f"{cluster.nodes['origin-a'].rtmp}/live/{stream}") as first:
        await wait_until(lambda: cluster.claim(f"live/{stream}"), 10, "the first publish")
        watchers = [await Watcher(url).start() for url in _watchers(cluster, stream)]
        await asyncio.sleep(2)
        first.kill()  # the encoder dies: its connection drops
        killed_at = time.monotonic()
    await asyncio.sleep(away)
    with publisher(flv, f"{cluster.nodes[back_to].rtmp}/live/{stream}"):
        await wait_until(
            lambda: (c := cluster.claim(f"live/{stream}")) is not None and c["origin"] == back_to, 10, "re-publish"
        )
        moment = time.monotonic()
        follows = watchers if back_to == "origin-a" else watchers[1:]  # the edge follows the stream anywhere
        for watcher in follows:
            await wait_until(lambda w=watcher: w.frames_since(moment) > 40, 15, f"video again at {watcher.url}")
    return watchers, other, killed_at


@pytest.mark.parametrize("back_to", ["origin-a", "origin-b"])
def test_viewers_stay_when_the_publisher_comes_back(cluster: Cluster, test_flv: Path, back_to: str) -> None:
    stream = f"back-to-{back_to}"

    async def scenario() -> None:
        watchers, other, killed_at = await _watch_a_reconnect(cluster, test_flv, stream, back_to, away=3)
        follows = watchers if back_to == "origin-a" else watchers[1:]
        for watcher in follows:
            watcher.assert_kept()
        other.assert_kept()
        names = dict(zip(watchers, ("origin viewer", "edge viewer"), strict=True))
        stalls = {names[w]: round(w.longest_gap(since=killed_at - 1), 2) for w in follows}
        record(
            f"publisher reconnect to {'the same' if back_to == 'origin-a' else 'another'} origin (away 3 s)",
            stall_s=stalls,
            unrelated_stream_longest_gap_s=round(other.longest_gap(since=killed_at), 2),
        )
        assert all(stall < 3 + 3 for stall in stalls.values()), stalls
        assert other.longest_gap(since=killed_at) < 1.5
        for watcher in [*watchers, other]:
            watcher.close()

    asyncio.run(scenario())


def test_viewers_are_told_only_when_nobody_comes_back_within_the_grace(cluster: Cluster, test_flv: Path) -> None:
    async def scenario() -> None:
        with publisher(test_flv, f"{cluster.nodes['origin-a'].rtmp}/live/gone") as first:
            await wait_until(lambda: cluster.claim("live/gone"), 10, "the publish")
            watchers = [await Watcher(url).start() for url in _watchers(cluster, "gone")]
            await asyncio.sleep(1)
            first.kill()
            killed_at = time.monotonic()
        await asyncio.sleep(GRACE - 2)
        for watcher in watchers:
            assert watcher.connected and not watcher.statuses, (watcher.url, watcher.statuses)  # still waiting
        for watcher in watchers:
            assert watcher.client is not None
            await asyncio.wait_for(asyncio.shield(watcher.client.closed), 15)
        told_after = time.monotonic() - killed_at
        for watcher in watchers:
            assert "NetStream.Play.UnpublishNotify" in watcher.statuses, (watcher.url, watcher.statuses)
        record("publisher gone for good", viewers_told_after_s=round(told_after, 2), publish_grace_s=GRACE)
        assert GRACE - 1 <= told_after <= GRACE + 8, told_after

    asyncio.run(scenario())


def test_a_half_open_publisher_does_not_block_its_replacement(cluster: Cluster, test_flv: Path) -> None:
    async def scenario() -> None:
        other = await Watcher(f"{cluster.nodes['edge-1'].rtmp}/live/other").start()
        control = cluster.nodes["control"].http
        with Encoder(test_flv, control, "live/frozen") as first:
            origin = await asyncio.get_running_loop().run_in_executor(
                None, wait_for, lambda: (c := cluster.claim("live/frozen")) and c["origin"], 15, "the publish"
            )
            watcher = await Watcher(f"{cluster.nodes['edge-1'].rtmp}/live/frozen").start()
            await asyncio.sleep(1)
            proc = first._proc
            assert proc is not None
            os.kill(proc.pid, signal.SIGSTOP)  # frozen: the TCP connection stays open and silent
            frozen_at = time.monotonic()
            try:
                with Encoder(test_flv, control, "live/frozen") as second:
                    epoch = (cluster.claim("live/frozen") or {})["epoch"]
                    took = await wait_until(
                        lambda: (c := cluster.claim("live/frozen")) is not None and c["epoch"] != epoch,
                        20,
                        "the replacement accepted",
                    )
                    await wait_until(lambda: watcher.frames_since(frozen_at + took) > 40, 15, "video again")
                    assert second.attempts and second.attempts[-1][1] == origin
            finally:
                os.kill(proc.pid, signal.SIGCONT)
        watcher.assert_kept()
        other.assert_kept()
        record(
            "half-open publisher replaced",
            replacement_accepted_after_s=round(took, 2),
            stall_s=round(watcher.longest_gap(since=frozen_at - 1), 2),
        )
        assert took < 5 + 2 + 3, took  # publisher_timeout, the check period, one retry delay
        assert other.longest_gap(since=frozen_at) < 1.5
        watcher.close()
        other.close()

    asyncio.run(scenario())
