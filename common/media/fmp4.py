"""Fragmented MP4 (CMAF) boxes, built from bytes: the init segment and ``moof``+``mdat`` fragments.

ISO/IEC 14496-12 box layouts, byte for byte. Pure functions: the packager calls them once per init
segment and once per part; every viewer gets the same bytes. Video runs on a 90 kHz clock, audio on its
sample rate (one AAC frame = 1024 ticks), so durations stay exact where a 1 ms clock would round.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from common.media.codecs import AudioConfig, VideoConfig

VIDEO_TIMESCALE: Final = 90_000
VIDEO_TRACK: Final = 1
AUDIO_TRACK: Final = 2
# sample_flags (14496-12 8.8.3.1): a sync sample depends on nothing; others depend and are not sync.
SYNC_SAMPLE: Final = 0x02000000
NON_SYNC_SAMPLE: Final = 0x01010000
_MATRIX: Final = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
_TRUN_FLAGS: Final = 0x000001 | 0x000100 | 0x000200 | 0x000400 | 0x000800  # offset, duration, size, flags, cts
_TFHD_DEFAULT_BASE_IS_MOOF: Final = 0x020000


def box(kind: bytes, *children: bytes) -> bytes:
    body = b"".join(children)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *children: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *children)


@dataclass(frozen=True, slots=True)
class Sample:
    data: bytes
    duration: int  # in the track's timescale
    cts: int = 0  # composition offset, track timescale (signed)
    sync: bool = True


@dataclass(frozen=True, slots=True)
class Run:
    """One track's samples in a fragment, starting at ``decode_time`` (track timescale)."""

    track_id: int
    decode_time: int
    samples: Sequence[Sample]


# -- init segment --------------------------------------------------------------------------------------


def init_segment(video: VideoConfig | None, audio: AudioConfig | None) -> bytes:
    """``ftyp`` + ``moov`` with one track per media type present (video is track 1, audio track 2)."""
    traks: list[bytes] = []
    trexs: list[bytes] = []
    if video is not None:
        traks.append(_trak(VIDEO_TRACK, VIDEO_TIMESCALE, b"vide", _video_entry(video), video.width, video.height))
        trexs.append(_trex(VIDEO_TRACK))
    if audio is not None:
        traks.append(_trak(AUDIO_TRACK, audio.sample_rate, b"soun", _audio_entry(audio), 0, 0))
        trexs.append(_trex(AUDIO_TRACK))
    ftyp = box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6cmfcmp41")
    mvhd = full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, 1000, 0),  # creation, modification, timescale, duration
        struct.pack(">IH10x", 0x00010000, 0x0100),  # rate 1.0, volume 1.0, reserved
        _MATRIX,
        bytes(24),  # pre_defined
        struct.pack(">I", AUDIO_TRACK + 1),  # next_track_ID
    )
    return ftyp + box(b"moov", mvhd, *traks, box(b"mvex", *trexs))


def _trak(track_id: int, timescale: int, handler: bytes, entry: bytes, width: int, height: int) -> bytes:
    is_audio = handler == b"soun"
    tkhd = full_box(
        b"tkhd",
        0,
        0x000003,  # enabled, in movie
        struct.pack(">IIII4x", 0, 0, track_id, 0),  # creation, modification, track_ID, reserved, duration
        bytes(8),  # reserved
        struct.pack(">hhH2x", 0, 0, 0x0100 if is_audio else 0),  # layer, alternate_group, volume, reserved
        _MATRIX,
        struct.pack(">II", width << 16, height << 16),
    )
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, 0x55C4, 0))  # language "und"
    name = b"SoundHandler\0" if is_audio else b"VideoHandler\0"
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, handler), name)
    media_header = full_box(b"smhd", 0, 0, bytes(4)) if is_audio else full_box(b"vmhd", 0, 1, bytes(8))
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    stbl = box(
        b"stbl",
        full_box(b"stsd", 0, 0, struct.pack(">I", 1), entry),
        full_box(b"stts", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
        full_box(b"stco", 0, 0, struct.pack(">I", 0)),
    )
    minf = box(b"minf", media_header, dinf, stbl)
    return box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, minf))


