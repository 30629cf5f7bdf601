"""`livecdn edge --workers 2` as an operator runs it: one edge node of two worker processes behind one RTMP port
and one HTTP port, on a real Redis registry, an origin and an ffmpeg publisher. A hundred RTMP viewers land
on both workers (the kernel spreads them, SO_REUSEPORT); the origin still serves the node ONE pull; the
node's /v1/stats, /metrics and registry record speak for both workers; LL-HLS is packaged once, by the
stream's owner. SIGTERM, or POST /v1/drain on whichever worker takes it, drains the whole node; a crashed
worker is restarted; killing the supervisor takes its workers with it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.placement.hashing import owner_worker
from common.registry import NodeInfo, open_registry
from tests.faults.cluster import Cluster, Watcher, publisher, wait_until
from tests.helpers import NodeProcess, http_json, play_and_decode, wait_for

pytestmark = pytest.mark.integration

STREAM = "live/workers"
VIEWERS = 100
VIDEO = 9
ADMIN = "workers-test-admin-token"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, test_flv: Path) -> Iterator[Cluster]:
    """Redis, one origin with a publisher, one edge of two workers; the drain and crash tests start their own."""
    with Cluster(tmp_path_factory.mktemp("workers")) as cluster:
        origin = cluster.start("origin-w", "origin")
        edge = cluster.start("edge-w", "edge", "--workers", "2")
        wait_for(lambda: len(worker_pids(edge)) == 2, 10, "both workers")  # /healthz answers from the first up
        with publisher(test_flv, f"{origin.rtmp}/{STREAM}"):
            wait_for(lambda: origin.stream("workers"), 10, f"{STREAM} published")
            yield cluster


async def crowd(url: str, count: int) -> list[Watcher]:
    return list(await asyncio.gather(*(Watcher(url).start() for _ in range(count))))


async def blocking(func: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


async def registry_records(url: str) -> list[NodeInfo]:
    registry = open_registry(url)
    await registry.start()
    try:
        return await registry.nodes("edge")
    finally:
        await registry.close()


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie (an orphan's zombie waits for PID 1 to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def worker_pids(edge: NodeProcess) -> list[int]:
    return [int(worker["pid"]) for worker in edge.stats()["workers"] if worker["answered"]]


def test_two_workers_share_the_ports_and_pull_each_stream_once(cluster: Cluster) -> None:
    origin, edge = cluster.nodes["origin-w"], cluster.nodes["edge-w"]

    async def scenario() -> None:
        viewers = await crowd(f"{edge.rtmp}/{STREAM}", VIEWERS)
        try:
            await wait_until(lambda: all(len(v.frames) > 10 for v in viewers), 15, "video for every viewer")
            # A real player decodes what the node sends, wherever the kernel puts it.
            played = await blocking(lambda: play_and_decode(f"{edge.rtmp}/{STREAM}", video_frames=30))
            assert played.returncode == 0 and played.video_frames >= 30 and played.audio_frames > 0, played.output

            def settled() -> dict[str, Any] | None:
                stats = edge.stats()
                return stats if stats["node"]["viewers"] == VIEWERS else None

            stats = await wait_until_value(settled, 5, f"the node to count {VIEWERS} viewers")
            workers = stats["workers"]
            assert [w["worker"] for w in workers] == [0, 1] and all(w["answered"] for w in workers)
            assert all(w["viewers"] > 0 for w in workers), workers  # the kernel spread the viewers
            assert sum(w["viewers"] for w in workers) == VIEWERS
            assert len({w["pid"] for w in workers} | {edge.proc.pid if edge.proc else 0}) == 3
            [stream] = stats["streams"]
            assert stream["viewers"] == VIEWERS and stream["workers"] == [0, 1]
            owner = owner_worker(STREAM, 2)
            assert workers[owner]["sibling_viewers"] == 1 and workers[1 - owner]["sibling_viewers"] == 0
            assert stream["upstream"].startswith(origin.rtmp)  # the owner's pull, not the sibling's
            assert stats["node"]["pulls_started"] == 1 and stats["node"]["sibling_pulls_started"] == 1

            # ONE pull per stream per machine: the origin has one viewer, the owner worker.
            at_origin = origin.stream("workers")
            assert at_origin is not None and at_origin["viewers"] == 1, at_origin

            # HTTP-FLV goes the same way, on whichever worker each request lands.
            for _ in range(4):
                assert (await blocking(flv_head, edge))[:3] == b"FLV"

            # One registry record for the node, with the load of both workers.
            def one_record() -> NodeInfo | None:
                records = asyncio.run(registry_records(cluster.redis.url))
                assert [r.id for r in records] == ["edge-w"], records
                return records[0] if records[0].load.viewers == VIEWERS else None

            record = await wait_until_value(one_record, 5, "the node's record to carry every viewer")
            assert record.load.streams == 1 and not record.draining
            assert record.rtmp == edge.rtmp.removeprefix("rtmp://") and record.http == edge.http.removeprefix("http://")

            # /metrics on the public port answers for the whole node, whichever worker takes the request.
            for _ in range(4):
                families = {f.name: f for f in text_string_to_metric_families(await blocking(metrics_text, edge))}
                [node_viewers] = families["livecdn_viewers"].samples
                assert node_viewers.value == VIEWERS and "worker" not in node_viewers.labels
                streams = {s.labels["worker"]: s.value for s in families["livecdn_streams"].samples}
                assert streams == {"0": 1.0, "1": 1.0}  # each worker carries its copy of the one stream
                [pulls] = families["livecdn_pulls_active"].samples
                assert pulls.value == 1  # the node's one pull from outside; the sibling's is internal
        finally:
            for viewer in viewers:
                viewer.close()

    asyncio.run(scenario())


def test_sigterm_drains_every_worker_and_the_supervisor_exits_0(cluster: Cluster) -> None:
    edge = cluster.start("edge-drain", "edge", "--workers", "2", env={"LIVECDN_DRAIN_TIMEOUT": "20"})
    assert edge.proc is not None
    pids = wait_for(lambda: worker_pids(edge) if len(worker_pids(edge)) == 2 else None, 10, "two workers")

    async def scenario() -> None:
        viewers = await crowd(f"{edge.rtmp}/{STREAM}", 20)
        await wait_until(lambda: all(len(v.frames) > 5 for v in viewers), 10, "video for every viewer")
        assert all(w["viewers"] > 0 for w in edge.stats()["workers"])  # both workers have viewers to keep
        assert edge.proc is not None
        edge.proc.send_signal(signal.SIGTERM)
        term_at = time.monotonic()

        def draining() -> bool:
            return any(r.id == "edge-drain" and r.draining for r in asyncio.run(registry_records(cluster.redis.url)))

        await wait_until(draining, 3, "the node's record marked draining")
        await asyncio.sleep(1.5)  # every worker keeps its viewers while the node drains
        assert all(v.connected for v in viewers) and edge.proc.poll() is None
        frames = sum(len(v.frames) for v in viewers)
        await asyncio.sleep(0.5)
        assert sum(len(v.frames) for v in viewers) > frames, "viewers kept getting video while draining"
        for viewer in viewers:
            viewer.close()
        exit_code = await blocking(edge.proc.wait, 10)
        assert exit_code == 0, edge.log()[-3000:]
        assert time.monotonic() - term_at < 10  # when the viewers left, not at drain_timeout
        assert not any(alive(pid) for pid in pids), pids
        assert not any(r.id == "edge-drain" for r in await registry_records(cluster.redis.url))

    asyncio.run(scenario())


def test_a_crashed_worker_is_restarted_and_a_drain_asked_of_any_worker_drains_the_node(cluster: Cluster) -> None:
    edge = cluster.start("edge-crash", "edge", "--workers", "2", env={"LIVECDN_ADMIN_TOKEN": ADMIN})
    assert edge.proc is not None
    first = wait_for(lambda: worker_pids(edge) if len(worker_pids(edge)) == 2 else None, 10, "two workers")
    os.kill(first[1], signal.SIGKILL)
    restarted = wait_for(
        lambda: worker_pids(edge) if len(set(worker_pids(edge)) - set(first)) == 1 else None, 15, "a restarted worker"
    )
    assert restarted[0] == first[0] and not alive(first[1])
    assert "worker 1 (pid" in edge.log() and "exited on its own (killed by SIGKILL)" in edge.log()

    request = urllib.request.Request(
        edge.http + "/v1/drain", method="POST", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 202
    assert edge.proc.wait(10) == 0  # nobody to wait for: every worker drained at once, then the supervisor
    assert "draining (a worker began to drain)" in edge.log()
    assert not any(alive(pid) for pid in restarted)


def test_sigint_stops_every_worker_at_once(cluster: Cluster) -> None:
    edge = cluster.start("edge-int", "edge", "--workers", "2", env={"LIVECDN_DRAIN_TIMEOUT": "30"})
    assert edge.proc is not None
    pids = wait_for(lambda: worker_pids(edge) if len(worker_pids(edge)) == 2 else None, 10, "two workers")

    async def scenario() -> None:
        viewers = await crowd(f"{edge.rtmp}/{STREAM}", 4)
        assert edge.proc is not None
        edge.proc.send_signal(signal.SIGINT)  # Ctrl-C: no drain, viewers or not
        assert await blocking(edge.proc.wait, 10) == 0
        assert not any(alive(pid) for pid in pids)
        await wait_until(lambda: not any(v.connected for v in viewers), 5, "the viewers to be let go")

    asyncio.run(scenario())


def test_the_workers_die_with_their_supervisor(cluster: Cluster) -> None:
    edge = cluster.start("edge-orphans", "edge", "--workers", "2")
    pids = wait_for(lambda: worker_pids(edge) if len(worker_pids(edge)) == 2 else None, 10, "two workers")
    edge.kill()  # the supervisor, SIGKILL: nothing of its own runs; the kernel stops its workers
    wait_for(lambda: not any(alive(pid) for pid in pids), 5, "the workers to die with their supervisor")


def test_llhls_is_packaged_once_by_the_streams_owner(cluster: Cluster) -> None:
    """A player's requests land on both workers; the owner alone packages the stream and counts the player."""
    edge = cluster.nodes["edge-w"]
    owner = owner_worker(STREAM, 2)
    sequences = []
    for _ in range(50):  # each request on a new connection: the kernel picks a worker for each
        with urllib.request.urlopen(f"{edge.http}/{STREAM}.m3u8", timeout=10) as response:
            text = response.read().decode()
        sequences.append(int(text.split("#EXT-X-MEDIA-SEQUENCE:")[1].split()[0]))
        workers = edge.stats()["workers"]
        if len(sequences) >= 4 and workers[1 - owner]["hls_passed_on"] > 0:
            break
    assert workers[1 - owner]["hls_passed_on"] > 0, workers
    assert sequences == sorted(sequences), sequences  # one packager numbers every answer
    streams = {w["worker"]: w for w in workers}
    assert streams[owner]["viewers_hls"] == 1 and streams[1 - owner]["viewers_hls"] == 0
    assert edge.stats()["node"]["viewers_hls"] == 1  # one player (one address and User-Agent), counted once


async def wait_until_value(predicate: Any, timeout: float, what: str) -> Any:
    return await blocking(wait_for, predicate, timeout, what)


def metrics_text(edge: NodeProcess) -> str:
    with urllib.request.urlopen(edge.http + "/metrics", timeout=5) as response:
        return str(response.read().decode())


def flv_head(edge: NodeProcess) -> bytes:
    with urllib.request.urlopen(f"{edge.http}/{STREAM}.flv", timeout=5) as response:
        return bytes(response.read(4096))


def test_the_plan_stays_out_of_the_process_list(cluster: Cluster) -> None:
    """Workers are started with only a hidden flag: the settings (and secrets) travel in their environment."""
    edge = cluster.nodes["edge-w"]
    for pid in worker_pids(edge):
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            args = cmdline.read().rstrip(b"\0").split(b"\0")
        assert args[-4:-1] == [b"livecdn", b"edge", b"--worker"] and args[-1] in (b"0", b"1"), args
    assert http_json(edge.http + "/healthz")["status"] == "ok"
