"""A hostile RTMP client: raw bytes, no manners. Each attack ends when the server closes the connection
(or, for the ones a server may answer, when it has answered); it reports what happened."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from common.rtmp import amf0
from common.rtmp.chunk import encode_message
from common.rtmp.messages import CSID_COMMAND, CSID_PROTOCOL, CSID_VIDEO, MessageType

HANDSHAKE = 1536
COMMAND = int(MessageType.COMMAND_AMF0)


@dataclass
class Outcome:
    closed_by_server: bool
    seconds: float
    received: int


async def handshake(port: int, local: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    writer.write(b"\x03" + bytes(HANDSHAKE))
    s0s1s2 = await reader.readexactly(1 + 2 * HANDSHAKE)
    writer.write(s0s1s2[1 : 1 + HANDSHAKE])  # C2 echoes S1
    return reader, writer


def command(*values: object, stream_id: int = 0, chunk_size: int = 128) -> bytes:
    return encode_message(CSID_COMMAND, 0, COMMAND, stream_id, amf0.encode(*values), chunk_size)


def connect(app: str = "live") -> bytes:
    return command("connect", 1.0, {"app": app, "tcUrl": f"rtmp://127.0.0.1/{app}"})


def set_chunk_size(size: int) -> bytes:
    return encode_message(CSID_PROTOCOL, 0, int(MessageType.SET_CHUNK_SIZE), 0, struct.pack(">I", size), 128)


def chunk_header(fmt: int, csid: int, *, timestamp: int = 0, length: int = 0, type_id: int = 9, msid: int = 1) -> bytes:
    basic = bytes([(fmt << 6) | csid])
    if fmt == 0:
        return (
            basic
            + timestamp.to_bytes(3, "big")
            + length.to_bytes(3, "big")
            + bytes([type_id])
            + struct.pack("<I", msid)
        )
    if fmt == 1:
        return basic + timestamp.to_bytes(3, "big") + length.to_bytes(3, "big") + bytes([type_id])
    return basic


async def until_closed(reader: asyncio.StreamReader, timeout: float) -> tuple[bool, int]:
    """Read (and drop) everything until EOF; (closed, bytes received)."""
    received = 0
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += len(chunk)
    except TimeoutError:
        return False, received
    except ConnectionError:
        pass  # reset by the server: closed too
    return True, received


Attack = Callable[[int], Awaitable[Outcome]]


async def _send_then_wait(port: int, payload: bytes, timeout: float = 5.0, *, raw: bool = False) -> Outcome:
    started = time.monotonic()
    if raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    else:
        reader, writer = await handshake(port)
    try:
        writer.write(payload)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        closed, received = await until_closed(reader, timeout)
        return Outcome(closed, time.monotonic() - started, received)
    finally:
        writer.close()


async def huge_chunk_size(port: int) -> Outcome:
    return await _send_then_wait(port, set_chunk_size(0x7FFFFFFF))


async def tiny_chunk_size(port: int) -> Outcome:
    return await _send_then_wait(port, set_chunk_size(1) + connect())


async def huge_declared_message(port: int) -> Outcome:
    # 16 MB declared (the most 24 bits hold), 10 bytes sent: over the message size limit, refused at once.
    return await _send_then_wait(port, chunk_header(0, 6, length=0xFFFFFF) + b"x" * 10)


async def length_changed_mid_message(port: int) -> Outcome:
    first = chunk_header(0, 6, length=1000) + b"a" * 128
    changed = chunk_header(1, 6, length=300, type_id=9) + b"b" * 128
    return await _send_then_wait(port, connect() + first + changed)


async def type3_on_fresh_chunk_stream(port: int) -> Outcome:
    return await _send_then_wait(port, chunk_header(3, 9) + b"z" * 64)


async def many_chunk_streams(port: int) -> Outcome:
    data = b"".join(chunk_header(0, 1) + (csid - 64).to_bytes(1, "little") + bytes(10) for csid in range(64, 64 + 256))
    wide = b"".join(b"\x01" + (csid - 64).to_bytes(2, "little") + bytes(11) for csid in range(320, 10_000))
    return await _send_then_wait(port, data + wide)


async def deep_amf(port: int) -> Outcome:
    nested: object = {"x": 1.0}
    for _ in range(200):
        nested = {"x": nested}
    body = amf0.encode("connect", 1.0, {"app": "live", "tcUrl": "rtmp://x/live", "deep": nested})
    return await _send_then_wait(port, encode_message(CSID_COMMAND, 0, COMMAND, 0, body, 128))


async def handshake_garbage(port: int) -> Outcome:
    return await _send_then_wait(port, b"\x42" + os.urandom(10_000), raw=True)


async def slow_handshake(port: int, seconds: float = 30.0) -> Outcome:
    """One byte a second: the handshake deadline is absolute, so this is cut at it, not kept alive."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() - started < seconds:
            try:
                writer.write(b"\x03")
                await writer.drain()
            except ConnectionError:
                break
            closed, received = await until_closed(reader, 1.0)
            if closed:
                return Outcome(True, time.monotonic() - started, received)
        return Outcome(False, time.monotonic() - started, 0)
    finally:
        writer.close()


