"""A publisher that loops a pre-encoded FLV over RTMP in real time, with no encoder cost.

The file is parsed once. After connect/createStream/publish it sends ``@setDataFrame onMetaData`` (the
file's metadata plus ``livecdnEpochMs``: the wall-clock time in ms of media timestamp 0, which probe
viewers use to measure lag), the sequence headers, then every tag when the wall clock reaches
epoch + its timestamp. Tags due together go out in one write. Loops continue the timestamps
monotonically: loop k is shifted by k x (file duration + one frame interval).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from common.media.flv import is_audio_sequence_header, is_video_sequence_header
from common.media.metadata import metadata_properties
from common.rtmp import amf0
from common.serving.client import RtmpClient
from loadtest.flvfile import TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO, FlvTag, read_flv

log = logging.getLogger(__name__)

EPOCH_FIELD: Final = "livecdnEpochMs"
_BATCH_SLACK_S: Final = 0.001  # tags due within this much of now go out in the same write
_HIGH_WATER: Final = 4 * 1024 * 1024  # bytes queued towards the server before we pause sending
_LOW_WATER: Final = 1 * 1024 * 1024
MAX_DURATION_S: Final = 7 * 24 * 3600.0  # timestamps are 32-bit ms (49 days); stay well inside


class PublishError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class LoopedFlv:
    """A file prepared for looping: metadata, sequence headers, and media with timestamps from 0."""

    metadata: dict[str, Any]
    headers: list[FlvTag]  # video then audio sequence header (those present)
    media: list[FlvTag]  # audio/video tags, timestamps rebased so the first is 0, in file order
    period_ms: int  # timestamp shift per loop: duration + one frame interval

    @classmethod
    def from_tags(cls, tags: list[FlvTag]) -> LoopedFlv:
        metadata: dict[str, Any] = {}
        video_header: FlvTag | None = None
        audio_header: FlvTag | None = None
        media: list[FlvTag] = []
        for tag in tags:
            if tag.tag_type == TAG_SCRIPT:
                if not metadata:
                    metadata = metadata_properties(tag.payload) or {}
            elif tag.tag_type == TAG_VIDEO and is_video_sequence_header(tag.payload):
                video_header = video_header or tag
            elif tag.tag_type == TAG_AUDIO and is_audio_sequence_header(tag.payload):
                audio_header = audio_header or tag
            elif tag.tag_type in (TAG_AUDIO, TAG_VIDEO):
                media.append(tag)
        if not media:
            raise PublishError("the FLV file has no audio or video frames")
        start = min(t.timestamp for t in media)
        media = [FlvTag(t.tag_type, t.timestamp - start, t.payload) for t in media]
        last = max(t.timestamp for t in media)
        headers = [FlvTag(h.tag_type, 0, h.payload) for h in (video_header, audio_header) if h is not None]
        return cls(metadata, headers, media, last + _frame_interval_ms(media, metadata))

    @classmethod
    def read(cls, path: str | Path) -> LoopedFlv:
        return cls.from_tags(read_flv(path))

    def looped(self) -> Iterator[FlvTag]:
        """The media tags forever, loop k shifted by k x period: timestamps never go back."""
        offset = 0
        while True:
            for tag in self.media:
                yield FlvTag(tag.tag_type, tag.timestamp + offset, tag.payload)
            offset += self.period_ms

    def metadata_payload(self, epoch_ms: float) -> bytes:
        """``@setDataFrame onMetaData {...}`` with the epoch added; duration/filesize zeroed (it is live)."""
        meta = amf0.EcmaArray(self.metadata)
        for key in ("duration", "filesize"):
            if key in meta:
                meta[key] = 0.0
        meta[EPOCH_FIELD] = float(epoch_ms)
        return amf0.encode("@setDataFrame", "onMetaData", meta)


def _frame_interval_ms(media: list[FlvTag], metadata: dict[str, Any]) -> int:
    rate = metadata.get("framerate")
    if isinstance(rate, float) and rate > 0:
        return max(1, round(1000 / rate))
    for kind in (TAG_VIDEO, TAG_AUDIO):
        stamps = [t.timestamp for t in media if t.tag_type == kind]
        deltas = [b - a for a, b in itertools.pairwise(stamps) if b > a]
        if deltas:
            return max(1, round(statistics.median(deltas)))
    return 33


@dataclass(slots=True)
class PublishStats:
    url: str
    epoch_ms: float = 0.0
    tags_sent: int = 0
    bytes_sent: int = 0  # media payload bytes
    loops: int = 0  # completed passes over the file
    writes: int = 0
    paused_s: float = 0.0  # time spent waiting for the server to read (backpressure)
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        seconds = max(time.monotonic() - self.started, 1e-9)
        return (
            f"published {self.tags_sent} tags, {self.bytes_sent / 1e6:.1f} MB "
            f"({self.bytes_sent * 8 / seconds / 1e3:.0f} kbit/s) in {seconds:.1f}s, {self.loops} full loops"
        )


async def publish_flv(
    source: LoopedFlv | str | Path,
    url: str,
    *,
    duration: float | None = None,
    connect_timeout: float = 10.0,
    on_started: Callable[[PublishStats], None] | None = None,
) -> PublishStats:
    """Publish ``source`` to ``url`` paced in real time until ``duration`` seconds pass (or forever).

    Cancel the task to stop: the connection is closed (deleteStream) either way. Raises PublishError
    when the server refuses the publish or drops the connection.
    """
    flv = source if isinstance(source, LoopedFlv) else LoopedFlv.read(source)
    if duration is not None and not 0 < duration <= MAX_DURATION_S:
        raise ValueError(f"duration must be in (0, {MAX_DURATION_S:g}] seconds")
    stats = PublishStats(url)
    client = await RtmpClient.connect(url, timeout=connect_timeout)
    try:
        await client.publish(timeout=connect_timeout)
        transport = client.transport
        if transport is None:
            raise PublishError("connection lost before publishing started")
        loop = asyncio.get_running_loop()
        session, stream_id = client.session, client.stream_id
        # Media timestamp 0 is "now" on both clocks: monotonic for pacing, wall clock for viewers' lag.
        t0 = loop.time()
        stats.epoch_ms = time.time() * 1000.0
        stats.started = time.monotonic()
        session.send_media(stream_id, TAG_SCRIPT, 0, flv.metadata_payload(stats.epoch_ms))
        for header in flv.headers:
            session.send_media(stream_id, header.tag_type, 0, header.payload)
        transport.write(session.data_to_send())
        stats.writes += 1
        if on_started is not None:
            on_started(stats)
        end_ms = duration * 1000.0 if duration is not None else math.inf  # media time at which to stop
        count = len(flv.media)
        tags = flv.looped()
        tag = next(tags)
        while tag.timestamp < end_ms:
            if client.closed.done():
                raise PublishError(f"server closed the connection: {client.closed.result()}")
            delay = t0 + tag.timestamp / 1000.0 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            # Send every tag that is due now (plus a hair of slack) in one write.
            horizon_ms = min((loop.time() + _BATCH_SLACK_S - t0) * 1000.0, end_ms)
            while True:
                session.send_media(stream_id, tag.tag_type, tag.timestamp, tag.payload)
                stats.tags_sent += 1
                stats.bytes_sent += len(tag.payload)
                tag = next(tags)
                if tag.timestamp > horizon_ms or tag.timestamp >= end_ms:
                    break
            stats.loops = stats.tags_sent // count
            transport.write(session.data_to_send())
            stats.writes += 1
            if transport.get_write_buffer_size() > _HIGH_WATER:
                stats.paused_s += await _wait_drained(client)
    finally:
        client.close()
    return stats


async def _wait_drained(client: RtmpClient) -> float:
    """The server is not reading: wait (bounded by its closing) until our queue drains below low water."""
    started = time.monotonic()
    log.warning("publisher: %d bytes queued towards the server; pausing", client.write_buffer_size())
    # RtmpClient exposes no drain event (its protocol has no pause_writing hook), so poll: 10 ms steps.
    while client.write_buffer_size() > _LOW_WATER and not client.closed.done():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return time.monotonic() - started
