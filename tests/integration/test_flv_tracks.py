"""The HTTP-FLV file header announces the tracks a stream really has (issue 11): browser players such as
mpegts.js trust its flags and wait for a track it announces. Real ffmpeg publishes video only, audio only
and both to an origin; an edge (pulling through a real redis-server registry) serves the FLV."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.system import stop_process
from tests.helpers import NodeProcess, ffmpeg_path, wait_for
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    log_dir = tmp_path_factory.mktemp("tracks")
    with RedisServer() as redis:
        registry = ["--registry", redis.url]
        origin = NodeProcess("origin", registry).start(log_dir)
        edge = NodeProcess("edge", registry).start(log_dir)
        try:
            yield origin, edge
        finally:
            edge.stop()
            origin.stop()


def flv_flags(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        header = response.read(13)
    assert header[:3] == b"FLV", header
    return header[4]


@pytest.mark.parametrize(
    ("name", "drop", "flags"), [("video", ["-an"], 0x01), ("audio", ["-vn"], 0x04), ("both", [], 0x05)]
)
def test_flv_header_flags_match_published_tracks(
    nodes: tuple[NodeProcess, NodeProcess], test_flv: Path, name: str, drop: list[str], flags: int
) -> None:
    origin, edge = nodes
    args = [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(test_flv)]
    publisher = subprocess.Popen(
        [*args, *drop, "-c", "copy", "-f", "flv", f"{origin.rtmp}/live/{name}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: origin.stream(name), 10, f"live/{name} published")
        assert flv_flags(f"{origin.http}/live/{name}.flv") == flags  # the origin: headers already cached
        assert flv_flags(f"{edge.http}/live/{name}.flv") == flags  # the edge's first viewer starts the pull
    finally:
        stop_process(publisher)
