"""What one worker process of a node is told by its supervisor, and the few OS chores that go with it.

A node with ``workers`` > 1 runs as a supervisor and N worker processes (common.runtime.supervisor). Each
worker gets one JSON document in its environment, ``LIVECDN_WORKER_PLAN``: never a flag, because it holds
the node's secrets and flags show in the process list. It carries the node's settings as the supervisor
resolved them (public ports bound, node id fixed), the worker's index, every worker's private loopback
ports, the descriptors of this worker's private listening sockets (inherited: the supervisor keeps them,
so their ports stay the same across a worker's restart), and a secret the supervisor made up for this run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import SecretStr

from common.keys import StreamKey
from common.placement.hashing import owner_worker
from common.runtime.config import Settings

log = logging.getLogger(__name__)

PLAN_ENV: Final = "LIVECDN_WORKER_PLAN"
LOOPBACK: Final = "127.0.0.1"
DRAIN_SIGNAL: Final = signal.SIGUSR1  # both ways: a worker asks its supervisor, the supervisor tells its workers
_PR_SET_PDEATHSIG: Final = 1


class PlanError(ValueError):
    """No usable plan in the environment: the process was not started by a supervisor."""


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    index: int
    supervisor_pid: int
    secret: str  # the node's own: signs pulls between sibling workers where no cluster secret is set
    rtmp_ports: tuple[int, ...]  # every worker's private loopback RTMP port (sibling pulls), by index
    http_ports: tuple[int, ...]  # every worker's private loopback HTTP port (its own stats and metrics)
    rtmp_fd: int  # this worker's private listening sockets, inherited from the supervisor
    http_fd: int
    settings: Mapping[str, Any]  # the node's settings (settings_document), as every worker runs them

    @property
    def count(self) -> int:
        return len(self.rtmp_ports)

    def owner_of(self, key: StreamKey) -> int:
        return owner_worker(str(key), self.count)

    def sibling_url(self, key: StreamKey) -> str:
        """Where this worker plays ``key`` from when another worker owns it: that worker's private port."""
        return f"rtmp://{LOOPBACK}:{self.rtmp_ports[self.owner_of(key)]}/{key}"

    def private_rtmp_socket(self) -> socket.socket:
        return socket.socket(fileno=self.rtmp_fd)

    def private_http_socket(self) -> socket.socket:
        return socket.socket(fileno=self.http_fd)

    # -- the environment -----------------------------------------------------------------------------

    def to_env(self) -> str:
        return json.dumps(
            {
                "index": self.index,
                "supervisor_pid": self.supervisor_pid,
                "secret": self.secret,
                "rtmp_ports": list(self.rtmp_ports),
                "http_ports": list(self.http_ports),
                "rtmp_fd": self.rtmp_fd,
                "http_fd": self.http_fd,
                "settings": dict(self.settings),
            }
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str], index: int) -> WorkerPlan:
        text = environ.get(PLAN_ENV)
        if not text:
            raise PlanError(f"{PLAN_ENV} is not set: only a node's supervisor starts its workers (--workers)")
        try:
            data = json.loads(text)
            plan = cls(
                index=int(data["index"]),
                supervisor_pid=int(data["supervisor_pid"]),
                secret=str(data["secret"]),
                rtmp_ports=tuple(int(p) for p in data["rtmp_ports"]),
                http_ports=tuple(int(p) for p in data["http_ports"]),
                rtmp_fd=int(data["rtmp_fd"]),
                http_fd=int(data["http_fd"]),
                settings=dict(data["settings"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise PlanError(f"{PLAN_ENV} is malformed: {exc!r}") from None
        if plan.index != index or not 0 <= index < plan.count or len(plan.http_ports) != plan.count:
            raise PlanError(f"{PLAN_ENV} is for worker {plan.index} of {plan.count}, not worker {index}")
        return plan

    # -- the supervisor ------------------------------------------------------------------------------

    def supervised(self) -> bool:
        """Whether the supervisor that started this worker is still its parent."""
        return os.getppid() == self.supervisor_pid

    def ask_node_to_drain(self) -> None:
        """A drain begun here (SIGTERM, POST /v1/drain) is the whole node's: tell the supervisor, which
        marks the node draining and tells every worker (a supervisor already draining ignores it)."""
        if self.supervised():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.supervisor_pid, DRAIN_SIGNAL)

    def exit_with_supervisor(self) -> bool:
        """Have the kernel send this worker SIGINT (stop at once) when its supervisor dies, even by SIGKILL,
        so no worker lingers holding the node's ports. False where prctl is missing (not Linux): the
        caller then watches the parent instead. Raises SystemExit if the supervisor is already gone."""
        armed = False
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0) == 0
        # The supervisor may have died before prctl took effect: then nothing will ever be sent.
        if not self.supervised():
            raise SystemExit(f"worker {self.index}: the supervisor (pid {self.supervisor_pid}) is gone")
        return armed


def settings_document(settings: Settings) -> dict[str, Any]:
    """The settings as JSON values, secrets included (model_dump masks them), for a worker's plan."""
    document = settings.model_dump(mode="json")
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            document[name] = value.get_secret_value()
    return document
