"""The origin gives back a stream's claim whatever way its publisher goes, even mid-authorization."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from common.keys import StreamKey
from common.registry.memory import MemoryRegistry
from common.rtmp.events import PublishRequested
from common.runtime.config import OriginSettings
from common.runtime.node import Node
from origin.role import OriginRole


class SlowRegistry(MemoryRegistry):
    """Claims take a moment, during which the publisher hangs up."""

    def __init__(self) -> None:
        super().__init__()
        self.claiming = asyncio.Event()
        self.proceed = asyncio.Event()

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        self.claiming.set()
        await self.proceed.wait()
        return await super().claim(*args, **kwargs)


def fake_conn() -> Any:
    session = SimpleNamespace(app="live", reject=lambda *a: None, accept_publish=lambda *a: None)
    return SimpleNamespace(closed=False, peer="test", session=session, publishing={})


async def test_claim_released_when_the_publisher_leaves_during_the_claim() -> None:
    registry = SlowRegistry()
    node = Node(OriginSettings(node_id="origin-a", open_publish=True), OriginRole, registry)
    conn = fake_conn()
    waiter = node.rtmp.handle(conn, PublishRequested(1, "cam", "", "live"))
    assert waiter is not None
    task = asyncio.ensure_future(waiter)
    await registry.claiming.wait()
    conn.closed = True  # the publisher goes away while the registry call is in flight
    registry.proceed.set()
    await task
    await asyncio.sleep(0.01)  # the release runs as a background task
    assert await registry.lookup("live/cam") is None, "the claim must not outlive a publisher that never started"
    assert node.hub.get(StreamKey("live", "cam")) is None
    assert conn.publishing == {}
    await node.tasks.cancel_all()


async def test_claim_kept_while_the_publisher_stays() -> None:
    registry = MemoryRegistry()
    node = Node(OriginSettings(node_id="origin-a", open_publish=True), OriginRole, registry)
    conn = fake_conn()
    waiter = node.rtmp.handle(conn, PublishRequested(1, "cam", "", "live"))
    assert waiter is not None
    await waiter
    claim = await registry.lookup("live/cam")
    assert claim is not None and claim.origin == "origin-a"
    assert conn.publishing[1].key == StreamKey("live", "cam")
