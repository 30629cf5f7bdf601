"""Tests for the sans-IO RTMP chunk stream reader and writer."""

from __future__ import annotations

import random
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.rtmp.chunk import (
    ABORT,
    DEFAULT_CHUNK_SIZE,
    SET_CHUNK_SIZE,
    ChunkReader,
    ChunkWriter,
    RawMessage,
    encode_message,
)
from common.rtmp.errors import ProtocolError

# ---------------------------------------------------------------- helpers to hand-build chunks


def u24(v: int) -> bytes:
    return v.to_bytes(3, "big")


def u32be(v: int) -> bytes:
    return v.to_bytes(4, "big")


def u32le(v: int) -> bytes:
    return v.to_bytes(4, "little")


def basic(fmt: int, csid: int) -> bytes:
    """Basic header, written out independently of the module under test."""
    if csid <= 63:
        return bytes([(fmt << 6) | csid])
    if csid <= 319:
        return bytes([fmt << 6, csid - 64])
    return bytes([(fmt << 6) | 1, (csid - 64) % 256, (csid - 64) // 256])


def h0(csid: int, ts: int, length: int, type_id: int, sid: int) -> bytes:
    return basic(0, csid) + u24(ts) + u24(length) + bytes([type_id]) + u32le(sid)


def h1(csid: int, delta: int, length: int, type_id: int) -> bytes:
    return basic(1, csid) + u24(delta) + u24(length) + bytes([type_id])


def h2(csid: int, delta: int) -> bytes:
    return basic(2, csid) + u24(delta)


def h3(csid: int) -> bytes:
    return basic(3, csid)


def feed_all(reader: ChunkReader, data: bytes, step: int | None = None) -> list[RawMessage]:
    if step is None:
        return reader.feed(data)
    out: list[RawMessage] = []
    for i in range(0, len(data), step):
        out.extend(reader.feed(data[i : i + step]))
    return out


# ---------------------------------------------------------------- basic header golden vectors


@pytest.mark.parametrize(
    ("fmt", "csid", "expected"),
    [
        (0, 2, b"\x02"),
        (0, 3, b"\x03"),
        (1, 4, b"\x44"),
        (2, 5, b"\x85"),
        (3, 63, b"\xff"),
        (0, 64, b"\x00\x00"),
        (1, 65, b"\x40\x01"),
        (3, 319, b"\xc0\xff"),
        (0, 319, b"\x00\xff"),
        (0, 320, b"\x01\x00\x01"),
        (2, 321, b"\x81\x01\x01"),
        (3, 65599, b"\xc1\xff\xff"),
    ],
)
def test_basic_header_helper_golden(fmt: int, csid: int, expected: bytes) -> None:
    assert basic(fmt, csid) == expected


@pytest.mark.parametrize(
    ("csid", "prefix"),
    [
        (2, b"\x02"),
        (63, b"\x3f"),
        (64, b"\x00\x00"),
        (319, b"\x00\xff"),
        (320, b"\x01\x00\x01"),
        (65599, b"\x01\xff\xff"),
    ],
)
def test_encode_message_basic_header_forms(csid: int, prefix: bytes) -> None:
    data = encode_message(csid, 0x010203, 9, 1, b"xyz", 128)
    assert data == prefix + b"\x01\x02\x03" + b"\x00\x00\x03" + b"\x09" + b"\x01\x00\x00\x00" + b"xyz"
    assert ChunkReader().feed(data) == [RawMessage(csid, 0x010203, 9, 1, b"xyz")]


@pytest.mark.parametrize("csid", [2, 3, 63, 64, 200, 319, 320, 1000, 65599])
@pytest.mark.parametrize("fmt", [0, 1, 2, 3])
def test_reader_header_forms_each_csid_range(fmt: int, csid: int) -> None:
    """First message fmt 0, second message uses ``fmt``; check every basic header form."""
    r = ChunkReader()
    data = h0(csid, 1000, 2, 8, 7) + b"ab"
    if fmt == 0:
        data += h0(csid, 5000, 3, 9, 8) + b"cde"
        expected = RawMessage(csid, 5000, 9, 8, b"cde")
    elif fmt == 1:
        data += h1(csid, 40, 3, 9) + b"cde"
        expected = RawMessage(csid, 1040, 9, 7, b"cde")
    elif fmt == 2:
        data += h2(csid, 40) + b"fg"
        expected = RawMessage(csid, 1040, 8, 7, b"fg")
    else:
        # fmt 3 new message after a fmt 0: previous timestamp + last timestamp field (absolute 1000)
        data += h3(csid) + b"hi"
        expected = RawMessage(csid, 2000, 8, 7, b"hi")
    assert r.feed(data) == [RawMessage(csid, 1000, 8, 7, b"ab"), expected]


def test_fmt0_golden_vector() -> None:
    data = bytes.fromhex("03 000064 000005 14 01000000") + b"hello"
    assert ChunkReader().feed(data) == [RawMessage(3, 100, 20, 1, b"hello")]


def test_stream_id_is_little_endian() -> None:
    data = bytes.fromhex("04 000000 000001 09 01020304") + b"z"
    assert ChunkReader().feed(data) == [RawMessage(4, 0, 9, 0x04030201, b"z")]


def test_timestamp_deltas_and_fmt3_new_message_rule() -> None:
    csid = 6
    data = (
        h0(csid, 1000, 3, 9, 1)
        + b"abc"
        + h1(csid, 33, 2, 8)  # ts 1033, new length/type
        + b"de"
        + h2(csid, 10)  # ts 1043, same length/type
        + b"fg"
        + h3(csid)  # new message: ts += last field (10) -> 1053
        + b"hi"
        + h3(csid)  # -> 1063
        + b"jk"
        + h1(csid, 0, 1, 9)  # delta 0 -> 1063
        + b"l"
        + h3(csid)  # last field 0 -> 1063
        + b"m"
    )
    msgs = ChunkReader().feed(data)
    assert msgs == [
        RawMessage(csid, 1000, 9, 1, b"abc"),
        RawMessage(csid, 1033, 8, 1, b"de"),
        RawMessage(csid, 1043, 8, 1, b"fg"),
        RawMessage(csid, 1053, 8, 1, b"hi"),
        RawMessage(csid, 1063, 8, 1, b"jk"),
        RawMessage(csid, 1063, 9, 1, b"l"),
        RawMessage(csid, 1063, 9, 1, b"m"),
    ]


def test_timestamp_wraps_modulo_2_32() -> None:
    data = h0(5, 0xFFFFFF, 1, 9, 1) + u32be(0xFFFFFFF0) + b"a" + h2(5, 0x20) + b"b"
    assert ChunkReader().feed(data) == [
        RawMessage(5, 0xFFFFFFF0, 9, 1, b"a"),
        RawMessage(5, 0x10, 9, 1, b"b"),
    ]


def test_continuation_keeps_first_chunk_timestamp() -> None:
    payload = bytes(range(200))
    data = h0(4, 77, 200, 9, 1) + payload[:128] + h3(4) + payload[128:]
    assert ChunkReader().feed(data) == [RawMessage(4, 77, 9, 1, payload)]


def test_zero_length_message_completes_on_header() -> None:
    data = h0(3, 5, 0, 20, 0) + h3(3) + h0(3, 9, 1, 20, 0) + b"x"
    assert ChunkReader().feed(data) == [
        RawMessage(3, 5, 20, 0, b""),
        RawMessage(3, 10, 20, 0, b""),
        RawMessage(3, 9, 20, 0, b"x"),
    ]


# ---------------------------------------------------------------- extended timestamps


def test_extended_timestamp_fmt0_repeated_on_continuations() -> None:
    payload = bytes(i % 251 for i in range(300))
    ts = 0x01000000
    data = (
        h0(4, 0xFFFFFF, 300, 9, 1)
        + u32be(ts)
        + payload[:128]
        + h3(4)
        + u32be(ts)
        + payload[128:256]
        + h3(4)
        + u32be(ts)
        + payload[256:]
    )
    assert ChunkReader().feed(data) == [RawMessage(4, ts, 9, 1, payload)]
    assert feed_all(ChunkReader(), data, step=1) == [RawMessage(4, ts, 9, 1, payload)]
    assert encode_message(4, ts, 9, 1, payload, 128) == data


def test_extended_timestamp_on_fmt3_new_message_and_deltas() -> None:
    # fmt 1 with an extended delta, then a fmt 3 new message repeating it (with the extended field).
    data = (
        h0(7, 10, 1, 9, 1)
        + b"a"
        + h1(7, 0xFFFFFF, 1, 9)
        + u32be(0x01000000)
        + b"b"
        + h3(7)
        + u32be(0x01000000)
        + b"c"
        + h2(7, 5)  # back to a normal delta: no extended field afterwards
        + b"d"
        + h3(7)
        + b"e"
    )
    assert ChunkReader().feed(data) == [
        RawMessage(7, 10, 9, 1, b"a"),
        RawMessage(7, 0x0100000A, 9, 1, b"b"),
        RawMessage(7, 0x0200000A, 9, 1, b"c"),
        RawMessage(7, 0x0200000F, 9, 1, b"d"),
        RawMessage(7, 0x02000014, 9, 1, b"e"),
    ]


def test_extended_timestamp_exact_boundary() -> None:
    # 0xFFFFFF itself must be carried as an extended timestamp; 0xFFFFFE fits the 24-bit field.
    assert encode_message(3, 0xFFFFFE, 9, 0, b"", 128) == h0(3, 0xFFFFFE, 0, 9, 0)
    assert encode_message(3, 0xFFFFFF, 9, 0, b"", 128) == h0(3, 0xFFFFFF, 0, 9, 0) + u32be(0xFFFFFF)
    assert encode_message(3, 2**32 + 5, 9, 0, b"", 128) == h0(3, 5, 0, 9, 0)
    for ts in (0xFFFFFE, 0xFFFFFF, 0xFFFFFFFF):
        data = encode_message(3, ts, 9, 0, b"q", 128)
        assert ChunkReader().feed(data) == [RawMessage(3, ts, 9, 0, b"q")]


# ---------------------------------------------------------------- writer


def test_encode_message_golden_split() -> None:
    data = encode_message(5, 1000, 8, 1, b"ABCDEFGHIJ", 4)
    assert data == (
        b"\x05" + b"\x00\x03\xe8" + b"\x00\x00\x0a" + b"\x08" + b"\x01\x00\x00\x00" + b"ABCD"
        b"\xc5" + b"EFGH" + b"\xc5" + b"IJ"
    )
    r = ChunkReader()
    r.chunk_size = 4
    assert r.feed(data) == [RawMessage(5, 1000, 8, 1, b"ABCDEFGHIJ")]


def test_encode_message_golden_split_long_csid() -> None:
    data = encode_message(400, 1, 9, 0, b"abcde", 2)
    assert data == b"\x01\x50\x01" + bytes.fromhex("000001 000005 09 00000000") + b"ab" + (
        b"\xc1\x50\x01cd" + b"\xc1\x50\x01e"
    )


def test_encode_message_exact_multiple_of_chunk_size() -> None:
    data = encode_message(3, 0, 9, 0, b"abcd", 2)
    assert data == h0(3, 0, 4, 9, 0) + b"ab" + h3(3) + b"cd"


@pytest.mark.parametrize("csid", [-1, 0, 1, 65600, 10**6])
def test_encode_message_rejects_bad_csid(csid: int) -> None:
    with pytest.raises(ValueError):
        encode_message(csid, 0, 9, 0, b"", 128)


def test_encode_message_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        encode_message(3, 0, 9, 0, b"", 0)
    with pytest.raises(ValueError):
        encode_message(3, 0, 256, 0, b"", 128)
    with pytest.raises(ValueError):
        encode_message(3, 0, 9, 2**32, b"", 128)


def test_chunk_writer_set_chunk_size_uses_old_size() -> None:
    w = ChunkWriter()
    assert w.chunk_size == DEFAULT_CHUNK_SIZE
    scs = w.set_chunk_size(4096)
    assert scs == h0(2, 0, 4, SET_CHUNK_SIZE, 0) + u32be(4096)
    assert w.chunk_size == 4096
    payload = bytes(5000)
    msg = w.write(6, 40, 9, 1, payload)
    assert msg == encode_message(6, 40, 9, 1, payload, 4096)
    # Set Chunk Size with a tiny old size is itself split with the old size.
    w2 = ChunkWriter(2)
    assert w2.set_chunk_size(100) == h0(2, 0, 4, 1, 0) + b"\x00\x00" + h3(2) + b"\x00\x64"
    with pytest.raises(ValueError):
        w.set_chunk_size(0)
    with pytest.raises(ValueError):
        w.set_chunk_size(0x80000000)


# ---------------------------------------------------------------- control messages


def test_set_chunk_size_applied_mid_stream_same_feed() -> None:
    w = ChunkWriter()
    big = bytes(i % 256 for i in range(1000))
    data = w.write(3, 0, 9, 1, big[:300]) + w.set_chunk_size(500) + w.write(3, 10, 9, 1, big)
    r = ChunkReader()
    msgs = r.feed(data)
    assert msgs == [
        RawMessage(3, 0, 9, 1, big[:300]),
        RawMessage(2, 0, SET_CHUNK_SIZE, 0, u32be(500)),
        RawMessage(3, 10, 9, 1, big),
    ]
    assert r.chunk_size == 500
    # Same thing byte by byte.
    r2 = ChunkReader()
    assert feed_all(r2, data, step=1) == msgs
    assert r2.bytes_received == len(data)


def test_set_chunk_size_applies_to_messages_in_progress_on_other_csids() -> None:
    payload = bytes(range(10))
    data = (
        h0(5, 0, 10, 9, 1)
        + payload[:4]  # chunk size 4 (set below before feeding)
        + h0(2, 0, 4, SET_CHUNK_SIZE, 0)
        + u32be(6)
        + h3(5)
        + payload[4:]  # remaining 6 bytes in one chunk of the new size
    )
    r = ChunkReader()
    r.chunk_size = 4
    assert r.feed(data) == [
        RawMessage(2, 0, SET_CHUNK_SIZE, 0, u32be(6)),
        RawMessage(5, 0, 9, 1, payload),
    ]


@pytest.mark.parametrize("value", [0, 0x80000000, 0xFFFFFFFF, 65537])
def test_set_chunk_size_bad_values(value: int) -> None:
    data = h0(2, 0, 4, SET_CHUNK_SIZE, 0) + u32be(value)
    with pytest.raises(ProtocolError):
        ChunkReader().feed(data)


def test_set_chunk_size_respects_configured_limit() -> None:
    data = h0(2, 0, 4, SET_CHUNK_SIZE, 0) + u32be(2000)
    with pytest.raises(ProtocolError, match="2000"):
        ChunkReader(max_chunk_size=1024).feed(data)
    r = ChunkReader(max_chunk_size=2000)
    r.feed(data)
    assert r.chunk_size == 2000


def test_set_chunk_size_short_payload() -> None:
    with pytest.raises(ProtocolError):
        ChunkReader().feed(h0(2, 0, 2, SET_CHUNK_SIZE, 0) + b"\x00\x10")


def test_abort_discards_partial_message() -> None:
    payload = bytes(range(200))
    data = (
        h0(4, 50, 200, 9, 1)
        + payload[:128]  # partial
        + h0(2, 0, 4, ABORT, 0)
        + u32be(4)
        + h1(4, 10, 3, 8)  # allowed again: nothing in progress on csid 4
        + b"new"
    )
    r = ChunkReader()
    assert r.feed(data) == [
        RawMessage(2, 0, ABORT, 0, u32be(4)),
        RawMessage(4, 60, 8, 1, b"new"),
    ]


def test_abort_unknown_csid_is_harmless() -> None:
    data = h0(2, 0, 4, ABORT, 0) + u32be(99) + h0(3, 1, 1, 9, 0) + b"x"
    assert ChunkReader().feed(data) == [RawMessage(2, 0, ABORT, 0, u32be(99)), RawMessage(3, 1, 9, 0, b"x")]


def test_abort_short_payload() -> None:
    with pytest.raises(ProtocolError):
        ChunkReader().feed(h0(2, 0, 1, ABORT, 0) + b"\x04")


# ---------------------------------------------------------------- errors and bounds


def test_oversize_message_length_rejected_on_header() -> None:
    r = ChunkReader(max_message_size=1000)
    with pytest.raises(ProtocolError, match="1001"):
        r.feed(h0(3, 0, 1001, 9, 1))  # raised as soon as the header is in; no payload needed
    r = ChunkReader(max_message_size=1000)
    r.feed(h0(3, 0, 10, 9, 1) + bytes(10))
    with pytest.raises(ProtocolError):
        r.feed(h1(3, 0, 1001, 9))


def test_message_of_exactly_max_size_accepted() -> None:
    r = ChunkReader(max_message_size=1000)
    r.chunk_size = 4096
    assert r.feed(h0(3, 0, 1000, 9, 1) + bytes(1000)) == [RawMessage(3, 0, 9, 1, bytes(1000))]


def test_too_many_chunk_streams() -> None:
    r = ChunkReader(max_chunk_streams=3)
    r.feed(h0(3, 0, 0, 9, 0) + h0(4, 0, 0, 9, 0) + h0(5, 0, 0, 9, 0) + h0(3, 0, 0, 9, 0))
    with pytest.raises(ProtocolError, match="chunk streams"):
        r.feed(h0(6, 0, 0, 9, 0))


def test_default_chunk_stream_limit() -> None:
    r = ChunkReader()
    data = b"".join(h0(c, 0, 0, 9, 0) for c in range(2, 66))
    assert len(r.feed(data)) == 64
    with pytest.raises(ProtocolError):
        r.feed(h0(66, 0, 0, 9, 0))


@pytest.mark.parametrize("fmt", [1, 2, 3])
def test_fmt_without_previous_header(fmt: int) -> None:
    data = {1: h1(3, 0, 1, 9) + b"x", 2: h2(3, 0) + b"x", 3: h3(3) + b"x"}[fmt]
    with pytest.raises(ProtocolError, match="no previous header"):
        ChunkReader().feed(data)


@pytest.mark.parametrize("fmt", [0, 1, 2])
def test_new_header_while_message_partial(fmt: int) -> None:
    r = ChunkReader()
    r.feed(h0(3, 0, 200, 9, 1) + bytes(128))
    data = {0: h0(3, 0, 1, 9, 1), 1: h1(3, 0, 1, 9), 2: h2(3, 0)}[fmt] + b"x"
    with pytest.raises(ProtocolError, match="partially assembled"):
        r.feed(data)


def test_constructor_validates_limits() -> None:
    with pytest.raises(ValueError):
        ChunkReader(max_chunk_size=0)
    with pytest.raises(ValueError):
        ChunkReader(max_chunk_size=2**31)
    with pytest.raises(ValueError):
        ChunkReader(max_chunk_streams=0)


# ---------------------------------------------------------------- buffering and performance


def test_buffer_is_consumed_and_bytes_received_counts() -> None:
    payload = bytes(300)
    data = encode_message(3, 0, 9, 1, payload, 128)
    r = ChunkReader()
    assert r.feed(data[:-5]) == []
    assert r.bytes_received == len(data) - 5
    # Only the last incomplete chunk (header + 39 of 44 bytes) stays buffered.
    assert len(r._buf) == 1 + 44 - 5
    assert r.feed(data[-5:]) == [RawMessage(3, 0, 9, 1, payload)]
    assert len(r._buf) == 0
    assert r.bytes_received == len(data)


def test_large_payloads_parse_fast() -> None:
    w = ChunkWriter(4096)
    payload = random.Random(1).randbytes(200_000)
    one = w.write(6, 0, 9, 1, payload)
    data = one * 50  # 10 MB of chunked media
    r = ChunkReader()
    r.chunk_size = 4096
    start = time.perf_counter()
    msgs = r.feed(data)
    # ...and again in network-sized pieces
    r2 = ChunkReader()
    r2.chunk_size = 4096
    msgs2 = feed_all(r2, data, step=65536)
    elapsed = time.perf_counter() - start
    assert len(msgs) == len(msgs2) == 50
    assert all(m.payload == payload for m in msgs + msgs2)
    assert elapsed < 1.0


# ---------------------------------------------------------------- property tests

csids = st.one_of(st.integers(2, 63), st.integers(64, 319), st.integers(320, 65599))
timestamps = st.one_of(
    st.integers(0, 0xFFFFFE),
    st.integers(0xFFFFFF, 0xFFFFFFFF),
    st.sampled_from([0, 0xFFFFFE, 0xFFFFFF, 0x1000000, 0xFFFFFFFF]),
)
message_specs = st.tuples(
    csids,
    timestamps,
    st.integers(3, 255),  # not Set Chunk Size / Abort
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 3000),
)


def split_chunks(data: bytes, csid: int, timestamp: int, length: int, chunk_size: int) -> list[bytes]:
    """Split one encode_message() result into its chunks (layout computed independently)."""
    blen = 1 if csid < 64 else 2 if csid < 320 else 3
    ext = 4 if timestamp % 2**32 >= 0xFFFFFF else 0
    chunks: list[bytes] = []
    pos = 0
    first_len = blen + 11 + ext + min(chunk_size, length)
    chunks.append(data[pos : pos + first_len])
    pos += first_len
    sent = min(chunk_size, length)
    while sent < length:
        take = min(chunk_size, length - sent)
        chunks.append(data[pos : pos + blen + ext + take])
        pos += blen + ext + take
        sent += take
    assert pos == len(data)
    return chunks


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(message_specs, min_size=1, max_size=8),
    csid_pool=st.lists(csids, min_size=1, max_size=5, unique=True),
    chunk_size=st.one_of(st.integers(1, 4096), st.sampled_from([1, 7, 128, 4096])),
    rnd=st.randoms(use_true_random=False),
)
def test_round_trip_interleaved(
    specs: list[tuple[int, int, int, int, int]],
    csid_pool: list[int],
    chunk_size: int,
    rnd: random.Random,
) -> None:
    # Draw csids from a small pool so several messages share a chunk stream.
    messages = [
        RawMessage(
            csid if i % 2 else csid_pool[csid % len(csid_pool)],
            ts,
            type_id,
            sid,
            rnd.randbytes(size),
        )
        for i, (csid, ts, type_id, sid, size) in enumerate(specs)
    ]
    writer = ChunkWriter()
    prefix = writer.set_chunk_size(chunk_size)

    # Each chunk stream's chunk sequence, in message order.
    queues: dict[int, list[bytes]] = {}
    for m in messages:
        enc = writer.write(m.csid, m.timestamp, m.type_id, m.stream_id, m.payload)
        queues.setdefault(m.csid, []).extend(split_chunks(enc, m.csid, m.timestamp, len(m.payload), chunk_size))
    # Merge chunk sequences of distinct csids in random order, preserving each csid's order.
    cursors = {c: 0 for c in queues}
    merged: list[bytes] = [prefix]
    live = [c for c in queues if queues[c]]
    while live:
        c = rnd.choice(live)
        merged.append(queues[c][cursors[c]])
        cursors[c] += 1
        if cursors[c] == len(queues[c]):
            live.remove(c)
    stream = b"".join(merged)

    reader = ChunkReader(max_chunk_size=4096)
    out: list[RawMessage] = []
    pos = 0
    while pos < len(stream):
        step = rnd.choice([1, 2, 3, 5, 11, 64, 500, 4097, 20000])
        out.extend(reader.feed(stream[pos : pos + step]))
        pos += step
    assert reader.bytes_received == len(stream)
    assert reader.chunk_size == chunk_size
    assert out[0] == RawMessage(2, 0, SET_CHUNK_SIZE, 0, chunk_size.to_bytes(4, "big"))

    def per_csid(msgs: list[RawMessage]) -> dict[int, list[RawMessage]]:
        d: dict[int, list[RawMessage]] = {}
        for m in msgs:
            d.setdefault(m.csid, []).append(m)
        return d

    expected = [RawMessage(m.csid, m.timestamp % 2**32, m.type_id, m.stream_id, m.payload) for m in messages]
    assert len(out) == len(expected) + 1
    assert per_csid(out[1:]) == per_csid(expected)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=400), cut=st.integers(1, 50))
