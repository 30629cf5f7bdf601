"""LL-HLS: fMP4 boxes field by field, the segmenter's cuts, the playlist's LL tags (parsed by ``m3u8``),
a blocking reload released by the part it waits for, and PyAV decoding what the muxer builds."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from pathlib import Path

import av
import m3u8
import pytest

from common.hub.packet import AUDIO, VIDEO, HubLimits
from common.hub.stream import Stream
from common.keys import StreamKey
from common.media.codecs import AudioConfig, VideoConfig, VideoFrame, parse_audio, parse_video
from common.media.fmp4 import NON_SYNC_SAMPLE, SYNC_SAMPLE, Run, Sample, esds, fragment, init_segment
from common.media.playlist import render
from common.media.segmenter import Segmenter
from common.serving.hls import HlsChannel

# A real 320x240 High-profile avcC (ffmpeg's libx264) and a 48 kHz mono AAC-LC AudioSpecificConfig.
AVCC = bytes.fromhex(
    "0164000dffe100196764000dacd94141fb011000000300100000030320f142996001000468efbcb0fdf8f800"
)  # from the test FLV
ASC = bytes([0x11, 0x88])


def boxes(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos = 0
    while pos < len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        assert size >= 8 and pos + size <= len(data)
        yield kind, data[pos + 8 : pos + size]
        pos += size


def child(data: bytes, *path: bytes, skip: int = 0) -> bytes:
    for kind in path:
        data = next(body for k, body in boxes(data[skip:]) if k == kind)
        skip = 0
    return data


def video_tag(key: bool, cts: int, data: bytes = b"\x00\x00\x00\x02\x65\x88") -> bytes:
    return bytes([0x17 if key else 0x27, 1]) + cts.to_bytes(3, "big", signed=True) + data


def test_codecs_parse_flv_payloads() -> None:
    config = parse_video(b"\x17\x00\x00\x00\x00" + AVCC)
    assert config == VideoConfig("avc1", AVCC, 320, 240)
    assert parse_video(video_tag(False, -2)) == VideoFrame(b"\x00\x00\x00\x02\x65\x88", -2, False)
    hevc = parse_video(b"\x90hvc1" + b"\x01rec")  # Enhanced RTMP: key frame, SequenceStart, FourCC hvc1
    assert isinstance(hevc, VideoConfig) and hevc.codec == "hvc1" and hevc.record == b"\x01rec"
    frame_x = parse_video(b"\x93hvc1" + b"nalu")  # CodedFramesX: no CTS field
    assert frame_x == VideoFrame(b"nalu", 0, True)
    assert parse_video(b"\x1c\x01\x00\x00\x05data") == VideoFrame(b"data", 5, True)  # legacy HEVC id 12
    assert parse_audio(b"\xaf\x00" + ASC) == AudioConfig(ASC, 48000, 1, 2)
    assert parse_audio(b"\xaf\x01raw") == b"raw"
    assert parse_audio(b"\x2f\x01mp3") is None


def test_init_segment_boxes() -> None:
    video, audio = parse_video(b"\x17\x00\x00\x00\x00" + AVCC), parse_audio(b"\xaf\x00" + ASC)
    assert isinstance(video, VideoConfig) and isinstance(audio, AudioConfig)
    init = init_segment(video, audio)
    assert [k for k, _ in boxes(init)] == [b"ftyp", b"moov"]
    assert child(init, b"ftyp")[:4] == b"iso6"
    moov = child(init, b"moov")
    assert [k for k, _ in boxes(moov)] == [b"mvhd", b"trak", b"trak", b"mvex"]
    traks = [body for k, body in boxes(moov) if k == b"trak"]
    tkhd = child(traks[0], b"tkhd")
    assert struct.unpack_from(">I", tkhd, 12)[0] == 1  # track_ID
    assert struct.unpack_from(">II", tkhd, 76) == (320 << 16, 240 << 16)
    mdhd = child(traks[0], b"mdia", b"mdhd")
    assert struct.unpack_from(">I", mdhd, 12)[0] == 90_000
    assert child(traks[1], b"mdia", b"mdhd")[12:16] == struct.pack(">I", 48_000)
    stsd = child(traks[0], b"mdia", b"minf", b"stbl", b"stsd")
    avc1 = child(stsd, b"avc1", skip=8)
    assert struct.unpack_from(">HH", avc1, 24) == (320, 240)
    assert child(avc1, b"avcC", skip=78) == AVCC
    mp4a = child(child(traks[1], b"mdia", b"minf", b"stbl", b"stsd"), b"mp4a", skip=8)
    assert struct.unpack_from(">H", mp4a, 16)[0] == 1  # channels
    assert ASC in child(mp4a, b"esds", skip=28)
    assert [k for k, _ in boxes(child(moov, b"mvex"))] == [b"trex", b"trex"]
    # ES_Descriptor > DecoderConfigDescriptor (MPEG-4 audio) > DecoderSpecificInfo = the ASC
    assert (
        esds(ASC)[12:] == bytes([3, 25, 0, 0, 0, 4, 17, 0x40, 0x15]) + bytes(11) + bytes([5, 2]) + ASC + b"\x06\x01\x02"
    )


def test_fragment_boxes_and_offsets() -> None:
    video = Run(1, 9000, [Sample(b"K" * 10, 3600, 7200, True), Sample(b"P" * 5, 3600, 0, False)])
    audio = Run(2, 4800, [Sample(b"A" * 3, 1024)])
    data = fragment(7, [video, audio])
    (moof_kind, moof), (mdat_kind, mdat) = list(boxes(data))
    assert (moof_kind, mdat_kind) == (b"moof", b"mdat") and mdat == b"K" * 10 + b"P" * 5 + b"A" * 3
    assert child(moof, b"mfhd")[4:] == struct.pack(">I", 7)
    trafs = [body for k, body in boxes(moof) if k == b"traf"]
    tfhd, tfdt, trun = (body for _, body in boxes(trafs[0]))
    assert struct.unpack(">II", tfhd) == (0x020000, 1)  # default-base-is-moof, track 1
    assert struct.unpack(">IQ", tfdt) == (1 << 24, 9000)
    flags, count, offset = struct.unpack_from(">IIi", trun)
    assert flags == (1 << 24) | 0xF01 and count == 2
    moof_size = len(moof) + 8
    assert offset == moof_size + 8  # first byte of mdat's payload
    assert struct.unpack_from(">IIIi", trun, 12) == (3600, 10, SYNC_SAMPLE, 7200)
    assert struct.unpack_from(">IIIi", trun, 28) == (3600, 5, NON_SYNC_SAMPLE, 0)
    audio_trun = child(trafs[1], b"trun")
    assert struct.unpack_from(">i", audio_trun, 8)[0] == moof_size + 8 + 15
    with pytest.raises(ValueError):
        fragment(1, [Run(1, 0, [])])


def feed_synthetic(segmenter: Segmenter, seconds: float, fps: int = 25, gop: int = 25) -> None:
    segmenter.feed(VIDEO, 0, b"\x17\x00\x00\x00\x00" + AVCC)
    segmenter.feed(AUDIO, 0, b"\xaf\x00" + ASC)
    audio_ts = 0.0
    for i in range(int(seconds * fps)):
        ts = i * 1000 // fps
        while audio_ts <= ts:
            segmenter.feed(AUDIO, round(audio_ts), b"\xaf\x01" + b"\x21" * 10)
            audio_ts += 1024 * 1000 / 48000
        segmenter.feed(VIDEO, ts, video_tag(i % gop == 0, 0))


def test_segmenter_cuts_segments_at_key_frames_and_parts_within_target() -> None:
    segmenter = Segmenter(0.5, window=3)
    feed_synthetic(segmenter, 5.04)  # key frames at 0, 1, 2, 3, 4 and 5 s
    msns = [s.msn for s in segmenter.segments]
    assert msns == [2, 3, 4, 5]  # three complete ones kept, then the open one
    for segment in list(segmenter.segments)[:-1]:
        assert segment.data == b"".join(p.data for p in segment.parts)
        assert segment.duration == pytest.approx(1.0)
        assert [p.independent for p in segment.parts] == [True] + [False] * (len(segment.parts) - 1)
        assert all(p.duration <= 0.5 for p in segment.parts)
        assert [round(p.duration, 3) for p in segment.parts] == [0.48, 0.48, 0.04]
    assert segmenter.target_duration == 1
    assert segmenter.has_part(4, None) and not segmenter.has_part(5, None)
    assert segmenter.has_part(5, 0) is False  # the open segment has no complete part yet


def test_segmenter_output_demuxes_with_pyav(tmp_path: Path) -> None:
    segmenter = Segmenter(0.5)
    feed_synthetic(segmenter, 2.04)
    assert segmenter.init is not None
    media = segmenter.init + b"".join(s.data or b"" for s in segmenter.segments)
    (tmp_path / "x.mp4").write_bytes(media)
    with av.open(str(tmp_path / "x.mp4")) as container:
        video = container.streams.video[0]
        assert (video.codec_context.name, video.codec_context.width, video.codec_context.height) == ("h264", 320, 240)
        assert container.streams.audio[0].codec_context.sample_rate == 48000
        kinds = [p.stream.type for p in container.demux() if p.size]
    assert kinds.count("video") == 50  # every frame of two segments
    assert kinds.count("audio") > 90


def test_playlist_has_the_ll_hls_tags() -> None:
    segmenter = Segmenter(0.5)
    feed_synthetic(segmenter, 3.6)
    playlist = m3u8.loads(render(segmenter, 0.5, "token=abc", "x/"))
    assert playlist.target_duration == 1 and playlist.media_sequence == 0
    assert playlist.server_control.can_block_reload == "YES"
    assert playlist.server_control.part_hold_back == pytest.approx(1.5)
    assert playlist.part_inf.part_target == pytest.approx(0.5)
    assert playlist.segment_map[0].uri == "x/init.mp4?token=abc"
    full = [s for s in playlist.segments if s.uri]
    assert [s.uri for s in full] == [f"x/seg{n}.m4s?token=abc" for n in range(3)]
    assert all(s.duration == pytest.approx(1.0) for s in full)
    open_parts = playlist.segments[-1].parts
    assert [p.uri for p in open_parts] == ["x/seg3.0.m4s?token=abc"] and open_parts[0].independent == "YES"
    assert playlist.preload_hint.uri == "x/seg3.1.m4s?token=abc"


async def test_blocking_reload_returns_when_the_part_appears() -> None:
    stream = Stream(StreamKey("live", "x"), HubLimits(merge_window=0))
    stream.source = object()  # type: ignore[assignment]
    channel = HlsChannel(stream, 0.5, asyncio.get_running_loop().time)
    for ts, payload in ((0, b"\x17\x00\x00\x00\x00" + AVCC), (0, b"\xaf\x00" + ASC)):
        stream.feed(VIDEO if payload[0] == 0x17 else AUDIO, ts, payload)
    for i in range(5):
        stream.feed(VIDEO, i * 40, video_tag(i == 0, 0))
    waiter = asyncio.create_task(channel.wait_until(lambda: channel.segmenter.has_part(0, 0)))
    await asyncio.sleep(0.05)
    assert not waiter.done()  # part 0 is still being built
    for i in range(5, 13):
        stream.feed(VIDEO, i * 40, video_tag(False, 0))
    assert await asyncio.wait_for(waiter, 1) is True
    assert channel.segmenter.parts_built == 1
    channel.close()
    assert stream.taps == []


async def test_playlists_cached_per_query_are_bounded() -> None:
    from common.serving.hls import MAX_CACHED_PLAYLISTS

    stream = Stream(StreamKey("live", "x"), HubLimits(merge_window=0))
    stream.source = object()  # type: ignore[assignment]
    channel = HlsChannel(stream, 0.5, asyncio.get_running_loop().time)
    stream.feed(VIDEO, 0, b"\x17\x00\x00\x00\x00" + AVCC)
    for i in range(30):
        stream.feed(VIDEO, i * 40, video_tag(i % 25 == 0, 0))
    texts = {channel.playlist(f"sid={n}") for n in range(MAX_CACHED_PLAYLISTS * 3)}  # a client varying its query
    assert len(texts) == MAX_CACHED_PLAYLISTS * 3  # each still answered with its own URIs
    assert len(channel._playlists) == MAX_CACHED_PLAYLISTS  # but only so many are kept
    channel.close()
