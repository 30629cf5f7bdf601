"""A scenario step's swarm as two subprocesses: the counting viewers (niced) and the probes (not), so a
probe's frames are not queued behind thousands of sockets in one event loop; their reports merged."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from pathlib import Path

import click

from loadtest.servers import pinned
from loadtest.swarm_config import SwarmConfig
from loadtest.swarm_report import SwarmReport


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
        "--settle",
        str(config.settle),
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
    return merge_reports(SwarmReport.read_json(counting_json), SwarmReport.read_json(probe_json))
