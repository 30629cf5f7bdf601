"""The pieces of an edge of several worker processes that need no process: which worker owns a stream, the
whole node's stats and metrics merged from the workers' own, a worker's plan, the restart budget."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from common.hub.stream import Hub
from common.keys import StreamKey
from common.placement.hashing import owner_worker
from common.runtime.config import EdgeSettings, HostPort, load_settings
from common.runtime.hlsowner import FORWARDED_FOR, WORKER_TOKEN, HlsToOwner
from common.runtime.merge import merge_metrics, merge_stats
from common.runtime.supervisor import MAX_RESTARTS, RestartBudget, Supervisor, SupervisorError, describe_exit
from common.runtime.workerplan import PLAN_ENV, PlanError, WorkerPlan, settings_document
from common.serving.access import PlayGate
from common.serving.hls import HlsService
from common.serving.playback import Playback
from common.serving.policy import Rejected, StandalonePolicy
from common.signing import PULL, sign
from edge.upstream import SiblingResolver, StaticResolver
from livecdn.cli import cli
from tests.helpers import ROOT

KEYS = [f"live/s{i}" for i in range(2000)]


# -- the setting ------------------------------------------------------------------------------------------


def test_workers_come_from_flag_env_or_file_and_default_to_the_usable_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIVECDN_WORKERS", raising=False)
    assert load_settings(EdgeSettings).workers == len(os.sched_getaffinity(0))
    toml = tmp_path / "edge.toml"
    toml.write_text("workers = 3\n")
    assert load_settings(EdgeSettings, {}, toml).workers == 3
    monkeypatch.setenv("LIVECDN_WORKERS", "4")
    assert load_settings(EdgeSettings, {}, toml).workers == 4
    assert load_settings(EdgeSettings, {"workers": 1}, toml).workers == 1


def test_zero_workers_is_refused_by_name_and_the_internal_flag_stays_out_of_the_help() -> None:
    result = CliRunner().invoke(cli, ["edge", "--workers", "0", "--upstream", "rtmp://127.0.0.1:1/live"])
    assert result.exit_code == 2
    assert "workers (--workers / LIVECDN_WORKERS): Input should be greater than or equal to 1" in result.output
    help_text = CliRunner().invoke(cli, ["edge", "--help"]).output
    assert "--workers" in help_text and "--worker " not in help_text and "--worker\n" not in help_text
    assert "--workers" not in CliRunner().invoke(cli, ["origin", "--help"]).output  # origins are one process
    refused = CliRunner().invoke(cli, ["edge", "--worker", "0"], env={PLAN_ENV: ""})
    assert refused.exit_code == 2 and "only a node's supervisor starts its workers" in refused.output


# -- the owner of a stream -----------------------------------------------------------------------------


def test_the_owner_is_the_same_in_every_process_whatever_its_hash_seed() -> None:
    here = [owner_worker(key, 4) for key in KEYS[:50]]
    code = "from common.placement.hashing import owner_worker as o; print([o(f'live/s{i}', 4) for i in range(50)])"
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert json.loads(out) == here


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_owners_spread_evenly_over_the_workers(workers: int) -> None:
    owners = Counter(owner_worker(key, workers) for key in KEYS)
    assert set(owners) == set(range(workers))
    assert max(owners.values()) < 1.25 * len(KEYS) / workers


def test_no_owner_among_no_workers() -> None:
    with pytest.raises(ValueError):
        owner_worker("live/x", 0)


# -- the whole node's stats -----------------------------------------------------------------------------


def worker_stats(index: int, viewers: int, streams: list[dict[str, Any]], **node: Any) -> dict[str, Any]:
    return {
        "node": {
            "id": "edge-1",
            "role": "edge",
            "uptime_s": 10.0 + index,
            "connections": viewers,
            "bits_out": 1000 * (index + 1),
            "draining": False,
            "viewers": viewers,
            "hls_blocking_wait_seconds": 0.25,
            "upstream": "registry",
            "worker": index,
            "pid": 100 + index,
            **node,
        },
        "streams": streams,
    }


def stream(name: str, viewers: int, *, upstream: str, bytes_in: int, siblings: int = 0) -> dict[str, Any]:
    return {
        "app": "live",
        "name": name,
        "viewers": viewers,
        "viewers_hls": 1,
        "bytes_in": bytes_in,
        "bytes_out": 10 * viewers,
        "upstream": upstream,
        "sibling_viewers": siblings,
        "has_metadata": True,
    }


def test_node_stats_sum_the_workers_and_keep_each_one() -> None:
    key = "live/a"
    owner = owner_worker(key, 2)
    sibling = 1 - owner
    copies = {
        owner: stream("a", 30, upstream="rtmp://origin:1935/live/a", bytes_in=5000, siblings=1),
        sibling: stream("a", 20, upstream="rtmp://127.0.0.1:4000/live/a", bytes_in=4900),
    }
    workers = [
        worker_stats(0, 30 if owner == 0 else 20, [copies[0]]),
        worker_stats(1, 20 if owner == 0 else 30, [copies[1], stream("b", 5, upstream="x", bytes_in=7)], draining=True),
    ]
    merged = merge_stats(workers)
    node = merged["node"]
    assert node["viewers"] == 50 and node["connections"] == 50 and node["bits_out"] == 3000
    assert node["uptime_s"] == 11.0  # the longest, not a sum
    assert node["hls_blocking_wait_seconds"] == 0.5
    assert node["draining"] is True  # one worker draining: the node is
    assert node["id"] == "edge-1" and node["upstream"] == "registry"
    assert "worker" not in node and "pid" not in node
    assert node["workers"] == 2 and node["workers_answering"] == 2
    by_name = {s["name"]: s for s in merged["streams"]}
    a = by_name["a"]
    assert a["viewers"] == 50 and a["viewers_hls"] == 2 and a["bytes_out"] == 500 and a["sibling_viewers"] == 1
    # What the stream received is the owner's copy: it pulls from the cluster, the sibling from the owner.
    assert a["upstream"] == "rtmp://origin:1935/live/a" and a["bytes_in"] == 5000 and a["workers"] == [0, 1]
    assert by_name["b"]["viewers"] == 5 and by_name["b"]["workers"] == [1]
    assert [(w["worker"], w["answered"], w["pid"], w["viewers"]) for w in merged["workers"]] == [
        (0, True, 100, workers[0]["node"]["viewers"]),
        (1, True, 101, workers[1]["node"]["viewers"]),
    ]


def test_a_worker_that_does_not_answer_is_listed_and_left_out_of_the_sums() -> None:
    merged = merge_stats([None, worker_stats(1, 7, [])])
    assert merged["node"]["viewers"] == 7 and merged["node"]["workers_answering"] == 1
    assert merged["workers"][0] == {"worker": 0, "answered": False}
    assert merge_stats([None, None])["node"] == {"workers": 2, "workers_answering": 0}


# -- the whole node's metrics ---------------------------------------------------------------------------


def exposition(viewers: int, streams: int, pulls: int, quantile: float) -> str:
    labels = 'node="edge-1",region="eu",role="edge"'
    return f"""# HELP livecdn_viewers Viewers connected to this node
