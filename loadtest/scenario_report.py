"""What a scenario step measured (``StepResult``) and the table printed for each server run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class StepResult:
    viewers: int
    passed: bool
    why: str
    node_cpu_percent: float | None  # of one core, over the swarm's measuring interval
    load_core_percent: float | None  # how busy the load tool's core was: near 100 means the tool is the limit
    cpu_per_100_viewers: float | None
    node_rss_mb: float
    rss_per_viewer_kb: float | None
    stalled: int  # viewers that stopped reading (not part of the swarm's counts)
    server_dropped: int | None  # viewers the node disconnected for falling behind, during the step
    server_skips: int | None  # times a viewer skipped ahead to a key frame, during the step
    swarm: dict[str, Any]
    merge_window: dict[str, Any] | None = None  # livecdn: the edge's merge window state at the step's end
    # How busy the server's core was (the process, plus kernel work such as ksoftirqd's on that core).
    node_core_percent: float | None = None
    node_user_percent: float | None = None  # the part of node_cpu_percent spent in user space


def print_table(server: str, window: float | str | None, results: list[StepResult]) -> None:
    """``window``: livecdn's fixed window in seconds, None for its adaptive one, "n/a" for other servers."""
    if window == "n/a":
        label = server
    elif window is None:
        label = f"{server} (adaptive merge window; 'win' is where it stood at the end of the step)"
    else:
        label = f"{server} (merge window {float(window) * 1000:g} ms)"
    print(f"\n{label}")
    header = (
        f"{'viewers':>8} {'held':>6} {'deliv':>6} {'lag p50':>8} {'lag p95':>8} {'lag max':>8} "
        f"{'ff p50':>7} {'ff p95':>7} {'cpu%':>6} {'core%':>6} {'cpu/100':>8} {'load%':>6} {'rss MB':>7} "
        f"{'KB/view':>8} {'cut':>4} {'skips':>5} {'win ms':>6}  result"
    )
    print(header)

    def fmt(value: Any, digits: int = 0) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for r in results:
        s = r.swarm
        held = s["viewers_connected"] - s["viewers_dropped"]
        print(
            f"{r.viewers:>8} {held:>6} {fmt(s['delivered_ratio'], 3):>6} {fmt(s['lag_p50_ms']):>8} "
            f"{fmt(s['lag_p95_ms']):>8} {fmt(s['lag_max_ms']):>8} {fmt(s['first_frame_p50_ms']):>7} "
            f"{fmt(s['first_frame_p95_ms']):>7} {fmt(r.node_cpu_percent, 1):>6} {fmt(r.node_core_percent, 1):>6} "
            f"{fmt(r.cpu_per_100_viewers, 2):>8} {fmt(r.load_core_percent, 0):>6} "
            f"{r.node_rss_mb:>7.1f} {fmt(r.rss_per_viewer_kb, 1):>8} "
            f"{fmt(r.server_dropped):>4} {fmt(r.server_skips):>5} "
            f"{fmt(r.merge_window['seconds'] * 1000 if r.merge_window else None, 1):>6}  "
            f"{'PASS' if r.passed else 'FAIL: ' + r.why}"
        )
    best = max((r.viewers for r in results if r.passed), default=0)
    print(f"max viewers held within the criteria: {best}")
