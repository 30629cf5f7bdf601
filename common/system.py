"""Processes, ports and descriptors: the OS chores that nodes, tests and the load tools share."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket
import subprocess
import time
from typing import Any

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the caller binds it soon after)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: `taskset`, cpusets), not every core of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - platforms without affinity (macOS)


def wait_listening(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on host:port; RuntimeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """SIGTERM a process we started (by its PID), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def raise_fd_limit(needed: int | None = None) -> int:
    """Every viewer is a socket: lift the soft open-files limit to the hard one (or to ``needed``).

    Returns the soft limit in force afterwards. With ``needed``, OSError when it cannot be reached.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = 1_048_576 if hard == resource.RLIM_INFINITY else hard
    target = ceiling if needed is None else min(needed, ceiling)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("open-files limit stays at %d (%s)", soft, exc)
        else:
            log.info("open-files limit raised from %d to %d", soft, target)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if needed is not None and soft != resource.RLIM_INFINITY and soft < needed:
        raise OSError(f"need {needed} file descriptors, the limit is {soft} (raise it with ulimit -n)")
    return soft
