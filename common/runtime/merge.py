"""One node made of several worker processes, seen as one: its /v1/stats and /metrics from the workers' own.

Pure functions over what the workers answered (None: a worker that did not answer, e.g. while it
restarts). Each worker's own figures already leave out its sibling workers: the pulls other workers make
from a stream's owner are not counted as the owner's viewers (``sibling_viewers`` says how many there are).

Stats. Node fields: numbers are summed (``uptime_s``: the longest), flags are true when any worker's is,
anything else is the first worker's. A stream carried by several workers is one stream: what it receives
(``bytes_in``, its GOP cache, its upstream) is the owner's, which pulls it from the cluster, and what it
sends (viewers of every format, ``bytes_out``, skips and drops) is summed over the workers.

Metrics. Samples with the same name and labels are summed: that is right for counters, histograms and
gauges of things the workers each have a share of (viewers, connections, bits out, and the pulls: a
worker counts only its pulls from outside the node, not those from the stream's owner). It is wrong where
every worker has its own copy of the same thing: the streams it carries (the owner and each sibling that
pulls from it carry one stream), what each copy received, and process-level or timestamp samples. Those
keep one sample per worker, labelled ``worker``; so do summary quantiles, which cannot be added up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from common.keys import StreamKey
from common.placement.hashing import owner_worker

Stats = Mapping[str, Any]

# One worker's identity or state, not the node's (each worker's is in the ``workers`` list): its merge window
# follows its own event loop.
_DROPPED_NODE_FIELDS: Final = frozenset({"worker", "pid", "merge_window"})
_LONGEST: Final = frozenset({"uptime_s"})
STREAM_SUMS: Final = ("viewers", "viewers_hls", "sibling_viewers", "bytes_out", "viewers_dropped", "viewer_skips")

PER_WORKER_METRICS: Final = frozenset(
    {
        "livecdn_streams",
        "livecdn_stream_bytes_in",
        # Each worker's own event loop and merge window: a sum of them means nothing.
        "livecdn_merge_window_seconds",
        "livecdn_merge_window_min_seconds",
        "livecdn_merge_window_max_seconds",
        "livecdn_event_loop_busy_ratio",
        "livecdn_fanout_flush_max_seconds",
    }
)
_PER_WORKER_PREFIXES: Final = ("process_", "python_")
_PER_WORKER_TYPES: Final = frozenset({"info", "stateset"})
WORKER_LABEL: Final = "worker"


# -- /v1/stats ---------------------------------------------------------------------------------------


def merge_stats(workers: Sequence[Stats | None]) -> dict[str, Any]:
    """The node's stats from ``workers[i]``, worker i's own stats (None: it did not answer), with a
    ``workers`` list that keeps each worker's node fields."""
    answered = [(index, stats) for index, stats in enumerate(workers) if stats is not None]
    node = merge_fields([stats["node"] for _, stats in answered])
    node["workers"] = len(workers)
    node["workers_answering"] = len(answered)
    return {
        "node": node,
        "streams": merge_streams(answered, len(workers)),
        "workers": [
            {"worker": index, "answered": stats is not None, **(dict(stats["node"]) if stats is not None else {})}
            for index, stats in enumerate(workers)
        ],
    }


def merge_fields(parts: Sequence[Stats]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in _names(parts):
        if name in _DROPPED_NODE_FIELDS:
            continue
        values = [part[name] for part in parts if name in part]
        if all(isinstance(v, bool) for v in values):
            merged[name] = any(values)
        elif all(isinstance(v, (int, float)) for v in values):
            merged[name] = max(values) if name in _LONGEST else _total(values)
        else:
            merged[name] = values[0]
    return merged


def merge_streams(answered: Sequence[tuple[int, Stats]], workers: int) -> list[dict[str, Any]]:
    carriers: dict[StreamKey, dict[int, Stats]] = {}
    for index, stats in answered:
        for stream in stats["streams"]:
            carriers.setdefault(StreamKey(stream["app"], stream["name"]), {})[index] = stream
    merged = []
    for key, copies in carriers.items():
        owner = owner_worker(str(key), workers)
        entry = dict(copies.get(owner) or next(iter(copies.values())))
        for name in STREAM_SUMS:
            if any(name in copy for copy in copies.values()):
                entry[name] = _total([copy.get(name, 0) for copy in copies.values()])
        entry["workers"] = sorted(copies)
        merged.append(entry)
    return merged


def _names(parts: Iterable[Stats]) -> list[str]:
    seen: dict[str, None] = {}
    for part in parts:
        seen.update(dict.fromkeys(part))
    return list(seen)


def _total(values: Sequence[float]) -> float:
    total = sum(values)
    return total if all(isinstance(v, int) for v in values) else round(total, 3)


# -- /metrics ----------------------------------------------------------------------------------------


def per_worker(family: Metric) -> bool:
    """Whether a metric family keeps one sample per worker instead of one sum (see the module's docstring)."""
    name = family.name
    return (
        name in PER_WORKER_METRICS
        or name.startswith(_PER_WORKER_PREFIXES)
        or name.endswith("_created")
        or family.type in _PER_WORKER_TYPES
    )


def merge_metrics(texts: Sequence[str | None]) -> str:
    """One Prometheus text exposition from ``texts[i]``, worker i's own (None: it did not answer)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for index, text in enumerate(texts):
        if text is None:
            continue
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            separate = per_worker(family)
            samples = values[family.name]
            for sample in family.samples:
                labels = dict(sample.labels)
                if separate or "quantile" in labels:
                    labels[WORKER_LABEL] = str(index)
                key = (sample.name, tuple(sorted(labels.items())))
                samples[key] = samples.get(key, 0.0) + sample.value
    for name, family in families.items():
        for (sample_name, label_pairs), value in values[name].items():
            family.add_sample(sample_name, dict(label_pairs), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry).decode()


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families
