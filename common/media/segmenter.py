"""LL-HLS segmentation, sans-IO: FLV audio/video payloads in, CMAF parts and segments out, built once.

A segment starts at each video key frame (one segment per GOP); within it a part is cut before the frame
that would take it past the part target, so no part is longer than the target. Each part is one
``moof``+``mdat`` with a ``traf`` per track; a segment is its parts back to back (a valid fragmented MP4
on its own after the init segment). Only a bounded window of recent segments is kept.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from common.media.codecs import AAC_FRAME_SAMPLES, AudioConfig, VideoConfig, VideoFrame, parse_audio, parse_video
from common.media.fmp4 import AUDIO_TRACK, VIDEO_TIMESCALE, VIDEO_TRACK, Run, Sample, fragment, init_segment

VIDEO: Final = 9
AUDIO: Final = 8
AUDIO_ONLY_SEGMENT_MS: Final = 2000  # no key frames to cut at: segments of this length
_AUDIO_RESYNC_MS: Final = 100  # audio clock drift (a source gap) past which decode time follows the source


@dataclass(slots=True)
class Part:
    index: int
    duration: float  # seconds
    independent: bool  # starts with a key frame
    data: bytes


@dataclass(slots=True)
class Segment:
    msn: int
    start_ms: int
    parts: list[Part] = field(default_factory=list)
    data: bytes | None = None  # set once complete: its parts joined

    @property
    def complete(self) -> bool:
        return self.data is not None

    @property
    def duration(self) -> float:
        return sum(p.duration for p in self.parts)


class Segmenter:
    def __init__(self, part_target: float, window: int = 6) -> None:
        self.part_target_ms = round(part_target * 1000)
        self.window = window
        self.video_config: VideoConfig | None = None
        self.audio_config: AudioConfig | None = None
        self.init: bytes | None = None  # fixed at the first cut: its tracks are the stream's tracks from then
        self.segments: deque[Segment] = deque()  # complete ones (at most ``window``), then the open one
        self.target_duration = 1
        self.parts_built = 0
        self._fragments = 0
        self._part_start = 0
        self._part_independent = False
        self._video: list[tuple[int, VideoFrame]] = []  # pending (dts ms, frame)
        self._audio: list[bytes] = []
        self._audio_start = 0  # decode time of the first pending audio frame (track timescale)
        self._audio_next: int | None = None
        self._last_interval = 0

    @property
    def has_video(self) -> bool:
        return self.init is not None and self.video_config is not None

    @property
    def current(self) -> Segment | None:
        return self.segments[-1] if self.segments else None

    # -- input ---------------------------------------------------------------------------------------

    def feed(self, kind: int, timestamp: int, payload: bytes) -> bool:
        """One FLV audio/video payload; True when it completed a part."""
        if kind == VIDEO:
            video = parse_video(payload)
            if isinstance(video, VideoConfig):
                if self.init is None:
                    self.video_config = video
            elif video is not None:
                return self._video_frame(timestamp, video)
        elif kind == AUDIO:
            audio = parse_audio(payload)
            if isinstance(audio, AudioConfig):
                if self.init is None:
                    self.audio_config = audio
            elif audio is not None:
                return self._audio_frame(timestamp, audio)
        return False

    def _video_frame(self, ts: int, frame: VideoFrame) -> bool:
        if self.init is None:
            if not frame.keyframe or self.video_config is None:
                return False  # a decoder can start only at a key frame
            self.init = init_segment(self.video_config, self.audio_config)
            self._open_segment(ts)
            self._video.append((ts, frame))
            return False
        if self.video_config is None:
            return False  # video that appeared after the tracks were fixed
        completed = False
        if frame.keyframe:
            completed = self._close_part(ts)
            self._close_segment()
            self._open_segment(ts)
        elif self._video and ts - self._part_start + self._last_interval > self.part_target_ms:
            completed = self._close_part(ts)
            self._part_start, self._part_independent = ts, False
        if self._video:
            self._last_interval = max(0, ts - self._video[-1][0])
        self._video.append((ts, frame))
        return completed

    def _audio_frame(self, ts: int, frame: bytes) -> bool:
        config = self.audio_config
        if config is None:
            return False
        if self.init is None:
            if self.video_config is not None:
                return False  # video leads: audio starts with the first key frame
            self.init = init_segment(None, config)
            self._open_segment(ts)
        elif not self.init_has_audio:
            return False
        completed = False
        if not self.has_video:
            frame_ms = AAC_FRAME_SAMPLES * 1000 / config.sample_rate
            if self._audio and ts - self._part_start + frame_ms > self.part_target_ms:
                completed = self._close_part(ts)
                current = self.current
                if current is not None and ts - current.start_ms >= AUDIO_ONLY_SEGMENT_MS:
                    self._close_segment()
                    self._open_segment(ts)
                else:
                    self._part_start = ts
        if not self._audio:
            source = ts * config.sample_rate // 1000
            drifted = (
                self._audio_next is None
                or abs(source - self._audio_next) > config.sample_rate * _AUDIO_RESYNC_MS / 1000
            )
            self._audio_start = source if drifted or self._audio_next is None else self._audio_next
        self._audio.append(frame)
        return completed

    @property
    def init_has_audio(self) -> bool:
        return self.init is not None and self.audio_config is not None

    # -- cutting -------------------------------------------------------------------------------------

    def _open_segment(self, ts: int) -> None:
        msn = self.segments[-1].msn + 1 if self.segments else 0
        self.segments.append(Segment(msn, ts))
        self._part_start, self._part_independent = ts, True
        while len(self.segments) > self.window + 1:
            self.segments.popleft()

    def _close_segment(self) -> None:
        current = self.current
        if current is None or not current.parts:
            if current is not None:
                self.segments.pop()
            return
        current.data = b"".join(p.data for p in current.parts)
        # Sticky: the target duration may only grow (players size their buffers and reloads by it).
        self.target_duration = max(self.target_duration, math.ceil(current.duration - 0.001))

    def _close_part(self, end_ms: int) -> bool:
        current = self.current
        if current is None or not (self._video or self._audio):
            return False
        runs: list[Run] = []
        if self._video:
            samples = []
            for i, (dts, frame) in enumerate(self._video):
                following = self._video[i + 1][0] if i + 1 < len(self._video) else end_ms
                samples.append(Sample(frame.data, max(0, following - dts) * 90, frame.cts * 90, sync=frame.keyframe))
            runs.append(Run(VIDEO_TRACK, self._video[0][0] * (VIDEO_TIMESCALE // 1000), samples))
        if self._audio and self.init_has_audio:
            runs.append(Run(AUDIO_TRACK, self._audio_start, [Sample(a, AAC_FRAME_SAMPLES) for a in self._audio]))
            self._audio_next = self._audio_start + AAC_FRAME_SAMPLES * len(self._audio)
        if self._video:
            duration = (end_ms - self._part_start) / 1000
        else:
            assert self.audio_config is not None
            duration = len(self._audio) * AAC_FRAME_SAMPLES / self.audio_config.sample_rate
        self._fragments += 1
        data = fragment(self._fragments, runs)
        current.parts.append(Part(len(current.parts), duration, self._part_independent, data))
        self.parts_built += 1
        self._video.clear()
        self._audio.clear()
        return True

    # -- lookups -------------------------------------------------------------------------------------

    def segment(self, msn: int) -> Segment | None:
        for segment in self.segments:
            if segment.msn == msn:
                return segment
        return None

    def has_part(self, msn: int, part: int | None) -> bool:
        """Whether a playlist now holds part ``part`` of segment ``msn`` (or the whole segment, if None).
        A part index past a complete segment's last part means the next segment has begun."""
        current = self.current
        if current is None:
            return False
        if msn < current.msn:
            return True
        if msn > current.msn or part is None:
            return False
        return part < len(current.parts)
