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
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from common.serving.client import RtmpClient
from loadtest.cli import cli
from loadtest.flvfile import make_flv, read_flv, summarize
from loadtest.sampling import CpuSampler
from loadtest.scenario_report import StepResult, print_table
from loadtest.servers import EPOCH_LINE, ServerUnderTest, publishing, start_livecdn, start_nginx
from loadtest.swarm import run_swarm
from loadtest.swarm_config import MAX_VIEWERS, SwarmConfig
from loadtest.swarm_processes import run_swarms
from loadtest.swarm_report import SwarmReport


@dataclass(frozen=True)
class PassCriteria:
    """When a step passes: every viewer played and held, enough was delivered, lag p95 low enough."""

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


@dataclass(frozen=True, kw_only=True)
class ScenarioConfig:
    """One scenario run: one server under test, stepped through viewer counts (what ``--server``,
    ``--merge-window`` and the other ``scenario`` options ask for, one server and window at a time)."""

    server_kind: str  # livecdn | nginx
    steps: tuple[int, ...]  # viewer counts, in order
    flv: Path  # the pre-encoded FLV the publisher loops
    merge_window: float | None  # livecdn's edge merge window, seconds; None: adaptive (unused for nginx)
    duration: float  # steady seconds per step, after the ramp and the settle time
    settle: float  # seconds between the ramp and the measuring interval (a GOP: see SwarmConfig.settle)
    ramp: float  # viewers started per second
    probes: int
    node_core: int | None  # core the server under test is pinned to
    load_core: int | None  # core of the swarm and the publisher
    criteria: PassCriteria
    rcvlowat: int
    rcvbuf: int | None
    bitrate_kbps: float | None
    keep_going: bool  # run every step even after one fails
    stalled: int  # extra viewers that stop reading after the ramp
    protocol: str  # rtmp | flv | mixed (servers without HTTP-FLV get rtmp)
    workers: int = 1  # livecdn's edge --workers (more than 1: not pinned, it takes every core)

    def swarm_config(self, server: ServerUnderTest, viewers: int, epoch_ms: float) -> SwarmConfig:
        """The swarm of one step against ``server``."""
        return SwarmConfig(
            url=server.play_url,
            viewers=viewers,
            ramp=self.ramp,
            duration=viewers / self.ramp + self.settle + self.duration,
            settle=self.settle,
            protocol=self.protocol if server.flv_url else "rtmp",
            probes=self.probes,
            bitrate_kbps=self.bitrate_kbps,
            rcvlowat=self.rcvlowat,
            rcvbuf=self.rcvbuf,
            flv_url=server.flv_url,
            epoch_ms=epoch_ms,
        )


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


async def run_step(
    server: ServerUnderTest,
    config: SwarmConfig,
    criteria: PassCriteria,
    load_core: int | None,
    workdir: Path,
    stalled: int = 0,
    node_core: int | None = None,
) -> StepResult:
    sampler = CpuSampler(server.measured, load_core, node_core)
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
    node_after = (server.stats() or {}).get("node", {})
    for client in stalls:
        client.close()
    interval_start = started + (report.measure_offset_s or config.duration)
    cpu = sampler.cpu_percent(interval_start, interval_start + report.interval_seconds)
    load = sampler.load_percent(interval_start, interval_start + report.interval_seconds)
    core = sampler.node_core_percent(interval_start, interval_start + report.interval_seconds)
    user = sampler.user_percent(interval_start, interval_start + report.interval_seconds)
    rss = sampler.peak_rss
    held = report.viewers_connected - report.viewers_dropped
    passed, why = criteria.judge(report)
    return StepResult(
        viewers=config.viewers,
        passed=passed,
        why=why,
        node_cpu_percent=round(cpu, 1) if cpu is not None else None,
        load_core_percent=round(load, 1) if load is not None else None,
        node_core_percent=round(core, 1) if core is not None else None,
        node_user_percent=round(user, 1) if user is not None else None,
        cpu_per_100_viewers=round(cpu * 100 / held, 2) if cpu is not None and held else None,
        node_rss_mb=round(rss / 2**20, 1),
        rss_per_viewer_kb=round((rss - rss_before) / 1024 / held, 1) if held else None,
        stalled=stalled,
        server_dropped=after.get("viewers_dropped", 0) - before.get("viewers_dropped", 0) if after else None,
        server_skips=after.get("viewer_skips", 0) - before.get("viewer_skips", 0) if after else None,
        merge_window=node_after.get("merge_window"),
        swarm=asdict(report),
    )


