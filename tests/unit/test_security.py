"""The pieces of access control and the per-connection bounds, one by one."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.hub.stream import Hub
from common.keys import StreamKey
from common.rtmp.events import ConnectionFailed
from common.rtmp.session import ClientSession, ServerSession
from common.serving.access import ConnectionLimiter, PlayGate
from common.serving.connection import Bounds
from common.serving.playback import Playback
from common.serving.policy import Rejected, StandalonePolicy
from common.serving.service import RtmpOptions, RtmpService
from common.signing import PLAY, PUBLISH, PULL, refusal, sign, without_signature
from tests.attacks import command, connect
from tests.fuzzing import FakeTransport

KEY = StreamKey("live", "cam")
NOW = 1_800_000_000


def test_a_signature_grants_one_action_on_one_stream_until_it_expires() -> None:
    query = sign("s", PUBLISH, KEY, NOW + 60)
    assert refusal("s", PUBLISH, KEY, query, NOW) is None
    assert refusal("s", PUBLISH, KEY, query, NOW + 61) == "signature expired"
    assert refusal("other", PUBLISH, KEY, query, NOW) == "bad signature"
    assert refusal("s", PLAY, KEY, query, NOW) == "bad signature"
    assert refusal("s", PUBLISH, StreamKey("live", "other"), query, NOW) == "bad signature"
    assert refusal("s", PUBLISH, KEY, query.replace(str(NOW + 60), str(NOW + 6000)), NOW) == "bad signature"
    assert refusal("s", PUBLISH, KEY, "", NOW) == "no signature (exp=…&sig=…)"
    assert refusal("s", PUBLISH, KEY, "exp=abc&sig=x", NOW) == "malformed expiry"
    assert refusal("s", PUBLISH, KEY, "a=1&" * 40 + query, NOW) == "malformed query string"
    assert refusal("s", PUBLISH, KEY, "x" * 5000, NOW) == "query string too long"


@given(st.text(max_size=300))
def test_any_query_is_refused_or_granted_never_an_exception(query: str) -> None:
    assert refusal("s", PLAY, KEY, query, NOW) is not None or "sig=" in query


def test_the_viewers_token_is_not_what_travels_on() -> None:
    assert without_signature(f"{sign('s', PLAY, KEY, NOW)}&lang=en") == "lang=en"


def test_play_gate() -> None:
    PlayGate().check(KEY, "")  # open
    gate = PlayGate(play_secret="p", cluster_secret="c", clock=lambda: NOW)
    gate.check(KEY, sign("p", PLAY, KEY, NOW + 10))
    gate.check(KEY, sign("c", PULL, KEY, NOW + 10))  # an edge
    for query in ("", sign("c", PLAY, KEY, NOW + 10), sign("p", PULL, KEY, NOW + 10), sign("p", PLAY, KEY, NOW - 1)):
        with pytest.raises(Rejected):
            gate.check(KEY, query)
    edges_only = PlayGate(cluster_secret="c", edges_only=True, clock=lambda: NOW)
    edges_only.check(KEY, sign("c", PULL, KEY, NOW + 10))
    with pytest.raises(Rejected, match="serves edges only"):
        edges_only.check(KEY, "")
    PlayGate(cluster_secret="c", edges_only=False).check(KEY, "")  # an edge with a cluster secret: open to viewers


def test_connection_limiter() -> None:
    limiter = ConnectionLimiter(total=3, per_address=2)
    assert limiter.acquire("a") is None and limiter.acquire("a") is None
    assert "a holds its maximum of 2" in (limiter.acquire("a") or "")
    assert limiter.acquire("b") is None
    assert "maximum of 3 connections" in (limiter.acquire("c") or "")
    limiter.release("a")
    assert limiter.acquire("c") is None
    assert len(limiter) == 3
    assert ConnectionLimiter().acquire("x") is None  # 0: no limit


def service(bounds: Bounds) -> RtmpService:
    return RtmpService(Playback(Hub(), StandalonePolicy()), RtmpOptions(bounds=bounds))


class GrowingTransport(FakeTransport):
    """A peer that never reads: everything written stays queued."""

    def write(self, data: bytes) -> None:
        super().write(data)

    def get_write_buffer_size(self) -> int:
        return self.written


async def test_a_peer_that_never_reads_is_cut_at_the_unsent_bytes_bound() -> None:
    svc = service(Bounds(commands_per_second=1e9, max_unsent=64 * 1024))
    conn = svc.protocol_factory()
    transport = GrowingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(b"\x03" + bytes(3072) + connect())
    for i in range(2000):
        if transport.closing:
            break
        conn.data_received(command("getStreamLength", float(2 + i), None, "x" * 100))
    assert transport.closing and svc.protocol_errors == 1
    assert transport.written < 64 * 1024 + 4096
    conn.connection_lost(None)


async def test_commands_beyond_the_rate_close_the_connection() -> None:
    svc = service(Bounds(commands_per_second=10))
    conn = svc.protocol_factory()
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(b"\x03" + bytes(3072) + connect())
    sent = 0
    while not transport.closing and sent < 100:
        conn.data_received(command("releaseStream", float(2 + sent), None, "x"))
        sent += 1
    assert transport.closing and 15 <= sent <= 25, sent  # the burst (2 s worth), then closed
    conn.connection_lost(None)
    await asyncio.sleep(0)


def session_after_connect() -> ServerSession:
    session = ServerSession()
    session.receive_data(b"\x03" + bytes(3072) + connect())
    session.accept_connect()
    session.take_events()
    session.data_to_send()
    return session


NUMBERS = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 1.5, 2.0**40, -0.0, 1e308])


@given(NUMBERS, st.sampled_from(["deleteStream", "createStream", "play", "publish", "closeStream", "FCPublish"]))
def test_odd_numbers_in_any_command_are_protocol_errors_never_other_exceptions(number: float, name: str) -> None:
    session = session_after_connect()
    args: list[Any] = [number] if name in ("deleteStream",) else ["x", number]
    for transaction in (number, 5.0):
        events = session.receive_data(command(name, transaction, None, *args))
        assert all(not isinstance(e, Exception) for e in events)
        if session.failure:
            assert isinstance(events[-1], ConnectionFailed)
            break


@given(NUMBERS)
def test_odd_numbers_in_answers_to_a_client_are_protocol_errors(number: float) -> None:
    client = ClientSession("live", "rtmp://x/live")
    client._handshake = None  # already through it, for this test
    client.create_stream()  # transaction 1
    client.data_to_send()
    events = client.receive_data(command("_result", 1.0, None, number))
    kinds = [type(e).__name__ for e in events]
    if number in (2.0**40, 1e308, 1.5):
        assert kinds == ["ConnectionFailed"], kinds  # not a message stream id: a protocol error
    else:
        assert kinds in (["StatusReceived"], ["ConnectionFailed"]), kinds  # refused, or a protocol error
