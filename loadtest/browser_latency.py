"""Glass-to-glass latency in a real browser: publisher wall clock of a frame -> the /watch page's playhead.

Starts ``python -m livecdn up`` (origin, two edges, control plane; registry memory://, one process) and
``python -m loadtest publish`` to the banner's signed live/demo URL (it prints its epoch: the wall-clock ms
of media time 0), then opens the control plane's ``/watch/live/demo?format=flv|hls`` in headless Chromium
(Playwright) and samples ``video.currentTime`` a few times a second. ``loadtest/browser_latency.js``,
injected before the page's scripts, finds the media time that currentTime 0 stands for (mpegts.js rebases
it to the first tags it received; hls.js to initPTS), so latency = now - (epoch + anchor + currentTime).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from common.system import stop_process
from loadtest.servers import EPOCH_LINE, STOP_TIMEOUT_S, publishing

INIT_SCRIPT: Final = Path(__file__).with_name("browser_latency.js")
CONTROL_LINE: Final = re.compile(r"control:\s+(http://\S+?)/\s")
PUBLISH_LINE: Final = re.compile(r"publish:\s+(rtmp://\S+)")
START_TIMEOUT_S: Final = 20.0
SAMPLE_JS: Final = (
    "() => ({t: document.getElementById('video').currentTime, now: Date.now(),"
    " anchor: window.__latency.anchorMs, source: window.__latency.source})"
)


@dataclass
class FormatResult:
    fmt: str
    first_frame_s: float
    samples_ms: list[float]
    anchor_source: str

    def percentile(self, q: float) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def row(self) -> str:
        if not self.samples_ms:
            return f"| {self.fmt} | {self.first_frame_s:.2f} s | — | — | 0 | {self.anchor_source} |"
        return (
            f"| {self.fmt} | {self.first_frame_s:.2f} s | {statistics.median(self.samples_ms):.0f} ms | "
            f"{self.percentile(0.95):.0f} ms | {len(self.samples_ms)} | {self.anchor_source} |"
        )


def start_cluster(workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """``livecdn up`` on free ports; returns it, the control plane's URL and the signed publish URL."""
    log_path = workdir / "up.log"
    log = log_path.open("wb")
    cmd = [sys.executable, "-m", "livecdn", "up", "--rtmp-port", "0", "--http-port", "0", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        text = log_path.read_text(errors="replace")
        control, publish = CONTROL_LINE.search(text), PUBLISH_LINE.search(text)
        if control and publish:
            return proc, control.group(1), publish.group(1)
        time.sleep(0.1)
    stop_process(proc, STOP_TIMEOUT_S)
    raise RuntimeError(f"livecdn up did not print its banner in {START_TIMEOUT_S:.0f} s (see {log_path})")


def read_epoch(publisher: subprocess.Popen[bytes]) -> float:
    assert publisher.stdout is not None
    line = publisher.stdout.readline()  # the first line, printed once publishing started
    match = EPOCH_LINE.search(line)
    if match is None:
        raise RuntimeError(f"the publisher did not print its epoch: {line!r}")
    return float(match.group(1))


def measure(browser: Any, url: str, fmt: str, epoch_ms: float, seconds: float, interval: float) -> FormatResult:
    page = browser.new_page()
    page.add_init_script(path=str(INIT_SCRIPT))
    opened = time.monotonic()
    page.goto(url)
    first_frame = float("nan")
    while time.monotonic() - opened < 30:  # bounded: 30 s for the first frame
        if float(page.evaluate("document.getElementById('video').currentTime")) > 0:
            first_frame = time.monotonic() - opened
            break
        time.sleep(0.02)
    samples: list[float] = []
    source = "none"
    end = time.monotonic() + seconds
    while first_frame == first_frame and time.monotonic() < end:
        s = page.evaluate(SAMPLE_JS)
        if s["anchor"] is not None and s["t"] > 0:
            samples.append(s["now"] - (epoch_ms + s["anchor"] + s["t"] * 1000.0))
            source = str(s["source"])
        time.sleep(interval)
    page.close()
    return FormatResult(fmt, first_frame, samples, source)


def run(flv: Path, formats: list[str], seconds: float, interval: float, settle: float) -> list[FormatResult]:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="livecdn-browser-") as tmp:
        cluster, control, publish_url = start_cluster(Path(tmp))
        try:
            with publishing(flv, publish_url, None) as publisher:
                epoch_ms = read_epoch(publisher)
                time.sleep(settle)  # let the first GOP reach the origin
                with sync_playwright() as p:
                    browser = p.chromium.launch(
                        executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"]
                    )
                    try:
                        return [
                            measure(
                                browser, f"{control}/watch/live/demo?format={fmt}", fmt, epoch_ms, seconds, interval
                            )
                            for fmt in formats
                        ]
                    finally:
                        browser.close()
        finally:
            stop_process(cluster, STOP_TIMEOUT_S)


def table(results: list[FormatResult]) -> str:
    head = "| format | first frame | latency p50 | latency p95 | samples | anchor |\n|---|---:|---:|---:|---:|---|"
    return "\n".join([head, *(r.row() for r in results)])
