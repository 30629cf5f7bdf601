"""`./dev up` as the README says: one command, a working local cluster, a publish and a play through it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ROOT, play_and_decode, publishing, wait_for

pytestmark = pytest.mark.integration

SECRET = "up-test-publish-secret-0123456789"


def test_dev_up_runs_a_cluster_that_publishes_and_plays(test_flv: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "up.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(ROOT / "dev"), "up", "--rtmp-port", "0", "--http-port", "0"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "LIVECDN_LOG_LEVEL": "info", "LIVECDN_PUBLISH_SECRET": SECRET},
            start_new_session=True,
        )
    try:
        banner = wait_for(lambda: "Ctrl-C" in (text := log_path.read_text()) and text, 60, "the banner")
        publish = re.search(r"publish:\s+(rtmp://\S+)", banner)
        plays = re.findall(r"(rtmp://\S+)\s+or\s+(http://\S+\.flv)", banner)
        control = re.search(r"control:\s+(http://\S+?)/\s", banner)
        assert publish and control and len(plays) == 2, banner
        assert "?exp=" in publish.group(1) and "/live/demo?" in publish.group(1)  # a signed URL, ready to use
        with publishing(test_flv, publish.group(1)):
            wait_for(
                lambda: json.load(urllib.request.urlopen(control.group(1) + "/v1/streams"))["streams"], 10, "claim"
            )
            for rtmp, flv in plays:
                for url in (rtmp, flv):
                    result = play_and_decode(url.replace("STREAM", "demo"), video_frames=10)
                    assert result.returncode == 0 and result.video_frames == 10, (url, result.output)
            route = json.load(urllib.request.urlopen(control.group(1) + "/v1/route/play?stream=live/demo&region=us"))
            assert route["rtmp"] == plays[1][0].replace("STREAM", "demo")
            # A player given the control plane's /play URL follows the 302 to an edge and decodes.
            via_redirect = play_and_decode(control.group(1) + "/play/live/demo?region=us", video_frames=10)
            assert via_redirect.returncode == 0 and via_redirect.video_frames == 10, via_redirect.output
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as a person would (the group is the one this test started)
        assert proc.wait(20) == 0
    assert "shutting down the local cluster" in log_path.read_text()
    assert SECRET not in log_path.read_text()  # signed URLs in the banner, never the secret
