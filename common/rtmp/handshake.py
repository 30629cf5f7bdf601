"""Sans-IO RTMP handshake (simple, unencrypted), server and client side.

Sequence (RTMP spec, section 5.2)::

    client -> C0 (1 byte version) + C1 (1536 bytes)
    server -> S0 + S1 + S2 (S2 echoes C1)
    client -> C2 (echoes S1)

Our C1/S1 carry four zero bytes after the time field. FFmpeg and librtmp read zero "version"
bytes as "no digest" and fall back to the simple handshake, so no digest is ever checked.
Neither side validates the peer's echo (C2 / S2): clients in the wild send various things.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from common.rtmp.errors import ProtocolError

HANDSHAKE_SIZE: Final = 1536
RTMP_VERSION: Final = 3

_TIME_AND_ZERO_LEN: Final = 8
_RANDOM_LEN: Final = HANDSHAKE_SIZE - _TIME_AND_ZERO_LEN
_RTMPE_VERSIONS: Final = frozenset({0x06, 0x08})


def _make_c1_s1(random_bytes: Callable[[int], bytes], epoch_ms: int) -> bytes:
    rand = random_bytes(_RANDOM_LEN)
    if len(rand) != _RANDOM_LEN:
        raise ValueError(f"random_bytes({_RANDOM_LEN}) returned {len(rand)} bytes")
    return (epoch_ms & 0xFFFFFFFF).to_bytes(4, "big") + b"\x00\x00\x00\x00" + rand


def _check_version(version: int, which: str) -> None:
    if version == RTMP_VERSION:
        return
    msg = f"unsupported RTMP version {version:#04x} in {which} (expected {RTMP_VERSION:#04x})"
    if version in _RTMPE_VERSIONS:
        msg += "; this is an RTMPE (encrypted) handshake, which is not supported"
    raise ProtocolError(msg)


class ServerHandshake:
    """Server side: wait for C0+C1, answer S0+S1+S2 in one go, wait for C2."""

    def __init__(self, *, random_bytes: Callable[[int], bytes] = os.urandom, epoch_ms: int = 0) -> None:
        self._random_bytes = random_bytes
        self._epoch_ms = epoch_ms
        self._buf = bytearray()
        self._sent_reply = False
        self.done: bool = False

    def receive_data(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed bytes from the client; return (bytes to send, leftover after C2).

        ``leftover`` is the start of the chunk stream and is non-empty only once ``done``.
        """
        if self.done:
            return b"", data
        buf = self._buf
        buf += data
        reply = b""
        if not self._sent_reply:
            if buf:
                _check_version(buf[0], "C0")
            if len(buf) < 1 + HANDSHAKE_SIZE:
                return b"", b""
            c1 = bytes(buf[1 : 1 + HANDSHAKE_SIZE])
            del buf[: 1 + HANDSHAKE_SIZE]
            s1 = _make_c1_s1(self._random_bytes, self._epoch_ms)
            reply = bytes((RTMP_VERSION,)) + s1 + c1
            self._sent_reply = True
        if len(buf) < HANDSHAKE_SIZE:
            return reply, b""
        leftover = bytes(buf[HANDSHAKE_SIZE:])  # C2 content is deliberately not validated
        buf.clear()
        self.done = True
        return reply, leftover


class ClientHandshake:
    """Client side: send C0+C1, wait for S0+S1+S2, answer C2 (echo of S1)."""

    def __init__(self, *, random_bytes: Callable[[int], bytes] = os.urandom, epoch_ms: int = 0) -> None:
        self._random_bytes = random_bytes
        self._epoch_ms = epoch_ms
        self._buf = bytearray()
        self._initiated = False
        self.done: bool = False

    def initiate(self) -> bytes:
        """Return C0 + C1; call exactly once, before any ``receive_data``."""
        if self._initiated:
            raise RuntimeError("ClientHandshake.initiate() called twice")
        self._initiated = True
        return bytes((RTMP_VERSION,)) + _make_c1_s1(self._random_bytes, self._epoch_ms)

    def receive_data(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed bytes from the server; on full S0+S1+S2 return (C2, leftover), else (b"", b"")."""
        if self.done:
            return b"", data
        if not self._initiated:
            raise RuntimeError("ClientHandshake.receive_data() called before initiate()")
        buf = self._buf
        buf += data
        if buf:
            _check_version(buf[0], "S0")
        total = 1 + 2 * HANDSHAKE_SIZE
        if len(buf) < total:
            return b"", b""
        c2 = bytes(buf[1 : 1 + HANDSHAKE_SIZE])  # echo of S1; S2 is deliberately not validated
        leftover = bytes(buf[total:])
        buf.clear()
        self.done = True
        return c2, leftover
