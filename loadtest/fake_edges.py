"""Fake edges for routing benchmarks: node records heartbeated into a registry, with no media behind them."""

from __future__ import annotations

import asyncio
import contextlib
import time

from common.registry import NodeInfo, RegistryError, open_registry
from loadtest.simulate_config import REGION_NAMES


def fake_edge(index: int, regions: int) -> NodeInfo:
    region = REGION_NAMES[index % regions]
    return NodeInfo(
        f"edge-{region}-{index}", "edge", region, f"127.0.0.1:{20000 + index}", f"127.0.0.1:{30000 + index}"
    )


async def heartbeat_fake_edges(url: str, edges: int, regions: int, duration: float, interval: float = 1.0) -> None:
    """Heartbeat `edges` records (ttl 3 intervals) every `interval` for `duration` seconds, then remove them."""
    registry = open_registry(url)
    await registry.start()
    records = [fake_edge(i, regions) for i in range(edges)]
    deadline = time.monotonic() + duration
    try:
        while time.monotonic() < deadline:
            for record in records:  # one at a time: the client's connection pool is bounded
                await registry.heartbeat(record, 3 * interval)
            await asyncio.sleep(interval)
    finally:
        with contextlib.suppress(RegistryError):  # the records lapse by themselves anyway
            for record in records:
                await registry.remove_node(record.id)
        await registry.close()
