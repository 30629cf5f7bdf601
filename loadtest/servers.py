"""The processes a scenario starts: the server under test (livecdn origin + edge, or nginx-rtmp), each
pinned to its core, and the looping publisher feeding it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import click
import psutil

from common.system import free_port, stop_process, wait_listening

NGINX_MODULES: Final = ("/usr/lib/nginx/modules/ngx_rtmp_module.so", "/usr/lib64/nginx/modules/ngx_rtmp_module.so")
STOP_TIMEOUT_S: Final = 10.0  # SIGTERM grace before SIGKILL
EPOCH_LINE: Final = re.compile(rb"livecdnEpochMs=(\d+)")  # in the publisher's first line of output


def pinned(core: int | None) -> list[str]:
    """Run on ``core``; None: on every core of the machine. Said explicitly, because the scenario pins
    itself to the load core and its children would otherwise inherit that."""
    if not shutil.which("taskset"):
        return []
    cores = str(core) if core is not None else f"0-{(os.cpu_count() or 1) - 1}"
    return ["taskset", "-c", cores]


@dataclass
class ServerUnderTest:
    """A server under test: its processes (the first is the one measured) and where viewers play."""

    kind: str
    play_url: str
    flv_url: str | None
    publish_url: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workdir: Path | None = None
    stats_url: str | None = None  # livecdn's /v1/stats of the node under test

    def stats(self) -> dict[str, Any] | None:
        """livecdn's /v1/stats of the node under test (None for other servers, or when it does not answer)."""
        if self.stats_url is None:
            return None
        with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(self.stats_url, timeout=5) as response:
            return dict(json.loads(response.read()))
        return None

    def stream_stats(self) -> dict[str, Any] | None:
        stats = self.stats()
        for stream in stats["streams"] if stats else []:
            if stream["name"] == "bench":
                return dict(stream)
        return None

    @property
    def measured(self) -> psutil.Process:
        return psutil.Process(self.procs[0].pid)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc, STOP_TIMEOUT_S)


def start_livecdn(
    workdir: Path, node_core: int | None, load_core: int | None, merge_window: float | None, workers: int = 1
) -> ServerUnderTest:
    """An origin on the load core and the edge under test (``merge_window`` None: its adaptive default)."""
    # A benchmark: open publishing, and thousands of viewers from one address with no connection limit.
    env = {
        **os.environ,
        "LIVECDN_LOG_LEVEL": "warning",
        "LIVECDN_OPEN_PUBLISH": "true",
        "LIVECDN_MAX_CONNECTIONS": "0",
        "LIVECDN_MAX_CONNECTIONS_PER_IP": "0",
    }
    # Only the edge under test merges writes: the origin's one viewer is the edge's pull, and a window
    # there would add its latency to every viewer's.
    edge_env = {**env, "LIVECDN_WORKERS": str(workers)}
    if merge_window is not None:
        edge_env["LIVECDN_MERGE_WINDOW"] = str(merge_window)
    origin_env = {**env, "LIVECDN_MERGE_WINDOW": "0"}
    origin_rtmp, origin_http, edge_rtmp, edge_http = (free_port() for _ in range(4))
    log = (workdir / "nodes.log").open("ab")
    origin = subprocess.Popen(
        [
            *pinned(load_core),
            sys.executable,
            "-m",
            "livecdn",
            "origin",
            "--rtmp",
            f"127.0.0.1:{origin_rtmp}",
            "--http",
            f"127.0.0.1:{origin_http}",
        ],
        env=origin_env,
        stdout=log,
        stderr=log,
    )
    edge = subprocess.Popen(
        [
            *pinned(node_core),
            sys.executable,
            "-m",
            "livecdn",
            "edge",
            "--rtmp",
            f"127.0.0.1:{edge_rtmp}",
            "--http",
            f"127.0.0.1:{edge_http}",
            "--upstream",
            f"rtmp://127.0.0.1:{origin_rtmp}/live",
            "--idle-grace",
            "30",
        ],
        env=edge_env,
        stdout=log,
        stderr=log,
    )
    server = ServerUnderTest(
        "livecdn",
        f"rtmp://127.0.0.1:{edge_rtmp}/live/bench",
        f"http://127.0.0.1:{edge_http}/live/bench.flv",
        f"rtmp://127.0.0.1:{origin_rtmp}/live/bench",
        [edge, origin],
        workdir,
        stats_url=f"http://127.0.0.1:{edge_http}/v1/stats",
    )
    wait_listening(origin_rtmp)
    wait_listening(edge_rtmp)
    return server


def start_nginx(workdir: Path, node_core: int | None, chunk_size: int = 4096) -> ServerUnderTest:
    module = next((m for m in NGINX_MODULES if Path(m).exists()), None)
    if shutil.which("nginx") is None or module is None:
        raise click.ClickException(
            "nginx with the RTMP module is not installed (Debian: nginx-light libnginx-mod-rtmp)"
        )
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"load_module {module};\ndaemon off;\nmaster_process off;\nworker_processes 1;\n"
        f"error_log {workdir}/nginx-error.log warn;\npid {workdir}/nginx.pid;\n"
        "worker_rlimit_nofile 65536;\nevents { worker_connections 32768; }\n"
        f"rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size {chunk_size};\n"
        "  application live { live on; } } }\n"
    )
    proc = subprocess.Popen(
        [*pinned(node_core), "nginx", "-p", str(workdir), "-e", str(workdir / "nginx-error.log"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port)
    url = f"rtmp://127.0.0.1:{port}/live/bench"
    return ServerUnderTest("nginx", url, None, url, [proc], workdir)


@contextlib.contextmanager
def publishing(flv: Path, url: str, load_core: int | None) -> Iterator[subprocess.Popen[bytes]]:
    """``loadtest publish`` looping ``flv`` to ``url`` as a subprocess while the block runs."""
    proc = subprocess.Popen(
        [*pinned(load_core), sys.executable, "-m", "loadtest", "publish", str(flv), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        stop_process(proc, STOP_TIMEOUT_S)