def _trex(track_id: int) -> bytes:
    return full_box(b"trex", 0, 0, struct.pack(">IIIII", track_id, 1, 0, 0, 0))


def _video_entry(video: VideoConfig) -> bytes:
    config_box = b"avcC" if video.codec == "avc1" else b"hvcC"
    return box(
        video.codec.encode(),
        bytes(6),
        struct.pack(">H", 1),  # data_reference_index
        bytes(16),  # pre_defined, reserved
        struct.pack(">HHIIIH", video.width, video.height, 0x00480000, 0x00480000, 0, 1),
        bytes(32),  # compressorname
        struct.pack(">Hh", 0x0018, -1),  # depth, pre_defined
        box(config_box, video.record),
    )


def _audio_entry(audio: AudioConfig) -> bytes:
    return box(
        b"mp4a",
        bytes(6),
        struct.pack(">H", 1),
        bytes(8),  # reserved
        struct.pack(">HHHH", audio.channels, 16, 0, 0),
        struct.pack(">I", (audio.sample_rate << 16) & 0xFFFFFFFF),
        esds(audio.asc),
    )


def _descriptor(tag: int, body: bytes) -> bytes:
    size = len(body)  # 14496-1 expandable size: 7 bits a byte, high bit = more follows
    encoded = [size & 0x7F]
    size >>= 7
    while size:
        encoded.insert(0, 0x80 | (size & 0x7F))
        size >>= 7
    return bytes([tag, *encoded]) + body


def esds(asc: bytes) -> bytes:
    decoder_config = _descriptor(
        0x04,
        struct.pack(">BB3sII", 0x40, 0x15, bytes(3), 0, 0)  # MPEG-4 audio, audio stream, no bitrates
        + _descriptor(0x05, asc),
    )
    es = _descriptor(0x03, struct.pack(">HB", 0, 0) + decoder_config + _descriptor(0x06, b"\x02"))
    return full_box(b"esds", 0, 0, es)


# -- fragments -----------------------------------------------------------------------------------------


def fragment(sequence: int, runs: Sequence[Run]) -> bytes:
    """One ``moof`` (a ``traf`` per non-empty run) and its ``mdat``: the runs' data back to back."""
    runs = [r for r in runs if r.samples]
    if not runs:
        raise ValueError("a fragment needs at least one sample")
    # Every box is fixed-size given the sample counts, so the moof's size is known before the offsets.
    moof_size = 8 + 16 + sum(8 + 16 + 20 + 20 + 16 * len(r.samples) for r in runs)
    offset = moof_size + 8  # data_offset counts from the moof's first byte (default-base-is-moof)
    trafs = []
    for run in runs:
        trafs.append(_traf(run, offset))
        offset += sum(len(s.data) for s in run.samples)
    moof = box(b"moof", full_box(b"mfhd", 0, 0, struct.pack(">I", sequence)), *trafs)
    assert len(moof) == moof_size
    mdat = box(b"mdat", *(s.data for r in runs for s in r.samples))
    return moof + mdat


def _traf(run: Run, data_offset: int) -> bytes:
    tfhd = full_box(b"tfhd", 0, _TFHD_DEFAULT_BASE_IS_MOOF, struct.pack(">I", run.track_id))
    tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", run.decode_time))
    entries = b"".join(
        struct.pack(">IIIi", s.duration, len(s.data), SYNC_SAMPLE if s.sync else NON_SYNC_SAMPLE, s.cts)
        for s in run.samples
    )
    # version 1: composition offsets are signed (FLV's CTS field is)
    trun = full_box(b"trun", 1, _TRUN_FLAGS, struct.pack(">Ii", len(run.samples), data_offset), entries)
    return box(b"traf", tfhd, tfdt, trun)
