"""LL-HLS viewers: each one follows the playlist like a low-latency player (blocking reloads for the hinted
part, each new part fetched once, its own ``sid``), all on one aiohttp session, bounded in count and time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urljoin

import aiohttp
import psutil

from loadtest.hls_playlist import parse_playlist

REQUEST_TIMEOUT_S = 10.0


@dataclass
class HlsStats:
    parts: int = 0
    part_bytes: int = 0
    reloads: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    announce_to_done_ms: list[float] = field(default_factory=list)  # playlist listing it -> part downloaded
    reload_wait_ms: list[float] = field(default_factory=list)

    def fail(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _get(session: aiohttp.ClientSession, url: str, stats: HlsStats) -> bytes | None:
    try:
        async with session.get(url) as response:
            body = await response.read()
            if response.status != 200:
                stats.fail(f"HTTP {response.status}")
                return None
            return body
    except (aiohttp.ClientError, TimeoutError) as exc:
        stats.fail(type(exc).__name__)
        return None


async def viewer(session: aiohttp.ClientSession, url: str, sid: str, stats: HlsStats, until: float) -> None:
    last: tuple[int, int] | None = None
    query: dict[str, str] = {"sid": sid}
    while time.monotonic() < until:
        asked = time.monotonic()
        body = await _get(session, f"{url}?{urlencode(query)}", stats)
        if body is None:
            await asyncio.sleep(0.5)
            continue
        announced = time.monotonic()
        stats.reloads += 1
        if "_HLS_msn" in query:
            stats.reload_wait_ms.append((announced - asked) * 1000)
        playlist = parse_playlist(body.decode(errors="replace"))
        for msn, index, uri in playlist.new_parts(last):
            data = await _get(session, urljoin(url, uri), stats)
            if data is not None:
                stats.parts += 1
                stats.part_bytes += len(data)
                stats.announce_to_done_ms.append((time.monotonic() - announced) * 1000)
            last = (msn, index)
        reload = playlist.next_reload()
        if reload is None:
            await asyncio.sleep(0.5)
            continue
        query = {"sid": sid, "_HLS_msn": str(reload[0]), "_HLS_part": str(reload[1])}


async def _sample(pid: int | None, cpu: list[float], rss: list[int], until: float) -> None:
    if pid is None:
        return
    proc = psutil.Process(pid)
    own = psutil.Process()
    proc.cpu_percent(None)
    own.cpu_percent(None)
    while time.monotonic() < until:
        await asyncio.sleep(1.0)
        cpu.append(proc.cpu_percent(None))
        rss.append(proc.memory_info().rss)
        cpu.append(-own.cpu_percent(None))  # negative: the tool's own CPU, split out below


async def run_step(url: str, viewers: int, duration: float, ramp: float, pid: int | None) -> dict[str, float | str]:
    stats = HlsStats()
    connector = aiohttp.TCPConnector(limit=viewers * 2 + 10, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    cpu: list[float] = []
    rss: list[int] = []
    start = time.monotonic()
    until = start + duration
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        for i in range(viewers):
            tasks.append(asyncio.create_task(viewer(session, url, f"v{i}-{start:.0f}", stats, until)))
            if ramp > 0 and i % 50 == 49:
                await asyncio.sleep(50 / ramp)
        measured_from = time.monotonic()
        sampler = asyncio.create_task(_sample(pid, cpu, rss, until))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, sampler), duration + REQUEST_TIMEOUT_S + 5)
    elapsed = max(time.monotonic() - measured_from, 1e-9)
    server_cpu = [c for c in cpu if c >= 0]
    tool_cpu = [-c for c in cpu if c < 0]
    return {
        "viewers": viewers,
        "parts/viewer/s": stats.parts / viewers / (time.monotonic() - start),
        "failures": ", ".join(f"{k}: {v}" for k, v in sorted(stats.failures.items())) or "0",
        "announce→part p50 ms": _pct(stats.announce_to_done_ms, 0.5),
        "announce→part p95 ms": _pct(stats.announce_to_done_ms, 0.95),
        "reload wait p50 ms": _pct(stats.reload_wait_ms, 0.5),
        "server cpu %": sum(server_cpu[2:]) / max(1, len(server_cpu[2:])) if server_cpu else float("nan"),
        "server RSS MB": max(rss) / 1e6 if rss else float("nan"),
        "tool cpu %": sum(tool_cpu[2:]) / max(1, len(tool_cpu[2:])) if tool_cpu else float("nan"),
        "measured s": elapsed,
    }


def table(rows: list[dict[str, float | str]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---:|" * len(keys)]
    for row in rows:
        cells = [f"{v:.2f}" if isinstance(v, float) and k == "parts/viewer/s" else v for k, v in row.items()]
        lines.append("| " + " | ".join(f"{c:.0f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    return "\n".join(lines)
