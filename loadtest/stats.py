"""Small statistics for load-test reports: percentiles, a bounded sample distribution, lag, rate estimates."""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

HISTOGRAM_MAX_MS: Final = 60_000  # 1 ms buckets up to a minute; larger values land in the last bucket
DEFAULT_MAX_SAMPLES: Final = 2_000_000  # raw samples kept (16 MB); past it percentiles come from the histogram


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default).

    ``values`` need not be sorted; None for no values.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in 0..100, got {q}")
    if not values:
        return None
    ordered = sorted(values)
    return _sorted_percentile(ordered, q)


def _sorted_percentile(ordered: Sequence[float], q: float) -> float:
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


@dataclass(frozen=True, slots=True)
class DistributionSummary:
    count: int
    p50: float | None
    p95: float | None
    max: float | None


class Distribution:
    """Samples in milliseconds: exact percentiles while at most ``max_samples`` are held, and a 1 ms
    histogram (cheap to query at any time, used for the progress line and past the sample cap)."""

    def __init__(self, max_samples: int = DEFAULT_MAX_SAMPLES) -> None:
        self.max_samples = max_samples
        self.samples: array[float] = array("d")
        self.count = 0
        self.maximum: float | None = None
        self._histogram: array[int] = array("q", bytes(8 * (HISTOGRAM_MAX_MS + 1)))

    def add(self, value: float) -> None:
        self.count += 1
        if self.maximum is None or value > self.maximum:
            self.maximum = value
        if len(self.samples) < self.max_samples:
            self.samples.append(value)
        self._histogram[min(max(int(value), 0), HISTOGRAM_MAX_MS)] += 1

    def approx_percentile(self, q: float) -> float | None:
        """From the histogram: the upper edge (ms) of the bucket holding the q-th percentile."""
        if self.count == 0:
            return None
        target = max(1, math.ceil(self.count * q / 100.0))
        seen = 0
        for bucket, n in enumerate(self._histogram):
            seen += n
            if seen >= target:
                return float(bucket + 1)
        return float(HISTOGRAM_MAX_MS)

    def summary(self) -> DistributionSummary:
        if self.count == 0:
            return DistributionSummary(0, None, None, None)
        if self.count <= len(self.samples):
            ordered = sorted(self.samples)
            return DistributionSummary(
                self.count, _sorted_percentile(ordered, 50), _sorted_percentile(ordered, 95), self.maximum
            )
        return DistributionSummary(self.count, self.approx_percentile(50), self.approx_percentile(95), self.maximum)


def lag_ms(now_wall_ms: float, epoch_ms: float | None, timestamp_ms: int) -> float | None:
    """How long after the publisher sent it (epoch + media timestamp) a frame reached us; None without epoch."""
    if epoch_ms is None:
        return None
    return now_wall_ms - (epoch_ms + timestamp_ms)


def is_join_burst(play_started_wall_ms: float, epoch_ms: float, timestamp_ms: int) -> bool:
    """A frame the publisher sent before this viewer's play started: GOP-cache replay, not live lag."""
    return epoch_ms + timestamp_ms < play_started_wall_ms


class RateEstimator:
    """Media bitrate from payload bytes over the span of media timestamps (not arrival times): robust to
    bursts and jitter as long as the frames are contiguous."""

    __slots__ = ("bytes", "first_ts", "last_ts")

    def __init__(self) -> None:
        self.bytes = 0
        self.first_ts: int | None = None
        self.last_ts: int | None = None

    def add(self, timestamp_ms: int, size: int) -> None:
        self.bytes += size
        if self.first_ts is None or timestamp_ms < self.first_ts:
            self.first_ts = timestamp_ms
        if self.last_ts is None or timestamp_ms > self.last_ts:
            self.last_ts = timestamp_ms

    @property
    def span_ms(self) -> int:
        if self.first_ts is None or self.last_ts is None:
            return 0
        return self.last_ts - self.first_ts

    def kbps(self, min_span_ms: int = 1000) -> float | None:
        span = self.span_ms
        if span < min_span_ms:
            return None
        return self.bytes * 8 / span  # bytes*8 / ms == kbit/s


def delivered_ratio(received_bytes: int, viewers: int, bitrate_kbps: float | None, seconds: float) -> float | None:
    """Bytes the counting viewers received / bytes they should have received at ``bitrate_kbps``."""
    if bitrate_kbps is None or bitrate_kbps <= 0 or viewers <= 0 or seconds <= 0:
        return None
    expected = viewers * bitrate_kbps * 1000 / 8 * seconds
    return received_bytes / expected
