"""FLV audio/video tag bodies taken apart for repackaging (fMP4): decoder configurations and frames.

Video: legacy AVC (codec id 7) and HEVC (the pre-standard id 12) carry ``AVCPacketType``, a signed 24-bit
composition time offset and length-prefixed NAL units; Enhanced RTMP carries a FourCC (``avc1``,
``hvc1``) and a packet type (``CodedFramesX`` has no CTS field). Audio: AAC (sound format 10) with its
AudioSpecificConfig in the sequence header. Nothing is re-encoded: frame data is sliced out as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from common.media.flv import AUDIO_FORMAT_AAC, FRAME_TYPE_KEY, VIDEO_CODEC_AVC, VIDEO_CODEC_HEVC_LEGACY

_EX_HEADER: Final = 0x80
_EX_SEQUENCE_START: Final = 0
_EX_CODED_FRAMES: Final = 1
_EX_CODED_FRAMES_X: Final = 3
_FOURCC_CODEC: Final = {b"avc1": "avc1", b"hvc1": "hvc1"}
AAC_FRAME_SAMPLES: Final = 1024
_AAC_RATES: Final = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


@dataclass(frozen=True, slots=True)
class VideoConfig:
    codec: str  # "avc1" or "hvc1": the sample entry type
    record: bytes  # AVCDecoderConfigurationRecord / HEVCDecoderConfigurationRecord, verbatim
    width: int = 0
    height: int = 0


@dataclass(frozen=True, slots=True)
class VideoFrame:
    data: bytes  # length-prefixed NAL units, as in the FLV tag
    cts: int  # composition time offset, ms
    keyframe: bool


@dataclass(frozen=True, slots=True)
class AudioConfig:
    asc: bytes  # AudioSpecificConfig
    sample_rate: int
    channels: int
    object_type: int


def parse_video(payload: bytes) -> VideoConfig | VideoFrame | None:
    """A decoder configuration, a frame, or None (end of sequence, metadata, an unsupported codec)."""
    if len(payload) < 5:
        return None
    first = payload[0]
    keyframe = (first >> 4) & 0x07 == FRAME_TYPE_KEY
    if first & _EX_HEADER:
        codec = _FOURCC_CODEC.get(payload[1:5])
        packet_type = first & 0x0F
        if codec is None:
            return None
        if packet_type == _EX_SEQUENCE_START:
            return _config(codec, payload[5:])
        if packet_type == _EX_CODED_FRAMES and len(payload) >= 8:
            return VideoFrame(payload[8:], _si24(payload[5:8]), keyframe)
        if packet_type == _EX_CODED_FRAMES_X:
            return VideoFrame(payload[5:], 0, keyframe)
        return None
    codec_id = first & 0x0F
    if codec_id not in (VIDEO_CODEC_AVC, VIDEO_CODEC_HEVC_LEGACY):
        return None
    codec = "avc1" if codec_id == VIDEO_CODEC_AVC else "hvc1"
    if payload[1] == 0:
        return _config(codec, payload[5:])
    if payload[1] == 1:
        return VideoFrame(payload[5:], _si24(payload[2:5]), keyframe)
    return None


def parse_audio(payload: bytes) -> AudioConfig | bytes | None:
    """An AAC configuration, one raw AAC frame, or None (not AAC)."""
    if len(payload) < 3 or payload[0] >> 4 != AUDIO_FORMAT_AAC:
        return None
    if payload[1] == 0:
        return parse_asc(payload[2:])
    return payload[2:]


def parse_asc(asc: bytes) -> AudioConfig | None:
    if len(asc) < 2:
        return None
    bits = int.from_bytes(asc[:2], "big")
    object_type = bits >> 11
    rate_index = (bits >> 7) & 0x0F
    channels = (bits >> 3) & 0x0F
    if rate_index >= len(_AAC_RATES):  # an explicit 24-bit rate: rare in live sources
        return None
    return AudioConfig(bytes(asc), _AAC_RATES[rate_index], channels or 2, object_type)


def _si24(b: bytes) -> int:
    value = int.from_bytes(b, "big")
    return value - (1 << 24) if value & 0x800000 else value


def _config(codec: str, record: bytes) -> VideoConfig | None:
    if not record:
        return None
    width = height = 0
    if codec == "avc1":
        sps = _first_avc_sps(record)
        if sps is not None:
            try:
                width, height = avc_sps_dimensions(sps)
            except IndexError:  # a truncated SPS: the decoder still reads it from the record
                pass
    return VideoConfig(codec, bytes(record), width, height)


def _first_avc_sps(record: bytes) -> bytes | None:
    if len(record) < 8 or record[5] & 0x1F == 0:
        return None
    size = int.from_bytes(record[6:8], "big")
    sps = record[8 : 8 + size]
    return sps if len(sps) == size else None


def avc_codec_string(record: bytes) -> str:
    """RFC 6381 ``avc1.PPCCLL`` from the record's profile, compatibility and level bytes."""
    return "avc1." + record[1:4].hex() if len(record) >= 4 else "avc1"


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def bit(self) -> int:
        byte = self.data[self.pos >> 3]
        value = (byte >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


_HIGH_PROFILES: Final = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def avc_sps_dimensions(sps: bytes) -> tuple[int, int]:
    """Display width and height from an H.264 SPS NAL unit (ITU-T H.264 7.3.2.1.1, cropping applied)."""
    rbsp = sps[1:].replace(b"\x00\x00\x03", b"\x00\x00")  # emulation prevention bytes
    r = _Bits(rbsp)
    profile = r.bits(8)
    r.bits(16)  # constraint flags, level
    r.ue()  # seq_parameter_set_id
    chroma = 1
    if profile in _HIGH_PROFILES:
        chroma = r.ue()
        if chroma == 3:
            r.bit()
        r.ue()
        r.ue()
        r.bit()
        if r.bit():  # seq_scaling_matrix_present_flag
            for i in range(12 if chroma == 3 else 8):
                if r.bit():
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.bit()
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.bit()
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.bit()
    if not frame_mbs_only:
        r.bit()
    r.bit()  # direct_8x8_inference_flag
    left = right = top = bottom = 0
    if r.bit():
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
    sub_w, sub_h = {0: (1, 1), 1: (2, 2), 2: (2, 1), 3: (1, 1)}.get(chroma, (2, 2))
    crop_x, crop_y = sub_w, sub_h * (2 - frame_mbs_only)
    width = width_mbs * 16 - (left + right) * crop_x
    height = (2 - frame_mbs_only) * height_units * 16 - (top + bottom) * crop_y
    return width, height


def _skip_scaling_list(r: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + r.se() + 256) % 256
        last = nxt or last
