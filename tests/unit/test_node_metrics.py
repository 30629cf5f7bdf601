"""The node metrics the Grafana dashboard's egress and pull panels read, from a node's stats."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from common.runtime.metrics import make_registry, render


def stream(name: str, upstream: str | None, connects: int) -> dict[str, Any]:
    return {
        "app": "live",
        "name": name,
        "viewers": 2,
        "bytes_in": 10,
        "bytes_out": 20,
        "viewer_skips": 0,
        "viewers_dropped": 0,
        "upstream": upstream,
        "upstream_connects": connects,
    }


def samples(stats: dict[str, Any]) -> dict[str, float]:
    text = render(make_registry(lambda: stats)).decode()
    return {
        s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if "stream" not in s.labels
    }


def node(role: str, **extra: Any) -> dict[str, Any]:
    base = {"id": "n1", "role": role, "region": "eu", "connections": 3, "connections_total": 9}
    return {**base, "protocol_errors": 1, "bits_out": 1.5e6, **extra}


def test_an_edge_exports_its_pulls_and_egress() -> None:
    stats = {
        "node": node("edge", pulls_started=7),
        "streams": [
            stream("a", "rtmp://o1/live/a", 1),
            stream("b", "rtmp://o2/live/b", 3),  # re-pulled twice
            stream("c", None, 2),  # waiting for a source: no upstream session now
        ],
    }
    got = samples(stats)
    assert got["livecdn_pulls_started_total"] == 7
    assert got["livecdn_pulls_active"] == 2
    assert got["livecdn_pull_reconnects"] == 2
    assert got["livecdn_bits_out"] == 1.5e6
    assert got["livecdn_viewers"] == 6


def test_an_origin_exports_egress_and_no_pull_metrics() -> None:
    got = samples({"node": node("origin"), "streams": [stream("a", None, 0)]})
    assert got["livecdn_bits_out"] == 1.5e6
    assert not any(name.startswith("livecdn_pull") for name in got)
