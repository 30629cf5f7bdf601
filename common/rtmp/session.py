"""Sans-IO RTMP sessions: the server side (publish/play commands) and the client side (pull, publish).

Bytes go in through ``receive_data`` and come back out as events; bytes to send accumulate and are
pulled with ``data_to_send``. Nothing here reads the clock or touches a socket. A ``ProtocolError``
raised anywhere inside is translated once, here, into a ``ConnectionFailed`` event and a dead session.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from common.rtmp import amf0
from common.rtmp.chunk import ChunkReader, ChunkWriter, RawMessage
from common.rtmp.errors import ProtocolError
from common.rtmp.events import (
    ConnectAccepted,
    ConnectionFailed,
    ConnectRejected,
    ConnectRequested,
    Event,
    HandshakeCompleted,
    MediaReceived,
    PlayRequested,
    PlayStarted,
    PublishRequested,
    PublishStarted,
    StatusReceived,
    StreamCreated,
    StreamDeleted,
)
from common.rtmp.handshake import ClientHandshake, ServerHandshake
from common.rtmp.messages import (
    CSID_AUDIO,
    CSID_COMMAND,
    CSID_DATA,
    CSID_PROTOCOL,
    CSID_VIDEO,
    MessageType,
    UserControl,
    parse_set_peer_bandwidth,
    parse_u32,
    parse_user_control,
    set_peer_bandwidth_payload,
    u32_payload,
    user_control_payload,
)

MEDIA_TYPES: Final = frozenset({MessageType.AUDIO, MessageType.VIDEO, MessageType.DATA_AMF0})
_MEDIA_CSID: Final = {MessageType.AUDIO: CSID_AUDIO, MessageType.VIDEO: CSID_VIDEO, MessageType.DATA_AMF0: CSID_DATA}
_AGGREGATE_HEADER = struct.Struct(">B3s3sB3s")


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Bounds on what a peer may make us hold; each violation closes that connection only."""

    max_chunk_size: int = 65536  # largest Set Chunk Size we accept from the peer, bytes
    max_message_size: int = 8 * 1024 * 1024  # largest single message, bytes
    max_chunk_streams: int = 64  # distinct chunk stream ids per connection
    max_amf_depth: int = 16  # nesting of AMF objects/arrays in commands and metadata
    max_streams: int = 8  # message streams (createStream) per connection
    min_chunk_size: int = 128  # smallest Set Chunk Size we accept (RTMP's own default); tiny chunks cost CPU
    out_chunk_size: int = 4096  # what we announce with Set Chunk Size before any media
    window_ack_size: int = 2_500_000  # the acknowledgement window we ask the peer to honour


def split_query(value: str) -> tuple[str, str]:
    """'x?key=1' -> ('x', 'key=1'): the query string is never part of a stream or app name."""
    name, _, query = value.partition("?")
    return name, query


