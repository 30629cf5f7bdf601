"""The adaptive merge window: its control law, the fan-out following it, and the node's busy sampling."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from common.hub.pacing import MergeWindow, WindowBounds
from common.hub.packet import AUDIO, VIDEO, HubLimits
from common.hub.stream import Stream
from common.runtime.config import ConfigError, EdgeSettings, load_settings
from common.runtime.pacer import adapt, merge_window, pacing_stats
from tests.unit.test_node_metrics import node, samples
from tests.unit.test_stream import (
    INTER,
    KEY,
    FakeViewer,
    ManualScheduler,
    live_stream,
)

BOUNDS = WindowBounds(floor=0.0, ceiling=0.05, busy_target=0.8)


def test_the_window_grows_under_load_and_stays_within_its_ceiling() -> None:
    window = MergeWindow.adaptive(BOUNDS)
    assert window.window == 0.0
    seen = [window.update(0.95) for _ in range(20)]
    assert seen[0] == pytest.approx(0.002), "leaves 0 by the smallest step"
    assert seen == sorted(seen) and max(seen) == 0.05
    assert window.changes == len(set(seen))


def test_the_window_shrinks_to_its_floor_when_the_node_has_cpu_to_spare() -> None:
    window = MergeWindow(0.05, BOUNDS)
    seen = [window.update(0.3) for _ in range(80)]
    assert seen[-1] == 0.0, "below 1 ms it drops to the floor: a write per message"
    assert seen == sorted(seen, reverse=True)
    floored = MergeWindow(0.05, WindowBounds(floor=0.01, ceiling=0.05))
    assert [floored.update(0.1) for _ in range(80)][-1] == 0.01


def test_between_the_thresholds_the_window_holds() -> None:
    window = MergeWindow(0.02, BOUNDS)
    for busy in (0.73, 0.76, 0.8):  # above target x LOW_SHARE (0.72), not above the target
        assert window.update(busy) == 0.02
    assert window.changes == 0


def test_against_a_node_whose_cpu_goes_as_one_over_the_window_it_settles_without_flapping() -> None:
    """CPU = fixed work + writes, the writes' share inversely proportional to the window (a floor of one
    write per message at 0): the law must settle under the target and stay there."""

    def cpu(window: float, viewers: int) -> float:
        writes_per_s = 77 if window < 0.013 else 1 / window  # per viewer: a message each, or one per window
        return min(1.0, 0.05 + viewers * writes_per_s * 4e-6)

    for viewers in (1000, 3000, 6000):
        window = MergeWindow.adaptive(BOUNDS)
        for _ in range(200):
            window.update(cpu(window.window, viewers))
        tail = [window.update(cpu(window.window, viewers)) for _ in range(50)]
        assert len(set(tail)) == 1, f"{viewers} viewers: the window still moves: {sorted(set(tail))}"
        assert cpu(tail[0], viewers) <= BOUNDS.busy_target or tail[0] == BOUNDS.ceiling
        if viewers == 1000:
            assert tail[0] == 0.0, "spare CPU: a write per message"


def test_a_fixed_window_never_moves_but_reports_what_it_measures() -> None:
    window = MergeWindow(0.02)
    window.record_flush(0.003)
    window.record_flush(0.001)
    assert window.update(1.0) == 0.02 and not window.is_adaptive
    assert window.busy == 1.0 and window.flush_max == 0.003 and window.flushes == 2
    assert window.update(0.5) == 0.02 and window.flush_max == 0.0, "the peak is per period"


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="floor"):
        WindowBounds(floor=0.1, ceiling=0.05)
    with pytest.raises(ValueError, match="busy target"):
        WindowBounds(busy_target=0)


# -- the fan-out follows the node's window ------------------------------------------------------------


def adaptive_stream(window: MergeWindow, scheduler: ManualScheduler) -> Stream:
    return live_stream(HubLimits(), scheduler, pacing=window)


def test_every_packet_reaches_every_viewer_once_and_in_order_while_the_window_moves() -> None:
    window = MergeWindow.adaptive(BOUNDS)
    scheduler = ManualScheduler()
    stream = adaptive_stream(window, scheduler)
    assert stream.fanout.phases == 2, "groups sized for the ceiling (50 ms / 25 ms)"
    viewers = [FakeViewer() for _ in range(6)]
    for viewer in viewers:
        stream.add_subscriber(viewer)
        viewer.chunks.clear()
    busy = itertools.cycle([0.95, 0.95, 0.95, 0.95, 0.95, 0.3, 0.95, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    sent = []
    for n in range(120):
        timestamp = 40 * n
        stream.feed(VIDEO, timestamp, KEY if n % 50 == 0 else INTER)
        sent.append(timestamp)
        if n % 4 == 3:
            window.update(next(busy))
            scheduler.fire()  # what was due: a group, or all of them, or nothing at window 0
    while scheduler.calls:
        scheduler.fire()
    assert window.changes > 5, "the window moved during the test"
    for viewer in viewers:
        got = [m[1] for m in viewer.messages() if m[0] == VIDEO]
        assert got == sent, "lost, repeated or reordered packets"
    assert stream.fanout._log == []


def test_at_window_zero_a_packet_is_written_when_it_arrives() -> None:
    window = MergeWindow.adaptive(BOUNDS)
    stream = adaptive_stream(window, ManualScheduler())
    viewer = FakeViewer()
    stream.add_subscriber(viewer)
    viewer.chunks.clear()
    stream.feed(VIDEO, 0, KEY)
    stream.feed(AUDIO, 10, b"\xaf\x01audio")
    assert len(viewer.chunks) == 2, "a write per message"
    assert window.flushes == 2 and window.flush_seconds > 0


def test_a_wide_window_is_spread_over_groups_and_a_narrow_one_is_not() -> None:
    window = MergeWindow(0.04, WindowBounds(ceiling=0.1))  # four groups
    scheduler = ManualScheduler()
    stream = adaptive_stream(window, scheduler)
    for _ in range(8):
        stream.add_subscriber(FakeViewer())
    stream.feed(VIDEO, 0, KEY)
    assert [delay for delay, _ in scheduler.calls] == [pytest.approx(0.01)], "40 ms over 4 groups"
    window.window = 0.012  # 3 ms apart would be too close: one flush for all every 12 ms
    scheduler.fire()
    assert scheduler.calls == [], "everything pending went at once"
    stream.feed(VIDEO, 40, INTER)
    assert [delay for delay, _ in scheduler.calls] == [pytest.approx(0.012)]


# -- the node's side: settings, sampling, stats and metrics -----------------------------------------------


def test_settings_choose_adaptive_unless_a_window_is_given() -> None:
    adaptive = merge_window(load_settings(EdgeSettings, {"upstream": "rtmp://o/live"}))
    assert adaptive.is_adaptive and adaptive.window == 0.0 and adaptive.largest == 0.03
    fixed = merge_window(load_settings(EdgeSettings, {"upstream": "rtmp://o/live", "merge_window": 0.02}))
    assert not fixed.is_adaptive and fixed.window == 0.02
    with pytest.raises(ConfigError, match="merge_window_min"):
        load_settings(EdgeSettings, {"upstream": "rtmp://o/live", "merge_window_min": 0.2, "merge_window_max": 0.1})


async def test_the_node_feeds_its_event_loop_busy_fraction_to_the_window() -> None:
    window = MergeWindow.adaptive(BOUNDS)
    wall = itertools.count(0, 1.0)
    cpu = itertools.count(0, 0.9)  # 0.9 s of CPU per wall second: 90 % busy
    task = asyncio.create_task(adapt(window, period=0.001, cpu=lambda: next(cpu), clock=lambda: next(wall)))
    for _ in range(200):
        await asyncio.sleep(0.001)
        if window.window == BOUNDS.ceiling:
            break
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert window.busy == pytest.approx(0.9)
    assert window.window == BOUNDS.ceiling


def test_stats_and_metrics_show_the_window() -> None:
    window = MergeWindow(0.004, BOUNDS)
    window.record_flush(0.002)
    window.update(0.9)
    stats = pacing_stats(window)
    assert stats["adaptive"] and stats["seconds"] == pytest.approx(0.006) and stats["loop_busy"] == 0.9
    got = samples({"node": node("edge", merge_window=stats), "streams": []})
    assert got["livecdn_merge_window_seconds"] == pytest.approx(0.006)
    assert got["livecdn_merge_window_max_seconds"] == 0.05
    assert got["livecdn_event_loop_busy_ratio"] == 0.9
    assert got["livecdn_fanout_flush_max_seconds"] == 0.002
    assert got["livecdn_merge_window_changes_total"] == 1


def test_a_node_of_several_workers_shows_each_workers_window_and_sums_their_flushes() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from common.runtime.merge import merge_metrics, merge_stats
    from common.runtime.metrics import make_registry, render

    def worker_stats(window: float, flushes: int) -> dict[str, object]:
        pacing = MergeWindow(window, BOUNDS)
        for _ in range(flushes):
            pacing.record_flush(0.001)
        return {"node": node("edge", merge_window=pacing_stats(pacing)), "streams": []}

    workers = [worker_stats(0.0, 3), worker_stats(0.02, 5)]
    merged = merge_metrics([render(make_registry(lambda s=s: s)).decode() for s in workers])  # type: ignore[misc]
    got = {
        (s.name, s.labels.get("worker")): s.value
        for family in text_string_to_metric_families(merged)
        for s in family.samples
    }
    assert got[("livecdn_merge_window_seconds", "0")] == 0.0
    assert got[("livecdn_merge_window_seconds", "1")] == 0.02
    assert ("livecdn_merge_window_seconds", None) not in got, "never summed"
    assert got[("livecdn_fanout_flushes_total", None)] == 8
    stats = merge_stats(workers)
    assert "merge_window" not in stats["node"], "one worker's, not the node's"
    assert [w["merge_window"]["seconds"] for w in stats["workers"]] == [0.0, 0.02]
