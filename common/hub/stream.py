"""The hub: one Stream per app/name, its caches, its subscribers, and the fan-out of shared bytes.

The hub knows nothing of the cluster or of sockets. A source (an RTMP ingest or an edge's upstream
pull) feeds packets in; each packet is serialized to RTMP chunk bytes once and the same bytes object is
written to every subscriber. Late joiners get metadata, sequence headers and the cached GOP first, so
their first frame arrives at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from common.hub.fanout import FanOut, Scheduler, Subscriber
from common.hub.pacing import MergeWindow
from common.hub.packet import AUDIO, DATA, VIDEO, HubLimits, Packet
from common.hub.timeline import Timeline
from common.keys import StreamKey
from common.media.flv import is_audio_sequence_header, is_video_sequence_header
from common.media.metadata import player_metadata

log = logging.getLogger(__name__)

MAX_TAPS = 4


class Source(Protocol):
    """Whoever feeds a stream: a publisher's connection at an origin, an upstream pull at an edge."""

    def stop(self, reason: str) -> None:
        """Stop feeding (the publisher is disconnected, the pull ends); the stream sees end_of_source."""


def asyncio_scheduler(delay: float, callback: Callable[[], None]) -> object:
    return asyncio.get_running_loop().call_later(delay, callback)


class GopCache:
    """Packets from the last key frame on, bounded in bytes and packets."""

    def __init__(self, max_bytes: int, max_packets: int) -> None:
        self.max_bytes = max_bytes
        self.max_packets = max_packets
        self._packets: deque[Packet] = deque()
        self._bytes = 0
        self._open = False  # only a GOP that starts at a key frame is worth serving

    def add(self, packet: Packet) -> None:
        if packet.keyframe:
            self.clear()
            self._open = True
        if not self._open:
            return
        self._packets.append(packet)
        self._bytes += len(packet.rtmp)
        if self._bytes > self.max_bytes or len(self._packets) > self.max_packets:
            log.warning(
                "GOP cache over its bound (%d bytes, %d packets): dropped until next key frame",
                self._bytes,
                len(self._packets),
            )
            self.clear()

    def clear(self) -> None:
        self._packets.clear()
        self._bytes = 0
        self._open = False

    def __iter__(self) -> Iterator[Packet]:
        return iter(self._packets)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._packets)


