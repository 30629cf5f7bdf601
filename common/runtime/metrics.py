"""Prometheus metrics for a node, read from live state at scrape time (no cost on the hot path)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.keys import StreamKey


class NodeCollector(Collector):
    """Exposes a node's stats() dictionary as Prometheus metrics."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        node = stats["node"]
        labels = ["role", "region", "node"]
        values = [str(node["role"]), str(node["region"]), str(node["id"])]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        streams = stats["streams"]
        yield gauge("livecdn_streams", "Streams this node carries", len(streams))
        yield gauge("livecdn_viewers", "Viewers connected to this node", sum(s["viewers"] for s in streams))
        yield gauge("livecdn_connections", "Open RTMP connections", node["connections"])
        yield counter("livecdn_rtmp_connections", "RTMP connections accepted", node["connections_total"])
        yield counter("livecdn_protocol_errors", "Connections closed for RTMP protocol errors", node["protocol_errors"])
        yield gauge(
            "livecdn_bits_out",
            "Bits per second sent to viewers, averaged over the last heartbeat period",
            node["bits_out"],
        )
        if "pulls_started" in node:  # an edge: its upstream pulls (the dashboard's pull panels)
            pulling = [s for s in streams if s.get("upstream")]
            yield counter(
                "livecdn_pulls_started", "Upstream pulls started (first viewer of a stream)", node["pulls_started"]
            )
            yield gauge("livecdn_pulls_active", "Upstream pulls that have an upstream session now", len(pulling))
            yield gauge(
                "livecdn_pull_reconnects",
                "Re-pulls (upstream sessions after the first) of the pulls that are active now",
                sum(max(0, int(s.get("upstream_connects", 0)) - 1) for s in pulling),
            )
        pacing = node.get("merge_window")
        if pacing is not None:  # the adaptive merge window: where it is and what moves it
            yield gauge("livecdn_merge_window_seconds", "Merge window every stream uses now", pacing["seconds"])
            yield gauge("livecdn_merge_window_min_seconds", "Adaptive merge window's floor", pacing["min_seconds"])
            yield gauge("livecdn_merge_window_max_seconds", "Adaptive merge window's ceiling", pacing["max_seconds"])
            yield gauge(
                "livecdn_event_loop_busy_ratio",
                "Share of the last control period the event loop was busy (CPU time / wall time)",
                pacing["loop_busy"],
            )
            yield gauge(
                "livecdn_fanout_flush_max_seconds",
                "Longest single fan-out flush (one group of viewers) in the last control period",
                pacing["flush_max_seconds"],
            )
            yield counter("livecdn_fanout_flushes", "Fan-out flushes (one group's writes each)", pacing["flushes"])
            yield counter("livecdn_fanout_flush_seconds", "Seconds spent in fan-out flushes", pacing["flush_seconds"])
            yield counter("livecdn_merge_window_changes", "Times the adaptive merge window moved", pacing["changes"])
        yield counter(
            "livecdn_viewer_skips",
            "Times a viewer fell behind and skipped ahead to a key frame",
            sum(s["viewer_skips"] for s in streams),
        )
        yield counter(
            "livecdn_viewers_dropped",
            "Viewers disconnected for falling too far behind",
            sum(s["viewers_dropped"] for s in streams),
        )
        if "hls_parts_served" in node:  # LL-HLS: viewers that poll, what they fetched, what they waited for
            yield gauge(
                "livecdn_viewers_hls", "LL-HLS viewers (fetched within three target durations)", node["viewers_hls"]
            )
            yield counter("livecdn_hls_parts_served", "LL-HLS parts served", node["hls_parts_served"])
            yield counter("livecdn_hls_segments_served", "LL-HLS full segments served", node["hls_segments_served"])
            yield counter(
                "livecdn_hls_blocking_reloads",
                "LL-HLS requests held until their part existed",
                node["hls_blocking_reloads"],
            )
            yield counter(
                "livecdn_hls_blocking_wait_seconds",
                "Seconds LL-HLS requests were held",
                node["hls_blocking_wait_seconds"],
            )
            yield counter(
                "livecdn_hls_blocking_timeouts", "LL-HLS held requests answered 503", node["hls_blocking_timeouts"]
            )
        by_stream_in = CounterMetricFamily(
            "livecdn_stream_bytes_in", "Media bytes received per stream", labels=[*labels, "stream"]
        )
        by_stream_out = CounterMetricFamily(
            "livecdn_stream_bytes_out", "Media bytes sent per stream", labels=[*labels, "stream"]
        )
        for s in streams:
            key = str(StreamKey(s["app"], s["name"]))
            by_stream_in.add_metric([*values, key], s["bytes_in"])
            by_stream_out.add_metric([*values, key], s["bytes_out"])
        yield by_stream_in
        yield by_stream_out


def make_registry(stats: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """One registry per node (no global default registry: several nodes may share a process in tests)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(stats))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
