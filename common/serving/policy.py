"""What a node's role decides about streams, as the serving layer asks it.

The RTMP service and every HTTP delivery format call the role only through ``StreamPolicy``: who may
publish (an origin claims the stream in the registry), where a stream with no local source comes from
(an edge starts an upstream pull), and who watches (an edge keeps a pull while it has viewers).
"""

from __future__ import annotations

from typing import Protocol

from common.hub.stream import Stream
from common.keys import StreamKey


class Rejected(Exception):
    """A policy refuses a publish or a play; the code and text go to the client (RTMP onStatus, HTTP 403)."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


class SourceUnavailable(Exception):
    """The stream's source cannot be located now (the cluster registry does not answer): RTMP players get
    StreamNotFound with this text, HTTP players a 503. Retrying later works without a restart."""


class StreamPolicy(Protocol):
    accepts_publishes: bool

    async def admit_publisher(self, stream: Stream, query: str, peer: str) -> None:
        """Raise Rejected to refuse. Runs with the stream already reserved for this publisher."""

    def publisher_left(self, stream: Stream) -> None:
        """The publisher left: called once for every publish admit_publisher let through, including one
        whose connection closed before it could start."""

    async def find_source(self, key: StreamKey, query: str) -> Stream | None:
        """A play for a stream with no local source: an edge starts a pull here. None: not live.
        Raises SourceUnavailable when where it lives cannot be asked now."""

    def viewer_joined(self, stream: Stream) -> None:
        """A viewer started playing (any delivery format)."""

    def viewer_left(self, stream: Stream) -> None:
        """A viewer stopped playing (the stream may now have none)."""


class StandalonePolicy:
    """A single server with no cluster: anyone may publish, plays see only local streams."""

    accepts_publishes = True

    async def admit_publisher(self, stream: Stream, query: str, peer: str) -> None:
        return None

    def publisher_left(self, stream: Stream) -> None:
        return None

    async def find_source(self, key: StreamKey, query: str) -> Stream | None:
        return None

    def viewer_joined(self, stream: Stream) -> None:
        return None

    def viewer_left(self, stream: Stream) -> None:
        return None
