"""The deployment files, checked offline (no Docker engine, no kubectl here): the Dockerfile by reading it, the
compose files with `docker-compose config -q` (Debian's docker-compose v1; .ci/run installs it), the
Kubernetes manifests rendered from their kustomization and validated with `kubernetes-validate --strict`, and
the wiring between them (ports, health checks, drain deadline, secrets, scrape targets) by reading them.
tests/integration/test_compose_roles.py runs each compose service's command and environment for real."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compose import COMPOSE, CONSUL_OVERRIDE, DEPLOY, ENV_EXAMPLE, ROOT, env_file, livecdn_services, load

K8S = DEPLOY / "k8s"
SECRETS = ("LIVECDN_PUBLISH_SECRET", "LIVECDN_PLAY_SECRET", "LIVECDN_CLUSTER_SECRET", "LIVECDN_ADMIN_TOKEN")
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")  # the oldest we claim, and the newest the validator knows


# -- the image -------------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions (KEYWORD, arguments) per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), args.strip()))
    return stages


def test_the_image_is_multi_stage_non_root_with_a_healthcheck_and_the_livecdn_entry_point() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a build stage and a slim runtime stage"
    runtime = dict(stages[-1])  # the last of each keyword in the final stage
    assert "--from=build" in " ".join(args for key, args in stages[-1] if key == "COPY")
    assert not any(key == "RUN" and "pip install" in args for key, args in stages[-1]), "no build tools at runtime"
    user = runtime["USER"].split(":")[0]
    assert user not in ("root", "0"), "the final stage runs as a non-root user"
    healthcheck = runtime["HEALTHCHECK"]
    assert "CMD" in healthcheck and "/opt/livecdn/healthcheck.py" in healthcheck
    assert any(key == "COPY" and args.endswith("/opt/livecdn/healthcheck.py") for key, args in stages[-1])
    assert json.loads(runtime["ENTRYPOINT"]) == ["livecdn"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["livecdn"] == "livecdn.cli:main"  # what ENTRYPOINT runs, the command the tests run
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("uvloop") for d in dependencies) and any(d.startswith("py-consul") for d in dependencies)


def test_everything_the_image_copies_exists_and_is_not_docker_ignored() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    ignored = [p for p in ignored if p and not p.startswith("#")]
    for stage in dockerfile_stages():
        for key, args in stage:
            if key != "COPY" or args.startswith("--from"):
                continue
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not any(fnmatch.fnmatch(source, p) for p in ignored), f"COPY {source}: .dockerignore drops it"
    assert {".git", ".venv", "tests", "deploy/livecdn.env"} <= set(ignored)  # no history, no secrets in the image


def test_the_health_check_script_asks_the_port_the_role_listens_on() -> None:
    spec = importlib.util.spec_from_file_location("healthcheck", DEPLOY / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.url_from_env({"LIVECDN_HTTP": "0.0.0.0:8083"}) == "http://127.0.0.1:8083/healthz"
    assert module.url_from_env({"LIVECDN_HTTP": "[::]:8080"}) == "http://127.0.0.1:8080/healthz"
    assert module.url_from_env({"LIVECDN_HTTP": "10.0.0.5:9000"}) == "http://10.0.0.5:9000/healthz"
    assert module.url_from_env({}) == "http://127.0.0.1:8080/healthz"  # the image's default LIVECDN_HTTP


# -- docker compose --------------------------------------------------------------------------------


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's docker-compose package)")
    return found


@pytest.mark.parametrize("overrides", [(), (CONSUL_OVERRIDE,)], ids=["redis", "consul"])
def test_compose_files_validate(overrides: tuple[Path, ...], tmp_path: Path) -> None:
    binary = docker_compose()
    # compose needs the env file the README tells users to create; make it from the example in a copy.
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("k8s", "livecdn.env"))
    shutil.copy(ENV_EXAMPLE, copy / "livecdn.env")
    files = [arg for path in (COMPOSE, *overrides) for arg in ("-f", str(copy / path.name))]
    result = subprocess.run([binary, *files, "config", "-q"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # The check is real: a misspelt key fails it.
    broken = copy / "broken.yml"
    broken.write_text("services:\n  control:\n    helthcheck: {}\n")
    result = subprocess.run([binary, *files, "-f", str(broken), "config", "-q"], capture_output=True, text=True)
    assert result.returncode != 0 and "helthcheck" in result.stderr


def test_compose_services_are_wired_to_each_other() -> None:
    config = load()
    nodes = livecdn_services(config)
    assert sorted(nodes) == ["control", "edge-eu-1", "edge-eu-2", "edge-us-1", "origin-1", "origin-2"]
    regions = {}
    listen: dict[str, int] = {}
    for name, service in nodes.items():
        env = service["environment"]
        role = service["command"][0]
        assert service["healthcheck"]["test"] == ["CMD", "python", "/opt/livecdn/healthcheck.py"], name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert service["env_file"] == "livecdn.env" and "stop_grace_period" in service, name
        grace = int(service["stop_grace_period"].rstrip("s"))
        assert float(env["LIVECDN_DRAIN_TIMEOUT"]) < grace, f"{name}: docker kills it mid-drain"
        assert env["LIVECDN_REGISTRY"] == "redis://redis:6379/0", name
        http_port = int(env["LIVECDN_HTTP"].rpartition(":")[2])
        listen[name] = http_port
        [published] = service["ports"]  # one port to the host per node, the same number inside
        host_port, container_port = map(int, published.split(":"))
        assert host_port == container_port
        if role == "control":
            assert container_port == http_port
            continue
        assert env["LIVECDN_NODE_ID"] == name and env["LIVECDN_ADVERTISE_HOST"] == name  # others reach it by name
        regions[name] = env["LIVECDN_REGION"]
        rtmp_port = int(env["LIVECDN_RTMP"].rpartition(":")[2])
        # Origins publish their ingest (RTMP), edges their HTTP side (HTTP-FLV, where /play sends players).
        assert container_port == (rtmp_port if role == "origin" else http_port), name
    assert set(regions.values()) == {"eu", "us"}
    assert sum(1 for n in regions if n.startswith("edge")) == 3
    assert len(set(listen.values())) == len(listen), "every node listens on ports of its own"

    # Prometheus scrapes every node where it listens, by service name.
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {f"{name}:{port}" for name, port in listen.items()}
    # Grafana is provisioned with the dashboard, and the data source it names.
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in config["services"]["grafana"]["volumes"]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "livecdn.json").read_text())
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert uids == {datasource["datasources"][0]["uid"]}


def test_the_consul_override_moves_every_node_to_consul() -> None:
    config = load(CONSUL_OVERRIDE)
    for name, service in livecdn_services(config).items():
        assert service["environment"]["LIVECDN_REGISTRY"] == "consul://consul:8500", name
        assert service["depends_on"]["consul"]["condition"] == "service_healthy", name
        assert service["environment"]["LIVECDN_HTTP"] == load()["services"][name]["environment"]["LIVECDN_HTTP"]


def test_the_env_example_names_every_secret() -> None:
    text = ENV_EXAMPLE.read_text()
    for name in SECRETS:
        assert re.search(rf"^#? ?{name}=\S+", text, re.MULTILINE), name
    assert all("change-me" in value for value in env_file().values())  # placeholders, never real secrets


# -- Kubernetes ------------------------------------------------------------------------------------


def render(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, str(K8S / "render.py"), str(directory)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kubernetes_validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.skip("kubernetes-validate is not installed (the test extra of pyproject.toml installs it)")
    return subprocess.run([binary, "--strict", "-k", version, str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("directory", ["base", "overlays/example"])
def test_kubernetes_manifests_validate_strictly(directory: str, tmp_path: Path) -> None:
    docs = render(K8S / directory)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    for version in KUBERNETES_VERSIONS:
        result = kubernetes_validate(rendered, version)
        assert result.returncode == 0, result.stdout + result.stderr
    # The check is real: an unknown field fails it.
    docs[0]["metadata"]["lables"] = {"typo": "x"}
    rendered.write_text(yaml.safe_dump_all(docs))
    assert kubernetes_validate(rendered, KUBERNETES_VERSIONS[-1]).returncode != 0


def test_the_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(p.name for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk


def by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_kubernetes_objects_are_wired_to_each_other() -> None:
    docs = by_kind(render(K8S / "overlays" / "example"))
    config = docs[("ConfigMap", "livecdn-config")]["data"]
    drain = float(config["LIVECDN_DRAIN_TIMEOUT"])
    assert config["LIVECDN_REGION"] == "eu"  # the overlay's patch applied
    secrets = set(docs[("Secret", "livecdn-secrets")]["stringData"])
    assert all(d["metadata"].get("namespace") == "livecdn" for k, d in docs.items() if k[0] != "Namespace")

    for kind, name in (("StatefulSet", "origin"), ("Deployment", "edge"), ("Deployment", "control")):
        workload = docs[(kind, name)]
        pod = workload["spec"]["template"]
        [container] = pod["spec"]["containers"]
        assert container["args"] == [name] and container["image"] == "registry.example.com/livecdn:0.1.0"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(container["resources"]["limits"])
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        if name != "control":
            assert drain < pod["spec"]["terminationGracePeriodSeconds"], f"{name} is killed mid-drain"
        env = {e["name"]: e for e in container.get("env", [])}
        for item in env.values():
            if "secretKeyRef" in item.get("valueFrom", {}):
                assert item["valueFrom"]["secretKeyRef"]["key"] in secrets
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod["metadata"]["labels"].items()

    origin = docs[("StatefulSet", "origin")]
    headless = docs[("Service", origin["spec"]["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    env = {e["name"]: e for e in origin["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LIVECDN_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["LIVECDN_ADVERTISE_HOST"]["value"] == "$(LIVECDN_NODE_ID).origin.$(POD_NAMESPACE).svc.cluster.local"
    edge = docs[("Deployment", "edge")]
    edge_env = {e["name"]: e for e in edge["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "LIVECDN_PUBLISH_SECRET" not in edge_env  # each role gets only the secrets it uses
    assert edge["spec"]["replicas"] == 4  # the overlay's patch applied
    hpa = docs[("HorizontalPodAutoscaler", "edge")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "edge"}
    for kind, name in (("Deployment", "edge"), ("StatefulSet", "origin")):
        pdb = docs[("PodDisruptionBudget", name)]["spec"]["selector"]["matchLabels"]
        assert pdb == docs[(kind, name)]["spec"]["selector"]["matchLabels"]

    # Only edges (in the cluster) and publishers (from outside) reach the origins' RTMP port.
    policy = docs[("NetworkPolicy", "origin-ingress")]["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "origin"
    rtmp_rules = [r for r in policy["ingress"] if {"protocol": "TCP", "port": 1935} in r["ports"]]
    sources = [peer for rule in rtmp_rules for peer in rule["from"]]
    assert len(sources) == 2
    assert sources[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "edge"
    assert sources[1]["ipBlock"]["cidr"] == "0.0.0.0/0" and sources[1]["ipBlock"]["except"]
