"""A node's role (origin, edge) as the runtime sees it: a stream policy plus what the role owns.

The runtime builds every node the same way and hands the role a NodeContext; the role gives back its
policy (which the RTMP and HTTP services call) and its resources as aiohttp cleanup contexts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from common.hub.stream import Hub, Stream
from common.registry import Registry
from common.rtmp.session import SessionLimits
from common.runtime.config import HostPort, NodeSettings
from common.runtime.tasks import BackgroundTasks
from common.runtime.workerplan import WorkerPlan
from common.serving.policy import StreamPolicy

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


class Addresses:
    """Where clients and other nodes reach this node; the bound ports are known once it listens."""

    def __init__(self, settings: NodeSettings) -> None:
        self.advertise_host = settings.advertise_host
        self.rtmp: HostPort = settings.rtmp
        self.http: HostPort = settings.http

    @property
    def rtmp_hostport(self) -> str:
        return f"{self.advertise_host or self.rtmp.public_host}:{self.rtmp.port}"

    @property
    def http_hostport(self) -> str:
        return f"{self.advertise_host or self.http.public_host}:{self.http.port}"

    def rtmp_url(self, app: str = "live", name: str = "STREAM") -> str:
        return f"rtmp://{self.rtmp_hostport}/{app}/{name}"

    def http_url(self, path: str = "") -> str:
        return f"http://{self.http_hostport}{path}"


@dataclass(frozen=True, slots=True)
class NodeContext:
    """What a role is built from: the node's settings and the parts built before it."""

    settings: NodeSettings
    registry: Registry
    hub: Hub
    session_limits: SessionLimits
    addresses: Addresses
    tasks: BackgroundTasks
    worker: WorkerPlan | None = None  # one of several worker processes of the node (common.runtime.supervisor)


class Role(StreamPolicy, Protocol):
    name: str  # "origin" | "edge": the role in the registry, /v1/stats and the banner
    # Viewers are meant to come through edges: with a cluster secret, only edges (and viewers holding a
    # play token) may play here.
    viewers_through_edges: bool

    def contexts(self) -> list[CleanupContext]:
        """The role's resources, started after the RTMP listener opens and stopped (in reverse) before it
        closes, while the registry is still open: claims are released before publishers are cut."""

    def stream_extra(self, stream: Stream) -> dict[str, Any]:
        """Role-specific fields of a stream in /v1/stats."""

    def node_extra(self) -> dict[str, Any]:
        """Role-specific fields of the node in /v1/stats."""

    def banner_lines(self) -> list[str]:
        """Extra lines for the start-up banner."""


RoleFactory = Callable[[NodeContext], Role]
