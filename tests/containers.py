"""Real servers in containers (testcontainers) where a Docker engine answers; the tests fall back to local
binaries or the in-repo test servers otherwise, and say which they used (pytest's report header, the log).

Detection is one ping of the engine: with no engine, ``docker.from_env()`` fails in milliseconds.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

REDIS_IMAGE = "redis:7-alpine"
CONSUL_IMAGE = "hashicorp/consul:1.20"


@functools.cache
def docker_engine() -> str | None:
    """None when a Docker engine answers a ping, else why not (cached: asked once per test session)."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # docker.errors.DockerException, requests' errors, a missing package
        return f"no Docker engine ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    return None


@contextlib.contextmanager
def redis_container() -> Iterator[str]:
    """A throwaway Redis in a container; yields its redis:// URL."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    container = DockerContainer(REDIS_IMAGE).with_command("redis-server --save '' --appendonly no")
    container.with_exposed_ports(6379)
    with container:
        wait_for_logs(container, "Ready to accept connections", timeout=30)
        yield f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"


def _leader(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/v1/status/leader", timeout=1) as response:
            return len(response.read().strip(b'"\n')) > 0
    except OSError:
        return False


@contextlib.contextmanager
def consul_container() -> Iterator[str]:
    """A Consul dev agent (server + client, in memory) in a container; yields its HOST:PORT."""
    from testcontainers.core.container import DockerContainer

    container: Any = DockerContainer(CONSUL_IMAGE).with_command("agent -dev -client 0.0.0.0 -log-level warn")
    container.with_exposed_ports(8500)
    with container:
        address = f"{container.get_container_host_ip()}:{container.get_exposed_port(8500)}"
        deadline = time.monotonic() + 60
        while not _leader(address):  # a dev agent elects itself within a second or two
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Consul container at {address} elected no leader within 60 s")
            time.sleep(0.2)
        yield address
