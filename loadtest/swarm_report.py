"""The swarm's report: what one run measured, as a table for people and JSON for the scenario runner.

Definitions: first frame and lag in ``loadtest.probe``; measuring interval and delivered/expected in
``loadtest.swarm``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SwarmReport:
    url: str
    flv_url: str | None
    protocol: str
    viewers_target: int
    viewers_connected: int  # reached playing (RTMP Play.Start / HTTP 200)
    viewers_failed: int  # never reached playing
    viewers_dropped: int  # were playing, then the server closed or reset the connection
    viewers_pending: int  # still connecting (or not yet started) when the run ended
    failure_reasons: dict[str, int]
    drop_reasons: dict[str, int]
    probes_target: int
    probes_connected: int
    bytes_received: int  # every viewer, whole run, wire bytes
    ramp_per_s: float
    ramp_seconds: float | None  # start -> every attempt resolved; None if the run ended first
    measure_offset_s: float | None  # start -> the measuring interval began (ramp + settle)
    interval_seconds: float  # measuring interval (after the ramp and the settle time), see the module notes
    interval_viewers: int  # counting viewers playing at the start of the interval
    interval_bytes: int  # what they received during it
    received_mbps: float | None  # interval_bytes as Mbit/s
    viewer_kbps_p50: float | None  # per counting viewer over the interval
    viewer_kbps_p5: float | None
    viewer_kbps_min: float | None
    expected_kbps: float | None
    expected_kbps_source: str  # "given", "probes" or "none"
    delivered_ratio: float | None
    lag_samples: int
    lag_p50_ms: float | None
    lag_p95_ms: float | None
    lag_max_ms: float | None
    lag_note: str  # why lag is None, if it is
    first_frame_samples: int
    first_frame_p50_ms: float | None
    first_frame_p95_ms: float | None
    first_frame_max_ms: float | None
    duration_s: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def read_json(cls, path: str | Path) -> SwarmReport:
        """A report ``write_json`` wrote (the scenario runner reads its swarm subprocesses' reports)."""
        return cls(**json.loads(Path(path).read_text()))

    def table(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"

        def num(value: float | None, fmt: str = ".1f") -> str:
            return "-" if value is None else format(value, fmt)

        target = self.url if self.protocol != "flv" else (self.flv_url or self.url)
        if self.protocol == "mixed":
            target = f"{self.url} + {self.flv_url}"
        s = self.settings
        rcvbuf = s.get("rcvbuf") or "kernel default"
        rows = [
            ("target", f"{target} ({self.protocol})"),
            (
                "viewers",
                f"{self.viewers_target} target, {self.viewers_connected} connected, {self.viewers_failed} failed, "
                f"{self.viewers_dropped} dropped by server, {self.viewers_pending} pending at the end "
                f"({self.probes_connected}/{self.probes_target} probes connected)",
            ),
            ("ramp", f"{self.ramp_per_s:g}/s, completed in {num(self.ramp_seconds)} s"),
            (
                "measured interval",
                f"{self.interval_seconds:.1f} s from {num(self.measure_offset_s)} s (ramp + "
                f"{self.settings.get('settle', 0):g} s settle), {self.interval_viewers} counting viewers",
            ),
            (
                "received",
                f"{self.interval_bytes / 1e6:.1f} MB = {num(self.received_mbps)} Mbit/s; per viewer kbit/s "
                f"p50 {num(self.viewer_kbps_p50, '.0f')}, p5 {num(self.viewer_kbps_p5, '.0f')}, "
                f"min {num(self.viewer_kbps_min, '.0f')}",
            ),
            ("expected bitrate", f"{num(self.expected_kbps, '.0f')} kbit/s ({self.expected_kbps_source})"),
            ("delivered/expected", num(self.delivered_ratio, ".3f")),
            (
                "lag (probes)",
                f"p50 {ms(self.lag_p50_ms)} / p95 {ms(self.lag_p95_ms)} / max {ms(self.lag_max_ms)} ms "
                f"({self.lag_samples} frames){'; ' + self.lag_note if self.lag_note else ''}",
            ),
            (
                "first frame (probes)",
                f"p50 {ms(self.first_frame_p50_ms)} / p95 {ms(self.first_frame_p95_ms)} / "
                f"max {ms(self.first_frame_max_ms)} ms ({self.first_frame_samples} probes)",
            ),
            ("total received", f"{self.bytes_received / 1e6:.1f} MB in {self.duration_s:.1f} s"),
            (
                "settings",
                f"SO_RCVLOWAT {s.get('rcvlowat')} B, SO_RCVBUF {rcvbuf}, connect timeout {s.get('connect_timeout')} s, "
                f"loop {s.get('loop')}",
            ),
        ]
        for reason, count in sorted(self.failure_reasons.items(), key=lambda kv: -kv[1]):
            rows.append(("failed", f"{count} x {reason}"))
        for reason, count in sorted(self.drop_reasons.items(), key=lambda kv: -kv[1]):
            rows.append(("dropped", f"{count} x {reason}"))
        width = max(len(name) for name, _ in rows)
        lines = ["livecdn loadtest swarm report", "-" * 72]
        lines += [f"{name.ljust(width)}  {value}" for name, value in rows]
        return "\n".join(lines)
