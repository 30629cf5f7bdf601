"""Scenario runner: start a server under test on one core, drive it with the swarm from the other,
step the viewer count up, and report what held (viewers, delivered/expected, lag, first frame, CPU, RSS).

    python -m loadtest scenario --server livecdn --steps 1000,2000,4000 --merge-window 0.02
    python -m loadtest scenario --server nginx   --steps 1000,2000,4000

Servers: ``livecdn`` (an origin on the load core and ONE edge process pinned to the node core; viewers
play from the edge) or ``nginx`` (nginx with the RTMP module, one process, pinned to the node core;
viewers play from it). The publisher loops a pre-encoded FLV (no encoder cost) on the load core.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import click
import psutil

from common.client import RtmpClient
from loadtest.cli import cli
from loadtest.flvfile import make_flv, read_flv, summarize
from loadtest.swarm import SwarmConfig, SwarmReport, run_swarm

NGINX_MODULES = ("/usr/lib/nginx/modules/ngx_rtmp_module.so", "/usr/lib64/nginx/modules/ngx_rtmp_module.so")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def pinned(core: int | None) -> list[str]:
    return ["taskset", "-c", str(core)] if core is not None and shutil.which("taskset") else []


@dataclass
class Server:
    """A server under test: its processes (the first is the one measured) and where viewers play."""

    kind: str
    play_url: str
    flv_url: str | None
    publish_url: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workdir: Path | None = None
    stats_url: str | None = None  # livecdn's /v1/stats of the node under test

    def stream_stats(self) -> dict[str, Any] | None:
        if self.stats_url is None:
            return None
        with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(self.stats_url, timeout=5) as response:
            for stream in json.loads(response.read())["streams"]:
                if stream["name"] == "bench":
                    return dict(stream)
        return None

    @property
    def measured(self) -> psutil.Process:
        return psutil.Process(self.procs[0].pid)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM a process we started (by PID), SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_livecdn(workdir: Path, node_core: int | None, load_core: int | None, merge_window: float) -> Server:
    env = {**os.environ, "LIVECDN_LOG_LEVEL": "warning"}
    # Only the edge under test merges writes: the origin's one viewer is the edge's pull, and a window
    # there would add its latency to every viewer's.
    edge_env = {**env, "LIVECDN_MERGE_WINDOW": str(merge_window)}
    origin_env = {**env, "LIVECDN_MERGE_WINDOW": "0"}
    origin_rtmp, origin_http, edge_rtmp, edge_http = (free_port() for _ in range(4))
    log = (workdir / "nodes.log").open("ab")
    origin = subprocess.Popen(
        [
            *pinned(load_core),
            sys.executable,
            "-m",
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
    server = Server(
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


def start_nginx(workdir: Path, node_core: int | None, chunk_size: int = 4096) -> Server:
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
    return Server("nginx", url, None, url, [proc], workdir)


EPOCH_LINE = re.compile(rb"livecdnEpochMs=(\d+)")


@contextlib.contextmanager
def publishing(flv: Path, url: str, load_core: int | None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [*pinned(load_core), sys.executable, "-m", "loadtest", "publish", str(flv), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        stop_process(proc)


@dataclass
class StepResult:
    viewers: int
    passed: bool
    why: str
    node_cpu_percent: float | None  # of one core, over the swarm's measuring interval
    load_core_percent: float | None  # how busy the load tool's core was: near 100 means the tool is the limit
    cpu_per_100_viewers: float | None
    node_rss_mb: float
    rss_per_viewer_kb: float | None
    stalled: int  # viewers that stopped reading (not part of the swarm's counts)
    server_dropped: int | None  # viewers the node disconnected for falling behind, during the step
    server_skips: int | None  # times a viewer skipped ahead to a key frame, during the step
    swarm: dict[str, Any]


class CpuSampler:
    """Samples a process's CPU time and RSS, and the load core's busy time, twice a second while a step runs."""

    def __init__(self, proc: psutil.Process, load_core: int | None) -> None:
        self.proc = proc
        self.load_core = load_core
        self.samples: list[tuple[float, float, int]] = []  # (monotonic, cpu seconds, rss)
        self.load: list[tuple[float, float]] = []  # (monotonic, busy seconds of the load core)

    def sample(self) -> None:
        now = time.monotonic()
        times = self.proc.cpu_times()
        self.samples.append((now, times.user + times.system, self.proc.memory_info().rss))
        if self.load_core is not None:
            core = psutil.cpu_times(percpu=True)[self.load_core]
            self.load.append((now, core.user + core.nice + core.system + core.irq + core.softirq))

    def load_percent(self, start: float, end: float) -> float | None:
        inside = [s for s in self.load if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        return 100.0 * (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.5)

    def cpu_percent(self, start: float, end: float) -> float | None:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        (t0, c0, _), (t1, c1, _) = inside[0], inside[-1]
        return 100.0 * (c1 - c0) / (t1 - t0)

    @property
    def peak_rss(self) -> int:
        return max((s[2] for s in self.samples), default=0)


async def stalled_viewers(url: str, count: int) -> list[RtmpClient]:
    """Viewers that start playing, then stop reading (small receive buffer, reading paused): the node must
    skip them, then cut them off, without the others noticing."""
    clients = []
    for _ in range(count):
        client = await RtmpClient.connect(url)
        sock = client.transport.get_extra_info("socket") if client.transport else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        await client.play(lambda event: None)
        if client.transport is not None:
            client.transport.pause_reading()
        clients.append(client)
    return clients


def swarm_command(
    config: SwarmConfig, json_path: Path, *, load_core: int | None, nice: int, progress: bool
) -> list[str]:
    args = [
        *(["nice", "-n", str(nice)] if nice else []),
        *pinned(load_core),
        sys.executable,
        "-m",
        "loadtest",
        "swarm",
        config.url,
        "--viewers",
        str(config.viewers),
        "--probes",
        str(config.probes),
        "--ramp",
        str(config.ramp),
        "--duration",
        str(config.duration),
        "--rcvlowat",
        str(config.rcvlowat),
        "--protocol",
        config.protocol,
        "--json",
        str(json_path),
        "--progress" if progress else "--no-progress",
    ]
    for flag, value in (
        ("--flv-url", config.flv_url),
        ("--bitrate-kbps", config.bitrate_kbps),
        ("--epoch-ms", config.epoch_ms),
        ("--rcvbuf", config.rcvbuf),
    ):
        if value is not None:
            args += [flag, str(value)]
    return args


def merge_reports(counting: SwarmReport, probing: SwarmReport) -> SwarmReport:
    """Viewers and delivery from the counting swarm; lag and first frame from the probes' own process."""
    return replace(
        counting,
        viewers_target=counting.viewers_target + probing.viewers_target,
        viewers_connected=counting.viewers_connected + probing.viewers_connected,
        viewers_failed=counting.viewers_failed + probing.viewers_failed,
        viewers_dropped=counting.viewers_dropped + probing.viewers_dropped,
        probes_target=probing.probes_target,
        probes_connected=probing.probes_connected,
        lag_samples=probing.lag_samples,
        lag_p50_ms=probing.lag_p50_ms,
        lag_p95_ms=probing.lag_p95_ms,
        lag_max_ms=probing.lag_max_ms,
        lag_note=probing.lag_note,
        first_frame_samples=probing.first_frame_samples,
        first_frame_p50_ms=probing.first_frame_p50_ms,
        first_frame_p95_ms=probing.first_frame_p95_ms,
        first_frame_max_ms=probing.first_frame_max_ms,
    )


