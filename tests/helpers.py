"""Helpers for tests that drive real processes: node subprocesses, ffmpeg publishers and players."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.registry.base import NodeInfo, NodeLoad
from common.serving.client import RtmpClient, RtmpClientError
from common.system import free_port, stop_process
from loadtest.flvfile import ffmpeg_executable, make_flv

ROOT = Path(__file__).resolve().parent.parent


ffmpeg_path = ffmpeg_executable  # LIVECDN_FFMPEG, the system ffmpeg, or imageio-ffmpeg's (has RTMP)


def rtmp_answer(url: str, action: str = "play") -> str:
    """What a server answers an RTMP play or publish of ``url``: its error code, or "accepted"."""

    async def attempt() -> str:
        client = await RtmpClient.connect(url)
        try:
            await (client.play(lambda event: None) if action == "play" else client.publish())
        except RtmpClientError as exc:
            return exc.code
        finally:
            client.close()
        return "accepted"

    return asyncio.run(attempt())


def run_livecdn(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`python -m livecdn ARGS` as a user runs it, to completion (for commands that must refuse to start)."""
    return subprocess.run(
        [sys.executable, "-m", "livecdn", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = predicate()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


# Tests about something else publish without signing URLs; the auth tests set secrets (and this aside).
# Edges run as one process each unless a test asks for workers (tests/integration/test_edge_workers.py).
OPEN_BY_DEFAULT = {"origin": {"LIVECDN_OPEN_PUBLISH": "true"}, "edge": {"LIVECDN_WORKERS": "1"}}


@dataclass
class NodeProcess:
    """A livecdn node started as `python -m livecdn <role>` on free loopback ports; stopped by its PID."""

    role: str
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    rtmp_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    log_path: Path | None = None

    @property
    def rtmp(self) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, log_dir: Path) -> NodeProcess:
        self.log_path = log_dir / f"{self.role}-{self.rtmp_port}.log"
        log = self.log_path.open("w")
        listen = ["--http", f"127.0.0.1:{self.http_port}"]
        if self.role != "control":
            listen += ["--rtmp", f"127.0.0.1:{self.rtmp_port}"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "livecdn", self.role, *listen, *self.extra],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **OPEN_BY_DEFAULT.get(self.role, {}), **self.env},
        )
        wait_for(lambda: http_json(self.http + "/healthz")["status"] == "ok", 15, f"{self.role} to come up")
        return self

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = http_json(self.http + "/v1/stats")
        return result

    def stream(self, name: str, app: str = "live") -> dict[str, Any] | None:
        for stream in self.stats()["streams"]:
            if stream["app"] == app and stream["name"] == name:
                return dict(stream)
        return None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def kill(self) -> None:
        """kill -9: no clean shutdown, no claim release."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)


def make_test_flv(
    path: Path, seconds: int = 8, gop_seconds: float = 1, fps: int = 25, bitrate_kbps: int = 400, *, cbr: bool = False
) -> Path:
    """A small H.264/AAC FLV (320x240) with a short GOP, made once per session by real ffmpeg. ``cbr`` pads
    the video to a constant bitrate, so a test pattern really weighs ``bitrate_kbps``."""
    return make_flv(
        path, seconds=seconds, bitrate_kbps=bitrate_kbps, gop_seconds=gop_seconds, fps=fps, size="320x240", cbr=cbr
    )


@contextlib.contextmanager
def publishing(flv: Path, url: str, *, loop: bool = True) -> Iterator[subprocess.Popen[str]]:
    """ffmpeg -re publishing a pre-encoded FLV (no encoder cost), stopped by PID on exit."""
    args = [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-re"]
    if loop:
        args += ["-stream_loop", "-1"]
    args += ["-i", str(flv), "-c", "copy", "-f", "flv", url]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        stop_process(proc)


@dataclass
class PlayResult:
    returncode: int
    video_frames: int
    audio_frames: int
    seconds: float
    output: str


# What a low-latency live player does: start decoding at once instead of probing ~20 frames first.
LOW_LATENCY_INPUT = ("-probesize", "32", "-analyzeduration", "0")


def play_and_decode(
    url: str, *, video_frames: int = 50, timeout: float = 20.0, input_args: tuple[str, ...] = ()
) -> PlayResult:
    """Play with real ffmpeg, decode, and count decoded frames per stream from framemd5 lines."""
    return _finish_play(start_play(url, video_frames=video_frames, input_args=input_args), timeout)


def start_play(
    url: str, *, video_frames: int = 50, input_args: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[str], float]:
    args = [
        ffmpeg_path(),
        "-hide_banner",
        "-loglevel",
        "error",
        *input_args,
        "-i",
        url,
        "-frames:v",
        str(video_frames),
        "-map",
        "0:v",
        "-map",
        "0:a",
        "-f",
        "framemd5",
        "-",
    ]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, time.monotonic()


def _finish_play(started: tuple[subprocess.Popen[str], float], timeout: float) -> PlayResult:
    proc, t0 = started
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    seconds = time.monotonic() - t0
    counts = {0: 0, 1: 0}
    for line in out.splitlines():
        if line and not line.startswith("#"):
            index = int(line.split(",", 1)[0])
            counts[index] = counts.get(index, 0) + 1
    return PlayResult(proc.returncode, counts[0], counts[1], seconds, err)


finish_play = _finish_play


def node_info(
    node_id: str,
    role: str = "edge",
    region: str = "eu",
    *,
    viewers: int = 0,
    streams: int = 0,
    bits: float = 0.0,
    draining: bool = False,
) -> NodeInfo:
    """A registry node record for routing and control-plane tests (addresses derived from the id)."""
    return NodeInfo(
        node_id,
        role,
        region,
        f"{node_id}.test:1935",
        f"{node_id}.test:8080",
        NodeLoad(viewers=viewers, streams=streams, bits_out=bits),
        draining,
    )
