"""Taking a claim over needs proof that its owner is gone: a refused connection is proof, silence is not."""

from __future__ import annotations

import asyncio
import socket

from common.registry.memory import MemoryRegistry
from common.system import free_port
from origin.liveness import refuses_connections, why_owner_is_gone
from tests.helpers import node_info


async def test_a_closed_port_refuses_and_a_listening_one_does_not() -> None:
    assert await refuses_connections("127.0.0.1", free_port())
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert not await refuses_connections("127.0.0.1", port)


async def test_a_frozen_listener_is_not_proof_of_death() -> None:
    # A listening socket nobody accepts on (a frozen process): the kernel completes the handshake anyway.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        assert not await refuses_connections("127.0.0.1", sock.getsockname()[1], timeout=0.5)


async def test_why_an_owner_is_gone() -> None:
    registry = MemoryRegistry()
    dead_port = free_port()
    claim = await registry.claim("live/x", "o1", f"rtmp://127.0.0.1:{dead_port}/live/x", 30)
    assert claim is not None
    assert "lapsed" in (await why_owner_is_gone(registry, claim) or "")  # no node record at all
    await registry.heartbeat(node_info("o1", "origin", draining=True), 30)
    assert "draining" in (await why_owner_is_gone(registry, claim) or "")
    await registry.heartbeat(node_info("o1", "origin"), 30)
    assert "nothing listens" in (await why_owner_is_gone(registry, claim) or "")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        alive = await registry.claim("live/y", "o1", f"rtmp://127.0.0.1:{sock.getsockname()[1]}/live/y", 30)
        assert alive is not None
        assert await why_owner_is_gone(registry, alive) is None