async def run_swarms(config: SwarmConfig, load_core: int | None, workdir: Path) -> SwarmReport:
    """The counting viewers in one process, niced, and the probes in another, so a probe's frames are not
    queued behind thousands of other sockets in the tool's own event loop (which would count as lag)."""
    counting_cfg = replace(config, viewers=config.viewers - config.probes, probes=0)
    probe_cfg = replace(config, viewers=config.probes, probes=config.probes, ramp=max(1.0, config.probes))
    counting_json, probe_json = workdir / "counting.json", workdir / "probes.json"
    counting = await asyncio.create_subprocess_exec(
        *swarm_command(counting_cfg, counting_json, load_core=load_core, nice=10, progress=True)
    )
    probing = await asyncio.create_subprocess_exec(
        *swarm_command(probe_cfg, probe_json, load_core=load_core, nice=0, progress=False),
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.gather(counting.wait(), probing.wait())
    finally:
        for proc in (counting, probing):
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
    if not counting_json.exists() or not probe_json.exists():
        raise click.ClickException(f"a swarm process failed (exit {counting.returncode}, {probing.returncode})")
    return merge_reports(
        SwarmReport(**json.loads(counting_json.read_text())), SwarmReport(**json.loads(probe_json.read_text()))
    )


async def run_step(
    server: Server, config: SwarmConfig, criteria: Criteria, load_core: int | None, workdir: Path, stalled: int = 0
) -> StepResult:
    sampler = CpuSampler(server.measured, load_core)
    sampler.sample()
    rss_before = sampler.samples[0][2]
    task = asyncio.create_task(sampler.run())
    started = time.monotonic()
    before = server.stream_stats() or {}
    stalls: list[RtmpClient] = []

    async def stall_after_ramp() -> None:
        await asyncio.sleep(config.viewers / config.ramp + 2)
        stalls.extend(await stalled_viewers(config.url, stalled))

    staller = asyncio.create_task(stall_after_ramp()) if stalled else None
    try:
        if config.probes and config.bitrate_kbps is not None:
            report = await run_swarms(config, load_core, workdir)
        else:
            report = await run_swarm(config, progress=True)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if staller is not None:
            staller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await staller
    after = server.stream_stats() or {}
    for client in stalls:
        client.close()
    interval_start = started + (report.ramp_seconds or config.duration)
    cpu = sampler.cpu_percent(interval_start, interval_start + report.interval_seconds)
    load = sampler.load_percent(interval_start, interval_start + report.interval_seconds)
    rss = sampler.peak_rss
    held = report.viewers_connected - report.viewers_dropped
    passed, why = criteria.judge(report)
    return StepResult(
        viewers=config.viewers,
        passed=passed,
        why=why,
        node_cpu_percent=round(cpu, 1) if cpu is not None else None,
        load_core_percent=round(load, 1) if load is not None else None,
        cpu_per_100_viewers=round(cpu * 100 / held, 2) if cpu is not None and held else None,
        node_rss_mb=round(rss / 2**20, 1),
        rss_per_viewer_kb=round((rss - rss_before) / 1024 / held, 1) if held else None,
        stalled=stalled,
        server_dropped=after.get("viewers_dropped", 0) - before.get("viewers_dropped", 0) if after else None,
        server_skips=after.get("viewer_skips", 0) - before.get("viewer_skips", 0) if after else None,
        swarm=asdict(report),
    )


@dataclass(frozen=True)
class Criteria:
    min_delivered: float = 0.99
    max_lag_p95_ms: float = 500.0

    def judge(self, report: SwarmReport) -> tuple[bool, str]:
        if report.viewers_connected < report.viewers_target:
            return False, f"{report.viewers_target - report.viewers_connected} viewers never played"
        if report.viewers_dropped:
            return False, f"{report.viewers_dropped} viewers dropped"
        if report.delivered_ratio is None or report.delivered_ratio < self.min_delivered:
            return False, f"delivered/expected {report.delivered_ratio} < {self.min_delivered}"
        if report.lag_p95_ms is None or report.lag_p95_ms > self.max_lag_p95_ms:
            return False, f"lag p95 {report.lag_p95_ms} ms > {self.max_lag_p95_ms} ms"
        return True, "ok"


def print_table(server: str, window: float | None, results: list[StepResult]) -> None:
    label = server if window is None else f"{server} (merge window {window * 1000:g} ms)"
    print(f"\n{label}")
    header = (
        f"{'viewers':>8} {'held':>6} {'deliv':>6} {'lag p50':>8} {'lag p95':>8} {'lag max':>8} "
        f"{'ff p50':>7} {'ff p95':>7} {'cpu%':>6} {'cpu/100':>8} {'load%':>6} {'rss MB':>7} {'KB/view':>8} "
        f"{'cut':>4} {'skips':>5}  result"
    )
    print(header)

    def fmt(value: Any, digits: int = 0) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for r in results:
        s = r.swarm
        held = s["viewers_connected"] - s["viewers_dropped"]
        print(
            f"{r.viewers:>8} {held:>6} {fmt(s['delivered_ratio'], 3):>6} {fmt(s['lag_p50_ms']):>8} "
            f"{fmt(s['lag_p95_ms']):>8} {fmt(s['lag_max_ms']):>8} {fmt(s['first_frame_p50_ms']):>7} "
            f"{fmt(s['first_frame_p95_ms']):>7} {fmt(r.node_cpu_percent, 1):>6} "
            f"{fmt(r.cpu_per_100_viewers, 2):>8} {fmt(r.load_core_percent, 0):>6} "
            f"{r.node_rss_mb:>7.1f} {fmt(r.rss_per_viewer_kb, 1):>8} "
            f"{fmt(r.server_dropped):>4} {fmt(r.server_skips):>5}  "
            f"{'PASS' if r.passed else 'FAIL: ' + r.why}"
        )
    best = max((r.viewers for r in results if r.passed), default=0)
    print(f"max viewers held within the criteria: {best}")


async def run_scenario(
    server_kind: str,
    steps: list[int],
    *,
    flv: Path,
    merge_window: float,
    duration: float,
    ramp: float,
    probes: int,
    node_core: int | None,
    load_core: int | None,
    criteria: Criteria,
    rcvlowat: int,
    rcvbuf: int | None,
    bitrate_kbps: float | None,
    keep_going: bool,
    stalled: int,
    protocol: str,
) -> list[StepResult]:
    workdir = Path(tempfile.mkdtemp(prefix=f"livecdn-bench-{server_kind}-"))
    if server_kind == "livecdn":
        server = start_livecdn(workdir, node_core, load_core, merge_window)
    else:
        server = start_nginx(workdir, node_core)
    results: list[StepResult] = []
    try:
        with publishing(flv, server.publish_url, load_core) as publisher:
            assert publisher.stdout is not None
            first_line = await asyncio.to_thread(publisher.stdout.readline)
            found = EPOCH_LINE.search(first_line)
            if found is None:
                err = publisher.stderr.read().decode() if publisher.stderr else ""
                raise click.ClickException(f"the publisher did not start: {first_line!r} {err[-2000:]}")
            epoch_ms = float(found.group(1))  # nginx-rtmp drops it from onMetaData: the probes get it here
            await asyncio.sleep(3)
            for viewers in steps:
                config = SwarmConfig(
                    url=server.play_url,
                    viewers=viewers,
                    ramp=ramp,
                    duration=viewers / ramp + duration,
                    protocol=protocol if server.flv_url else "rtmp",
                    probes=probes,
                    bitrate_kbps=bitrate_kbps,
                    rcvlowat=rcvlowat,
                    rcvbuf=rcvbuf,
                    flv_url=server.flv_url,
                    epoch_ms=epoch_ms,
                )
                print(f"\n== {server_kind}: {viewers} viewers ==", file=sys.stderr, flush=True)
                result = await run_step(server, config, criteria, load_core, workdir, stalled)
                results.append(result)
                print(f"   -> {'PASS' if result.passed else 'FAIL: ' + result.why}", file=sys.stderr, flush=True)
                if not result.passed and not keep_going:
                    break
                await asyncio.sleep(3)  # let the server settle between steps
    finally:
        server.stop()
    return results


@cli.command("scenario")
@click.option(
    "--server",
    "servers",
    type=click.Choice(["livecdn", "nginx"]),
    multiple=True,
    default=["livecdn"],
    show_default=True,
    help="server(s) under test; give both to compare in one run",
)
@click.option("--steps", default="500,1000,2000,3000,4000", show_default=True, help="viewer counts to step through")
@click.option(
    "--merge-window",
    "windows",
    default="0.02",
    show_default=True,
    help="livecdn merge window(s) in seconds, comma-separated for a curve",
)
@click.option("--duration", type=float, default=15.0, show_default=True, help="steady seconds per step (after ramp)")
@click.option("--ramp", type=float, default=500.0, show_default=True, help="viewers started per second")
@click.option("--probes", type=int, default=5, show_default=True)
@click.option(
    "--flv",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="pre-encoded FLV to loop (default: made once: 720p30, 2 Mbit/s, 2 s GOP)",
)
@click.option("--bitrate-kbps", type=float, default=None, help="expected bitrate (default: the FLV file's own)")
@click.option("--node-core", type=int, default=0, show_default=True, help="core the server under test is pinned to")
@click.option("--load-core", type=int, default=1, show_default=True, help="core for the swarm and publisher")
@click.option("--max-lag-p95", type=float, default=500.0, show_default=True, help="pass criterion, ms")
@click.option("--min-delivered", type=float, default=0.99, show_default=True, help="pass criterion")
@click.option("--rcvlowat", type=int, default=64 * 1024, show_default=True, help="SO_RCVLOWAT of counting viewers")
@click.option("--rcvbuf", type=int, default=None, help="SO_RCVBUF of viewer sockets (default: kernel autotuning)")
@click.option("--protocol", type=click.Choice(["rtmp", "flv", "mixed"]), default="rtmp", show_default=True)
@click.option("--keep-going", is_flag=True, help="run every step even after one fails")
@click.option(
    "--stalled",
    type=click.IntRange(0, 100),
    default=0,
    show_default=True,
    help="extra viewers that stop reading after the ramp (slow-viewer run)",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def scenario(
    servers: tuple[str, ...],
    steps: str,
    windows: str,
    duration: float,
    ramp: float,
    probes: int,
    flv: Path | None,
    bitrate_kbps: float | None,
    node_core: int,
    load_core: int,
    max_lag_p95: float,
    min_delivered: float,
    rcvlowat: int,
    rcvbuf: int | None,
    protocol: str,
    keep_going: bool,
    stalled: int,
    json_path: Path | None,
) -> None:
    """Step up viewers against livecdn and/or nginx-rtmp on one core and report what each holds."""
    counts = [int(x) for x in steps.split(",") if x.strip()]
    if not counts or any(c <= 0 or c > 20000 for c in counts):
        raise click.BadParameter("viewer counts must be between 1 and 20000", param_hint="--steps")
    if flv is None:
        flv = Path(tempfile.gettempdir()) / "livecdn-bench-720p30-2000k-gop2.flv"
        if not flv.exists():
            print(f"making {flv} (720p30, 2 Mbit/s, 2 s GOP)...", file=sys.stderr)
            make_flv(flv, seconds=30, bitrate_kbps=2000, gop_seconds=2, fps=30, size="1280x720")
    if bitrate_kbps is None:
        bitrate_kbps = round(summarize(read_flv(flv)).kbps, 1)  # audio + video payload; wire framing adds ~0.5%
    with contextlib.suppress(OSError, ValueError):
        if load_core is not None:
            os.sched_setaffinity(0, {load_core})  # the swarm (this process) stays off the node's core
    criteria = Criteria(min_delivered=min_delivered, max_lag_p95_ms=max_lag_p95)
    runs: list[dict[str, Any]] = []
    for kind in servers:
        for window in [float(w) for w in windows.split(",")] if kind == "livecdn" else [None]:
            results = asyncio.run(
                run_scenario(
                    kind,
                    counts,
                    flv=flv,
                    merge_window=window or 0.0,
                    duration=duration,
                    ramp=ramp,
                    probes=probes,
                    node_core=node_core,
                    load_core=load_core,
                    criteria=criteria,
                    rcvlowat=rcvlowat,
                    rcvbuf=rcvbuf,
                    bitrate_kbps=bitrate_kbps,
                    keep_going=keep_going,
                    stalled=stalled,
                    protocol=protocol,
                )
            )
            print_table(kind, window, results)
            runs.append(
                {
                    "server": kind,
                    "merge_window": window,
                    "steps": [asdict(r) for r in results],
                    "max_viewers": max((r.viewers for r in results if r.passed), default=0),
                }
            )
    summary = {
        "machine": {
            "cpus": os.cpu_count(),
            "node_core": node_core,
            "load_core": load_core,
            "python": sys.version.split()[0],
        },
        "criteria": asdict(criteria),
        "ramp": ramp,
        "steady_seconds": duration,
        "rcvlowat": rcvlowat,
        "rcvbuf": rcvbuf,
        "runs": runs,
    }
    if json_path:
        json_path.write_text(json.dumps(summary, indent=2))
        print(f"\nwrote {json_path}")