class _Session:
    def __init__(self, limits: SessionLimits) -> None:
        self.limits = limits
        self._reader = ChunkReader(
            max_chunk_size=limits.max_chunk_size,
            max_message_size=limits.max_message_size,
            max_chunk_streams=limits.max_chunk_streams,
            min_chunk_size=min(limits.min_chunk_size, limits.max_chunk_size),
        )
        self._writer = ChunkWriter()
        self.commands_received = 0  # command messages; the I/O layer bounds their rate
        self._out: list[bytes] = []
        self.failure: str | None = None
        self.bytes_received = 0
        self._peer_window = 0  # the peer's Window Acknowledgement Size: ack each time this many arrive
        self._acked_at = 0
        self._handshake: ServerHandshake | ClientHandshake | None = None

    # -- the public sans-IO surface --------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        if self.failure is not None:
            return []
        events: list[Event] = []
        try:
            self.bytes_received += len(data)
            data = self._receive_handshake(data, events)
            if data:
                for message in self._reader.feed(data):
                    self._handle_message(message, events)
            self._maybe_acknowledge()
        except ProtocolError as exc:
            self.failure = str(exc) or type(exc).__name__
            events.append(ConnectionFailed(self.failure))
        return events

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    @property
    def out_chunk_size(self) -> int:
        return self._writer.chunk_size

    @property
    def peer_window(self) -> int:
        """The peer's Window Acknowledgement Size (0 until it announces one)."""
        return self._peer_window

    @property
    def acknowledged(self) -> int:
        """The byte count our last Acknowledgement reported."""
        return self._acked_at

    # -- helpers for subclasses ------------------------------------------------------------------

    def _receive_handshake(self, data: bytes, events: list[Event]) -> bytes:
        """Feed the handshake until it is done; returns the bytes that follow it (chunk stream data)."""
        handshake = self._handshake
        if handshake is None:
            return data
        reply, leftover = handshake.receive_data(data)
        if reply:
            self._out.append(reply)
        if handshake.done:
            self._handshake = None
            events.append(HandshakeCompleted())
            self._handshake_done()
        return leftover

    def _handshake_done(self) -> None:
        """What a side sends once the handshake is over (the client: its connect)."""

    def _send(self, csid: int, type_id: int, stream_id: int, payload: bytes, timestamp: int = 0) -> None:
        self._out.append(self._writer.write(csid, timestamp, type_id, stream_id, payload))

    def _send_command(self, stream_id: int, *values: Any) -> None:
        self._send(CSID_COMMAND, MessageType.COMMAND_AMF0, stream_id, amf0.encode(*values))

    def _send_user_control(self, event: UserControl, value: int, extra: int | None = None) -> None:
        self._send(CSID_PROTOCOL, MessageType.USER_CONTROL, 0, user_control_payload(event, value, extra))

    def _announce_chunk_size(self) -> None:
        self._out.append(self._writer.set_chunk_size(self.limits.out_chunk_size))

    def _announce_window(self) -> None:
        self._send(CSID_PROTOCOL, MessageType.WINDOW_ACK_SIZE, 0, u32_payload(self.limits.window_ack_size))

    def send_media(self, stream_id: int, type_id: int, timestamp: int, payload: bytes) -> None:
        """Queue one audio/video/data message (used by publishing clients and by tests)."""
        self._send(_MEDIA_CSID[MessageType(type_id)], type_id, stream_id, payload, timestamp)

    def _maybe_acknowledge(self) -> None:
        if self._peer_window and self.bytes_received - self._acked_at >= self._peer_window:
            self._acked_at = self.bytes_received
            self._send(CSID_PROTOCOL, MessageType.ACKNOWLEDGEMENT, 0, u32_payload(self.bytes_received))

    def _handle_message(self, message: RawMessage, events: list[Event]) -> None:
        type_id = message.type_id
        if type_id in MEDIA_TYPES:
            events.append(MediaReceived(message.stream_id, type_id, message.timestamp, message.payload))
        elif type_id == MessageType.COMMAND_AMF0:
            self.commands_received += 1
            self._handle_command(message, amf0.decode(message.payload, max_depth=self.limits.max_amf_depth), events)
        elif type_id == MessageType.COMMAND_AMF3:
            # An AMF3 command message is an AMF0 body behind a one-byte format selector.
            self.commands_received += 1
            values = amf0.decode(message.payload[1:], max_depth=self.limits.max_amf_depth)
            self._handle_command(message, values, events)
        elif type_id == MessageType.AGGREGATE:
            events.extend(_split_aggregate(message))
        elif type_id == MessageType.WINDOW_ACK_SIZE:
            self._peer_window = parse_u32(message.payload, "Window Acknowledgement Size")
        elif type_id == MessageType.SET_PEER_BANDWIDTH:
            window, _limit_type = parse_set_peer_bandwidth(message.payload)
            if window != self.limits.window_ack_size:
                self._send(CSID_PROTOCOL, MessageType.WINDOW_ACK_SIZE, 0, u32_payload(self.limits.window_ack_size))
        elif type_id == MessageType.USER_CONTROL:
            event, value, _extra = parse_user_control(message.payload)
            if event == UserControl.PING_REQUEST:
                self._send_user_control(UserControl.PING_RESPONSE, value)
            self._handle_user_control(event, value, events)
        elif type_id == MessageType.ACKNOWLEDGEMENT:
            parse_u32(message.payload, "Acknowledgement")
        # Set Chunk Size and Abort are applied by the chunk reader; AMF3 data and shared objects are
        # not used by any client we serve and are dropped without breaking the session.

    def _handle_user_control(self, event: int, value: int, events: list[Event]) -> None:
        return None

    def _handle_command(self, message: RawMessage, values: list[Any], events: list[Event]) -> None:
        raise NotImplementedError


def _command_parts(values: list[Any]) -> tuple[str, float, Any, list[Any]]:
    if len(values) < 2 or not isinstance(values[0], str) or not isinstance(values[1], float):
        raise ProtocolError("command message must start with a name and a transaction id")
    transaction = values[1]
    if not math.isfinite(transaction) or transaction < 0:
        raise ProtocolError(f"command {values[0]!r} has transaction id {transaction!r}")
    return values[0], transaction, values[2] if len(values) > 2 else None, values[3:]


