"""Events the RTMP sessions emit, as small frozen dataclasses named in the past tense."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    pass


# --- both sides ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeCompleted(Event):
    pass


@dataclass(frozen=True, slots=True)
class MediaReceived(Event):
    """Audio (8), video (9) or AMF0 data (18) message on a media stream."""

    stream_id: int
    type_id: int
    timestamp: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ConnectionFailed(Event):
    """The peer broke the protocol (or a bound); the transport must log, count and close."""

    reason: str


# --- server side ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectRequested(Event):
    transaction_id: float
    app: str
    tc_url: str
    query: str
    command_object: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PublishRequested(Event):
    stream_id: int
    name: str
    query: str
    publish_type: str


@dataclass(frozen=True, slots=True)
class PlayRequested(Event):
    stream_id: int
    name: str
    query: str


@dataclass(frozen=True, slots=True)
class StreamDeleted(Event):
    """deleteStream / closeStream / FCUnpublish: whatever ran on this stream id has ended."""

    stream_id: int


# --- client side ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectAccepted(Event):
    properties: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ConnectRejected(Event):
    code: str
    description: str


@dataclass(frozen=True, slots=True)
class StreamCreated(Event):
    stream_id: int


@dataclass(frozen=True, slots=True)
class PublishStarted(Event):
    stream_id: int


@dataclass(frozen=True, slots=True)
class PlayStarted(Event):
    stream_id: int


@dataclass(frozen=True, slots=True)
class StatusReceived(Event):
    """An onStatus that is not a start: Publish.BadName, Play.StreamNotFound, Play.Stop, ..."""

    stream_id: int
    level: str
    code: str
    description: str
