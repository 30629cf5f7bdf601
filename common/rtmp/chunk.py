"""Sans-IO RTMP chunk stream: reassemble inbound chunks into messages, split outbound messages into chunks.

Wire format of one chunk (RTMP spec, section 5.3)::

    basic header   1..3 bytes   fmt (2 bits) + chunk stream id (csid)
    message header 11/7/3/0     depending on fmt 0/1/2/3
    extended ts    0 or 4       present when the 24-bit timestamp field is 0xFFFFFF
    chunk data     <= chunk size

The reader never allocates based on a size the peer declared: payload bytes are collected
chunk by chunk as they arrive, and every size the peer controls is checked against a bound.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from common.rtmp.errors import ProtocolError

DEFAULT_CHUNK_SIZE: Final = 128
MAX_CHUNK_SIZE_LIMIT: Final = 0x7FFFFFFF  # protocol max (top bit of the Set Chunk Size value must be 0)

# Message type ids the reader acts on itself.
SET_CHUNK_SIZE: Final = 1
ABORT: Final = 2

MIN_CSID: Final = 2
MAX_CSID: Final = 65599  # 64 + 0xFFFF, the largest id the 3-byte basic header can carry
MAX_MESSAGE_LENGTH: Final = 0xFFFFFF  # the message length field is 24 bits

_EXTENDED: Final = 0xFFFFFF  # timestamp field value announcing an extended timestamp
_TS_MASK: Final = 0xFFFFFFFF

# ts_hi, ts_lo, len_hi, len_lo, type_id: the 7 big-endian bytes shared by fmt 0 and fmt 1 headers.
_MH_TS_LEN_TYPE: Final = struct.Struct(">BHBHB")
_MH_TS: Final = struct.Struct(">BH")  # fmt 2: timestamp delta only
_U32BE: Final = struct.Struct(">I")
_U32LE: Final = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One reassembled RTMP message."""

    csid: int
    timestamp: int  # absolute, milliseconds, kept modulo 2**32
    type_id: int
    stream_id: int  # message stream id
    payload: bytes


class _ChunkStreamState:
    """What the reader remembers about one chunk stream id."""

    __slots__ = ("extended", "length", "parts", "received", "stream_id", "timestamp", "ts_field", "type_id")

    def __init__(self) -> None:
        self.timestamp = 0  # absolute timestamp of the current / last message
        self.ts_field = 0  # value of the last fmt 0/1/2 timestamp field (absolute or delta, extended resolved)
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.extended = False  # whether the last fmt 0/1/2 header used an extended timestamp
        self.parts: list[bytes] = []  # payload pieces of the message being reassembled
        self.received = 0  # bytes in ``parts``; > 0 exactly while a message is partially assembled