# TYPE livecdn_viewers gauge
livecdn_viewers{{{labels}}} {viewers}
# HELP livecdn_rtmp_connections_total RTMP connections accepted
# TYPE livecdn_rtmp_connections_total counter
livecdn_rtmp_connections_total{{{labels}}} {viewers * 2}
# HELP livecdn_streams Streams this node carries
# TYPE livecdn_streams gauge
livecdn_streams{{{labels}}} {streams}
# HELP livecdn_pulls_started_total Upstream pulls started
# TYPE livecdn_pulls_started_total counter
livecdn_pulls_started_total{{{labels}}} {pulls}
# HELP livecdn_write_seconds Time in writes
# TYPE livecdn_write_seconds histogram
livecdn_write_seconds_bucket{{le="0.1"}} {viewers}
livecdn_write_seconds_bucket{{le="+Inf"}} {viewers}
livecdn_write_seconds_count {viewers}
livecdn_write_seconds_sum 0.5
# HELP livecdn_lag_seconds Lag
# TYPE livecdn_lag_seconds summary
livecdn_lag_seconds{{quantile="0.5"}} {quantile}
livecdn_lag_seconds_count 3
livecdn_lag_seconds_sum 1.5
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_are_summed_where_the_workers_share_and_per_worker_where_they_each_have_a_copy() -> None:
    merged = samples(merge_metrics([exposition(30, 1, 1, 0.2), None, exposition(20, 1, 1, 0.4)]))
    node = (("node", "edge-1"), ("region", "eu"), ("role", "edge"))
    assert merged[("livecdn_viewers", node)] == 50
    assert merged[("livecdn_rtmp_connections_total", node)] == 100
    assert merged[("livecdn_write_seconds_bucket", (("le", "0.1"),))] == 50
    assert merged[("livecdn_write_seconds_count", ())] == 50 and merged[("livecdn_write_seconds_sum", ())] == 1.0
    # Each worker counts only its pulls from outside the node: they add up.
    assert merged[("livecdn_pulls_started_total", node)] == 2
    # Each worker carries its own copy of a stream: one sample per worker.
    for worker in ("0", "2"):
        assert merged[("livecdn_streams", (*node, ("worker", worker)))] == 1
    assert ("livecdn_streams", node) not in merged
    # Quantiles cannot be added up; a summary's count and sum can.
    assert merged[("livecdn_lag_seconds", (("quantile", "0.5"), ("worker", "0")))] == 0.2
    assert merged[("livecdn_lag_seconds", (("quantile", "0.5"), ("worker", "2")))] == 0.4
    assert merged[("livecdn_lag_seconds_count", ())] == 6


