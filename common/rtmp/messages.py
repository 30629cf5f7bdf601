"""RTMP message type ids, fixed chunk stream ids, and the small protocol/user control payloads."""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final

from common.rtmp.errors import ProtocolError


class MessageType(IntEnum):
    SET_CHUNK_SIZE = 1
    ABORT = 2
    ACKNOWLEDGEMENT = 3
    USER_CONTROL = 4
    WINDOW_ACK_SIZE = 5
    SET_PEER_BANDWIDTH = 6
    AUDIO = 8
    VIDEO = 9
    DATA_AMF3 = 15
    SHARED_OBJECT_AMF3 = 16
    COMMAND_AMF3 = 17
    DATA_AMF0 = 18
    SHARED_OBJECT_AMF0 = 19
    COMMAND_AMF0 = 20
    AGGREGATE = 22


class UserControl(IntEnum):
    STREAM_BEGIN = 0
    STREAM_EOF = 1
    STREAM_DRY = 2
    SET_BUFFER_LENGTH = 3
    STREAM_IS_RECORDED = 4
    PING_REQUEST = 6
    PING_RESPONSE = 7


# Chunk stream ids we send on. Media uses fixed ids per kind so a pre-serialized packet is valid
# on every connection; each packet starts with a type-0 header, so no per-connection header state.
CSID_PROTOCOL: Final = 2
CSID_COMMAND: Final = 3
CSID_AUDIO: Final = 4
CSID_DATA: Final = 5
CSID_VIDEO: Final = 6

# Message stream id that media is sent on to viewers (the first createStream answers 1).
MEDIA_STREAM_ID: Final = 1

_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_U16_U32 = struct.Struct(">HI")
_U16_U32_U32 = struct.Struct(">HII")
_U32_U8 = struct.Struct(">IB")


def u32_payload(value: int) -> bytes:
    return _U32.pack(value & 0xFFFFFFFF)


def parse_u32(payload: bytes, what: str) -> int:
    if len(payload) < 4:
        raise ProtocolError(f"{what} message too short ({len(payload)} bytes)")
    value: int = _U32.unpack_from(payload)[0]
    return value


def set_peer_bandwidth_payload(window: int, limit_type: int = 2) -> bytes:
    return _U32_U8.pack(window, limit_type)


def parse_set_peer_bandwidth(payload: bytes) -> tuple[int, int]:
    if len(payload) < 5:
        raise ProtocolError(f"Set Peer Bandwidth message too short ({len(payload)} bytes)")
    window, limit_type = _U32_U8.unpack_from(payload)
    return window, limit_type


def user_control_payload(event: UserControl, value: int, extra: int | None = None) -> bytes:
    if extra is None:
        return _U16_U32.pack(event, value & 0xFFFFFFFF)
    return _U16_U32_U32.pack(event, value & 0xFFFFFFFF, extra & 0xFFFFFFFF)


def parse_user_control(payload: bytes) -> tuple[int, int, int | None]:
    """(event type, first value, second value or None). Unknown event types are returned as-is."""
    if len(payload) < 6:
        raise ProtocolError(f"User Control message too short ({len(payload)} bytes)")
    event, value = _U16_U32.unpack_from(payload)
    extra = _U32.unpack_from(payload, 6)[0] if len(payload) >= 10 else None
    return event, value, extra
