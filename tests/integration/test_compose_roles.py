"""Each docker compose service run as compose would run it, outside Docker: the image's entry point
(`livecdn`) with the service's command, its env_file (the documented example) and its environment, only the
network rewritten for one host (tests/compose.py). With a real redis-server, and for the Consul override with
the Consul of tests/consul_server.py: every node must become healthy by the image's own health check, ready,
and visible to the control plane under the name it advertises; Prometheus' targets must be the nodes' metrics,
and the Grafana dashboard may only use metrics that these nodes export."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from common.system import stop_process
from tests.compose import CONSUL_OVERRIDE, DEPLOY, ROOT, PortMap, livecdn_services, load, service_env
from tests.consul_server import consul_for_tests
from tests.helpers import wait_for
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(params=["redis", "consul"])
def registry_port(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """(the registry service of the compose variant, the loopback port of a real one)."""
    if request.param == "redis":
        with RedisServer() as redis:
            yield "redis", redis.port
    else:
        with consul_for_tests() as consul:
            host, _, port = consul.address.rpartition(":")
            if host != "127.0.0.1":
                pytest.skip(f"the compose nodes reach Consul on loopback; this run uses {consul.kind}")
            yield "consul", int(port)


def _http(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as response:
        body = response.read()
    return json.loads(body) if response.headers.get_content_type() == "application/json" else body.decode()


def _healthy(env: dict[str, str]) -> bool:
    """The image's HEALTHCHECK, run with the service's environment."""
    done = subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py")], env=env, capture_output=True, timeout=10)
    return done.returncode == 0


def dashboard_metrics() -> set[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "livecdn.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return {name for expr in exprs for name in re.findall(r"\b(livecdn_[a-z_]+)\b", expr)}


def test_every_compose_service_runs_with_its_command_and_environment(
    registry_port: tuple[str, int], tmp_path: Path
) -> None:
    registry, port = registry_port
    config = load(CONSUL_OVERRIDE) if registry == "consul" else load()
    services = livecdn_services(config)
    ports = PortMap({(registry, 8500 if registry == "consul" else 6379): port})
    base = {k: v for k, v in os.environ.items() if not k.startswith("LIVECDN_")}
    envs = {name: {**base, **service_env(config, name, ports)} for name in services}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, service in services.items():
            assert envs[name]["LIVECDN_REGISTRY"].startswith(f"{registry}://127.0.0.1:{port}")
            with (tmp_path / f"{name}.log").open("wb") as log:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "livecdn", *service["command"]],
                    cwd=ROOT,
                    env=envs[name],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )

        def log(name: str) -> str:
            return (tmp_path / f"{name}.log").read_text()[-3000:]

        def up(name: str) -> bool:
            assert procs[name].poll() is None, f"{name} exited with {procs[name].returncode}:\n{log(name)}"
            if not _healthy(envs[name]):
                return False
            try:
                return bool(_http(f"http://{envs[name]['LIVECDN_HTTP']}/readyz")["ready"])
            except OSError:  # 503 while the registry does not answer yet
                return False

        for name in services:  # healthy by the image's own health check, and ready
            deadline = time.monotonic() + 20
            while not up(name):
                assert time.monotonic() < deadline, f"{name} not healthy and ready:\n{log(name)}"
                time.sleep(0.1)

        control = envs["control"]["LIVECDN_HTTP"]
        nodes = {name: env for name, env in envs.items() if name != "control"}

        def registered() -> dict[str, Any]:
            listed = {n["id"]: n for n in _http(f"http://{control}/v1/nodes")["nodes"]}
            return listed if set(listed) == set(nodes) else {}

        listed = wait_for(registered, 10, "every node in the control plane's view")
        for name, env in nodes.items():
            node = listed[name]
            assert node["region"] == config["services"][name]["environment"]["LIVECDN_REGION"]
            # Advertised by service name in compose (rewritten to 127.0.0.1 here) on the port it listens on.
            assert node["rtmp"] == env["LIVECDN_RTMP"] and node["http"] == env["LIVECDN_HTTP"]
        route = _http(f"http://{control}/v1/route/play?stream=live/x&region=us")
        assert route["edge"] == "edge-us-1" and route["rtmp"] == f"rtmp://{envs['edge-us-1']['LIVECDN_RTMP']}/live/x"

        # Prometheus scrapes exactly these nodes; the dashboard uses only what they export.
        prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        exported: set[str] = set()
        for job in prometheus["scrape_configs"]:
            for target in (t for c in job["static_configs"] for t in c["targets"]):
                service, _, container_port = target.rpartition(":")
                text = _http(f"http://127.0.0.1:{ports(service, int(container_port))}/metrics")
                for family in text_string_to_metric_families(text):
                    exported |= {sample.name for sample in family.samples}
        missing = dashboard_metrics() - exported
        assert not missing, f"the dashboard uses metrics no node exports: {sorted(missing)}"
        assert {"livecdn_pulls_active", "livecdn_bits_out", "livecdn_control_region_source_total"} <= exported
    finally:
        for proc in procs.values():
            stop_process(proc)
