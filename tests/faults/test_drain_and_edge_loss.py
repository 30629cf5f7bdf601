"""Taking an edge away, on default settings. Drained (SIGTERM or POST /v1/drain): marked draining in the
registry at once, so the router sends it nobody new; its viewers (RTMP and HTTP-FLV) keep playing, with no
Play.Stop, until they leave or the drain deadline passes; then it exits 0, never hanging on HTTP-FLV.
Killed (kill -9): the router stops choosing it within the node TTL, and a viewer that asks again plays
from a live edge. One cluster, one edge per test."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.faults.cluster import Cluster, Watcher, publisher, wait_until
from tests.faults.figures import record
from tests.helpers import NodeProcess, http_json, wait_for

pytestmark = pytest.mark.integration

ADMIN = "drain-test-admin-token"
STREAMS = [f"live/s{i}" for i in range(40)]  # enough keys that every live edge is someone's home


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, test_flv: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("edges")) as cluster:
        origin = cluster.start("origin-a", "origin")
        for name in ("edge-term", "edge-kill", "edge-stay"):
            cluster.start(name, "edge")
        cluster.start("edge-deadline", "edge", env={"LIVECDN_DRAIN_TIMEOUT": "4", "LIVECDN_ADMIN_TOKEN": ADMIN})
        cluster.start("control", "control")
        with publisher(test_flv, f"{origin.rtmp}/live/main"), publisher(test_flv, f"{origin.rtmp}/live/other"):
            wait_for(lambda: cluster.claim("live/main") and cluster.claim("live/other"), 10, "streams")
            yield cluster


def routed_edges(cluster: Cluster) -> set[str]:
    control = cluster.nodes["control"].http
    return {http_json(f"{control}/v1/route/play?stream={key}")["edge"] for key in STREAMS}


class FlvReader:
    """An HTTP-FLV viewer: reads the response as it comes, notes when bytes last arrived and when it ended."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.received = 0
        self.last_data = 0.0
        self.ended_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> FlvReader:
        self._task = asyncio.create_task(self._read())
        await wait_until(lambda: self.received > 10_000, 10, f"HTTP-FLV from {self.url}")
        return self

    async def _read(self) -> None:
        async with aiohttp.ClientSession() as session, session.get(self.url) as response:
            assert response.status == 200
            try:
                async for chunk in response.content.iter_any():
                    self.received += len(chunk)
                    self.last_data = time.monotonic()
            except aiohttp.ClientError:
                pass
        self.ended_at = time.monotonic()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _readyz(node: NodeProcess) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(node.http + "/readyz", timeout=2) as response:
            return response.status, http_json(node.http + "/readyz")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_sigterm_drains_an_edge_until_its_viewers_leave(cluster: Cluster) -> None:
    edge = cluster.nodes["edge-term"]
    assert "edge-term" in routed_edges(cluster)

    async def scenario() -> None:
        rtmp = await Watcher(f"{edge.rtmp}/live/main").start()
        flv = await FlvReader(f"{edge.http}/live/other.flv").start()
        assert edge.proc is not None
        edge.proc.send_signal(signal.SIGTERM)
        term_at = time.monotonic()
        marked = await wait_until(lambda: cluster.registry_nodes()["edge-term"]["draining"], 5, "draining mark")
        status, body = await asyncio.get_running_loop().run_in_executor(None, _readyz, edge)
        assert status == 503 and body["draining"] is True, (status, body)
        # The router reuses a node list for up to node_list_max_age (0.1 s): then the edge is out of it.
        await wait_until(lambda: "edge-term" not in routed_edges(cluster), 1.0, "the router to pass the edge over")
        await asyncio.sleep(4)  # viewers keep playing while the edge drains
        rtmp.assert_kept()
        assert rtmp.frames_since(term_at + 3) > 20 and flv.last_data > term_at + 3.5 and flv.ended_at is None
        rtmp.close()
        await flv.close()
        left_at = time.monotonic()
        exit_code = await asyncio.get_running_loop().run_in_executor(None, edge.proc.wait, 10)
        exited_after_leave = time.monotonic() - left_at
        record(
            "edge drained by SIGTERM",
            marked_draining_after_s=round(marked, 2),
            exited_after_last_viewer_left_s=round(exited_after_leave, 2),
            viewers_stall_s=0,
        )
        assert exit_code == 0
        assert exited_after_leave < 3

    asyncio.run(scenario())


def test_drain_endpoint_and_deadline_end_viewers_without_hanging(cluster: Cluster) -> None:
    edge = cluster.nodes["edge-deadline"]

    async def scenario() -> None:
        rtmp = await Watcher(f"{edge.rtmp}/live/main").start()
        flv = await FlvReader(f"{edge.http}/live/other.flv").start()
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{edge.http}/v1/drain") as response:
                assert response.status == 401  # the admin API wants its token
            async with session.post(f"{edge.http}/v1/drain", headers={"Authorization": f"Bearer {ADMIN}"}) as response:
                assert response.status == 202 and (await response.json())["draining"] is True
        drain_at = time.monotonic()
        await wait_until(lambda: cluster.registry_nodes()["edge-deadline"]["draining"], 5, "draining mark")
        assert edge.proc is not None
        exit_code = await asyncio.get_running_loop().run_in_executor(None, edge.proc.wait, 15)
        stopped_after = time.monotonic() - drain_at
        assert rtmp.client is not None
        await asyncio.wait_for(asyncio.shield(rtmp.client.closed), 5)
        await wait_until(lambda: flv.ended_at is not None, 5, "the HTTP-FLV response to end")
        ending = [code for code in rtmp.statuses if "Stop" in code or "Unpublish" in code]
        record(
            "edge drained by POST /v1/drain, viewers staying (drain_timeout 4 s)",
            stopped_after_s=round(stopped_after, 2),
            statuses_sent_to_viewers=ending,
        )
        assert exit_code == 0
        assert 4 <= stopped_after < 4 + 3, stopped_after  # the deadline, then a prompt stop
        assert not ending, ending  # disconnected at the deadline, never told the stream ended
        assert rtmp.frames_since(drain_at + 3) > 20  # played until the deadline
        await flv.close()

    asyncio.run(scenario())


def test_a_killed_edge_leaves_the_routing_within_the_node_ttl(cluster: Cluster) -> None:
    edge = cluster.nodes["edge-kill"]
    wait_for(lambda: "edge-kill" in routed_edges(cluster), 10, "the edge to be routed to")
    edge.kill()
    killed_at = time.monotonic()
    wait_for(lambda: "edge-kill" not in routed_edges(cluster), 10, "the router to forget the killed edge")
    gone_after = time.monotonic() - killed_at

    async def replay() -> None:
        control = cluster.nodes["control"].http
        route = http_json(f"{control}/v1/route/play?stream=live/main")
        watcher = await Watcher(route["rtmp"]).start()
        await wait_until(lambda: len(watcher.frames) > 25, 10, "video from the edge the router chose")
        watcher.close()

    asyncio.run(replay())
    record("edge SIGKILL", router_stopped_choosing_it_after_s=round(gone_after, 2), node_ttl_s=3.0)
    assert gone_after <= 3.0 + 1.5, gone_after
