"""Tests for the sans-IO RTMP handshake."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.rtmp.chunk import ChunkReader, RawMessage, encode_message
from common.rtmp.errors import ProtocolError
from common.rtmp.handshake import HANDSHAKE_SIZE, RTMP_VERSION, ClientHandshake, ServerHandshake


def fixed_random(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


def fragments(data: bytes, rnd: random.Random) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        step = rnd.choice([1, 2, 7, 100, 1535, 1536, 1537, 3000, 10000])
        out.append(data[pos : pos + step])
        pos += step
    return out


def feed_server(server: ServerHandshake, data: bytes, rnd: random.Random) -> tuple[bytes, bytes]:
    sent = b""
    leftover = b""
    for frag in fragments(data, rnd):
        out, rest = server.receive_data(frag)
        sent += out
        if rest:
            assert server.done
        leftover += rest
    return sent, leftover


def test_constants() -> None:
    assert HANDSHAKE_SIZE == 1536
    assert RTMP_VERSION == 3


def test_client_initiate_layout() -> None:
    client = ClientHandshake(random_bytes=fixed_random(1), epoch_ms=0x01020304)
    c0c1 = client.initiate()
    assert len(c0c1) == 1 + HANDSHAKE_SIZE
    assert c0c1[0] == 3
    assert c0c1[1:5] == b"\x01\x02\x03\x04"
    assert c0c1[5:9] == b"\x00\x00\x00\x00"
    assert c0c1[9:] == fixed_random(1)(1528)
    with pytest.raises(RuntimeError):
        client.initiate()


def test_server_reply_layout() -> None:
    c1 = bytes(range(256)) * 6
    server = ServerHandshake(random_bytes=fixed_random(2), epoch_ms=2**32 + 7)
    out, leftover = server.receive_data(b"\x03" + c1)
    assert leftover == b""
    assert not server.done
    assert len(out) == 1 + 2 * HANDSHAKE_SIZE  # S0 + S1 + S2 together
    s0, s1, s2 = out[0], out[1 : 1 + HANDSHAKE_SIZE], out[1 + HANDSHAKE_SIZE :]
    assert s0 == 3
    assert s1[:4] == b"\x00\x00\x00\x07"  # time modulo 2**32
    assert s1[4:8] == b"\x00\x00\x00\x00"  # zero version -> simple handshake in FFmpeg/librtmp
    assert s1[8:] == fixed_random(2)(1528)
    assert s2 == c1
    # C2 content is not validated
    out, leftover = server.receive_data(b"\xaa" * HANDSHAKE_SIZE + b"chunkdata")
    assert out == b""
    assert leftover == b"chunkdata"
    assert server.done
    assert server.receive_data(b"more") == (b"", b"more")


def test_server_one_byte_at_a_time() -> None:
    server = ServerHandshake()
    c1 = bytes(HANDSHAKE_SIZE)
    stream = b"\x03" + c1 + b"\x01" * HANDSHAKE_SIZE + b"XY"
    sent = b""
    leftover = b""
    for i in range(len(stream)):
        out, rest = server.receive_data(stream[i : i + 1])
        sent += out
        leftover += rest
    assert len(sent) == 1 + 2 * HANDSHAKE_SIZE
    assert sent[1 + HANDSHAKE_SIZE :] == c1
    assert leftover == b"XY"
    assert server.done


def test_server_c0_c1_c2_in_one_piece() -> None:
    server = ServerHandshake()
    out, leftover = server.receive_data(b"\x03" + bytes(HANDSHAKE_SIZE) * 2 + b"tail")
    assert len(out) == 1 + 2 * HANDSHAKE_SIZE
    assert leftover == b"tail"
    assert server.done


@pytest.mark.parametrize("version", [0, 1, 2, 4, 0x06, 0x08, 0x16, 0xFF, ord("G")])
def test_server_rejects_bad_version(version: int) -> None:
    server = ServerHandshake()
    with pytest.raises(ProtocolError, match=f"{version:#04x}") as exc:
        server.receive_data(bytes([version]))  # rejected as soon as C0 is seen
    if version in (0x06, 0x08):
        assert "RTMPE" in str(exc.value)


def test_client_rejects_bad_s0() -> None:
    client = ClientHandshake()
    client.initiate()
    with pytest.raises(ProtocolError, match="S0"):
        client.receive_data(b"\x06" + bytes(10))


def test_client_receive_before_initiate() -> None:
    with pytest.raises(RuntimeError):
        ClientHandshake().receive_data(b"\x03")


def test_client_after_done_passes_data_through() -> None:
    client = ClientHandshake()
    client.initiate()
    s = b"\x03" + b"\x11" * HANDSHAKE_SIZE + b"\x22" * HANDSHAKE_SIZE
    c2, leftover = client.receive_data(s)
    assert c2 == b"\x11" * HANDSHAKE_SIZE
    assert leftover == b""
    assert client.done
    assert client.receive_data(b"abc") == (b"", b"abc")


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    client_time=st.integers(0, 2**40),
    server_time=st.integers(0, 2**40),
    tail_len=st.integers(0, 5000),
)
def test_client_and_server_talk(seed: int, client_time: int, server_time: int, tail_len: int) -> None:
    rnd = random.Random(seed)
    client = ClientHandshake(random_bytes=fixed_random(seed), epoch_ms=client_time)
    server = ServerHandshake(random_bytes=fixed_random(seed + 1), epoch_ms=server_time)

    c0c1 = client.initiate()
    s0s1s2, leftover = feed_server(server, c0c1, rnd)
    assert leftover == b""
    assert not server.done
    assert len(s0s1s2) == 1 + 2 * HANDSHAKE_SIZE
    s1 = s0s1s2[1 : 1 + HANDSHAKE_SIZE]
    assert s1[4:8] == bytes(4)
    assert s0s1s2[1 + HANDSHAKE_SIZE :] == c0c1[1:]  # S2 echoes C1

    c2 = b""
    client_leftover = b""
    for frag in fragments(s0s1s2, rnd):
        assert not client.done
        out, rest = client.receive_data(frag)
        c2 += out
        client_leftover += rest
    assert client.done
    assert client_leftover == b""
    assert c2 == s1  # C2 echoes S1

    # The client's first chunk data rides in the same writes as C2.
    payload = rnd.randbytes(tail_len)
    chunk_data = encode_message(3, 0, 20, 0, payload, 128)
    sent, server_leftover = feed_server(server, c2 + chunk_data, rnd)
    assert sent == b""
    assert server.done
    assert server_leftover == chunk_data
    assert ChunkReader().feed(server_leftover) == [RawMessage(3, 0, 20, 0, payload)]


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=4000), cut=st.integers(1, 2000))
def test_fuzz_server_only_protocol_error(data: bytes, cut: int) -> None:
    server = ServerHandshake()
    try:
        for i in range(0, len(data), cut):
            server.receive_data(data[i : i + cut])
    except ProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=4000), cut=st.integers(1, 2000))
def test_fuzz_client_only_protocol_error(data: bytes, cut: int) -> None:
    client = ClientHandshake()
    client.initiate()
    try:
        for i in range(0, len(data), cut):
            client.receive_data(data[i : i + cut])
    except ProtocolError:
        pass
