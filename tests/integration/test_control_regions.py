"""The control plane started as an operator would, placing clients by their address. On an empty registry (a
fresh redis-server) it sees no node, so routing answers 503; what it decided shows in that answer's text and
in /metrics."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.system import free_port, stop_process
from tests.helpers import ROOT, http_json, run_livecdn, wait_for
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration


def livecdn(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "livecdn", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )


async def get_from(source: str, url: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0))) as session,
        session.get(url, allow_redirects=False) as resp,
    ):
        return resp.status, await (resp.json() if resp.content_type == "application/json" else resp.text())


def test_the_control_plane_places_clients_by_address(tmp_path: Path) -> None:
    port = free_port()
    regions = tmp_path / "regions.txt"
    regions.write_text("# test clients\n127.0.0.2/32 = eu\n\n127.0.0.3/32 = us  # the other one\n")
    redis = RedisServer().start()
    proc = livecdn(
        "control",
        "--http",
        f"127.0.0.1:{port}",
        "--registry",
        redis.url,
        "--region-map",
        f"@{regions}",
        "--region-fallback",
        "eu=ap",
        log=tmp_path / "control.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_json(f"{base}/healthz")["status"] == "ok", 15, "the control plane to come up")

        async def scenario() -> None:
            status, body = await get_from("127.0.0.2", f"{base}/v1/route/play?stream=live/x")
            assert status == 503
            assert body["error"] == "no healthy edge available to play from in region eu or its fallback regions ap"
            status, body = await get_from("127.0.0.3", f"{base}/v1/route/publish?stream=live/x")
            assert status == 503 and body["error"] == "no healthy origin available to publish to"
            status, body = await get_from("127.0.0.2", f"{base}/play/live/x")
            assert status == 503
            status, text = await get_from("127.0.0.4", f"{base}/metrics")
            assert status == 200
            samples = {
                (s.labels["route"], s.labels["source"]): s.value
                for family in text_string_to_metric_families(text)
                if family.name == "livecdn_control_region_source"
                for s in family.samples
                if s.name.endswith("_total")
            }
            assert samples[("play", "network")] == 2 and samples[("publish", "network")] == 1
            assert samples[("play", "none")] == 0

        asyncio.run(scenario())
    finally:
        stop_process(proc)
        redis.cleanup()


def test_a_bad_region_map_stops_start_up_naming_it(tmp_path: Path) -> None:
    result = run_livecdn("control", "--http", "127.0.0.1:0", "--region-map", "127.0.0.0/33=eu")
    assert result.returncode != 0
    assert "region_map (--region-map / LIVECDN_REGION_MAP)" in result.stderr
    assert "entry '127.0.0.0/33=eu'" in result.stderr
