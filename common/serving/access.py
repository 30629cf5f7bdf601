"""Who may play, and how many connections one client may hold: checked on the one play path and at accept.

Play: with a play secret, a viewer needs a signed play token (common.signing). An edge pulling from its
upstream presents a pull token signed with the cluster secret instead. An origin that has a cluster
secret serves only edges and viewers with a play token: strangers cannot pull from it. The worker
processes of one node also accept pull tokens signed with the node's own secret, which its supervisor
makes up at start: sibling workers pull from each other even where no cluster secret is set.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from common.keys import StreamKey
from common.serving.policy import Rejected
from common.signing import PLAY, PULL, refusal

NOT_ALLOWED = "NetStream.Play.Failed"


@dataclass(frozen=True)
class PlayGate:
    play_secret: str | None = None
    cluster_secret: str | None = None
    edges_only: bool = False  # an origin with a cluster secret: viewers need a play token, edges a pull token
    clock: Callable[[], float] = time.time
    node_secret: str | None = None  # a worker's: pull tokens of its sibling workers

    @property
    def closed(self) -> bool:
        return self.play_secret is not None or (self.edges_only and self.cluster_secret is not None)

    def check(self, key: StreamKey, query: str) -> None:
        """Raise Rejected unless the query grants playing ``key`` (always granted when the gate is open)."""
        if not self.closed:
            return
        now = self.clock()
        for pull_secret in (self.cluster_secret, self.node_secret):
            if pull_secret is not None and refusal(pull_secret, PULL, key, query, now) is None:
                return
        if self.play_secret is None:
            raise Rejected(NOT_ALLOWED, f"{key}: this node serves edges only")
        why = refusal(self.play_secret, PLAY, key, query, now)
        if why is not None:
            raise Rejected(NOT_ALLOWED, f"{key}: not authorized to play ({why})")


class ConnectionLimiter:
    """Connections (RTMP) and HTTP-FLV viewers, in total and per client address; 0 means no limit."""

    def __init__(self, total: int = 0, per_address: int = 0) -> None:
        self.total = total
        self.per_address = per_address
        self._by_address: Counter[str] = Counter()
        self._count = 0

    def acquire(self, address: str) -> str | None:
        """Take a place for ``address``; the reason it is refused, or None."""
        if self.total and self._count >= self.total:
            return f"the node holds its maximum of {self.total} connections"
        if self.per_address and self._by_address[address] >= self.per_address:
            return f"{address} holds its maximum of {self.per_address} connections"
        self._count += 1
        self._by_address[address] += 1
        return None

    def release(self, address: str) -> None:
        self._count -= 1
        self._by_address[address] -= 1
        if self._by_address[address] <= 0:
            del self._by_address[address]

    def __len__(self) -> int:
        return self._count
