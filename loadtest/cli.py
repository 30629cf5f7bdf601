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
