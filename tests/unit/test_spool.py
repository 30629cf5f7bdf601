"""Batches go to real sockets by send(2), large ones by sendfile from the spool: the same bytes, in order,
as a viewer written the ordinary way gets, also when a socket is full; never to the descriptor of a
transport that is closing (its number may already be another connection's); and leaving the fan-out leaves
the transport's socket open."""

from __future__ import annotations

import asyncio
import os
import socket

from common.hub.fanout import SPOOL_MIN_BYTES
from common.hub.pacing import MergeWindow
from common.hub.packet import AUDIO, VIDEO, HubLimits
from common.hub.spool import Spool
from common.hub.stream import Hub, Stream
from common.keys import StreamKey
from common.serving.sockets import ViewerSockets
from tests.unit.test_stream import AAC_HEADER, AVC_HEADER, FakeSource, FakeViewer
from tests.unit.test_viewer_sockets import SocketViewer, served_transport

BIG_KEY = bytes([0x17, 1, 0, 0, 0]) + os.urandom(3 * SPOOL_MIN_BYTES)  # one batch past the spool threshold
SMALL = bytes([0x27, 1, 0, 0, 0]) + b"p" * 300


def test_the_spool_appends_and_starts_a_new_file_past_its_size() -> None:
    spool = Spool(rotate_bytes=100)
    first = spool.put(b"a" * 60)
    assert first == 0 and os.pread(spool.fd, 60, 0) == b"a" * 60
    assert spool.put(b"b" * 60) == 0 and spool.files == 2, "past its size a new file starts: never rewritten"
    assert os.pread(spool.fd, 100, 0) == b"b" * 60
    spool.close()
    assert spool.fd == -1


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def stream_with_headers() -> Stream:
    stream = Hub(HubLimits(), pacing=MergeWindow(0.0)).get_or_create(StreamKey("live", "cam"))
    stream.source = FakeSource()
    stream.feed(VIDEO, 0, AVC_HEADER)
    stream.feed(AUDIO, 0, AAC_HEADER)
    return stream


async def read_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    data = bytearray()
    while len(data) < size:
        data += await asyncio.wait_for(loop.sock_recv(sock, size - len(data)), 5)
    return bytes(data)


async def test_large_batches_reach_sockets_intact_and_in_order_also_through_a_full_socket() -> None:
    stream = stream_with_headers()
    reference = FakeViewer()  # written the ordinary way: what every socket must receive
    stream.add_subscriber(reference)
    connections = [await served_transport() for _ in range(3)]
    slow_client = connections[0][2]
    slow_client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    ViewerSockets(sndbuf=32 * 1024).tune(connections[0][0])  # its socket fills at once: partial sendfiles
    fds_before = open_fds()
    viewers = [SocketViewer(transport) for transport, _, _ in connections]
    for viewer in viewers:
        stream.add_subscriber(viewer)
    assert open_fds() == fds_before, "sendfile uses the transports' own descriptors"
    sent_before = len(b"".join(reference.chunks))
    for n in range(6):
        stream.feed(VIDEO, 40 * n, BIG_KEY)
        stream.feed(AUDIO, 40 * n + 10, SMALL)
    expected = b"".join(reference.chunks)
    assert viewers[0].buffered() > 0, "what the full socket did not take waits in its transport"
    assert stream.fanout._spool is not None and stream.fanout._spool.offset > 0, "big batches went via the spool"
    try:
        for viewer, (_transport, _, client) in zip(viewers, connections, strict=True):
            got = await read_exactly(client, len(expected))
            assert got == expected, "every byte, in order"
            assert viewer.buffered() == 0
        assert len(expected) - sent_before > 6 * len(BIG_KEY)
        for viewer in viewers:
            stream.remove_subscriber(viewer)
        for transport, _, client in connections:
            transport.write(b"after")  # leaving the fan-out left the transport's own socket open
            assert await read_exactly(client, 5) == b"after"
    finally:
        for transport, server, client in connections:
            transport.close()
            client.close()
            server.close()


async def test_a_closing_transport_never_gets_a_sendfile() -> None:
    stream = stream_with_headers()
    transport, server, client = await served_transport()
    viewer = SocketViewer(transport)
    stream.add_subscriber(viewer)
    written: list[bytes] = []
    transport.close()  # its descriptor may be reused from now on, before the viewer leaves the fan-out
    stream.fanout._subscribers[viewer].write = written.append  # what the fan-out hands the transport instead
    live = next(iter(stream.fanout._groups[0].live.values()))
    live[viewer] = stream.fanout._subscribers[viewer].writer
    stream.feed(VIDEO, 0, BIG_KEY)
    assert written and len(written[-1]) > len(BIG_KEY), "the batch went to the transport, not to the descriptor"
    stream.feed(AUDIO, 10, SMALL)
    assert len(written) == 2 and SMALL in written[-1], "a small one too (no send on a closing transport)"
    client.close()
    server.close()
