"""What the fault tests drive: a real cluster of subprocess nodes on DEFAULT settings, an encoder that
reconnects the way OBS does, and viewers that measure what a player would see through a fault."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.rtmp.events import MediaReceived, StatusReceived
from common.serving.client import RtmpClient
from common.system import stop_process
from tests.helpers import NodeProcess, ffmpeg_path, http_json, wait_for
from tests.redis_server import RedisServer

VIDEO = 9
ENDING_CODES = ("NetStream.Play.Stop", "NetStream.Play.UnpublishNotify", "NetStream.Play.Reset")


@dataclass
class Cluster:
    """redis-server, origins, edges and a control plane, each a subprocess on free loopback ports."""

    workdir: Path
    redis: RedisServer = field(default_factory=RedisServer)
    nodes: dict[str, NodeProcess] = field(default_factory=dict)

    def __enter__(self) -> Cluster:
        self.redis.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for node in reversed(list(self.nodes.values())):
            node.stop()
        self.redis.cleanup()

    def start(self, name: str, role: str, *extra: str, env: dict[str, str] | None = None) -> NodeProcess:
        args = ["--registry", self.redis.url, *extra]
        if role != "control":
            args += ["--node-id", name]
        node = NodeProcess(role, args, env or {})
        self.nodes[name] = node.start(self.workdir)
        return node

    def registry_nodes(self) -> dict[str, dict[str, Any]]:
        control = self.nodes["control"]
        return {n["id"]: n for n in http_json(control.http + "/v1/nodes")["nodes"]}

    def claim(self, stream: str) -> dict[str, Any] | None:
        claims = http_json(self.nodes["control"].http + "/v1/streams")["streams"]
        return next((c for c in claims if c["key"] == stream), None)


class Encoder:
    """A publisher that behaves like OBS: asks the router where to publish, publishes with ffmpeg (-re, a
    pre-encoded FLV, no encoder cost), and when the connection is refused or lost, waits ``retry_delay``
    and asks again. Runs in a thread until stopped; every attempt is bounded by the test's own deadline."""

    def __init__(
        self, flv: Path, control: str, stream: str, *, retry_delay: float = 2.0, url: str | None = None
    ) -> None:
        self.flv = flv
        self.control = control
        self.stream = stream
        self.url = url  # a fixed ingest URL instead of asking the router
        self.retry_delay = retry_delay
        self.attempts: list[tuple[float, str]] = []  # (monotonic time, origin asked for)
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name=f"encoder {stream}", daemon=True)

    def __enter__(self) -> Encoder:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def kill_publisher(self) -> None:
        """The encoder process dies (kill -9): the connection drops; the loop publishes again after its delay."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def _route(self) -> tuple[str, str] | None:
        if self.url is not None:
            return self.url, "fixed"
        query = urllib.parse.urlencode({"stream": self.stream})
        try:
            answer = http_json(f"{self.control}/v1/route/publish?{query}")
        except OSError:
            return None
        return str(answer["rtmp"]), str(answer["origin"])

    def _run(self) -> None:
        while not self._stop.is_set():
            route = self._route()
            if route is not None:
                url, origin = route
                self.attempts.append((time.monotonic(), origin))
                args = [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1"]
                args += ["-i", str(self.flv), "-c", "copy", "-f", "flv", url]
                self._proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                while self._proc.poll() is None and not self._stop.is_set():
                    time.sleep(0.05)
                if self._stop.is_set():
                    stop_process(self._proc)
                    return
            self._stop.wait(self.retry_delay)


@contextlib.contextmanager
def publisher(flv: Path, url: str) -> Iterator[subprocess.Popen[bytes]]:
    """A plain ffmpeg publisher (no retries), stopped by PID."""
    args = [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(flv)]
    proc = subprocess.Popen(
        [*args, "-c", "copy", "-f", "flv", url],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        stop_process(proc)


class Watcher:
    """A viewer that records when each video frame arrived, its timestamp, and every status the server sent
    after the play started (a player given Play.Stop or UnpublishNotify stops)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.frames: list[tuple[float, int]] = []  # (monotonic arrival, timestamp)
        self.statuses: list[str] = []
        self.client: RtmpClient | None = None

    async def start(self) -> Watcher:
        self.client = await RtmpClient.connect(self.url)
        self.client.on_status = self._status
        await self.client.play(self._media)
        return self

    def _media(self, event: MediaReceived) -> None:
        if event.type_id == VIDEO:
            self.frames.append((time.monotonic(), event.timestamp))

    def _status(self, event: StatusReceived) -> None:
        self.statuses.append(event.code)

    @property
    def connected(self) -> bool:
        return self.client is not None and not self.client.closed.done()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def frames_since(self, moment: float) -> int:
        return sum(1 for arrived, _ in self.frames if arrived >= moment)

    def longest_gap(self, since: float = 0.0) -> float:
        """The longest time between two video frames arriving (the stall a player sees), from ``since``."""
        times = [arrived for arrived, _ in self.frames if arrived >= since]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def monotonic(self) -> bool:
        stamps = [t for _, t in self.frames]
        return all(b >= a for a, b in itertools.pairwise(stamps))

    def assert_kept(self) -> None:
        """Still connected, never told the stream ended, timestamps never back."""
        assert self.connected, f"{self.url}: disconnected: {self.client.closed.result() if self.client else ''}"
        ending = [code for code in self.statuses if code in ENDING_CODES]
        assert not ending, f"{self.url}: the viewer was sent {ending}"
        assert self.monotonic(), f"{self.url}: timestamps went backwards"


async def wait_until(predicate: Any, timeout: float, what: str) -> float:
    """Poll ``predicate`` (sync, may block briefly) off the loop; returns the seconds it took."""
    started = time.monotonic()
    await asyncio.get_running_loop().run_in_executor(None, wait_for, predicate, timeout, what)
    return time.monotonic() - started
