"""The hub: one Stream per app/name, its caches, its subscribers, and the fan-out of shared bytes.

The hub knows nothing of the cluster or of sockets. A publisher (an RTMP ingest or an edge's
upstream pull) feeds packets in; each packet is serialized to RTMP chunk bytes once and the same
bytes object is written to every subscriber. Late joiners get metadata, sequence headers and the
cached GOP first, so their first frame arrives at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from common.fanout import FanOut, Scheduler, Subscriber
from common.media.flv import flv_tag, is_audio_sequence_header, is_video_keyframe, is_video_sequence_header
from common.rtmp import amf0
from common.rtmp.chunk import encode_message
from common.rtmp.errors import ProtocolError
from common.rtmp.messages import CSID_AUDIO, CSID_DATA, CSID_VIDEO, MEDIA_STREAM_ID, MessageType

log = logging.getLogger(__name__)

AUDIO: Final = int(MessageType.AUDIO)
VIDEO: Final = int(MessageType.VIDEO)
DATA: Final = int(MessageType.DATA_AMF0)
_CSID_FOR_KIND: Final = {AUDIO: CSID_AUDIO, VIDEO: CSID_VIDEO, DATA: CSID_DATA}
RTMP: Final = "rtmp"  # wire formats a subscriber can take
FLV: Final = "flv"


class Packet:
    """One media message, immutable, with its wire bytes built once and shared by every viewer.

    ``rtmp`` is the chunked message (type-0 header on the fixed csid for its kind, message stream 1),
    built at once; ``flv`` is the FLV tag framed as one HTTP chunk, built on first use only (streams
    without HTTP-FLV viewers never pay for it).
    """

    __slots__ = ("_flv", "keyframe", "kind", "payload", "rtmp", "timestamp")

    def __init__(self, kind: int, timestamp: int, payload: bytes, keyframe: bool, rtmp: bytes) -> None:
        self.kind = kind
        self.timestamp = timestamp
        self.payload = payload
        self.keyframe = keyframe
        self.rtmp = rtmp
        self._flv: bytes | None = None

    @classmethod
    def build(cls, kind: int, timestamp: int, payload: bytes, chunk_size: int) -> Packet:
        keyframe = kind == VIDEO and is_video_keyframe(payload)
        wire = encode_message(_CSID_FOR_KIND[kind], timestamp, kind, MEDIA_STREAM_ID, payload, chunk_size)
        return cls(kind, timestamp, payload, keyframe, wire)

    @property
    def flv(self) -> bytes:
        if self._flv is None:
            self._flv = http_chunk(flv_tag(self.kind, self.timestamp, self.payload))
        return self._flv

    def wire(self, fmt: str) -> bytes:
        return self.rtmp if fmt == RTMP else self.flv


def http_chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunked-transfer chunk; prebuilt per packet so FLV viewers share it too."""
    return b"%x\r\n%b\r\n" % (len(data), data)


@dataclass(frozen=True, slots=True)
class HubLimits:
    chunk_size: int = 4096  # outbound chunk size every viewer is told before media
    gop_max_bytes: int = 8 * 1024 * 1024  # cached GOP; past it the cache is dropped until the next key frame
    gop_max_packets: int = 4096
    viewer_high_water: int = 1 * 1024 * 1024  # buffered bytes: above it a viewer skips to the next key frame
    viewer_max_buffer: int = 8 * 1024 * 1024  # buffered bytes: above it a viewer is disconnected
    viewer_max_stall: float = 10.0  # seconds: a viewer skipped this long without catching up is disconnected
    max_streams: int = 10_000
    # Merged writes: packets arriving within this many seconds go to each viewer as one write (one
    # syscall per viewer per window instead of per message). 0 writes every packet at once. The
    # window is added to viewers' latency; see docs/BENCHMARKS.md for the trade.
    merge_window: float = 0.02
    merge_phases: int = 0  # groups of viewers flushed in turn across the window; 0: one per 25 ms of window


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


def metadata_payload(payload: bytes) -> bytes | None:
    """Turn '@setDataFrame onMetaData {...}' into the 'onMetaData {...}' players expect; None if not metadata."""
    try:
        values = amf0.decode(payload)
    except ProtocolError:
        return None
    if values and values[0] == "@setDataFrame":
        values = values[1:]
    if len(values) >= 2 and values[0] == "onMetaData":
        return amf0.encode(*values)
    return None


@dataclass(eq=False)
class Stream:
    app: str
    name: str
    limits: HubLimits
    publisher: object | None = None
    metadata: Packet | None = None
    video_header: Packet | None = None
    audio_header: Packet | None = None
    gop: GopCache = field(init=False)
    fanout: FanOut = field(init=False)
    bytes_in: int = 0
    packets_in: int = 0
    scheduler: Scheduler = asyncio_scheduler
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.gop = GopCache(self.limits.gop_max_bytes, self.limits.gop_max_packets)
        self.fanout = FanOut(self.limits, self.scheduler, self.clock, self.headers)

    @property
    def key(self) -> str:
        return f"{self.app}/{self.name}"

    @property
    def viewers(self) -> int:
        return self.fanout.viewers

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
        """One message from the publisher: cache what late joiners need, then fan it out."""
        self.bytes_in += len(payload)
        self.packets_in += 1
        if kind == DATA:
            meta = metadata_payload(payload)
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
        return packet

    def flush(self) -> None:
        """Send everything still waiting for a merge window (to every viewer group)."""
        self.fanout.flush_all()

    def end_of_source(self) -> None:
        """The publisher left: what is pending goes out, viewers are told and let go; caches are emptied."""
        self.fanout.flush_all()
        self.publisher = None
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
    ) -> None:
        self.limits = limits or HubLimits()
        self.scheduler = scheduler
        self.clock = clock
        self._streams: dict[str, Stream] = {}

    def get(self, app: str, name: str) -> Stream | None:
        return self._streams.get(f"{app}/{name}")

    def get_or_create(self, app: str, name: str) -> Stream:
        key = f"{app}/{name}"
        stream = self._streams.get(key)
        if stream is None:
            if len(self._streams) >= self.limits.max_streams:
                raise OverflowError(f"hub holds its maximum of {self.limits.max_streams} streams")
            stream = self._streams[key] = Stream(app, name, self.limits, scheduler=self.scheduler, clock=self.clock)
        return stream

    def discard_if_idle(self, stream: Stream) -> None:
        if stream.publisher is None and stream.viewers == 0 and self._streams.get(stream.key) is stream:
            del self._streams[stream.key]

    def __iter__(self) -> Iterator[Stream]:
        return iter(list(self._streams.values()))

    def __len__(self) -> int:
        return len(self._streams)