def _stream_id(value: Any, what: str) -> int:
    """A message stream id sent as an AMF0 number: a whole number in 0..2^32-1, nothing else (NaN,
    infinities, fractions and negatives are protocol errors, not exceptions of another type)."""
    if not isinstance(value, float) or not math.isfinite(value) or value != int(value) or not 0 <= value < 2**32:
        raise ProtocolError(f"{what} is not a message stream id: {value!r}")
    return int(value)


def _split_aggregate(message: RawMessage) -> Iterator[MediaReceived]:
    """Aggregate messages carry FLV-tag-like sub-messages; timestamps are rebased onto the aggregate's."""
    data = message.payload
    offset = 0
    base: int | None = None
    while offset + 11 <= len(data):
        type_id, size_b, ts_b, ts_ext, _sid = _AGGREGATE_HEADER.unpack_from(data, offset)
        size = int.from_bytes(size_b, "big")
        timestamp = int.from_bytes(ts_b, "big") | (ts_ext << 24)
        end = offset + 11 + size
        if end > len(data):
            raise ProtocolError("aggregate sub-message runs past the end of the aggregate")
        if base is None:
            base = timestamp
        if type_id in MEDIA_TYPES:
            rebased = (message.timestamp + timestamp - base) & 0xFFFFFFFF
            yield MediaReceived(message.stream_id, type_id, rebased, data[offset + 11 : end])
        offset = end + 4  # skip the back-pointer (previous tag size)


def _status(code: str, description: str, level: str = "status", **extra: Any) -> dict[str, Any]:
    return {"level": level, "code": code, "description": description, **extra}


MAX_DEFERRED: Final = 32  # messages a client may send behind its connect before it is answered


