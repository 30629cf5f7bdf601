"""The browser pages as a viewer and an operator use them: Debian's chromium, driven by Playwright, against
a real cluster (redis-server registry, an origin, an edge, the control plane) while real ffmpeg publishes.

- /watch/live/x plays HTTP-FLV through mpegts.js: the video's currentTime advances for 5 s and the page's
  latency reading is a plausible number; the same page with ?format=hls plays the edge's LL-HLS.
- the status page (server-sent events) shows the stream appear and its viewer count change, no reload.

LIVECDN_UPDATE_SCREENSHOT=1 writes the player page's screenshot to docs/watch.png (the README's).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, NodeProcess, publishing, wait_for
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("LIVECDN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(
        f"no chromium at {CHROMIUM} (.ci/run installs Debian's; or set LIVECDN_CHROMIUM)", allow_module_level=True
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra: ./dev setup")

FAST = {"LIVECDN_HEARTBEAT_INTERVAL": "0.5", "LIVECDN_NODE_TTL": "2", "LIVECDN_IDLE_GRACE": "2"}


class Cluster:
    def __init__(self, log_dir: Path) -> None:
        self.redis = RedisServer().start()
        registry = ["--registry", self.redis.url]
        self.origin = NodeProcess("origin", [*registry, "--node-id", "origin-1", "--region", "eu"], FAST)
        self.edge = NodeProcess("edge", [*registry, "--node-id", "edge-1", "--region", "eu"], FAST)
        self.control = NodeProcess("control", registry, FAST)
        self.nodes = [self.origin, self.edge, self.control]
        for node in self.nodes:
            node.start(log_dir)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        self.redis.cleanup()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, test_flv: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("browser"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def current_time(page: Any) -> float:
    return float(page.evaluate("document.getElementById('video').currentTime"))


def watch_plays(page: Any, seconds: float = 5.0) -> float:
    """Waits until the video plays, then until its currentTime has advanced `seconds`; returns the page's
    latency reading."""
    start = wait_for(lambda: current_time(page), 15, "the video to start playing")
    wait_for(lambda: current_time(page) - start >= seconds, seconds + 5, f"{seconds}s of playback")
    state = page.text_content("#state")
    assert state == "playing", state
    return float(page.get_attribute("#latency", "data-value"))


def stream_viewers(page: Any, stream: str) -> str | None:
    """The viewers cell of `stream`'s row in the status page's live streams table (None: no row)."""
    result: str | None = page.evaluate(
        """(stream) => {
            for (const row of document.querySelectorAll('#live tr')) {
                if (row.cells[0] && row.cells[0].textContent === stream) return row.cells[2].textContent;
            }
            return null;
        }""",
        stream,
    )
    return result


def test_watch_flv_and_status_page_live(cluster: Cluster, browser: Any, test_flv: Path) -> None:
    status = browser.new_page(viewport={"width": 390, "height": 844})  # a phone's screen
    status.goto(cluster.control.http + "/")
    wait_for(lambda: "live" in (status.text_content("#updated") or ""), 10, "the status page's event stream")
    assert stream_viewers(status, "live/x") is None
    with publishing(test_flv, f"{cluster.origin.rtmp}/live/x"):
        wait_for(lambda: stream_viewers(status, "live/x") == "0", 10, "live/x on the status page")
        player = browser.new_page(viewport={"width": 1000, "height": 760})
        player.goto(cluster.control.http + "/watch/live/x")
        latency = watch_plays(player)
        assert 0 <= latency < 5, latency  # buffered ahead of the playhead, with latency chasing on
        assert player.get_attribute("#format", "data-value") == "flv"
        assert player.get_attribute("#edge", "data-value") == "edge-1"
        wait_for(lambda: stream_viewers(status, "live/x") == "1", 10, "the viewer on the status page")
        if os.environ.get("LIVECDN_UPDATE_SCREENSHOT"):
            player.screenshot(path=str(ROOT / "docs" / "watch.png"))
        player.close()
        wait_for(lambda: stream_viewers(status, "live/x") == "0", 10, "the viewer gone from the status page")
    status.close()


def test_watch_hls(cluster: Cluster, browser: Any, test_flv: Path) -> None:
    with publishing(test_flv, f"{cluster.origin.rtmp}/live/h"):
        wait_for(lambda: cluster.origin.stream("h"), 10, "live/h published")
        page = browser.new_page()
        page.goto(cluster.control.http + "/watch/live/h?format=hls")
        latency = watch_plays(page)
        assert page.get_attribute("#format", "data-value") == "hls"
        assert 0 <= latency < 15, latency
        page.close()