class ChunkReader:
    """Incremental chunk stream parser: ``feed`` bytes in, get complete messages out.

    Set Chunk Size and Abort messages are applied by the reader itself (before the bytes
    that follow them are parsed) and are also returned to the caller.
    """

    def __init__(
        self,
        *,
        max_chunk_size: int = 65536,
        max_message_size: int = 16 * 1024 * 1024,
        max_chunk_streams: int = 64,
        min_chunk_size: int = 1,
    ) -> None:
        if not 1 <= max_chunk_size <= MAX_CHUNK_SIZE_LIMIT:
            raise ValueError(f"max_chunk_size must be in 1..{MAX_CHUNK_SIZE_LIMIT}, got {max_chunk_size}")
        if max_message_size < 0:
            raise ValueError(f"max_message_size must be >= 0, got {max_message_size}")
        if max_chunk_streams < 1:
            raise ValueError(f"max_chunk_streams must be >= 1, got {max_chunk_streams}")
        if not 1 <= min_chunk_size <= max_chunk_size:
            raise ValueError(f"min_chunk_size must be in 1..max_chunk_size, got {min_chunk_size}")
        self.max_chunk_size = max_chunk_size
        self.min_chunk_size = min_chunk_size
        self.max_message_size = max_message_size
        self.max_chunk_streams = max_chunk_streams
        self.chunk_size: int = DEFAULT_CHUNK_SIZE
        self.bytes_received: int = 0
        self._buf = bytearray()
        self._streams: dict[int, _ChunkStreamState] = {}

    def feed(self, data: bytes) -> list[RawMessage]:
        """Parse every complete chunk available; keep the incomplete tail for the next call."""
        self.bytes_received += len(data)
        work: bytes | bytearray
        if self._buf:
            self._buf += data
            work = self._buf
        else:
            work = data  # common case: nothing buffered, parse the caller's bytes without copying
        out: list[RawMessage] = []
        mv = memoryview(work)
        pos = 0
        try:
            pos = self._parse(work, mv, out)
        finally:
            if work is self._buf:
                mv.release()
                if pos:
                    del self._buf[:pos]
            else:
                self._buf = bytearray(mv[pos:])
                mv.release()
        return out

    def _parse(self, buf: bytes | bytearray, mv: memoryview, out: list[RawMessage]) -> int:
        """Consume complete chunks from ``buf``; return the offset of the first unconsumed byte."""
        streams = self._streams
        n = len(buf)
        pos = 0
        while pos < n:
            # --- basic header
            b0 = buf[pos]
            fmt = b0 >> 6
            csid = b0 & 0x3F
            p = pos + 1
            if csid == 0:
                if p + 1 > n:
                    break
                csid = 64 + buf[p]
                p += 1
            elif csid == 1:
                if p + 2 > n:
                    break
                csid = 64 + buf[p] + (buf[p + 1] << 8)
                p += 2

            st = streams.get(csid)
            if fmt != 0 and st is None:
                raise ProtocolError(f"chunk fmt {fmt} on chunk stream {csid} which has no previous header")

            # --- message header
            ts_field = 0
            length = type_id = stream_id = 0
            if fmt == 0:
                if p + 11 > n:
                    break
                ts_hi, ts_lo, len_hi, len_lo, type_id = _MH_TS_LEN_TYPE.unpack_from(buf, p)
                (stream_id,) = _U32LE.unpack_from(buf, p + 7)
                ts_field = ts_hi << 16 | ts_lo
                length = len_hi << 16 | len_lo
                p += 11
            elif fmt == 1:
                if p + 7 > n:
                    break
                ts_hi, ts_lo, len_hi, len_lo, type_id = _MH_TS_LEN_TYPE.unpack_from(buf, p)
                ts_field = ts_hi << 16 | ts_lo
                length = len_hi << 16 | len_lo
                p += 7
            elif fmt == 2:
                if p + 3 > n:
                    break
                ts_hi, ts_lo = _MH_TS.unpack_from(buf, p)
                ts_field = ts_hi << 16 | ts_lo
                p += 3

            if fmt != 3:
                if st is not None and st.received:
                    raise ProtocolError(
                        f"chunk fmt {fmt} on chunk stream {csid} while a message is partially assembled "
                        f"({st.received} of {st.length} bytes)"
                    )
                if fmt <= 1 and length > self.max_message_size:
                    raise ProtocolError(
                        f"message length {length} on chunk stream {csid} exceeds the limit "
                        f"of {self.max_message_size} bytes"
                    )
                if st is None and len(streams) >= self.max_chunk_streams:
                    raise ProtocolError(f"too many chunk streams in use (limit {self.max_chunk_streams})")
                extended = ts_field == _EXTENDED
            else:
                assert st is not None
                extended = st.extended
                ts_field = st.ts_field  # a new message repeats the last delta (or the extended value below)

            # --- extended timestamp
            if extended:
                if p + 4 > n:
                    break
                (ts_field,) = _U32BE.unpack_from(buf, p)
                p += 4

            # --- how much chunk data this chunk carries
            continuing = fmt == 3 and st is not None and st.received > 0
            if continuing:
                assert st is not None
                remaining = st.length - st.received
            elif fmt <= 1:
                remaining = length
            else:
                assert st is not None
                remaining = st.length
            take = remaining if remaining < self.chunk_size else self.chunk_size
            if p + take > n:
                break

            # --- the whole chunk is here: commit it to the chunk stream state
            if st is None:
                st = _ChunkStreamState()
                streams[csid] = st
            if not continuing:
                if fmt == 0:
                    st.timestamp = ts_field
                else:
                    st.timestamp = (st.timestamp + ts_field) & _TS_MASK
                st.ts_field = ts_field
                if fmt <= 1:
                    st.length = length
                    st.type_id = type_id
                    if fmt == 0:
                        st.stream_id = stream_id
                if fmt != 3:
                    st.extended = extended
            end = p + take
            pos = end

            if st.received == 0 and take == st.length:
                payload = bytes(mv[p:end])  # message in a single chunk (or empty)
            else:
                st.parts.append(bytes(mv[p:end]))
                st.received += take
                if st.received < st.length:
                    continue
                payload = b"".join(st.parts)
                st.parts = []
                st.received = 0

            msg = RawMessage(csid, st.timestamp, st.type_id, st.stream_id, payload)
            out.append(msg)
            if msg.type_id == SET_CHUNK_SIZE:
                self._apply_set_chunk_size(payload)
            elif msg.type_id == ABORT:
                self._apply_abort(payload)
        return pos

    def _apply_set_chunk_size(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise ProtocolError(f"Set Chunk Size payload is {len(payload)} bytes, expected 4")
        (size,) = _U32BE.unpack_from(payload, 0)
        if size & 0x80000000:
            raise ProtocolError(f"Set Chunk Size value {size:#x} has the reserved top bit set")
        if size < self.min_chunk_size:
            # Tiny chunks make the parser loop once per few bytes: one peer could hold the event loop.
            raise ProtocolError(f"Set Chunk Size value {size} is below the minimum of {self.min_chunk_size}")
        if size > self.max_chunk_size:
            raise ProtocolError(f"Set Chunk Size value {size} exceeds the limit of {self.max_chunk_size}")
        self.chunk_size = size

    def _apply_abort(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise ProtocolError(f"Abort payload is {len(payload)} bytes, expected 4")
        (target,) = _U32BE.unpack_from(payload, 0)
        st = self._streams.get(target)
        if st is not None:
            st.parts = []
            st.received = 0


def _basic_header(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes((fmt << 6 | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    rest = csid - 64
    return bytes((fmt << 6 | 1, rest & 0xFF, rest >> 8))


def encode_message(csid: int, timestamp: int, type_id: int, stream_id: int, payload: bytes, chunk_size: int) -> bytes:
    """Encode one message as chunks: a fmt-0 first chunk, then fmt-3 continuations.

    ``timestamp`` is taken modulo 2**32; at or above 0xFFFFFF it is sent as an extended
    timestamp, repeated on every continuation chunk.
    """
    if not MIN_CSID <= csid <= MAX_CSID:
        raise ValueError(f"chunk stream id must be in {MIN_CSID}..{MAX_CSID}, got {csid}")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE_LIMIT:
        raise ValueError(f"chunk size must be in 1..{MAX_CHUNK_SIZE_LIMIT}, got {chunk_size}")
    if not 0 <= type_id <= 0xFF:
        raise ValueError(f"message type id must be in 0..255, got {type_id}")
    if not 0 <= stream_id <= 0xFFFFFFFF:
        raise ValueError(f"message stream id must fit in 32 bits, got {stream_id}")
    length = len(payload)
    if length > MAX_MESSAGE_LENGTH:
        raise ValueError(f"message payload of {length} bytes does not fit the 24-bit length field")
    ts = timestamp & _TS_MASK
    if ts >= _EXTENDED:
        ext = _U32BE.pack(ts)
        ts_field = _EXTENDED
    else:
        ext = b""
        ts_field = ts
    header = b"".join(
        (
            _basic_header(0, csid),
            _MH_TS_LEN_TYPE.pack(ts_field >> 16, ts_field & 0xFFFF, length >> 16, length & 0xFFFF, type_id),
            _U32LE.pack(stream_id),
            ext,
        )
    )
    if length <= chunk_size:
        return header + payload
    cont = _basic_header(3, csid) + ext
    view = memoryview(payload)
    parts: list[bytes | memoryview] = [header, view[:chunk_size]]
    for off in range(chunk_size, length, chunk_size):
        parts.append(cont)
        parts.append(view[off : off + chunk_size])
    return b"".join(parts)


class ChunkWriter:
    """Outbound side: remembers the chunk size announced to the peer."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE_LIMIT:
            raise ValueError(f"chunk size must be in 1..{MAX_CHUNK_SIZE_LIMIT}, got {chunk_size}")
        self.chunk_size: int = chunk_size

    def write(self, csid: int, timestamp: int, type_id: int, stream_id: int, payload: bytes) -> bytes:
        return encode_message(csid, timestamp, type_id, stream_id, payload, self.chunk_size)

    def set_chunk_size(self, size: int) -> bytes:
        """Return the Set Chunk Size message (encoded with the old size) and switch to ``size``."""
        if not 1 <= size <= MAX_CHUNK_SIZE_LIMIT:
            raise ValueError(f"chunk size must be in 1..{MAX_CHUNK_SIZE_LIMIT}, got {size}")
        data = encode_message(2, 0, SET_CHUNK_SIZE, 0, _U32BE.pack(size), self.chunk_size)
        self.chunk_size = size
        return data
