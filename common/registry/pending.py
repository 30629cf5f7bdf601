"""Pending counters: short-lived shared counts, here the viewers routers sent to each edge since its
last heartbeat (common.placement.unreported decides what is counted; this is only where).

Its own small interface beside the Registry contract, with a backend chosen from the registry's URL:

- ``redis://``: atomic counters shared by every control-plane replica. One round trip per exchange: a
  Lua script does INCRBY + PEXPIRE on each counter to add to and reads the counters asked for, so a
  counter never lives without its TTL and a reader never sees half an exchange. Keys
  ``{prefix}:pending:<edge>@<version>`` under the registry's prefix.
- ``memory://``: the same in the process, shared by everyone that uses that registry object.
- anything else (a Consul backend, say): counts in each replica alone (``shared`` False). Each
  replica then balances the viewers it routes itself; see docs/SCALE.md for what that costs.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.redact import redact_url
from common.registry.base import Registry, RegistryError
from common.registry.redis import redis_errors

log = logging.getLogger(__name__)

SOCKET_TIMEOUT = 2.0  # seconds, as the registry's own client: an unreachable Redis fails an exchange in ~2 s


class PendingCounts(ABC):
    """Counters that lapse `ttl` seconds after their last addition."""

    shared: bool  # True: every control-plane replica on this registry sees the same counters

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect (idempotent)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abstractmethod
    async def exchange(self, add: Mapping[str, int], read: Sequence[str], ttl: float) -> list[int]:
        """Add to counters (each lapses `ttl` s after this), then return the values of `read` (0 for a
        missing or lapsed one), in one step. Raises RegistryError when the backend is unreachable."""


class InProcessPendingCounts(PendingCounts):
    """Counters in this process. `clock` is injectable so a simulation can run them on its own time."""

    def __init__(self, *, shared: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.shared = shared
        self._clock = clock
        self._counters: dict[str, tuple[int, float]] = {}  # key -> (value, lapses at)
        self._next_sweep = 0.0

    async def exchange(self, add: Mapping[str, int], read: Sequence[str], ttl: float) -> list[int]:
        return self.exchange_now(add, read, ttl)

    def exchange_now(self, add: Mapping[str, int], read: Sequence[str], ttl: float) -> list[int]:
        """exchange(), synchronously."""
        now = self._clock()
        counters = self._counters
        if now >= self._next_sweep:  # lapsed counters go in one pass per ttl, not one check per key
            self._counters = counters = {k: held for k, held in counters.items() if held[1] > now}
            self._next_sweep = now + ttl
        for key, amount in add.items():
            held = counters.get(key)
            value = held[0] if held is not None and held[1] > now else 0
            counters[key] = (value + amount, now + ttl)
        values = []
        for key in read:
            held = counters.get(key)
            values.append(held[0] if held is not None and held[1] > now else 0)
        return values

    def __len__(self) -> int:
        return len(self._counters)


# KEYS: the counters to add to (ARGV[2] of them), then the counters to read.
# ARGV: ttl ms, how many to add to, then the amounts.
# Returns the values read as one comma-separated string: parsing a 200-element reply item by item cost
# the control plane more than the rest of the exchange.
_EXCHANGE = """
local adds = tonumber(ARGV[2])
for i = 1, adds do
  redis.call('INCRBY', KEYS[i], ARGV[2 + i])
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
local values = {}
for i = adds + 1, #KEYS do
  values[#values + 1] = redis.call('GET', KEYS[i]) or '0'
end
return table.concat(values, ',')
"""


class RedisPendingCounts(PendingCounts):
    shared = True

    def __init__(self, url: str, *, prefix: str = "livecdn") -> None:
        self._url = url
        self._safe_url = redact_url(url)
        self._prefix = f"{prefix}:pending:"
        self._client: aioredis.Redis | None = None

    def _connect(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self._url,
                decode_responses=True,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
                protocol=2,
            )
            self._script = self._client.register_script(_EXCHANGE)
        return self._client

    async def start(self) -> None:
        self._connect()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return redis_errors(f"redis {self._safe_url}", "a pending-count exchange")

    async def exchange(self, add: Mapping[str, int], read: Sequence[str], ttl: float) -> list[int]:
        self._connect()
        keys = [self._prefix + key for key in add]
        keys += [self._prefix + key for key in read]
        args: list[int] = [max(1, round(ttl * 1000)), len(add), *add.values()]
        with self._errors():
            reply = await self._script(keys=keys, args=args)
        try:
            values = list(map(int, reply.split(","))) if read else []
        except (AttributeError, ValueError) as exc:
            raise RegistryError(f"redis {self._safe_url}: malformed pending counts {reply!r}") from exc
        if len(values) != len(read):
            raise RegistryError(f"redis {self._safe_url}: {len(values)} pending counts for {len(read)} keys")
        return values


_IN_PROCESS: weakref.WeakKeyDictionary[Registry, InProcessPendingCounts] = weakref.WeakKeyDictionary()


def open_pending_counts(registry: Registry) -> PendingCounts:
    """The pending counters that go with a registry, chosen by its URL (see the module docstring)."""
    url = registry.url
    if url.startswith(("redis://", "rediss://")):
        return RedisPendingCounts(url, prefix=getattr(registry, "prefix", "livecdn"))
    if url.startswith("memory://"):
        counts = _IN_PROCESS.get(registry)
        if counts is None:
            counts = _IN_PROCESS[registry] = InProcessPendingCounts()
        return counts
    log.info(
        "registry %s has no shared pending counters: each control-plane replica counts the viewers it routed "
        "itself (see docs/SCALE.md)",
        redact_url(url),
    )
    return InProcessPendingCounts(shared=False)
