"""Client and server sessions wired to each other in memory, through publish and play."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from common.rtmp import amf0
from common.rtmp.chunk import encode_message
from common.rtmp.events import (
    ConnectAccepted,
    ConnectionFailed,
    ConnectRejected,
    ConnectRequested,
    Event,
    MediaReceived,
    PlayRequested,
    PlayStarted,
    PublishRequested,
    PublishStarted,
    StatusReceived,
    StreamCreated,
    StreamDeleted,
)
from common.rtmp.messages import MessageType, UserControl, user_control_payload
from common.rtmp.session import ClientSession, ServerSession, SessionLimits


class Pair:
    """Shuttles bytes between a client and a server session until both are quiet."""

    def __init__(self, limits: SessionLimits | None = None, client_limits: SessionLimits | None = None) -> None:
        self.server = ServerSession(limits)
        self.client = ClientSession("live", "rtmp://127.0.0.1/live", client_limits)
        self.server_events: list[Event] = []
        self.client_events: list[Event] = []

    def pump(self) -> None:
        for _ in range(50):
            to_server = self.client.data_to_send()
            to_client = self.server.data_to_send()
            if not to_server and not to_client:
                return
            if to_server:
                self.server_events += self.server.receive_data(to_server)
            if to_client:
                self.client_events += self.client.receive_data(to_client)
        raise AssertionError("sessions never went quiet")

    def take_server(self, kind: type[Any]) -> Any:
        found = [e for e in self.server_events if isinstance(e, kind)]
        assert found, f"server emitted no {kind.__name__}: {self.server_events}"
        self.server_events.remove(found[0])
        return found[0]

    def take_client(self, kind: type[Any]) -> Any:
        found = [e for e in self.client_events if isinstance(e, kind)]
        assert found, f"client emitted no {kind.__name__}: {self.client_events}"
        self.client_events.remove(found[0])
        return found[0]

    def connect(self) -> int:
        self.pump()
        request = self.take_server(ConnectRequested)
        assert request.app == "live"
        self.server.accept_connect()
        self.pump()
        self.take_client(ConnectAccepted)
        self.client.create_stream()
        self.pump()
        stream_id: int = self.take_client(StreamCreated).stream_id
        return stream_id


def test_publish_sequence_and_media_flow() -> None:
    pair = Pair()
    stream_id = pair.connect()
    assert stream_id == 1
    pair.client.publish(stream_id, "cam?key=secret")
    pair.pump()
    request = pair.take_server(PublishRequested)
    assert (request.name, request.query, request.publish_type) == ("cam", "key=secret", "live")
    pair.server.accept_publish(request.stream_id, request.name)
    pair.pump()
    assert pair.take_client(PublishStarted).stream_id == stream_id

    big_frame = bytes(range(256)) * 400  # spans many chunks at any chunk size
    pair.client.send_media(stream_id, MessageType.VIDEO, 40, big_frame)
    pair.client.send_media(stream_id, MessageType.AUDIO, 0xFFFFFF + 5, b"\xaf\x01abc")  # extended timestamp
    pair.pump()
    media = [e for e in pair.server_events if isinstance(e, MediaReceived)]
    assert [(m.type_id, m.timestamp, m.payload) for m in media] == [
        (MessageType.VIDEO, 40, big_frame),
        (MessageType.AUDIO, 0xFFFFFF + 5, b"\xaf\x01abc"),
    ]

    pair.client.delete_stream(stream_id)
    pair.pump()
    assert pair.take_server(StreamDeleted).stream_id == stream_id


def test_play_sequence_and_refusals() -> None:
    pair = Pair()
    stream_id = pair.connect()
    pair.client.play(stream_id, "missing")
    pair.pump()
    request = pair.take_server(PlayRequested)
    pair.server.reject(request.stream_id, "NetStream.Play.StreamNotFound", "not live")
    pair.pump()
    status = pair.take_client(StatusReceived)
    assert (status.level, status.code) == ("error", "NetStream.Play.StreamNotFound")

    pair.client.play(stream_id, "cam")
    pair.pump()
    request = pair.take_server(PlayRequested)
    pair.server.accept_play(request.stream_id, "cam")
    pair.pump()
    assert pair.take_client(PlayStarted).stream_id == stream_id
    pair.server.end_play(stream_id, "cam")
    pair.pump()
    codes = [e.code for e in pair.client_events if isinstance(e, StatusReceived)]
    assert "NetStream.Play.Stop" in codes


def test_second_publisher_gets_bad_name_status() -> None:
    pair = Pair()
    stream_id = pair.connect()
    pair.client.publish(stream_id, "cam")
    pair.pump()
    request = pair.take_server(PublishRequested)
    pair.server.reject(request.stream_id, "NetStream.Publish.BadName", "live/cam is already being published")
    pair.pump()
    status = pair.take_client(StatusReceived)
    assert status.code == "NetStream.Publish.BadName"
    assert status.level == "error"


def test_connect_rejected() -> None:
    pair = Pair()
    pair.pump()
    pair.take_server(ConnectRequested)
    pair.server.reject_connect("no such app")
    pair.pump()
    rejected = pair.take_client(ConnectRejected)
    assert rejected.code == "NetConnection.Connect.Rejected"


def test_acknowledgements_follow_the_peer_window() -> None:
    pair = Pair(limits=SessionLimits(window_ack_size=4096), client_limits=SessionLimits(window_ack_size=4096))
    stream_id = pair.connect()
    pair.client.publish(stream_id, "cam")
    pair.pump()
    request = pair.take_server(PublishRequested)
    pair.server.accept_publish(request.stream_id, "cam")
    pair.pump()
    for i in range(10):
        pair.client.send_media(stream_id, MessageType.VIDEO, i, b"\x17\x01" + b"x" * 3000)
        pair.client_events += pair.client.receive_data(b"")
        data = pair.client.data_to_send()
        pair.server_events += pair.server.receive_data(data)
    acks = pair.server.data_to_send()
    # The server owes the client acknowledgements (type 3) for the ~30 KB it received.
    assert bytes([MessageType.ACKNOWLEDGEMENT]) in acks
    assert pair.server.bytes_received > 30_000


def test_ping_request_is_answered() -> None:
    pair = Pair()
    pair.connect()
    ping = encode_message(2, 0, MessageType.USER_CONTROL, 0, user_control_payload(UserControl.PING_REQUEST, 1234), 4096)
    pair.client.data_to_send()
    pair.client.receive_data(ping)
    reply = pair.client.data_to_send()
    assert user_control_payload(UserControl.PING_RESPONSE, 1234) in reply


def test_unknown_command_answered_without_breaking_session() -> None:
    pair = Pair()
    stream_id = pair.connect()
    pair.client._send_command(0, "getServerTimeNow", 7.0, None)  # an optional feature probe
    pair.pump()
    assert not any(isinstance(e, ConnectionFailed) for e in pair.server_events + pair.client_events)
    pair.client.play(stream_id, "cam")
    pair.pump()
    assert pair.take_server(PlayRequested).name == "cam"


def test_command_before_connect_is_a_protocol_error() -> None:
    server = ServerSession()
    client = ClientSession("live", "rtmp://h/live")
    server.receive_data(client.data_to_send())  # C0+C1
    client.receive_data(server.data_to_send())  # S0+S1+S2 -> client sends C2 + connect
    client.data_to_send()
    from common.rtmp.handshake import HANDSHAKE_SIZE

    c2 = bytes(HANDSHAKE_SIZE)
    bogus = encode_message(3, 0, MessageType.COMMAND_AMF0, 0, amf0.encode("play", 0.0, None, "x"), 128)
    events = server.receive_data(c2 + bogus)
    assert isinstance(events[-1], ConnectionFailed)
    assert "before a successful connect" in events[-1].reason
    assert server.receive_data(b"more") == []  # a failed session stays dead


def test_publish_on_uncreated_stream_is_a_protocol_error() -> None:
    pair = Pair()
    pair.connect()
    pair.client._send_command(5, "publish", 0.0, None, "cam", "live")
    pair.pump()
    assert any(isinstance(e, ConnectionFailed) for e in pair.server_events)


def test_aggregate_message_is_split() -> None:
    pair = Pair()
    pair.connect()
    sub = b""
    for type_id, ts, body in ((9, 1000, b"\x17\x01vid"), (8, 1020, b"\xaf\x01aud")):
        header = bytes([type_id]) + len(body).to_bytes(3, "big") + ts.to_bytes(3, "big") + b"\0" + b"\0\0\0"
        sub += header + body + (11 + len(body)).to_bytes(4, "big")
    agg = encode_message(6, 5000, MessageType.AGGREGATE, 1, sub, 4096)
    events = pair.client.receive_data(agg)
    media = [(e.type_id, e.timestamp, e.payload) for e in events if isinstance(e, MediaReceived)]
    assert media == [(9, 5000, b"\x17\x01vid"), (8, 5020, b"\xaf\x01aud")]


def _connected_server() -> tuple[ServerSession, bytes]:
    pair = Pair()
    pair.connect()
    pair.client.data_to_send()
    return pair.server, b""


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=600), max_size=8))
def test_fuzz_connected_server_fails_only_with_protocol_errors(chunks: list[bytes]) -> None:
    """Garbage after a good connect: a ConnectionFailed event or nothing, never an exception."""
    server, _ = _connected_server()
    for chunk in chunks:
        for event in server.receive_data(chunk):
            assert not isinstance(event, ConnectRequested) or server.failure is None
        if server.failure is not None:
            assert server.receive_data(b"x") == []
            break


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([3, 4, 5, 6, 8, 70]),
            st.sampled_from([1, 2, 3, 4, 5, 6, 8, 9, 15, 17, 18, 20, 22, 99]),
            st.binary(max_size=300),
        ),
        max_size=6,
    )
)
def test_fuzz_well_framed_garbage_messages(messages: list[tuple[int, int, bytes]]) -> None:
    """Well-chunked messages with random bodies reach the command/control parsers themselves."""
    server, _ = _connected_server()
    for csid, type_id, body in messages:
        server.receive_data(encode_message(csid, 0, type_id, 1, body, 4096))
    assert server.failure is None or isinstance(server.failure, str)


def test_bounds_close_only_the_offending_session() -> None:
    limits = SessionLimits(max_message_size=64 * 1024)
    pair = Pair(limits=limits)
    stream_id = pair.connect()
    pair.client.send_media(stream_id, MessageType.VIDEO, 0, b"x" * (65 * 1024))
    pair.pump()
    failure = pair.take_server(ConnectionFailed)
    assert "65" in failure.reason or "size" in failure.reason
    other = Pair(limits=limits)
    assert other.connect() == 1  # a new connection is unaffected


def test_deep_amf_nesting_in_a_command_is_refused() -> None:
    pair = Pair(limits=SessionLimits(max_amf_depth=4))
    pair.connect()
    nested: Any = {"x": 1.0}
    for _ in range(10):
        nested = {"n": nested}
    pair.client._send_command(0, "someCall", 3.0, nested)
    pair.pump()
    assert any(isinstance(e, ConnectionFailed) for e in pair.server_events)


def test_commands_pipelined_behind_connect_wait_for_it_and_keep_their_order() -> None:
    from tests.attacks import command, connect

    server = ServerSession()
    handshake = b"\x03" + bytes(1536) + bytes(1536)  # C0, C1, C2 (C2 is not checked)
    pipelined = connect() + command("createStream", 2.0, None) + command("publish", 3.0, None, "cam", stream_id=1)
    events = server.receive_data(handshake + pipelined)
    assert [type(e).__name__ for e in events] == ["HandshakeCompleted", "ConnectRequested"]
    server.accept_connect()
    later = server.take_events()
    assert [type(e).__name__ for e in later] == ["PublishRequested"], later
    assert server.take_events() == []
    replies = server.data_to_send()
    assert replies.index(b"NetConnection.Connect.Success") < replies.rindex(b"_result")  # connect answered first


def test_a_rejected_connect_drops_what_was_pipelined_behind_it() -> None:
    from tests.attacks import command, connect

    server = ServerSession()
    events = server.receive_data(b"\x03" + bytes(3072) + connect() + command("createStream", 2.0, None))
    assert type(events[-1]).__name__ == "ConnectRequested"
    server.reject_connect("no")
    assert server.take_events() == []
    assert b"createStream" not in server.data_to_send()
