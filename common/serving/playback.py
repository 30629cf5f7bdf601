"""The one path every delivery format plays through: find the live stream, subscribe, unsubscribe.

RTMP play and HTTP-FLV (and any later format) share it, so the role sees the same viewer_joined /
viewer_left for all of them and an idle stream is let go in one place.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from common.hub.fanout import Subscriber
from common.hub.stream import Hub, Stream
from common.keys import StreamKey
from common.serving.access import PlayGate
from common.serving.policy import StreamPolicy
from common.serving.sockets import ViewerSockets

log = logging.getLogger(__name__)


class Viewer(Subscriber, Protocol):
    @property
    def transport(self) -> asyncio.BaseTransport | None: ...

    def disconnect(self, reason: str) -> None:
        """Leave without telling the player the stream ended (the node stops; the stream goes on)."""


class Playback:
    def __init__(
        self, hub: Hub, policy: StreamPolicy, gate: PlayGate | None = None, sockets: ViewerSockets | None = None
    ) -> None:
        self.hub = hub
        self.policy = policy
        self.gate = gate or PlayGate()
        self.sockets = sockets or ViewerSockets()
        self.viewers: set[Viewer] = set()  # every viewer playing now, of any format
        self.polled_viewers = 0  # HLS viewers, which hold no connection (join_polled, leave_polled)

    def open(self, key: StreamKey, query: str) -> Stream | None:
        """The local stream if something feeds it now (no waiting). Raises Rejected when the viewer may
        not play it."""
        self.gate.check(key, query)
        stream = self.hub.get(key)
        return stream if stream is not None and stream.live else None

    async def locate(self, key: StreamKey, query: str) -> Stream | None:
        """The live stream to play, asking the policy for a source (an upstream pull) when there is none
        here. None: not live anywhere. Raises Rejected when the viewer may not play it or the policy
        refuses."""
        stream = self.open(key, query)
        if stream is not None:
            return stream
        stream = await self.policy.find_source(key, query)
        return stream if stream is not None and stream.live else None

    def subscribe(self, stream: Stream, viewer: Viewer, peer: str, how: str) -> None:
        self.sockets.tune(viewer.transport)
        self.viewers.add(viewer)
        stream.add_subscriber(viewer)
        self.policy.viewer_joined(stream)
        log.info(
            "%s: playing %s over %s (%d viewers)",
            peer,
            stream.key,
            how,
            stream.viewers,
            extra={"event": "play", "stream": str(stream.key), "client": peer, "format": how},
        )

    def unsubscribe(self, stream: Stream, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        stream.remove_subscriber(viewer)
        self.policy.viewer_left(stream)
        self.hub.discard_if_idle(stream)

    def join_polled(self, stream: Stream, peer: str, how: str) -> None:
        """A viewer that polls (HLS) rather than subscribes: counted on the stream while it keeps asking."""
        self.polled_viewers += 1
        stream.polled_viewers += 1
        self.policy.viewer_joined(stream)
        log.info("%s: playing %s over %s (%d viewers)", peer, stream.key, how, stream.viewers)

    def leave_polled(self, stream: Stream) -> None:
        self.polled_viewers -= 1
        stream.polled_viewers -= 1
        self.policy.viewer_left(stream)
        self.hub.discard_if_idle(stream)

    def disconnect_all(self, reason: str) -> None:
        for viewer in list(self.viewers):
            viewer.disconnect(reason)