async def run_scenario(config: ScenarioConfig) -> list[StepResult]:
    workdir = Path(tempfile.mkdtemp(prefix=f"livecdn-bench-{config.server_kind}-"))
    if config.server_kind == "livecdn":
        server = start_livecdn(workdir, config.node_core, config.load_core, config.merge_window, workers=config.workers)
    else:
        server = start_nginx(workdir, config.node_core)
    results: list[StepResult] = []
    try:
        with publishing(config.flv, server.publish_url, config.load_core) as publisher:
            assert publisher.stdout is not None
            first_line = await asyncio.to_thread(publisher.stdout.readline)
            found = EPOCH_LINE.search(first_line)
            if found is None:
                err = publisher.stderr.read().decode() if publisher.stderr else ""
                raise click.ClickException(f"the publisher did not start: {first_line!r} {err[-2000:]}")
            epoch_ms = float(found.group(1))  # nginx-rtmp drops it from onMetaData: the probes get it here
            await asyncio.sleep(3)
            for viewers in config.steps:
                swarm = config.swarm_config(server, viewers, epoch_ms)
                print(f"\n== {config.server_kind}: {viewers} viewers ==", file=sys.stderr, flush=True)
                result = await run_step(
                    server, swarm, config.criteria, config.load_core, workdir, config.stalled, config.node_core
                )
                results.append(result)
                print(f"   -> {'PASS' if result.passed else 'FAIL: ' + result.why}", file=sys.stderr, flush=True)
                if not result.passed and not config.keep_going:
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
    default="adaptive",
    show_default=True,
    help="livecdn's edge merge window(s): seconds or 'adaptive' (its default), comma-separated for a curve",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="livecdn's edge worker processes; above 1 the edge is not pinned and shares every core with the load",
)
@click.option("--duration", type=float, default=15.0, show_default=True, help="steady seconds per step (after ramp)")
@click.option("--ramp", type=float, default=500.0, show_default=True, help="viewers started per second")
@click.option(
    "--settle",
    type=click.FloatRange(0, 60),
    default=2.5,
    show_default=True,
    help="s after the ramp before measuring: longer than a GOP, as nginx-rtmp starts viewers at a key frame",
)
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
    settle: float,
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
    workers: int,
) -> None:
    """Step up viewers against livecdn and/or nginx-rtmp on one core and report what each holds."""
    counts = [int(x) for x in steps.split(",") if x.strip()]
    if not counts or any(c <= 0 or c > MAX_VIEWERS for c in counts):
        raise click.BadParameter(f"viewer counts must be between 1 and {MAX_VIEWERS}", param_hint="--steps")
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
    criteria = PassCriteria(min_delivered=min_delivered, max_lag_p95_ms=max_lag_p95)
    try:
        window_list = [None if w.strip() == "adaptive" else float(w) for w in windows.split(",") if w.strip()]
    except ValueError:
        raise click.BadParameter("seconds or 'adaptive', comma-separated", param_hint="--merge-window") from None
    runs: list[dict[str, Any]] = []
    for kind in servers:
        for window in window_list if kind == "livecdn" else [None]:
            config = ScenarioConfig(
                server_kind=kind,
                steps=tuple(counts),
                flv=flv,
                merge_window=window,
                duration=duration,
                settle=settle,
                ramp=ramp,
                probes=probes,
                node_core=node_core if kind != "livecdn" or workers == 1 else None,
                load_core=load_core,
                criteria=criteria,
                rcvlowat=rcvlowat,
                rcvbuf=rcvbuf,
                bitrate_kbps=bitrate_kbps,
                keep_going=keep_going,
                stalled=stalled,
                protocol=protocol,
                workers=workers if kind == "livecdn" else 1,
            )
            results = asyncio.run(run_scenario(config))
            label = kind if kind != "livecdn" else f"livecdn, {workers} worker{'s' if workers > 1 else ''}"
            print_table(label, window if kind == "livecdn" else "n/a", results)
            runs.append(
                {
                    "server": kind,
                    "merge_window": window if kind == "livecdn" else None,
                    "merge_window_mode": ("adaptive" if window is None else "fixed") if kind == "livecdn" else None,
                    "workers": workers if kind == "livecdn" else None,
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
        "settle_seconds": settle,
        "rcvlowat": rcvlowat,
        "rcvbuf": rcvbuf,
        "runs": runs,
    }
    if json_path:
        json_path.write_text(json.dumps(summary, indent=2))
        print(f"\nwrote {json_path}")
