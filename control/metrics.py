"""The control plane's Prometheus metrics, in a registry of each app's own (no global default registry:
several control planes may share a process, as in tests)."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, generate_latest

from control.client_region import RegionSource

ROUTES: Final = ("play", "publish")


class ControlMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._region_source = Counter(
            "livecdn_control_region_source",
            "Routing requests by what decided the client's region (query, network, geoip, default, none)",
            ["route", "source"],
            registry=self.registry,
        )
        self._pending_exchanges = Counter(
            "livecdn_control_pending_exchanges",
            "Exchanges of pending counts with the registry (viewers routed since each edge's last heartbeat)",
            ["result"],
            registry=self.registry,
        )
        # Every series from the start at 0, so a rate() sees the first request of each.
        for route in ROUTES:
            for source in RegionSource:
                self._region_source.labels(route, source.value)
        for result in ("ok", "error"):
            self._pending_exchanges.labels(result)

    def region_decided(self, route: str, source: RegionSource) -> None:
        self._region_source.labels(route, source.value).inc()

    def pending_exchanged(self, ok: bool) -> None:
        self._pending_exchanges.labels("ok" if ok else "error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
