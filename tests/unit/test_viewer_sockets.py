"""Viewer sockets get their options once, on the one play path: TCP_NODELAY off by default (the kernel
coalesces writes waiting for an ACK, as nginx-rtmp leaves it), on when asked, and SO_SNDBUF when set."""

from __future__ import annotations

import asyncio
import socket

import pytest

from common.hub.packet import RTMP
from common.hub.stream import Hub
from common.keys import StreamKey
from common.serving.playback import Playback
from common.serving.policy import StandalonePolicy
from common.serving.sockets import ViewerSockets


class SocketViewer:
    wire_format = RTMP

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.write = transport.write
        self.buffered = transport.get_write_buffer_size

    def drop(self, reason: str) -> None: ...
    def source_ended(self) -> None: ...
    def disconnect(self, reason: str) -> None: ...


async def served_transport() -> tuple[asyncio.Transport, asyncio.Server, socket.socket]:
    """The server side of a real loopback TCP connection (asyncio turns TCP_NODELAY on for it)."""
    accepted: asyncio.Future[asyncio.Transport] = asyncio.get_running_loop().create_future()

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.set_result(transport)  # type: ignore[arg-type]

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    return await asyncio.wait_for(accepted, 5), server, client


def nodelay(transport: asyncio.Transport) -> int:
    return int(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


@pytest.mark.parametrize(("sockets", "expected"), [(ViewerSockets(), 0), (ViewerSockets(nodelay=True), 1)])
async def test_subscribing_sets_the_viewer_sockets_options(sockets: ViewerSockets, expected: int) -> None:
    transport, server, client = await served_transport()
    try:
        assert nodelay(transport) == 1, "asyncio's own default, which the node overrides"
        hub = Hub()
        stream = hub.get_or_create(StreamKey("live", "cam"))
        Playback(hub, StandalonePolicy(), sockets=sockets).subscribe(stream, SocketViewer(transport), "peer", "RTMP")
        assert nodelay(transport) == expected
    finally:
        transport.close()
        client.close()
        server.close()


async def test_a_send_buffer_size_is_applied_when_set() -> None:
    transport, server, client = await served_transport()
    try:
        ViewerSockets(sndbuf=64 * 1024).tune(transport)
        got = transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        assert got >= 64 * 1024  # Linux doubles what it is given, for its own bookkeeping
    finally:
        transport.close()
        client.close()
        server.close()
