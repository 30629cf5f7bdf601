"""What the hub needs to know about FLV-style audio/video payloads, plus FLV muxing for HTTP-FLV.

RTMP audio/video message payloads are FLV tag bodies: byte 0 of video carries the frame type and
codec (or, with Enhanced RTMP, the ExHeader bit, packet type and a FourCC); byte 0 of audio carries
the sound format.
"""

from __future__ import annotations

import struct
from typing import Final

VIDEO_CODEC_AVC: Final = 7
VIDEO_CODEC_HEVC_LEGACY: Final = 12  # widely used pre-standard HEVC-in-FLV id
AUDIO_FORMAT_AAC: Final = 10
AUDIO_FORMAT_EX_HEADER: Final = 9  # Enhanced RTMP audio
FRAME_TYPE_KEY: Final = 1
_EX_HEADER_BIT: Final = 0x80
_EX_SEQUENCE_START: Final = 0

_TAG_HEADER = struct.Struct(">B3s3sB3s")
_U32 = struct.Struct(">I")


def is_video_keyframe(payload: bytes) -> bool:
    """A key frame (IDR or its Enhanced-RTMP equivalent); sequence headers count as key frames too."""
    return bool(payload) and (payload[0] >> 4) & 0x07 == FRAME_TYPE_KEY


def is_video_sequence_header(payload: bytes) -> bool:
    if len(payload) < 2:
        return False
    first = payload[0]
    if first & _EX_HEADER_BIT:
        return first & 0x0F == _EX_SEQUENCE_START
    return first & 0x0F in (VIDEO_CODEC_AVC, VIDEO_CODEC_HEVC_LEGACY) and payload[1] == 0


def is_audio_sequence_header(payload: bytes) -> bool:
    if len(payload) < 2:
        return False
    sound_format = payload[0] >> 4
    if sound_format == AUDIO_FORMAT_AAC:
        return payload[1] == 0
    if sound_format == AUDIO_FORMAT_EX_HEADER:
        return payload[0] & 0x0F == _EX_SEQUENCE_START
    return False


def flv_file_header(*, audio: bool = True, video: bool = True) -> bytes:
    flags = (0x04 if audio else 0) | (0x01 if video else 0)
    return b"FLV\x01" + bytes([flags]) + _U32.pack(9) + _U32.pack(0)


def flv_tag(tag_type: int, timestamp: int, payload: bytes) -> bytes:
    """One FLV tag followed by its PreviousTagSize back-pointer."""
    timestamp &= 0xFFFFFFFF
    size = len(payload)
    header = _TAG_HEADER.pack(
        tag_type, size.to_bytes(3, "big"), (timestamp & 0xFFFFFF).to_bytes(3, "big"), timestamp >> 24, b"\0\0\0"
    )
    return b"".join((header, payload, _U32.pack(size + 11)))