def test_merged_metrics_keep_their_help_and_type() -> None:
    text = merge_metrics([exposition(1, 1, 1, 0.1)])
    assert "# TYPE livecdn_rtmp_connections_total counter" in text
    assert "# HELP livecdn_viewers Viewers connected to this node" in text
    assert merge_metrics([None, None]) == ""


# -- a worker's plan --------------------------------------------------------------------------------------


def plan(index: int = 1, settings: dict[str, Any] | None = None) -> WorkerPlan:
    return WorkerPlan(index, 4242, "node-secret", (4001, 4002), (5001, 5002), 7, 8, settings or {})


def test_a_plan_travels_in_the_environment_with_the_settings_and_their_secrets() -> None:
    settings = load_settings(EdgeSettings, {"cluster_secret": "s3cret", "rtmp": "0.0.0.0:1935", "workers": 2})
    document = settings_document(settings.model_copy(update={"rtmp": HostPort("0.0.0.0", 1935)}))
    sent = plan(settings=document)
    received = WorkerPlan.from_env({PLAN_ENV: sent.to_env()}, 1)
    assert received == sent
    again = EdgeSettings.model_validate(received.settings)
    assert again.cluster_secret is not None and again.cluster_secret.get_secret_value() == "s3cret"
    assert again.rtmp == HostPort("0.0.0.0", 1935) and again.node_id == settings.node_id


def test_a_worker_without_a_plan_or_with_another_workers_plan_refuses_to_start() -> None:
    with pytest.raises(PlanError, match="only a node's supervisor"):
        WorkerPlan.from_env({}, 0)
    with pytest.raises(PlanError, match="not worker 0"):
        WorkerPlan.from_env({PLAN_ENV: plan(1).to_env()}, 0)
    with pytest.raises(PlanError, match="malformed"):
        WorkerPlan.from_env({PLAN_ENV: "{}"}, 0)