async def many_create_streams(port: int) -> Outcome:
    calls = b"".join(command("createStream", float(2 + i), None) for i in range(1000))
    return await _send_then_wait(port, connect() + calls)


async def commands_never_read(port: int) -> Outcome:
    """Commands that all want an answer, from a client that never reads one."""
    started = time.monotonic()
    reader, writer = await handshake(port)
    try:
        writer.write(connect())
        closed = False
        for i in range(2000):
            try:
                writer.write(command("getStreamLength", float(10 + i), None, "x" * 200))
                if i % 50 == 0:
                    await writer.drain()
                    await asyncio.sleep(0.01)
            except ConnectionError:
                closed = True
                break
        if not closed:
            closed, _ = await until_closed(reader, 5)
        return Outcome(closed, time.monotonic() - started, 0)
    finally:
        writer.close()


async def bad_names(port: int) -> list[str]:
    """Publish and play names that must never reach the file system or the registry as they are."""
    answers = []
    for verb in ("publish", "play"):
        for name in ("../etc/passwd", "%2e%2e/x", "a\x00b", "x" * 10_000, "..", "./x"):
            reader, writer = await handshake(port)
            try:
                writer.write(connect() + command("createStream", 2.0, None))
                writer.write(command(verb, 3.0, None, name, stream_id=1))
                await writer.drain()
                codes = ("BadName", "StreamNotFound", "Failed")
                data = b""
                with contextlib.suppress(TimeoutError, ConnectionError):
                    async with asyncio.timeout(3):
                        while not any(code.encode() in data for code in codes):
                            chunk = await reader.read(65536)
                            if not chunk:
                                break
                            data += chunk
                answers.append(next((c for c in codes if c.encode() in data), "closed" if not data else "other"))
            finally:
                writer.close()
    return answers


async def frozen_timestamp_flood(port: int, seconds: float = 4.0) -> Outcome:
    """A publisher that floods video with one frozen timestamp: the node's memory stays bounded."""
    started = time.monotonic()
    reader, writer = await handshake(port)
    try:
        writer.write(connect() + command("createStream", 2.0, None))
        writer.write(command("publish", 3.0, None, "flood", "live", stream_id=1))
        frame = b"\x17\x01\x00\x00\x00" + os.urandom(60_000)
        header = b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f\xff\xe1\x00\x04abcd\x01\x00\x02ef"
        writer.write(encode_message(CSID_VIDEO, 0, 9, 1, header, 128))
        while time.monotonic() - started < seconds:
            writer.write(encode_message(CSID_VIDEO, 1234, 9, 1, frame, 128))
            try:
                await writer.drain()
            except ConnectionError:
                break
        return Outcome(reader.at_eof(), time.monotonic() - started, 0)
    finally:
        writer.close()


async def flood(port: int, count: int, local: str) -> tuple[int, int]:
    """``count`` connections from one address, held open; returns (held, refused by the server)."""
    pairs: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(count):
            pairs.append(await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0)))

        async def refused(reader: asyncio.StreamReader) -> bool:
            try:
                async with asyncio.timeout(1.0):
                    return await reader.read(1) == b""  # closed at once: refused
            except TimeoutError:
                return False  # still open, waiting for a handshake: held
            except ConnectionError:
                return True

        results = await asyncio.gather(*(refused(reader) for reader, _ in pairs))
        return results.count(False), results.count(True)
    finally:
        for _, writer in pairs:
            writer.close()