class ServerSession(_Session):
    """The server end of one RTMP connection (origin ingest, viewer serving)."""

    def __init__(self, limits: SessionLimits | None = None) -> None:
        super().__init__(limits or SessionLimits())
        self._handshake = ServerHandshake()
        self.app = ""
        self.app_query = ""
        self.tc_url = ""
        self.connected = False
        self._connect_transaction: float | None = None
        self._streams: set[int] = set()
        self._next_stream_id = 1
        # Messages a client sent right behind its connect, before we answered it: handled once it is
        # accepted, in order, so replies keep their order too. Their events wait in _ready.
        self._deferred: list[RawMessage] = []
        self._ready: list[Event] = []

    def take_events(self) -> list[Event]:
        """Events that became ready outside receive_data (after accept_connect): deliver them next."""
        ready, self._ready = self._ready, []
        return ready

    def _handle_message(self, message: RawMessage, events: list[Event]) -> None:
        if self._connect_transaction is not None and not self.connected:
            if len(self._deferred) >= MAX_DEFERRED:
                raise ProtocolError(f"more than {MAX_DEFERRED} messages sent before the connect was answered")
            self._deferred.append(message)
            return
        super()._handle_message(message, events)

    # -- decisions the application makes on events -----------------------------------------------

    def accept_connect(self) -> None:
        if self._connect_transaction is None:
            raise RuntimeError("accept_connect without a pending connect")
        self._announce_window()
        self._send(
            CSID_PROTOCOL, MessageType.SET_PEER_BANDWIDTH, 0, set_peer_bandwidth_payload(self.limits.window_ack_size)
        )
        self._announce_chunk_size()
        self._send_command(
            0,
            "_result",
            self._connect_transaction,
            {"fmsVer": "FMS/3,5,7,7009", "capabilities": 31.0, "mode": 1.0},
            _status("NetConnection.Connect.Success", "Connection succeeded.", objectEncoding=0.0),
        )
        self._connect_transaction = None
        self.connected = True
        deferred, self._deferred = self._deferred, []
        try:
            for message in deferred:
                self._handle_message(message, self._ready)
        except ProtocolError as exc:
            self.failure = str(exc) or type(exc).__name__
            self._ready.append(ConnectionFailed(self.failure))

    def reject_connect(self, description: str) -> None:
        if self._connect_transaction is None:
            raise RuntimeError("reject_connect without a pending connect")
        self._send_command(
            0,
            "_error",
            self._connect_transaction,
            None,
            _status("NetConnection.Connect.Rejected", description, level="error"),
        )
        self._connect_transaction = None
        self._deferred.clear()

    def accept_publish(self, stream_id: int, name: str) -> None:
        self._send_user_control(UserControl.STREAM_BEGIN, stream_id)
        self._send_command(
            stream_id, "onStatus", 0.0, None, _status("NetStream.Publish.Start", f"{name} is now published.")
        )

    def reject(self, stream_id: int, code: str, description: str) -> None:
        """Refuse a publish or a play on ``stream_id``: an error onStatus with the given code."""
        self._send_command(stream_id, "onStatus", 0.0, None, _status(code, description, level="error"))

    def accept_play(self, stream_id: int, name: str) -> None:
        self._send_user_control(UserControl.STREAM_BEGIN, stream_id)
        self._send_command(
            stream_id, "onStatus", 0.0, None, _status("NetStream.Play.Reset", f"Playing and resetting {name}.")
        )
        self._send_command(
            stream_id, "onStatus", 0.0, None, _status("NetStream.Play.Start", f"Started playing {name}.")
        )
        self._send(CSID_DATA, MessageType.DATA_AMF0, stream_id, amf0.encode("|RtmpSampleAccess", True, True))

    def end_play(self, stream_id: int, name: str) -> None:
        """The source went away: tell the player the stream is over (players then stop cleanly)."""
        self._send_user_control(UserControl.STREAM_EOF, stream_id)
        self._send_command(
            stream_id, "onStatus", 0.0, None, _status("NetStream.Play.UnpublishNotify", f"{name} is unpublished.")
        )
        self._send_command(stream_id, "onStatus", 0.0, None, _status("NetStream.Play.Stop", f"Stopped playing {name}."))

    # -- command dispatch --------------------------------------------------------------------------

    def _handle_command(self, message: RawMessage, values: list[Any], events: list[Event]) -> None:
        name, transaction, command_object, args = _command_parts(values)
        if name == "connect":
            self._on_connect(transaction, command_object, events)
            return
        if not self.connected:
            raise ProtocolError(f"command {name!r} before a successful connect")
        if name == "createStream":
            self._on_create_stream(transaction)
        elif name in ("publish", "play"):
            self._on_publish_or_play(name, message.stream_id, args, events)
        elif name == "deleteStream":
            stream_id = _stream_id(args[0], "deleteStream argument") if args else message.stream_id
            if stream_id in self._streams:
                self._streams.discard(stream_id)
                events.append(StreamDeleted(stream_id))
        elif name == "closeStream":
            if message.stream_id in self._streams:
                events.append(StreamDeleted(message.stream_id))
        elif name == "FCPublish":
            stream = args[0] if args and isinstance(args[0], str) else ""
            self._send_command(0, "onFCPublish", 0.0, None, _status("NetStream.Publish.Start", stream))
        elif name == "FCUnpublish":
            stream = args[0] if args and isinstance(args[0], str) else ""
            self._send_command(0, "onFCUnpublish", 0.0, None, _status("NetStream.Unpublish.Success", stream))
        elif name in ("releaseStream", "FCSubscribe", "getStreamLength", "_checkbw"):
            if transaction:
                self._send_command(0, "_result", transaction, None, None)
        elif transaction:
            # Unknown calls are answered, not fatal: clients probe for optional features.
            self._send_command(
                0,
                "_error",
                transaction,
                None,
                _status("NetConnection.Call.Failed", f"unknown command {name}", level="error"),
            )

    def _on_connect(self, transaction: float, command_object: Any, events: list[Event]) -> None:
        if self.connected or self._connect_transaction is not None:
            raise ProtocolError("second connect on one connection")
        if not isinstance(command_object, dict):
            raise ProtocolError("connect without a command object")
        app_raw = command_object.get("app", "")
        tc_url = command_object.get("tcUrl", "")
        if not isinstance(app_raw, str) or not isinstance(tc_url, str):
            raise ProtocolError("connect app/tcUrl must be strings")
        self.app, self.app_query = split_query(app_raw.strip("/"))
        if not self.app_query and "?" in tc_url:
            self.app_query = tc_url.partition("?")[2]
        self.tc_url = tc_url
        self._connect_transaction = transaction
        events.append(ConnectRequested(transaction, self.app, tc_url, self.app_query, command_object))

    def _on_create_stream(self, transaction: float) -> None:
        if len(self._streams) >= self.limits.max_streams:
            self._send_command(
                0, "_error", transaction, None, _status("NetConnection.Call.Failed", "too many streams", level="error")
            )
            return
        stream_id = self._next_stream_id
        self._next_stream_id += 1
        self._streams.add(stream_id)
        self._send_command(0, "_result", transaction, None, float(stream_id))

    def _on_publish_or_play(self, command: str, stream_id: int, args: list[Any], events: list[Event]) -> None:
        if stream_id not in self._streams:
            raise ProtocolError(f"{command} on message stream {stream_id} that was never created")
        if not args or not isinstance(args[0], str) or not args[0]:
            code = "NetStream.Publish.BadName" if command == "publish" else "NetStream.Play.StreamNotFound"
            self.reject(stream_id, code, f"{command} without a stream name")
            return
        name, query = split_query(args[0])
        if command == "publish":
            publish_type = args[1] if len(args) > 1 and isinstance(args[1], str) else "live"
            events.append(PublishRequested(stream_id, name, query, publish_type))
        else:
            events.append(PlayRequested(stream_id, name, query))