async def test_a_worker_pulls_what_it_owns_from_the_cluster_and_the_rest_from_its_owner() -> None:
    upstream = StaticResolver("rtmp://origin:1935/live")
    mine, theirs = plan(1), plan(0)
    for key in (StreamKey("live", f"s{i}") for i in range(20)):
        owner = mine.owner_of(key)
        found = await SiblingResolver(upstream, mine, cluster_secret=None).resolve(key)
        assert found is not None
        if owner == 1:
            assert found.url == f"rtmp://origin:1935/live/{key.name}" and found.pull_secret is None
        else:
            assert found.url == f"rtmp://127.0.0.1:4001/{key}" and found.pull_secret == "node-secret"
        # Where the cluster has a secret, sibling pulls are signed with it like any edge's.
        signed = await SiblingResolver(upstream, theirs, cluster_secret="cluster").resolve(key)
        assert signed is not None and signed.pull_secret is None


def test_an_owner_with_a_play_secret_lets_its_siblings_pull_with_the_node_secret() -> None:
    key = StreamKey("live", "x")
    gate = PlayGate(play_secret="viewers", node_secret="node-secret", clock=lambda: 1000.0)
    gate.check(key, sign("node-secret", PULL, key, 2000))
    with pytest.raises(Rejected):
        gate.check(key, sign("someone-else", PULL, key, 2000))
    with pytest.raises(Rejected):
        gate.check(key, "")


def test_an_owner_believes_the_client_address_only_from_a_sibling_worker() -> None:
    from aiohttp.test_utils import make_mocked_request

    hls = HlsService(Playback(Hub(), StandalonePolicy()), 0.5)
    forwarding = HlsToOwner(plan(0), hls)
    assert hls.client_address == forwarding.client_address
    sibling = make_mocked_request("GET", "/", headers={FORWARDED_FOR: "203.0.113.9", WORKER_TOKEN: "node-secret"})
    stranger = make_mocked_request("GET", "/", headers={FORWARDED_FOR: "203.0.113.9", WORKER_TOKEN: "guess"})
    assert forwarding.vouched(sibling) and hls.client_address(sibling) == "203.0.113.9"
    assert not forwarding.vouched(stranger) and hls.client_address(stranger) != "203.0.113.9"


# -- the supervisor's bookkeeping -------------------------------------------------------------------------


def test_the_restart_budget_allows_a_few_restarts_per_window() -> None:
    now = [0.0]
    budget = RestartBudget(3, 60.0, clock=lambda: now[0])
    assert [budget.allow() for _ in range(3)] == [True, True, True]
    assert not budget.allow()
    now[0] = 61.0
    assert budget.allow()


def test_exits_are_described_for_people() -> None:
    assert describe_exit(0) == "exit code 0" and describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "killed by SIGKILL"


async def test_workers_that_keep_failing_stop_the_node_with_exit_code_1() -> None:
    settings = load_settings(EdgeSettings, {"rtmp": "127.0.0.1:0", "http": "127.0.0.1:0", "workers": 2})
    started: list[int] = []

    def command(index: int) -> list[str]:
        started.append(index)
        return [sys.executable, "-c", "import sys; sys.exit(3)"]

    supervisor = Supervisor(settings, "edge", 2, command)
    assert await supervisor.run() == 1
    assert supervisor.failure is not None and f"more than {MAX_RESTARTS} times" in supervisor.failure
    assert len(started) == MAX_RESTARTS + 1 and set(started) == {0, 1}
    assert all(proc is None for proc in supervisor.procs)


async def test_a_node_whose_port_is_taken_does_not_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = load_settings(EdgeSettings, {"rtmp": f"127.0.0.1:{port}", "http": "127.0.0.1:0", "workers": 2})
        with pytest.raises(SupervisorError, match=f"cannot listen on 127.0.0.1:{port}"):
            await Supervisor(settings, "edge", 2, lambda index: ["true"]).run()
