"""Fuzzing the whole server side of an RTMP connection with mutations of real sessions.

Seeds are the byte streams real ffmpeg clients send (a publish, a play), recorded by a server of ours;
mutations flip, overwrite, insert, delete, duplicate, truncate and splice them. Each input drives the
real asyncio protocol, the real RTMP service and the hub through a fake transport. The property: nothing
escapes but the connection closing (no exception of any type out of the protocol's callbacks), the output
stays bounded, and when the connection is gone nothing of it is left in the service or the hub.

    .venv/bin/python -m tests.fuzzing --inputs 1000000 --workers 2     # the long run, by hand
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import random
import subprocess
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.hub.packet import HubLimits
from common.hub.stream import Hub
from common.keys import StreamKey
from common.rtmp.session import SessionLimits
from common.serving.connection import RtmpServerProtocol, Timeouts
from common.serving.playback import Playback
from common.serving.policy import StandalonePolicy
from common.serving.service import RtmpOptions, RtmpService
from loadtest.flvfile import ffmpeg_executable, make_flv

MAX_OUTPUT = 4 * 1024 * 1024  # bytes one fuzz input may make the server send (a bounded reply per input)
SEED_BYTES = 24 * 1024  # the head of each recording: handshake, commands, headers and the first frames


# -- recording real sessions ---------------------------------------------------------------------------


class _Recording(RtmpServerProtocol):
    recorded: list[bytes]

    def data_received(self, data: bytes) -> None:
        self.recorded.append(data)
        super().data_received(data)


@dataclass(frozen=True)
class Seed:
    """A recorded session: the bytes, and where the reads fell (a client waits for answers between some
    of them: fed all at once, commands would race ahead of the connect they follow)."""

    data: bytes
    reads: tuple[int, ...]
    plays: StreamKey | None  # the stream it plays: made live (with no media) in the server it is fed to


def record_sessions(workdir: Path) -> dict[str, Seed]:
    """What ffmpeg sends when it publishes a stream, and when it plays one, to a server of ours."""
    return asyncio.run(_record(workdir))


async def _record(workdir: Path) -> dict[str, Seed]:
    flv = make_flv(workdir / "seed.flv", seconds=2, bitrate_kbps=300, gop_seconds=1, fps=25, size="160x120")
    service = _service()  # the recorded publish makes live/seed live
    chunks: dict[str, list[bytes]] = {"publish": [], "play": []}
    current: list[list[bytes]] = [chunks["publish"]]

    def factory() -> RtmpServerProtocol:
        protocol = _Recording(service)
        protocol.recorded = current[0]
        return protocol

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"rtmp://127.0.0.1:{port}/live/seed"
    ffmpeg = ffmpeg_executable()
    publisher = await asyncio.create_subprocess_exec(
        ffmpeg, "-hide_banner", "-loglevel", "error", "-re", "-i", str(flv), "-c", "copy", "-f", "flv", url,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await asyncio.sleep(1.0)
        current[0] = chunks["play"]
        player = await asyncio.create_subprocess_exec(
            ffmpeg, "-hide_banner", "-loglevel", "error", "-i", url, "-frames:v", "10", "-f", "null", "-",
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await player.wait()
        if player.returncode is None:
            player.kill()
            await player.wait()
    finally:
        if publisher.returncode is None:
            publisher.kill()
        await publisher.wait()
        server.close()
        await server.wait_closed()
    seeds = {}
    for name, parts in chunks.items():
        data = b"".join(parts)[:SEED_BYTES]
        if len(data) < 3073:  # less than a handshake: the recording failed
            raise RuntimeError(f"recording the {name} session got {len(data)} bytes")
        reads = tuple(itertools.accumulate(len(part) for part in parts))
        seeds[name] = Seed(data, tuple(r for r in reads if r < len(data)), LIVE if name == "play" else None)
    return seeds


# -- mutations -------------------------------------------------------------------------------------------

HANDSHAKE = 1 + 1536 + 1536  # C0, C1, C2
DEPTHS = ("handshake", "connected", "publishing", "playing")
OPS = ("flip", "set", "insert", "delete", "duplicate", "truncate", "splice")


@dataclass(frozen=True)
class Mutation:
    op: str
    at: float  # where, as a fraction of the input's length
    size: int  # how many bytes (insert, delete, duplicate)
    value: int  # a byte value, or a bit index for flip
    other_at: float = 0.0  # splice: where in the other seed
    past_handshake: bool = True  # aim after the 3,073 handshake bytes (mutations there only break the handshake)


def mutate(data: bytes, mutations: Sequence[Mutation], other: bytes) -> bytes:
    buf = bytearray(data)
    for m in mutations:
        if not buf:
            break
        low = HANDSHAKE if m.past_handshake and len(buf) > HANDSHAKE else 0
        pos = min(low + int(m.at * (len(buf) - low)), len(buf) - 1)
        if m.op == "flip":
            buf[pos] ^= 1 << (m.value % 8)
        elif m.op == "set":
            buf[pos] = m.value % 256
        elif m.op == "insert":
            buf[pos:pos] = bytes([m.value % 256]) * m.size
        elif m.op == "delete":
            del buf[pos : pos + m.size]
        elif m.op == "duplicate":
            buf[pos:pos] = buf[pos : pos + m.size]
        elif m.op == "truncate":
            del buf[pos:]
        elif m.op == "splice":
            start = int(m.other_at * len(other))
            buf[pos:] = other[start:]
    return bytes(buf)


def random_mutations(rng: random.Random) -> list[Mutation]:
    return [
        Mutation(
            rng.choice(OPS), rng.random(), rng.randint(1, 64), rng.randint(0, 255), rng.random(), rng.random() < 0.8
        )
        for _ in range(rng.randint(1, 8))
    ]


# -- driving the server -----------------------------------------------------------------------------------


class FakeTransport:
    """Just enough of an asyncio transport: keeps what is written, counts it, closes."""

    def __init__(self) -> None:
        self.written = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


class _Feeder:
    def stop(self, reason: str) -> None:
        return None


LIVE = StreamKey("live", "seed")  # what the seeds publish and play


def _service(live: StreamKey | None = None) -> RtmpService:
    hub = Hub(HubLimits(merge_window=0))
    if live is not None:
        hub.get_or_create(live).attach(_Feeder())
    limits = SessionLimits(max_message_size=1024 * 1024)
    return RtmpService(Playback(hub, StandalonePolicy()), RtmpOptions(limits, Timeouts()))


async def run_input(data: bytes, cuts: Sequence[int] = (), live: StreamKey | None = None) -> str:
    """Feed one input (split at ``cuts``) to a fresh connection of a fresh service; raise AssertionError
    when the property does not hold. Exceptions out of the protocol's callbacks propagate as they are.
    Returns how deep the input got: handshake, connected, publishing, playing."""
    service = _service(live)
    protocol = service.protocol_factory()
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    start = 0
    for cut in [*sorted({c for c in cuts if 0 < c < len(data)}), len(data)]:
        if transport.closing:
            break
        protocol.data_received(data[start:cut])
        start = cut
        await asyncio.sleep(0)  # let admissions and plays that wait run
    await asyncio.sleep(0)
    depth = (
        "publishing"
        if protocol.publishing
        else "playing"
        if protocol.viewer is not None
        else "connected"
        if protocol.session.connected
        else "handshake"
    )
    assert transport.written <= MAX_OUTPUT, f"one input made the server send {transport.written} bytes"
    protocol.connection_lost(None)
    await asyncio.sleep(0)
    assert not service.connections, "a closed connection is still held"
    assert [s.key for s in service.hub] == ([live] if live else []), "a stream outlived its only connection"
    assert all(s.viewers == 0 for s in service.hub), "a viewer outlived its connection"
    assert not service.playback.viewers, "a viewer outlived its connection"
    return depth


# -- the long run, by hand ---------------------------------------------------------------------------------


def _worker(args: tuple[dict[str, Seed], int, int]) -> tuple[int, list[str], Counter[str]]:
    seeds, count, seed = args
    logging.disable(logging.CRITICAL)  # a million protocol errors, each logged, would be the whole run
    rng = random.Random(seed)
    names = sorted(seeds)
    failures: list[str] = []
    depths: Counter[str] = Counter()

    async def loop() -> None:
        for _ in range(count):
            base, other = seeds[rng.choice(names)], seeds[rng.choice(names)]
            data = mutate(base.data, random_mutations(rng), other.data)
            cuts = [*base.reads, *(rng.randint(1, max(1, len(data) - 1)) for _ in range(rng.randint(0, 4)))]
            try:
                depths[await run_input(data, cuts, base.plays)] += 1
            except Exception:  # a finding: keep the input to reproduce it
                failures.append(f"{data.hex()}\n{traceback.format_exc()}")
                if len(failures) >= 10:
                    return

    asyncio.run(loop())
    return count, failures, depths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/livecdn-fuzz"))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    seeds = record_sessions(args.workdir)
    print(f"seeds: {', '.join(f'{k} {len(v.data)} B in {len(v.reads) + 1} reads' for k, v in seeds.items())}")
    started = time.monotonic()
    share = args.inputs // args.workers
    jobs = [(seeds, share, args.seed * 1000 + i) for i in range(args.workers)]
    with multiprocessing.Pool(args.workers) as pool:
        results = pool.map(_worker, jobs)
    elapsed = time.monotonic() - started
    ran = sum(count for count, _, _ in results)
    failures = [f for _, found, _ in results for f in found]
    depths = sum((d for _, _, d in results), Counter())
    reached = ", ".join(f"{name} {depths[name] * 100 / max(ran, 1):.1f}%" for name in DEPTHS)
    print(f"{ran} inputs in {elapsed:.0f} s ({ran / elapsed:.0f}/s), {args.workers} workers: {len(failures)} failures")
    print(f"how far inputs got: {reached}")
    for failure in failures[:3]:
        print(failure)
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