class ClientSession(_Session):
    """The client end: an edge pulling from an origin, a load-test publisher, a test player."""

    def __init__(self, app: str, tc_url: str, limits: SessionLimits | None = None) -> None:
        super().__init__(limits or SessionLimits())
        self.app = app
        self.tc_url = tc_url
        handshake = ClientHandshake()
        self._handshake = handshake
        self._out.append(handshake.initiate())
        self._transactions: dict[float, tuple[str, str]] = {}
        self._next_transaction = 1.0

    def _handshake_done(self) -> None:
        self._announce_window()
        self._announce_chunk_size()
        self._call(
            "connect",
            "",
            {
                "app": self.app,
                "flashVer": "FMLE/3.0 (compatible; livecdn)",
                "tcUrl": self.tc_url,
                "fpad": False,
                "capabilities": 15.0,
                "audioCodecs": 4071.0,
                "videoCodecs": 252.0,
                "videoFunction": 1.0,
            },
        )

    def _call(self, command: str, context: str, command_object: Any, *args: Any, stream_id: int = 0) -> None:
        transaction = self._next_transaction
        self._next_transaction += 1.0
        self._transactions[transaction] = (command, context)
        self._send_command(stream_id, command, transaction, command_object, *args)

    def create_stream(self) -> None:
        self._call("createStream", "", None)

    def play(self, stream_id: int, name: str) -> None:
        self._send_command(stream_id, "play", 0.0, None, name, -2000.0)
        self._send_user_control(UserControl.SET_BUFFER_LENGTH, stream_id, 1000)

    def publish(self, stream_id: int, name: str) -> None:
        self._send_command(0, "releaseStream", 0.0, None, name)
        self._send_command(0, "FCPublish", 0.0, None, name)
        self._send_command(stream_id, "publish", 0.0, None, name, "live")

    def delete_stream(self, stream_id: int) -> None:
        self._send_command(0, "deleteStream", 0.0, None, float(stream_id))

    def _handle_user_control(self, event: int, value: int, events: list[Event]) -> None:
        if event == UserControl.STREAM_EOF:
            events.append(StatusReceived(value, "status", "NetStream.Play.Stop", "stream EOF"))

    def _handle_command(self, message: RawMessage, values: list[Any], events: list[Event]) -> None:
        name, transaction, _command_object, args = _command_parts(values)
        info = args[0] if args else None
        if name in ("_result", "_error"):
            command, _context = self._transactions.pop(transaction, ("", ""))
            if command == "connect":
                if name == "_result":
                    events.append(ConnectAccepted(info if isinstance(info, dict) else {}))
                else:
                    status = info if isinstance(info, dict) else {}
                    events.append(ConnectRejected(str(status.get("code", "")), str(status.get("description", ""))))
            elif command == "createStream":
                if name == "_result" and isinstance(info, float) and math.isfinite(info) and info >= 1:
                    events.append(StreamCreated(_stream_id(info, "createStream result")))
                else:
                    events.append(StatusReceived(0, "error", "NetConnection.Call.Failed", "createStream refused"))
        elif name == "onStatus":
            status = info if isinstance(info, dict) else {}
            code = str(status.get("code", ""))
            if code == "NetStream.Play.Start":
                events.append(PlayStarted(message.stream_id))
            elif code == "NetStream.Publish.Start":
                events.append(PublishStarted(message.stream_id))
            elif code != "NetStream.Play.Reset":
                events.append(
                    StatusReceived(
                        message.stream_id,
                        str(status.get("level", "")),
                        code,
                        str(status.get("description", "")),
                    )
                )
        # onBWDone, onFCPublish, |RtmpSampleAccess and other notifications need no answer.
