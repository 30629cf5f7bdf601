"""Media packets with their wire bytes built once, and the hub's limits: what the fan-out and the streams share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from common.media.flv import flv_tag, is_video_keyframe
from common.rtmp.chunk import encode_message
from common.rtmp.messages import CSID_AUDIO, CSID_DATA, CSID_VIDEO, MEDIA_STREAM_ID, MessageType

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
