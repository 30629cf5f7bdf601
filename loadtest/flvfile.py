"""FLV files for load tests: a strict FLV parser (whole files and incremental streams) and a test-FLV maker.

FLV layout (Adobe FLV spec, annex E)::

    header     "FLV" version(1) flags(1: 0x04 audio, 0x01 video) data_offset(u32, >= 9)
    u32        PreviousTagSize0, always 0
    tags       type(1) data_size(u24) timestamp(u24) timestamp_ext(1) stream_id(u24, always 0)
               data(data_size)  PreviousTagSize(u32 = 11 + data_size)

The same parser reads pre-encoded files for the publisher and HTTP-FLV bodies for the swarm's probe
viewers: ``FlvReader.feed`` takes bytes in any fragmentation and returns the complete tags.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

TAG_AUDIO: Final = 8
TAG_VIDEO: Final = 9
TAG_SCRIPT: Final = 18
TAG_TYPES: Final = frozenset({TAG_AUDIO, TAG_VIDEO, TAG_SCRIPT})

FILE_HEADER_SIZE: Final = 9
TAG_HEADER_SIZE: Final = 11
BACK_POINTER_SIZE: Final = 4
MAX_DATA_OFFSET: Final = 4096  # a header announcing a larger body offset is not a real FLV file
DEFAULT_MAX_TAG_SIZE: Final = 8 * 1024 * 1024  # bytes of one tag's data; the 24-bit field allows 16 MiB - 1
_COMPACT_AT: Final = 256 * 1024  # reader: drop consumed bytes from the buffer once this many piled up


class FlvError(ValueError):
    """The bytes are not a well-formed FLV file/stream; the message says what and at which byte offset."""


@dataclass(frozen=True, slots=True)
class FlvTag:
    tag_type: int  # 8 audio, 9 video, 18 script data
    timestamp: int  # milliseconds (24-bit field + 8-bit extension)
    payload: bytes  # the tag body: an RTMP audio/video/data message payload


@dataclass(frozen=True, slots=True)
class FlvHeader:
    version: int
    has_audio: bool
    has_video: bool


class FlvReader:
    """Incremental, strict FLV parser. ``feed`` returns the tags completed so far; ``close`` checks the end.

    Checks: signature and version 1, data offset, PreviousTagSize0 == 0, tag types 8/9/18 (filtered or
    encrypted tags are refused), stream id 0, each back-pointer == 11 + data size, tag size bound.
    """

    def __init__(self, *, max_tag_size: int = DEFAULT_MAX_TAG_SIZE) -> None:
        if not 0 < max_tag_size <= 0xFFFFFF:
            raise ValueError(f"max_tag_size must be in 1..{0xFFFFFF}, got {max_tag_size}")
        self.max_tag_size = max_tag_size
        self.header: FlvHeader | None = None
        self.tags_read = 0
        self._buf = bytearray()
        self._pos = 0  # parse position in _buf
        self._base = 0  # stream offset of _buf[0]
        self._body_at = -1  # stream offset of PreviousTagSize0, known once the header is parsed
        self._in_body = False  # PreviousTagSize0 checked; tags follow

    @property
    def offset(self) -> int:
        """Stream offset of the first byte not yet parsed."""
        return self._base + self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> list[FlvTag]:
        self._buf += data
        tags: list[FlvTag] = []
        if not self._in_body and not self._parse_header():
            return tags
        buf = self._buf
        end = len(buf)
        pos = self._pos
        max_size = self.max_tag_size
        while end - pos >= TAG_HEADER_SIZE:
            tag_type = buf[pos]
            size = int.from_bytes(buf[pos + 1 : pos + 4], "big")
            total = TAG_HEADER_SIZE + size + BACK_POINTER_SIZE
            if end - pos < total:
                self._check_tag_header(pos, tag_type, size, max_size)
                break
            self._check_tag_header(pos, tag_type, size, max_size)
            back = int.from_bytes(buf[pos + total - 4 : pos + total], "big")
            if back != size + TAG_HEADER_SIZE:
                raise FlvError(
                    f"FLV tag at byte {self._base + pos}: PreviousTagSize is {back}, expected {size + TAG_HEADER_SIZE}"
                )
            timestamp = int.from_bytes(buf[pos + 4 : pos + 7], "big") | (buf[pos + 7] << 24)
            tags.append(FlvTag(tag_type, timestamp, bytes(buf[pos + TAG_HEADER_SIZE : pos + TAG_HEADER_SIZE + size])))
            pos += total
        self._pos = pos
        self.tags_read += len(tags)
        self._compact()
        return tags

    def close(self) -> None:
        """The input ended: raise FlvError unless it ended exactly after a complete tag."""
        if self.header is None:
            raise FlvError(f"FLV input ended inside the file header ({len(self._buf)} of {FILE_HEADER_SIZE} bytes)")
        if not self._in_body:
            raise FlvError("FLV input ended before the first PreviousTagSize field")
        left = len(self._buf) - self._pos
        if left:
            raise FlvError(f"FLV input ends with a truncated tag at byte {self.offset} ({left} bytes left over)")

    # -- internals ---------------------------------------------------------------------------------

    def _parse_header(self) -> bool:
        buf = self._buf
        if self.header is None:
            if len(buf) >= 3 and bytes(buf[:3]) != b"FLV":
                raise FlvError(f"not an FLV stream: starts with {bytes(buf[:3])!r}, expected b'FLV'")
            if len(buf) < FILE_HEADER_SIZE:
                return False
            version, flags = buf[3], buf[4]
            if version != 1:
                raise FlvError(f"unsupported FLV version {version} (expected 1)")
            data_offset = int.from_bytes(buf[5:9], "big")
            if not FILE_HEADER_SIZE <= data_offset <= MAX_DATA_OFFSET:
                raise FlvError(f"FLV header data offset {data_offset} outside {FILE_HEADER_SIZE}..{MAX_DATA_OFFSET}")
            self.header = FlvHeader(version, bool(flags & 0x04), bool(flags & 0x01))
            self._body_at = data_offset
        if len(buf) < self._body_at + BACK_POINTER_SIZE:
            return False
        first = int.from_bytes(buf[self._body_at : self._body_at + BACK_POINTER_SIZE], "big")
        if first != 0:
            raise FlvError(f"FLV PreviousTagSize0 at byte {self._body_at} is {first}, expected 0")
        self._pos = self._body_at + BACK_POINTER_SIZE
        self._in_body = True
        return True

    def _check_tag_header(self, pos: int, tag_type: int, size: int, max_size: int) -> None:
        at = self._base + pos
        if tag_type & 0x20:
            raise FlvError(f"FLV tag at byte {at}: filtered/encrypted tags are not supported")
        if tag_type not in TAG_TYPES:
            raise FlvError(f"FLV tag at byte {at}: unknown tag type {tag_type} (expected 8, 9 or 18)")
        if size > max_size:
            raise FlvError(f"FLV tag at byte {at}: data size {size} exceeds the limit of {max_size} bytes")
        buf = self._buf
        if len(buf) - pos >= TAG_HEADER_SIZE and any(buf[pos + 8 : pos + 11]):
            raise FlvError(f"FLV tag at byte {at}: stream id must be 0")

    def _compact(self) -> None:
        if self._pos >= _COMPACT_AT or self._pos == len(self._buf):
            del self._buf[: self._pos]
            self._base += self._pos
            self._body_at -= self._pos
            self._pos = 0


def parse_flv(data: bytes | bytearray | memoryview) -> list[FlvTag]:
    """Every tag of a complete FLV file held in memory (strict; raises FlvError)."""
    reader = FlvReader()
    tags = reader.feed(data)
    reader.close()
    return tags


def read_flv(path: str | Path) -> list[FlvTag]:
    """Every tag of an FLV file on disk; FlvError messages name the file."""
    data = Path(path).read_bytes()
    try:
        return parse_flv(data)
    except FlvError as exc:
        raise FlvError(f"{path}: {exc}") from None


# --- making a pre-encoded test file ---------------------------------------------------------------


def ffmpeg_executable() -> str:
    """LIVECDN_FFMPEG, else a system ffmpeg, else the one PyPI's imageio-ffmpeg ships (it has RTMP)."""
    explicit = os.environ.get("LIVECDN_FFMPEG")
    if explicit:
        return explicit
    system = shutil.which("ffmpeg")
    if system:
        return system
    try:
        import imageio_ffmpeg
    except ImportError:
        raise FileNotFoundError("no ffmpeg on PATH and imageio-ffmpeg is not installed") from None
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def parse_size(size: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720); even positive dimensions (H.264 4:2:0 needs them)."""
    width_s, sep, height_s = size.lower().partition("x")
    if not sep or not width_s.isdigit() or not height_s.isdigit():
        raise ValueError(f"size must look like 1280x720, got {size!r}")
    width, height = int(width_s), int(height_s)
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"size must have even, positive width and height, got {size!r}")
    return width, height


def make_flv_command(
    path: str | Path,
    *,
    seconds: float,
    bitrate_kbps: int,
    gop_seconds: float,
    fps: int,
    size: str,
    ffmpeg: str | None = None,
    cbr: bool = False,
) -> list[str]:
    if seconds <= 0 or bitrate_kbps <= 0 or gop_seconds <= 0 or fps <= 0:
        raise ValueError("seconds, bitrate, gop and fps must be positive")
    width, height = parse_size(size)
    gop_frames = max(1, round(gop_seconds * fps))
    rate = f"{bitrate_kbps}k"
    return [
        ffmpeg or ffmpeg_executable(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={width}x{height}:rate={fps}",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        f"{seconds:g}",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        "-b:v",
        rate,
        "-maxrate",
        rate,
        "-bufsize",
        rate,  # a one-second VBV: the rate stays near the target over every second, as a live encoder's
        # cbr pads with filler data, so even a simple test pattern really weighs the bitrate
        *(["-minrate", rate, "-x264-params", "nal-hrd=cbr"] if cbr else []),
        "-g",
        str(gop_frames),
        "-keyint_min",
        str(gop_frames),
        "-sc_threshold",
        "0",
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-ar",
        "48000",
        "-f",
        "flv",
        str(path),
    ]


def make_flv(
    path: str | Path,
    *,
    seconds: float = 20,
    bitrate_kbps: int = 2000,
    gop_seconds: float = 2,
    fps: int = 30,
    size: str = "1280x720",
    ffmpeg: str | None = None,
    timeout: float = 600,
    cbr: bool = False,
) -> Path:
    """Encode a test-pattern H.264/AAC FLV (testsrc2 + sine) with a fixed GOP, near-constant bitrate
    (constant with ``cbr``)."""
    command = make_flv_command(
        path,
        seconds=seconds,
        bitrate_kbps=bitrate_kbps,
        gop_seconds=gop_seconds,
        fps=fps,
        size=size,
        ffmpeg=ffmpeg,
        cbr=cbr,
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return Path(path)


@dataclass(frozen=True, slots=True)
class FlvSummary:
    tags: int
    video_tags: int
    audio_tags: int
    duration_ms: int
    media_bytes: int

    @property
    def kbps(self) -> float:
        return self.media_bytes * 8 / self.duration_ms if self.duration_ms > 0 else 0.0


def summarize(tags: list[FlvTag]) -> FlvSummary:
    media = [t for t in tags if t.tag_type in (TAG_AUDIO, TAG_VIDEO)]
    duration = max((t.timestamp for t in media), default=0) - min((t.timestamp for t in media), default=0)
    return FlvSummary(
        tags=len(tags),
        video_tags=sum(1 for t in media if t.tag_type == TAG_VIDEO),
        audio_tags=sum(1 for t in media if t.tag_type == TAG_AUDIO),
        duration_ms=duration,
        media_bytes=sum(len(t.payload) for t in media),
    )
