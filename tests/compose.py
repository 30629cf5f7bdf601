"""The docker compose files as data, for tests that check them and run their services outside Docker.

``service_env`` gives a service exactly the environment compose would (its env_file, then its
``environment``, merge keys and override files applied), with only the network rewritten for one host:
service host names become 127.0.0.1 and each (service, container port) gets a port of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from common.system import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
CONSUL_OVERRIDE = DEPLOY / "docker-compose.consul.yml"
ENV_EXAMPLE = DEPLOY / "livecdn.env.example"
ROLES = ("origin", "edge", "control")


def _merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file: mappings merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merge(base[k], v) if k in base else v for k, v in override.items()}}
    return override


def load(*overrides: Path) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    for path in overrides:
        config = _merge(config, yaml.safe_load(path.read_text()))
    return config


def livecdn_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the livecdn image, by name."""
    return {name: svc for name, svc in config["services"].items() if svc.get("command", [None])[0] in ROLES}


def env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


class PortMap:
    """(service, container port) -> a free loopback port; fixed ones (a real Redis, Consul) given up front."""

    def __init__(self, fixed: dict[tuple[str, int], int]) -> None:
        self.ports = dict(fixed)

    def __call__(self, service: str, port: int) -> int:
        if (service, port) not in self.ports:
            self.ports[(service, port)] = free_port()
        return self.ports[(service, port)]


def service_env(config: dict[str, Any], name: str, ports: Callable[[str, int], int]) -> dict[str, str]:
    """What compose puts in the environment of ``name``, rewritten for one host (see the module doc)."""
    service = config["services"][name]
    env = dict(env_file(DEPLOY / service["env_file"].replace("livecdn.env", "livecdn.env.example")))
    env.update({k: str(v) for k, v in (service.get("environment") or {}).items()})
    services = set(config["services"])

    def rewrite(key: str, value: str) -> str:
        if key.endswith("_HOST") and value in services:
            return "127.0.0.1"  # an advertised host: the service's name
        value = re.sub(r"^0\.0\.0\.0:(\d+)$", lambda m: f"127.0.0.1:{ports(name, int(m.group(1)))}", value)
        return re.sub(
            r"\b([a-z][a-z0-9-]*):(\d+)\b",
            lambda m: f"127.0.0.1:{ports(m.group(1), int(m.group(2)))}" if m.group(1) in services else m.group(0),
            value,
        )

    return {key: rewrite(key, value) for key, value in env.items()}
