"""CI smoke of the load tester: origin + edge as subprocesses, the loadtest publisher looping the test FLV
into the origin, and a 50-viewer mixed RTMP/HTTP-FLV swarm against the edge for ~6 s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, NodeProcess, wait_for

pytestmark = pytest.mark.integration

VIEWERS = 50


def test_swarm_of_50_mixed_viewers_against_an_edge(origin: NodeProcess, test_flv: Path, tmp_path: Path) -> None:
    edge = NodeProcess("edge", ["--upstream", f"{origin.rtmp}/live"]).start(tmp_path)
    publisher_log = (tmp_path / "publisher.log").open("w")
    publisher = subprocess.Popen(
        [sys.executable, "-m", "loadtest", "publish", str(test_flv), f"{origin.rtmp}/live/smoke"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=publisher_log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    report_path = tmp_path / "swarm.json"
    try:
        wait_for(
            lambda: (s := origin.stream("smoke")) and s["publisher"] and s["packets_in"] > 0,
            15,
            "the loadtest publisher to be live on the origin",
        )
        swarm = subprocess.run(
            [
                sys.executable,
                "-m",
                "loadtest",
                "swarm",
                f"{edge.rtmp}/live/smoke",
                "--flv-url",
                f"{edge.http}/live/smoke.flv",
                "--protocol",
                "mixed",
                "--viewers",
                str(VIEWERS),
                "--ramp",
                "50",
                "--duration",
                "6",
                "--probes",
                "4",
                "--json",
                str(report_path),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert publisher.poll() is None, "the publisher must keep running"
    finally:
        if publisher.poll() is None:
            publisher.terminate()
            try:
                publisher.wait(5)
            except subprocess.TimeoutExpired:
                publisher.kill()
                publisher.wait(5)
        publisher_log.close()
        edge.stop()
    output = swarm.stdout + swarm.stderr
    print(output)
    assert swarm.returncode == 0, output
    assert report_path.exists(), output
    report = json.loads(report_path.read_text())
    assert report["viewers_connected"] == VIEWERS, report["failure_reasons"]
    assert report["viewers_failed"] == 0 and report["viewers_dropped"] == 0, report
    assert report["probes_connected"] == 4
    assert report["delivered_ratio"] is not None and report["delivered_ratio"] >= 0.9, report
    assert report["lag_samples"] > 0, report["lag_note"]
    assert report["lag_p95_ms"] < 1000, report
    assert report["first_frame_samples"] == 4
    assert report["first_frame_p95_ms"] < 1000, report
    assert report["settings"]["rcvlowat"] == 64 * 1024
    assert "delivered/expected" in swarm.stdout
    assert "publisher stopped" in (tmp_path / "publisher.log").read_text()
