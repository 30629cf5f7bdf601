"""What a probe viewer measures from the media it parses: the publisher's epoch, first frame, lag, media rate.

* **first frame**: connect start (before the TCP connect) -> first video key frame that is not a sequence
  header, per probe.
* **lag** per video frame (not sequence headers) = wall time now - (publisher epoch + media timestamp),
  with the epoch from ``livecdnEpochMs`` in onMetaData (the loadtest publisher sets it; without it lag is
  None unless ``SwarmConfig.epoch_ms`` gives it). **Join burst**: frames the publisher sent before this
  probe's play started (epoch + timestamp < the wall time at play start: the GOP-cache replay) are not lag
  samples; every later frame is. Publisher and swarm must share a clock (same host, or NTP-synced hosts).
* **media rate**: payload bytes over the span of media timestamps, over all frames and over the frames of
  the measuring interval (the swarm's expected bitrate when none is given).
"""

from __future__ import annotations

import math
import time

from common.media.flv import is_video_keyframe, is_video_sequence_header
from common.media.metadata import metadata_properties
from loadtest.flvfile import TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO
from loadtest.publisher import EPOCH_FIELD
from loadtest.stats import RateEstimator, is_join_burst
from loadtest.swarm_state import SwarmState


class ProbeMeasurements:
    """Measurements of one probe viewer; lag and first frame also go to the run's shared distributions."""

    __slots__ = ("epoch_ms", "first_frame_ms", "play_started_wall_ms", "rate_all", "rate_interval", "swarm", "t_start")

    def __init__(self, swarm: SwarmState) -> None:
        self.swarm = swarm
        self.t_start = time.monotonic()
        self.play_started_wall_ms = 0.0
        self.epoch_ms: float | None = swarm.config.epoch_ms
        self.first_frame_ms: float | None = None
        self.rate_all = RateEstimator()
        self.rate_interval = RateEstimator()

    def started(self) -> None:
        self.t_start = time.monotonic()

    def playing(self) -> None:
        self.play_started_wall_ms = time.time() * 1000.0

    def on_media(self, type_id: int, timestamp: int, payload: bytes) -> None:
        if type_id == TAG_SCRIPT:
            self._on_data(payload)
            return
        if type_id != TAG_VIDEO and type_id != TAG_AUDIO:
            return
        if type_id == TAG_VIDEO and is_video_sequence_header(payload):
            return
        self.rate_all.add(timestamp, len(payload))
        if self.swarm.measuring:
            self.rate_interval.add(timestamp, len(payload))
        if type_id != TAG_VIDEO:
            return
        if self.first_frame_ms is None and is_video_keyframe(payload):
            self.first_frame_ms = (time.monotonic() - self.t_start) * 1000.0
            self.swarm.first_frame.add(self.first_frame_ms)
        epoch = self.epoch_ms
        if epoch is not None and not is_join_burst(self.play_started_wall_ms, epoch, timestamp):
            self.swarm.lag.add(time.time() * 1000.0 - (epoch + timestamp))

    def _on_data(self, payload: bytes) -> None:
        properties = metadata_properties(payload)
        if properties is None:
            return
        epoch = properties.get(EPOCH_FIELD)
        if isinstance(epoch, float) and math.isfinite(epoch) and epoch > 0:
            self.epoch_ms = epoch
            self.swarm.epochs_seen += 1