@dataclass(eq=False)
class Stream:
    key: StreamKey
    limits: HubLimits
    source: Source | None = None  # None: nobody feeds it (a reservation sets it before any await)
    metadata: Packet | None = None
    video_header: Packet | None = None
    audio_header: Packet | None = None
    gop: GopCache = field(init=False)
    fanout: FanOut = field(init=False)
    timeline: Timeline = field(init=False)
    bytes_in: int = 0
    packets_in: int = 0
    # Viewers that poll (HLS) instead of subscribing to the fan-out: counted here so idle teardown, stats
    # and the node's load see them, at no cost to the fan-out.
    polled_viewers: int = 0
    scheduler: Scheduler = asyncio_scheduler
    clock: Callable[[], float] = time.monotonic
    pacing: MergeWindow | None = None  # the node's (adaptive) merge window; None: fixed at limits.merge_window

    def __post_init__(self) -> None:
        self.gop = GopCache(self.limits.gop_max_bytes, self.limits.gop_max_packets)
        self.fanout = FanOut(self.limits, self.scheduler, self.clock, self.headers, self.pacing)
        self.timeline = Timeline()
        # Packagers that need packets rather than bytes (HLS segments): each sees every packet once, in
        # order, after the viewers have been served. At most MAX_TAPS, so the hot path stays short.
        self.taps: list[Callable[[Packet], None]] = []

    @property
    def app(self) -> str:
        return self.key.app

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def live(self) -> bool:
        return self.source is not None

    @property
    def viewers(self) -> int:
        return self.fanout.viewers + self.polled_viewers

    @property
    def bytes_out(self) -> int:
        return self.fanout.bytes_out

    @property
    def viewers_dropped(self) -> int:
        return self.fanout.viewers_dropped

    @property
    def viewer_skips(self) -> int:
        return self.fanout.viewer_skips

    def headers(self) -> list[Packet]:
        """What a decoder needs before a key frame: metadata and the current sequence headers."""
        return [p for p in (self.metadata, self.video_header, self.audio_header) if p is not None]

    # -- the source side -----------------------------------------------------------------------------

    def feed(self, kind: int, timestamp: int, payload: bytes) -> Packet | None:
        """One message from the source: cache what late joiners need, then fan it out."""
        self.bytes_in += len(payload)
        self.packets_in += 1
        timestamp = self.timeline.place(kind, timestamp, payload)
        if kind == DATA:
            meta = player_metadata(payload)
            if meta is None:
                packet = Packet.build(DATA, timestamp, payload, self.limits.chunk_size)
            else:
                packet = Packet.build(DATA, 0, meta, self.limits.chunk_size)
                self.metadata = packet
        elif kind == VIDEO:
            packet = Packet.build(VIDEO, timestamp, payload, self.limits.chunk_size)
            if is_video_sequence_header(payload):
                self.video_header = packet
            else:
                self.gop.add(packet)
        elif kind == AUDIO:
            packet = Packet.build(AUDIO, timestamp, payload, self.limits.chunk_size)
            if is_audio_sequence_header(payload):
                self.audio_header = packet
            else:
                self.gop.add(packet)
        else:
            return None
        self.fanout.push(packet)
        for tap in self.taps:
            tap(packet)
        return packet

    def add_tap(self, tap: Callable[[Packet], None]) -> None:
        """``tap`` gets every packet from now on (it can bootstrap from headers() and gop first)."""
        if len(self.taps) >= MAX_TAPS:
            raise OverflowError(f"{self.key} has its maximum of {MAX_TAPS} packagers")
        self.taps.append(tap)

    def remove_tap(self, tap: Callable[[Packet], None]) -> None:
        if tap in self.taps:
            self.taps.remove(tap)

    def flush(self) -> None:
        """Send everything still waiting for a merge window (to every viewer group)."""
        self.fanout.flush_all()

    def attach(self, source: Source) -> None:
        """``source`` feeds the stream from now on; its clock is rebased to go on from what viewers saw."""
        self.source = source
        self.timeline.new_session()

    def source_left(self) -> None:
        """The source went away, maybe for a moment: viewers stay and wait for the next one. What is pending
        goes out; the cached GOP (of the old session) is dropped, the sequence headers are kept."""
        self.fanout.flush_all()
        self.source = None
        self.gop.clear()

    def end_of_source(self) -> None:
        """The source left: what is pending goes out, viewers are told and let go; caches are emptied."""
        self.fanout.flush_all()
        self.source = None
        for subscriber in self.fanout.detach_all():
            subscriber.source_ended()
        self.metadata = self.video_header = self.audio_header = None
        self.gop.clear()

    # -- the viewer side -----------------------------------------------------------------------------

    def add_subscriber(self, subscriber: Subscriber) -> None:
        self.fanout.add(subscriber, [*self.headers(), *self.gop])

    def remove_subscriber(self, subscriber: Subscriber) -> None:
        self.fanout.remove(subscriber)


class Hub:
    """All streams of one node, by app/name."""

    def __init__(
        self,
        limits: HubLimits | None = None,
        scheduler: Scheduler = asyncio_scheduler,
        clock: Callable[[], float] = time.monotonic,
        pacing: MergeWindow | None = None,
    ) -> None:
        self.limits = limits or HubLimits()
        self.scheduler = scheduler
        self.clock = clock
        # One window for every stream: what it adapts to (the event loop's busy fraction) is the node's.
        self.pacing = pacing if pacing is not None else MergeWindow(self.limits.merge_window)
        self._streams: dict[StreamKey, Stream] = {}

    def get(self, key: StreamKey) -> Stream | None:
        return self._streams.get(key)

    def get_or_create(self, key: StreamKey) -> Stream:
        stream = self._streams.get(key)
        if stream is None:
            if len(self._streams) >= self.limits.max_streams:
                raise OverflowError(f"hub holds its maximum of {self.limits.max_streams} streams")
            stream = self._streams[key] = Stream(
                key, self.limits, scheduler=self.scheduler, clock=self.clock, pacing=self.pacing
            )
        return stream

    def discard_if_idle(self, stream: Stream) -> None:
        if stream.source is None and stream.viewers == 0 and self._streams.get(stream.key) is stream:
            del self._streams[stream.key]

    def __iter__(self) -> Iterator[Stream]:
        return iter(list(self._streams.values()))

    def __len__(self) -> int:
        return len(self._streams)
