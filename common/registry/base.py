"""The registry interface: live nodes (heartbeats with a TTL) and stream claims (leases with fencing).

Backends: memory:// (one process; the embedded default), redis://host:port/db.
Every backend passes the same contract tests (tests/unit/test_registry_contract.py).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["origin", "edge"]


class RegistryError(Exception):
    """The registry cannot be reached or answered nonsense; callers retry with backoff."""


@dataclass(frozen=True, slots=True)
class NodeLoad:
    viewers: int = 0
    streams: int = 0
    bits_out: float = 0.0  # bits per second sent to viewers, averaged over the last heartbeat period


@dataclass(frozen=True, slots=True)
class NodeInfo:
    id: str
    role: str  # "origin" | "edge"
    region: str
    rtmp: str  # HOST:PORT clients and edges connect to
    http: str  # HOST:PORT of the node's HTTP side (stats, HTTP-FLV)
    load: NodeLoad = field(default_factory=NodeLoad)
    draining: bool = False
    updated: float = 0.0  # wall-clock seconds of the last heartbeat (set by the backend)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> NodeInfo:
        data: dict[str, Any] = json.loads(text)
        data["load"] = NodeLoad(**data.get("load", {}))
        return cls(**data)


@dataclass(frozen=True, slots=True)
class StreamClaim:
    key: str  # "app/name"
    origin: str  # node id of the owning origin
    rtmp_url: str  # where edges pull it: rtmp://host:port/app/name
    epoch: int  # fencing token: strictly increases with every successful claim of any stream
    since: float  # wall-clock seconds when this claim was taken

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> StreamClaim:
        return cls(**json.loads(text))


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    kind: Literal["publish", "unpublish"]
    key: str
    origin: str
    epoch: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> RegistryEvent:
        return cls(**json.loads(text))


class Registry(ABC):
    """Shared cluster state. All methods may raise RegistryError when the backend is unreachable."""

    url: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect (idempotent). Backends that need no connection keep the default."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and stop background work."""

    @abstractmethod
    async def ping(self) -> bool:
        """True when the backend answers."""

    # -- nodes -----------------------------------------------------------------------------------

    @abstractmethod
    async def heartbeat(self, node: NodeInfo, ttl: float) -> None:
        """Create or refresh the node record; it disappears ttl seconds after the last heartbeat."""

    @abstractmethod
    async def remove_node(self, node_id: str) -> None:
        """Forget a node at once (clean shutdown)."""

    @abstractmethod
    async def nodes(self, role: str | None = None) -> list[NodeInfo]:
        """Live nodes (optionally of one role), sorted by id."""

    # -- streams ---------------------------------------------------------------------------------

    @abstractmethod
    async def claim(
        self, key: str, origin: str, rtmp_url: str, ttl: float, *, take_over: int | None = None
    ) -> StreamClaim | None:
        """Take the lease on a stream. Succeeds when nobody holds it, or when this same origin does
        (a publisher reconnecting to the same origin; the old epoch is fenced off by a new one), or, with
        ``take_over``, when another origin holds it with exactly that epoch (its owner is known to be
        gone: the caller checked; a newer claim in between makes the take-over fail).
        Returns None when another origin holds a live claim. Publishes a 'publish' event."""

    @abstractmethod
    async def renew(self, claim: StreamClaim, ttl: float) -> bool:
        """Extend the lease; only the holder with the same epoch may. False: the lease is lost."""

    @abstractmethod
    async def release(self, claim: StreamClaim) -> bool:
        """Drop the lease if still held with this epoch (publishes 'unpublish'). False if not held."""

    @abstractmethod
    async def lookup(self, key: str) -> StreamClaim | None:
        """The live claim on a stream, if any."""

    @abstractmethod
    async def streams(self) -> list[StreamClaim]:
        """All live claims, sorted by key."""

    # -- events ----------------------------------------------------------------------------------

    @abstractmethod
    def events(self) -> AsyncIterator[RegistryEvent]:
        """Publish/unpublish events as they happen, for as long as the caller iterates. Delivery is
        best effort (a slow consumer may miss events; polling lookups stay the fallback)."""


def wall_clock() -> float:
    return time.time()
