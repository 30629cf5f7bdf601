"""`--config FILE` as an operator uses it: every command takes its listen addresses and identity from TOML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.system import free_port, stop_process
from tests.helpers import ROOT, http_json, wait_for
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration


def start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "livecdn", *command], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )


@pytest.mark.parametrize("role", ["origin", "edge"])
def test_a_media_node_runs_on_the_settings_of_its_file(role: str, tmp_path: Path) -> None:
    rtmp, http = free_port(), free_port()
    upstream = 'upstream = "rtmp://127.0.0.1:1/live"\n' if role == "edge" else ""  # an edge needs a source
    toml = tmp_path / f"{role}.toml"
    toml.write_text(
        f'rtmp = "127.0.0.1:{rtmp}"\nhttp = "127.0.0.1:{http}"\nnode_id = "{role}-from-file"\n'
        f'region = "file-region"\n{upstream}' + ("open_publish = true\n" if role == "origin" else "")
    )
    proc = start([role, "--config", str(toml)], tmp_path / f"{role}.log")
    try:
        stats = wait_for(lambda: http_json(f"http://127.0.0.1:{http}/v1/stats"), 15, f"{role} on the file's port")
        assert stats["node"]["id"] == f"{role}-from-file" and stats["node"]["region"] == "file-region"
        assert stats["node"]["rtmp"] == f"127.0.0.1:{rtmp}"
    finally:
        stop_process(proc)


def test_the_control_plane_runs_on_the_settings_of_its_file(tmp_path: Path) -> None:
    http = free_port()
    toml = tmp_path / "control.toml"
    with RedisServer() as redis:  # a control plane needs a shared registry (it refuses memory://)
        toml.write_text(f'http = "127.0.0.1:{http}"\nepsilon = 0.5\nregistry = "{redis.url}"\n')
        proc = start(["control", "--config", str(toml)], tmp_path / "control.log")
        try:
            wait_for(lambda: http_json(f"http://127.0.0.1:{http}/readyz")["ready"], 15, "control on its port")
        finally:
            stop_process(proc)
