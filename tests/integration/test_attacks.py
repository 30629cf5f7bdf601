"""Hostile clients against running nodes (an origin, and an edge pulling from it), on default limits: every
attack costs only its own connection. Meanwhile a real ffmpeg viewer on each node must keep playing, and
each node's memory stays bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests import attacks
from tests.helpers import NodeProcess, finish_play, publishing, start_play, wait_for

pytestmark = pytest.mark.integration

RSS_GROWTH_MB = 60  # a node may warm up its allocator, never hold what an attacker sends
ATTACKS = [
    attacks.huge_chunk_size,
    attacks.tiny_chunk_size,
    attacks.huge_declared_message,
    attacks.length_changed_mid_message,
    attacks.type3_on_fresh_chunk_stream,
    attacks.many_chunk_streams,
    attacks.deep_amf,
    attacks.handshake_garbage,
    attacks.many_create_streams,
    attacks.commands_never_read,
]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, test_flv: Path) -> Iterator[dict[str, NodeProcess]]:
    workdir = tmp_path_factory.mktemp("attacks")
    origin = NodeProcess("origin").start(workdir)
    edge = NodeProcess("edge", ["--upstream", f"{origin.rtmp}/live"]).start(workdir)
    with publishing(test_flv, f"{origin.rtmp}/live/victim"):
        wait_for(lambda: origin.stream("victim"), 10, "the stream")
        yield {"origin": origin, "edge": edge}
    edge.stop()
    origin.stop()


def rss_mb(node: NodeProcess) -> float:
    assert node.proc is not None
    return psutil.Process(node.proc.pid).memory_info().rss / 2**20


@pytest.mark.parametrize("role", ["origin", "edge"])
def test_every_attack_costs_only_its_own_connection(nodes: dict[str, NodeProcess], role: str) -> None:
    node = nodes[role]
    port = node.rtmp_port
    player = start_play(f"{node.rtmp}/live/victim", video_frames=500)  # 20 s of video, through every attack
    before = rss_mb(node)

    async def run() -> dict[str, attacks.Outcome]:
        slow = asyncio.create_task(attacks.slow_handshake(port))
        outcomes = {attack.__name__: await attack(port) for attack in ATTACKS}
        outcomes["slow_handshake"] = await slow
        outcomes["frozen_timestamp_flood"] = await attacks.frozen_timestamp_flood(port)
        return outcomes

    outcomes = asyncio.run(run())
    names = asyncio.run(attacks.bad_names(port))
    held, refused = asyncio.run(attacks.flood(port, 1100, "127.0.0.2"))
    after = rss_mb(node)
    decoded = finish_play(player, 60)

    for name, outcome in outcomes.items():
        if name != "frozen_timestamp_flood":
            assert outcome.closed_by_server, f"{name}: the server kept the connection"
    assert 9 <= outcomes["slow_handshake"].seconds <= 13, outcomes["slow_handshake"]  # the 10 s deadline
    assert all(answer in ("BadName", "StreamNotFound", "Failed") for answer in names), names
    assert held == 1000 and refused == 100, (held, refused)  # the per-address limit, for that address only
    assert after - before < RSS_GROWTH_MB, (before, after)
    assert decoded.returncode == 0 and decoded.video_frames == 500, decoded.output[-2000:]
    stats = node.stats()["node"]
    assert stats["protocol_errors"] >= 8 and stats["connections_refused"] >= 100
    wait_for(lambda: node.stats()["node"]["connections"] <= 3, 10, "the attackers' connections gone")
    assert "Traceback" not in node.log()


def test_the_node_answers_after_the_attacks(nodes: dict[str, NodeProcess]) -> None:
    for node in nodes.values():
        started = time.monotonic()
        assert node.stats()["node"]["id"]
        assert time.monotonic() - started < 1