def test_fuzz_arbitrary_bytes_only_protocol_error(data: bytes, cut: int) -> None:
    reader = ChunkReader(max_chunk_size=256, max_message_size=512, max_chunk_streams=4)
    try:
        for i in range(0, len(data), cut):
            reader.feed(data[i : i + cut])
    except ProtocolError:
        pass


@settings(max_examples=150, deadline=None)
@given(
    tail=st.binary(max_size=300),
    prefix_csid=st.sampled_from([2, 3, 64, 400]),
    small_chunks=st.booleans(),
)
def test_fuzz_after_valid_prefix_only_protocol_error(tail: bytes, prefix_csid: int, small_chunks: bool) -> None:
    """Reach deeper states (known csids, partial messages, small chunk size) before the garbage."""
    w = ChunkWriter()
    prefix = w.set_chunk_size(3) if small_chunks else b""
    prefix += w.write(prefix_csid, 0xFFFFFF, 9, 1, b"abcdefgh")
    prefix += w.write(5, 10, 8, 1, b"0123456789")[:-2]  # leave a partial message on csid 5
    reader = ChunkReader(max_chunk_size=256, max_message_size=512, max_chunk_streams=6)
    try:
        reader.feed(prefix)
        reader.feed(tail)
    except ProtocolError:
        pass


@settings(max_examples=60, deadline=None)
@given(
    raw=st.lists(
        st.tuples(st.sampled_from([0, 1, 2, 3]), st.sampled_from([2, 3, 64, 320]), st.binary(max_size=20)),
        max_size=30,
    )
)
def test_fuzz_structured_chunks_only_protocol_error(raw: list[tuple[int, int, bytes]]) -> None:
    """Sequences of plausible headers with random bodies: drives the state machine harder than noise."""
    parts = []
    for fmt, csid, body in raw:
        parts.append(basic(fmt, csid) + body)
    reader = ChunkReader(max_chunk_size=64, max_message_size=64, max_chunk_streams=3)
    try:
        reader.feed(b"".join(parts))
    except ProtocolError:
        pass


def test_struct_sanity() -> None:
    # The hand-built helpers agree with a struct-based layout.
    assert h0(3, 1, 2, 3, 4) == b"\x03" + struct.pack(">I", 1)[1:] + struct.pack(">I", 2)[1:] + b"\x03" + (
        struct.pack("<I", 4)
    )
