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
from typing import Final, Protocol

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


Scheduler = Callable[[float, Callable[[], None]], object]


def asyncio_scheduler(delay: float, callback: Callable[[], None]) -> object:
    return asyncio.get_running_loop().call_later(delay, callback)


class Subscriber(Protocol):
    """A viewer as the hub sees it: a non-blocking byte sink that can report its backlog.

    ``write`` and ``buffered`` are read once at subscribe time and called directly in the fan-out
    loop, so a viewer can make them its transport's own (C) methods: no Python frame per write.
    """

    wire_format: str  # RTMP or FLV: which prebuilt bytes of each packet it takes

    @property
    def write(self) -> Callable[[bytes], object]: ...
    @property
    def buffered(self) -> Callable[[], int]: ...
    def drop(self, reason: str) -> None: ...
    def source_ended(self) -> None: ...


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


@dataclass(slots=True)
class _ViewerState:
    subscriber: Subscriber
    write: Callable[[bytes], object]
    buffered: Callable[[], int]
    skipping: bool = False  # over the high-water mark: no media until it drains and a key frame comes
    skipping_since: float = 0.0


class _Batch:
    """The packets of one merge window in one wire format, joined once for every viewer."""

    __slots__ = ("_resume", "data", "fmt", "packets", "stream")

    def __init__(self, stream: Stream, packets: list[Packet], fmt: str) -> None:
        self.stream = stream
        self.packets = packets
        self.fmt = fmt
        self.data = packets[0].wire(fmt) if len(packets) == 1 else b"".join(p.wire(fmt) for p in packets)
        self._resume: bytes | None = None

    def resume(self) -> bytes | None:
        """For a viewer rejoining live: current metadata and sequence headers, then the batch from its first
        key frame. None when the batch has no key frame (the viewer keeps waiting)."""
        if self._resume is None:
            start = next((i for i, p in enumerate(self.packets) if p.keyframe), None)
            if start is None:
                return None
            stream, fmt = self.stream, self.fmt
            headers = [p.wire(fmt) for p in (stream.metadata, stream.video_header, stream.audio_header) if p]
            self._resume = b"".join([*headers, *(p.wire(fmt) for p in self.packets[start:])])
        return self._resume


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
    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    viewers_dropped: int = 0
    scheduler: Scheduler = asyncio_scheduler
    clock: Callable[[], float] = time.monotonic
    _subscribers: dict[Subscriber, _ViewerState] = field(default_factory=dict)
    _by_format: dict[str, dict[Subscriber, _ViewerState]] = field(default_factory=dict)
    _pending: list[Packet] = field(default_factory=list)
    _doomed: list[tuple[Subscriber, str]] = field(default_factory=list)
    _flush_scheduled: bool = False

    def __post_init__(self) -> None:
        self.gop = GopCache(self.limits.gop_max_bytes, self.limits.gop_max_packets)

    @property
    def key(self) -> str:
        return f"{self.app}/{self.name}"

    @property
    def viewers(self) -> int:
        return len(self._subscribers)

    @property
    def subscribers(self) -> list[Subscriber]:
        return list(self._subscribers)

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
        self._fan_out(packet)
        return packet

    def end_of_source(self) -> None:
        """The publisher left: what is pending goes out, viewers are told and let go; caches are emptied."""
        self.flush()
        self.publisher = None
        subscribers = list(self._subscribers)
        self._subscribers.clear()
        self._by_format.clear()
        for subscriber in subscribers:
            subscriber.source_ended()
        self.metadata = self.video_header = self.audio_header = None
        self.gop.clear()

    # -- the viewer side -----------------------------------------------------------------------------

    def add_subscriber(self, subscriber: Subscriber) -> None:
        state = _ViewerState(subscriber, subscriber.write, subscriber.buffered)
        fmt = subscriber.wire_format
        self._subscribers[subscriber] = state
        self._by_format.setdefault(fmt, {})[subscriber] = state
        # Packets still waiting for the merge window reach this viewer with the next flush: leave them out.
        pending = {id(p) for p in self._pending}
        cached = [p for p in (self.metadata, self.video_header, self.audio_header) if p is not None]
        cached.extend(self.gop)
        bootstrap = [p.wire(fmt) for p in cached if id(p) not in pending]
        if bootstrap:
            data = b"".join(bootstrap)
            self.bytes_out += len(data)
            state.write(data)

    def remove_subscriber(self, subscriber: Subscriber) -> None:
        if self._subscribers.pop(subscriber, None) is not None:
            group = self._by_format.get(subscriber.wire_format)
            if group is not None:
                group.pop(subscriber, None)

    def _fan_out(self, packet: Packet) -> None:
        if not self._subscribers:
            return
        window = self.limits.merge_window
        if window <= 0:
            self._deliver([packet])
            return
        self._pending.append(packet)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.scheduler(window, self.flush)

    def flush(self) -> None:
        """Write everything the merge window collected: one join per format, one write per viewer."""
        self._flush_scheduled = False
        packets, self._pending = self._pending, []
        if packets and self._subscribers:
            self._deliver(packets)

    def _deliver(self, packets: list[Packet]) -> None:
        high_water = self.limits.viewer_high_water
        sent = 0
        for fmt, group in self._by_format.items():
            if not group:
                continue
            batch = _Batch(self, packets, fmt)
            data = batch.data
            size = len(data)
            for state in group.values():
                backlog = state.buffered()
                if backlog > high_water or state.skipping:
                    resume = self._lagging(state, batch, backlog)
                    if resume is not None:
                        state.write(resume)
                        sent += len(resume)
                    continue
                state.write(data)
                sent += size
        self.bytes_out += sent
        if self._doomed:
            doomed, self._doomed = self._doomed, []
            for subscriber, reason in doomed:
                self.remove_subscriber(subscriber)
                self.viewers_dropped += 1
                subscriber.drop(reason)  # its transport closes later, outside the fan-out

    def _lagging(self, state: _ViewerState, batch: _Batch, backlog: int) -> bytes | None:
        """Slow viewer policy: nothing while over the high-water mark; once drained, rejoin live at a key
        frame with the sequence headers. Disconnected past the byte limit, or when it stays behind longer
        than the stall limit. Returns what to write, if anything."""
        limits = self.limits
        if not state.skipping:
            state.skipping = True
            state.skipping_since = self.clock()
        if backlog > limits.viewer_max_buffer:
            self._drop(state, f"viewer fell {backlog} bytes behind (limit {limits.viewer_max_buffer})")
            return None
        if backlog > limits.viewer_high_water:
            stalled = self.clock() - state.skipping_since
            if stalled > limits.viewer_max_stall:
                self._drop(state, f"viewer stayed {stalled:.1f}s behind (limit {limits.viewer_max_stall:g}s)")
            return None
        resume = batch.resume()
        if resume is not None:
            state.skipping = False
        return resume

    def _drop(self, state: _ViewerState, reason: str) -> None:
        """Mark for disconnection; _deliver lets it go after its loop (the dicts must not change inside)."""
        self._doomed.append((state.subscriber, reason))


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
