"""``python -m loadtest``: make-flv, publish, swarm.

The click group ``cli`` lives here so other modules can add subcommands: ``loadtest/scenario.py``
(if present) does ``from loadtest.cli import cli`` and ``@cli.command()``; ``__main__`` imports it
before running the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop when installed; SIGINT/SIGTERM cancel it (so it closes what it opened)."""
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_cancel_on_signals(coro))


async def _cancel_on_signals(coro: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, task.cancel)
            installed.append(sig)
    try:
        return await task
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """livecdn load testing: a pre-encoded test FLV, a looping publisher, a viewer swarm."""


@cli.command("make-flv")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--bitrate", "bitrate_kbps", type=click.IntRange(50, 200_000), default=2000, show_default=True, help="video kbit/s"
)
@click.option("--seconds", type=click.FloatRange(0.5, 3600), default=20, show_default=True)
@click.option(
    "--gop", "gop_seconds", type=click.FloatRange(0.1, 60), default=2, show_default=True, help="key frame every S"
)
@click.option("--fps", type=click.IntRange(1, 240), default=30, show_default=True)
@click.option("--size", default="1280x720", show_default=True, help="WIDTHxHEIGHT")
def make_flv_command(out: Path, bitrate_kbps: int, seconds: float, gop_seconds: float, fps: int, size: str) -> None:
    """Encode a test-pattern H.264/AAC FLV with ffmpeg (testsrc2 + sine, fixed GOP, ~constant bitrate)."""
    from loadtest.flvfile import make_flv, parse_size, read_flv, summarize

    try:
        parse_size(size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--size") from None
    try:
        make_flv(out, seconds=seconds, bitrate_kbps=bitrate_kbps, gop_seconds=gop_seconds, fps=fps, size=size)
    except (RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    info = summarize(read_flv(out))
    click.echo(
        f"{out}: {info.duration_ms / 1000:.1f} s, {info.video_tags} video + {info.audio_tags} audio tags, "
        f"{info.kbps:.0f} kbit/s (audio + video payload)"
    )


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("url")
@click.option(
    "--duration", type=click.FloatRange(min=0, min_open=True), default=None, help="seconds (default: forever)"
)
@click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True)
def publish(file: Path, url: str, duration: float | None, connect_timeout: float) -> None:
    """Loop FILE (FLV) to URL (rtmp://host:port/app/name) in real time, with no encoder."""
    from common.serving.client import RtmpClientError
    from loadtest.flvfile import FlvError
    from loadtest.publisher import LoopedFlv, PublishError, PublishStats, publish_flv

    try:
        flv = LoopedFlv.read(file)
    except (FlvError, PublishError) as exc:
        raise click.ClickException(str(exc)) from None

    running: list[PublishStats] = []

    def started(stats: PublishStats) -> None:
        running.append(stats)
        click.echo(f"publishing {file} to {url} (livecdnEpochMs={stats.epoch_ms:.0f}, loop {flv.period_ms} ms)")
        sys.stdout.flush()

    async def main() -> None:
        try:
            stats = await publish_flv(flv, url, duration=duration, connect_timeout=connect_timeout, on_started=started)
        except asyncio.CancelledError:
            click.echo("publisher stopped" + (f": {running[0].summary()}" if running else ""))
            raise
        click.echo(stats.summary())

    try:
        run_async(main())
    except asyncio.CancelledError:
        pass
    except (RtmpClientError, PublishError, OSError, TimeoutError, ValueError) as exc:
        raise click.ClickException(f"publish failed: {exc or type(exc).__name__}") from None


@cli.command()
@click.argument("url")
@click.option("--viewers", type=click.IntRange(1, 20_000), default=100, show_default=True)
@click.option("--ramp", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True, help="viewers/s")
@click.option(
    "--duration", type=click.FloatRange(0, 3600, min_open=True), default=30.0, show_default=True, help="total s"
)
@click.option("--flv-url", default=None, help="http://host:port/app/name.flv for --protocol flv/mixed")
@click.option("--protocol", type=click.Choice(["rtmp", "flv", "mixed"]), default=None, help="default: from URL")
@click.option("--probes", type=click.IntRange(0, 100), default=5, show_default=True)
@click.option("--bitrate-kbps", type=click.FloatRange(min=0, min_open=True), default=None, help="default: measured")
@click.option("--rcvlowat", type=click.IntRange(0, 16 * 1024 * 1024), default=64 * 1024, show_default=True)
@click.option("--rcvbuf", type=click.IntRange(4096, 64 * 1024 * 1024), default=None, help="default: kernel's")
@click.option("--connect-timeout", type=click.FloatRange(0, 120, min_open=True), default=10.0, show_default=True)
@click.option(
    "--settle",
    type=click.FloatRange(0, 60),
    default=0.0,
    show_default=True,
    help="s between the ramp and the measuring interval: a GOP or more for servers without a GOP cache",
)
@click.option(
    "--epoch-ms", type=float, default=None, help="publisher epoch for lag when the server drops it from metadata"
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--progress/--no-progress", default=True, show_default=True)
def swarm(
    url: str,
    viewers: int,
    ramp: float,
    duration: float,
    flv_url: str | None,
    protocol: str | None,
    probes: int,
    bitrate_kbps: float | None,
    rcvlowat: int,
    rcvbuf: int | None,
    connect_timeout: float,
    settle: float,
    epoch_ms: float | None,
    json_path: Path | None,
    progress: bool,
) -> None:
    """Run a viewer swarm against URL (rtmp://host:port/app/name, or http://.../name.flv) and report."""
    from loadtest.swarm import run_swarm
    from loadtest.swarm_config import SwarmConfig

    if protocol is None:
        protocol = "flv" if url.startswith("http://") else "rtmp"
    try:
        config = SwarmConfig(
            url=url,
            viewers=viewers,
            ramp=ramp,
            duration=duration,
            protocol=protocol,
            probes=probes,
            bitrate_kbps=bitrate_kbps,
            rcvlowat=rcvlowat,
            rcvbuf=rcvbuf,
            connect_timeout=connect_timeout,
            settle=settle,
            flv_url=flv_url,
            epoch_ms=epoch_ms,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        report = run_async(run_swarm(config, progress=progress))
    except asyncio.CancelledError:
        raise click.ClickException("swarm interrupted") from None
    except OSError as exc:
        raise click.ClickException(f"swarm failed: {exc}") from None
    click.echo(report.table())
    if json_path is not None:
        report.write_json(json_path)
        click.echo(f"report written to {json_path}")
    if report.viewers_connected == 0:
        sys.exit(1)


@cli.command()
@click.option("--viewers", type=click.IntRange(1, 10_000_000), default=1_000_000, show_default=True)
@click.option("--streams", type=click.IntRange(1, 1_000_000), default=1000, show_default=True)
@click.option("--zipf", type=click.FloatRange(0, 5), default=1.0, show_default=True, help="popularity exponent")
@click.option("--edges", type=click.IntRange(1, 100_000), default=200, show_default=True)
@click.option("--regions", type=click.IntRange(1, 8), default=5, show_default=True)
@click.option("--mid-tier", type=click.IntRange(0, 1000), default=4, show_default=True, help="per region; 0: none")
@click.option("--replicas", type=click.IntRange(1, 100), default=2, show_default=True, help="control-plane replicas")
@click.option("--duration", type=click.FloatRange(2, 3600), default=60.0, show_default=True, help="s of joins")
@click.option("--burst-share", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="in flash crowds")
@click.option("--watch-mean", type=click.FloatRange(1, 1e6), default=300.0, show_default=True, help="s watched")
@click.option("--epsilon", type=click.FloatRange(0, 10), default=0.25, show_default=True)
@click.option("--connect-delay", type=click.FloatRange(0, 10), default=0.2, show_default=True)
@click.option("--pending/--no-pending", default=True, show_default=True, help="count routed, unreported viewers")
@click.option("--shared/--per-replica", default=True, show_default=True, help="replicas share those counts")
@click.option(
    "--balancer",
    type=click.Choice(["round-robin", "stream"]),
    default="round-robin",
    show_default=True,
    help="how requests reach the replicas (stream: hashed on the stream's name)",
)
@click.option("--lag", type=click.FloatRange(0, 10), default=0.3, show_default=True, help="pending_lag, s")
@click.option("--outage", default=None, help="REGION:START:END: that region's edges drain meanwhile")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def simulate(json_path: Path | None, **options: Any) -> None:
    """Simulate the cluster at scale: viewers routed one by one by the real routing code (no network)."""
    from loadtest.simulate import simulate as run
    from loadtest.simulate_config import SimConfig

    try:
        config = SimConfig(**options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    report = run(config, progress=lambda line: click.echo(line, err=True))
    click.echo(report.table())
    if json_path is not None:
        report.write_json(json_path)
        click.echo(f"report written to {json_path}")


@cli.command("heartbeat-edges")
@click.argument("registry")
@click.option("--edges", type=click.IntRange(1, 10_000), default=3, show_default=True)
@click.option("--regions", type=click.IntRange(1, 8), default=1, show_default=True)
@click.option("--duration", type=click.FloatRange(1, 3600), default=60.0, show_default=True, help="seconds")
def heartbeat_edges(registry: str, edges: int, regions: int, duration: float) -> None:
    """Register EDGES fake edges in REGISTRY (redis://...) and heartbeat them every second, for routing
    benchmarks of the control plane (no media: their addresses lead nowhere)."""
    from loadtest.fake_edges import heartbeat_fake_edges

    try:
        run_async(heartbeat_fake_edges(registry, edges, regions, duration))
    except asyncio.CancelledError:
        pass


@cli.command("browser-latency")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "formats", type=click.Choice(["flv", "hls"]), multiple=True, default=("flv", "hls"))
@click.option("--seconds", type=click.FloatRange(1, 60), default=15.0, show_default=True, help="sampling per format")
@click.option("--interval", type=click.FloatRange(0.05, 5), default=0.2, show_default=True, help="s between samples")
@click.option("--settle", type=click.FloatRange(0, 30), default=3.0, show_default=True, help="s before the browser")
def browser_latency(file: Path, formats: tuple[str, ...], seconds: float, interval: float, settle: float) -> None:
    """Glass-to-glass latency of the /watch page (mpegts.js, hls.js) in headless Chromium, publishing FILE."""
    from loadtest.browser_latency import run, table

    try:
        results = run(file, list(formats), seconds, interval, settle)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(table(results))


@cli.command("hls-viewers")
@click.argument("url", required=False)
@click.option("--viewers", default="100", show_default=True, help="a count, or steps: 100,500,1000")
@click.option("--duration", type=click.FloatRange(1, 600), default=30.0, show_default=True, help="s per step")
@click.option("--ramp", type=click.FloatRange(0, 100_000), default=1000.0, show_default=True, help="viewers/s")
@click.option("--pid", type=int, default=None, help="the server's PID: its CPU and RSS per step")
@click.option(
    "--start",
    "flv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="start an origin + ONE edge (core 0) and publish this FLV (core 1); URL is then the edge's",
)
def hls_viewers(url: str | None, viewers: str, duration: float, ramp: float, pid: int | None, flv: Path | None) -> None:
    """LL-HLS viewers on URL (http://edge/APP/NAME.m3u8): blocking reloads, each new part once, a sid each."""
    import tempfile
    import time

    from loadtest.hls_viewers import run_step, table
    from loadtest.servers import publishing, start_livecdn

    try:
        steps = [int(v) for v in viewers.split(",")]
    except ValueError:
        raise click.BadParameter("a count or a comma-separated list of counts", param_hint="--viewers") from None
    if not steps or not all(1 <= v <= 20_000 for v in steps):
        raise click.BadParameter("counts between 1 and 20000", param_hint="--viewers")
    with contextlib.ExitStack() as stack:
        if flv is not None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="livecdn-hls-")))
            server = start_livecdn(workdir, node_core=0, load_core=1, merge_window=None)
            stack.callback(server.stop)
            stack.enter_context(publishing(flv, server.publish_url, 1))
            assert server.flv_url is not None
            url, pid = server.flv_url.removesuffix(".flv") + ".m3u8", server.procs[0].pid
            time.sleep(3)  # the first GOP reaches the origin
        if url is None:
            raise click.UsageError("give URL, or --start FILE")
        rows = []
        for count in steps:
            rows.append(run_async(run_step(url, count, duration, ramp, pid)))
            click.echo(f"{count} viewers done", err=True)
            time.sleep(max(3.0, 3 * 2.0))  # let the previous step's viewers time out on the server
        click.echo(table(rows))
