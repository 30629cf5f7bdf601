"""redis://host:port/db (rediss:// too) — the shared registry for a multi-machine cluster.

Data model (DESIGN §4), every key under a prefix (default "livecdn"):

- ``{prefix}:node:<id>``          NodeInfo JSON, ``SET PX ttl`` by each heartbeat
- ``{prefix}:nodes``              set of node ids, so listing never needs KEYS; lapsed ids are pruned on read
- ``{prefix}:stream:<app>/<name>`` StreamClaim JSON with a PX lease
- ``{prefix}:streams``            set of claimed stream keys, pruned on read like the node set
- ``{prefix}:epoch``              the fencing counter (INCR; never below the server clock in ms, so epochs keep
                                  increasing even after a Redis restart that lost every key)
- ``{prefix}:events``             pub/sub channel of RegistryEvent JSON

Claim, renew and release are single Lua scripts, so the check and the write are atomic.
Connection problems surface as RegistryError within a couple of seconds; the client reconnects by itself
once Redis answers again (scripts are reloaded on NOSCRIPT).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.redact import redact_url
from common.registry.base import NodeInfo, Registry, RegistryError, RegistryEvent, StreamClaim, wall_clock

log = logging.getLogger(__name__)

SOCKET_TIMEOUT = 2.0  # seconds; one attempt per call on timeouts, so an unreachable Redis fails a call in ~2 s
HEALTH_CHECK_INTERVAL = 10  # seconds of idleness after which a pooled connection is PINGed before use
EVENTS_POLL = 1.0  # seconds the event reader waits per read (lets health checks run on a quiet channel)
EVENTS_BACKOFF_MAX = 2.0  # seconds between resubscribe attempts while Redis is down

# KEYS: stream key, epoch counter, streams set
# ARGV: origin, ttl ms, set member (app/name), channel, claim JSON head/tail, event JSON head/tail,
#       the epoch of another origin's claim to take over ('' for none)
# The JSON pieces come pre-encoded from Python; the script only splices the new epoch in between.
_CLAIM = """
if redis.replicate_commands then redis.replicate_commands() end
local current = redis.call('GET', KEYS[1])
if current then
  local ok, held = pcall(cjson.decode, current)
  if ok and type(held) == 'table' and held['origin'] ~= ARGV[1]
     and (ARGV[9] == '' or held['epoch'] ~= tonumber(ARGV[9])) then
    return false
  end
end
local epoch = redis.call('INCR', KEYS[2])
local now = redis.call('TIME')
local floor = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local e
if epoch < floor then
  e = string.format('%d', floor)
  redis.call('SET', KEYS[2], e)
else
  e = string.format('%d', epoch)
end
local claim = ARGV[5] .. e .. ARGV[6]
redis.call('SET', KEYS[1], claim, 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[7] .. e .. ARGV[8])
return claim
"""

# KEYS: stream key. ARGV: epoch, ttl ms
_RENEW = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local ok, held = pcall(cjson.decode, current)
if not ok or type(held) ~= 'table' or held['epoch'] ~= tonumber(ARGV[1]) then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: stream key, streams set. ARGV: epoch, set member, channel, event JSON
_RELEASE = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local ok, held = pcall(cjson.decode, current)
if not ok or type(held) ~= 'table' or held['epoch'] ~= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# KEYS: index set. ARGV: record key prefix, members to drop if their record is gone.
# Checked inside Redis so a member re-added by a concurrent heartbeat/claim is never dropped.
_PRUNE = """
local removed = 0
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then
    removed = removed + redis.call('SREM', KEYS[1], ARGV[i])
  end
end
return removed
"""


@contextlib.contextmanager
def redis_errors(who: str, what: str) -> Iterator[None]:
    """Turn a redis client's failures into RegistryError (CancelledError passes through untouched)."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise RegistryError(f"{who} unreachable during {what}: {exc}") from exc
    except RedisError as exc:
        raise RegistryError(f"{who} failed {what}: {exc}") from exc


def _ttl_ms(ttl: float) -> int:
    return max(1, round(ttl * 1000))


def _json_str(value: str) -> str:
    return json.dumps(value)


class RedisRegistry(Registry):
    def __init__(self, url: str, *, prefix: str = "livecdn") -> None:
        self.url = url
        self.prefix = prefix
        self._safe_url = redact_url(url)
        self._nodes_key = f"{prefix}:nodes"
        self._streams_key = f"{prefix}:streams"
        self._epoch_key = f"{prefix}:epoch"
        self._channel = f"{prefix}:events"
        self._closed = False
        self._client = self._make_client()
        self._claim_script, self._renew_script, self._release_script, self._prune_script = self._scripts()

    # -- connection --------------------------------------------------------------------------------

    def _make_client(self) -> aioredis.Redis:
        try:
            # Query parameters in the URL (e.g. ?socket_timeout=5&protocol=3) override these defaults.
            return aioredis.Redis.from_url(
                self.url,
                decode_responses=True,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
                health_check_interval=HEALTH_CHECK_INTERVAL,
                # One quick retry on a dropped connection (a stale pooled socket after a Redis restart);
                # none on timeouts, so an unreachable server costs one timeout, not several.
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1, supported_errors=(RedisConnectionError,)),
                protocol=2,  # RESP2: works with every Redis-compatible server, nothing here needs RESP3
            )
        except ValueError as exc:
            raise ValueError(f"bad redis registry URL {self._safe_url}: {exc}") from None

    def _scripts(self) -> tuple[AsyncScript, AsyncScript, AsyncScript, AsyncScript]:
        client = self._client
        return (
            client.register_script(_CLAIM),
            client.register_script(_RENEW),
            client.register_script(_RELEASE),
            client.register_script(_PRUNE),
        )

    async def start(self) -> None:
        if self._closed:
            self._client = self._make_client()
            self._claim_script, self._renew_script, self._release_script, self._prune_script = self._scripts()
            self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        if self._closed:
            raise RegistryError(f"redis registry {self._safe_url}: {what} after close()")
        with redis_errors(f"redis registry {self._safe_url}", what):
            yield

    async def ping(self) -> bool:
        if self._closed:
            return False
        try:
            return bool(await self._client.ping())
        except Exception:
            return False

    def _node_key(self, node_id: str) -> str:
        return f"{self.prefix}:node:{node_id}"

    def _stream_key(self, key: str) -> str:
        return f"{self.prefix}:stream:{key}"

    async def _live_records(self, index: str, record_prefix: str) -> list[tuple[str, str]]:
        """(member, record) for each member of an index set whose record still exists, sorted by member.
        Members whose record lapsed are pruned from the set (atomically re-checked inside Redis)."""
        members = sorted(_text(m) for m in await self._client.smembers(index))
        if not members:
            return []
        texts = await self._client.mget([record_prefix + m for m in members])
        gone = [m for m, text in zip(members, texts, strict=True) if text is None]
        if gone:
            await self._prune_script(keys=[index], args=[record_prefix, *gone])
        return [(m, _text(text)) for m, text in zip(members, texts, strict=True) if text is not None]

    # -- nodes -------------------------------------------------------------------------------------

    async def heartbeat(self, node: NodeInfo, ttl: float) -> None:
        stamped = replace(node, updated=wall_clock())
        with self._errors(f"heartbeat of node {node.id!r}"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self._node_key(node.id), stamped.to_json(), px=_ttl_ms(ttl))
                pipe.sadd(self._nodes_key, node.id)
                await pipe.execute()

    async def remove_node(self, node_id: str) -> None:
        with self._errors(f"removal of node {node_id!r}"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._node_key(node_id))
                pipe.srem(self._nodes_key, node_id)
                await pipe.execute()

    async def nodes(self, role: str | None = None) -> list[NodeInfo]:
        with self._errors("node listing"):
            records = await self._live_records(self._nodes_key, f"{self.prefix}:node:")
        result = []
        for node_id, text in records:
            try:
                info = NodeInfo.from_json(text)
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("redis registry: skipping malformed node record %r: %s", node_id, exc)
                continue
            if role is None or info.role == role:
                result.append(info)
        return sorted(result, key=lambda n: n.id)

    # -- streams -----------------------------------------------------------------------------------

    async def claim(
        self, key: str, origin: str, rtmp_url: str, ttl: float, *, take_over: int | None = None
    ) -> StreamClaim | None:
        since = wall_clock()
        claim_head = f'{{"key":{_json_str(key)},"origin":{_json_str(origin)},"rtmp_url":{_json_str(rtmp_url)},"epoch":'
        claim_tail = f',"since":{json.dumps(since)}}}'
        event_head = f'{{"kind":"publish","key":{_json_str(key)},"origin":{_json_str(origin)},"epoch":'
        with self._errors(f"claim of {key!r}"):
            text = await self._claim_script(
                keys=[self._stream_key(key), self._epoch_key, self._streams_key],
                args=[
                    origin,
                    _ttl_ms(ttl),
                    key,
                    self._channel,
                    claim_head,
                    claim_tail,
                    event_head,
                    "}",
                    "" if take_over is None else str(take_over),
                ],
            )
        if text is None:
            return None
        return self._parse_claim(text, key)

    async def renew(self, claim: StreamClaim, ttl: float) -> bool:
        with self._errors(f"renewal of {claim.key!r}"):
            done = await self._renew_script(keys=[self._stream_key(claim.key)], args=[claim.epoch, _ttl_ms(ttl)])
        return bool(done)

    async def release(self, claim: StreamClaim) -> bool:
        event = RegistryEvent("unpublish", claim.key, claim.origin, claim.epoch).to_json()
        with self._errors(f"release of {claim.key!r}"):
            done = await self._release_script(
                keys=[self._stream_key(claim.key), self._streams_key],
                args=[claim.epoch, claim.key, self._channel, event],
            )
        return bool(done)

    def _parse_claim(self, text: Any, key: str) -> StreamClaim:
        try:
            return StreamClaim.from_json(text)
        except (ValueError, TypeError, KeyError) as exc:
            raise RegistryError(f"redis registry {self._safe_url}: malformed claim on {key!r}: {exc}") from exc

    async def lookup(self, key: str) -> StreamClaim | None:
        with self._errors(f"lookup of {key!r}"):
            text = await self._client.get(self._stream_key(key))
        if text is None:
            return None
        return self._parse_claim(text, key)

    async def streams(self) -> list[StreamClaim]:
        with self._errors("stream listing"):
            records = await self._live_records(self._streams_key, f"{self.prefix}:stream:")
        result = []
        for key, text in records:
            try:
                result.append(StreamClaim.from_json(text))
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("redis registry: skipping malformed claim on %r: %s", key, exc)
        return sorted(result, key=lambda c: c.key)

    # -- events ------------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[RegistryEvent]:
        """Events from the pub/sub channel. Survives Redis outages: the subscription is re-established with
        backoff (events published meanwhile are lost; polling lookups cover them). Ends within EVENTS_POLL
        seconds of close()."""
        delay = 0.1
        while not self._closed:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                if delay > 0.1:
                    log.info("redis registry %s: event subscription restored", self._safe_url)
                delay = 0.1
                while not self._closed:
                    message = await pubsub.get_message(timeout=EVENTS_POLL)
                    if message is None or message.get("type") != "message":
                        continue
                    event = _parse_event(message.get("data"))
                    if event is not None:
                        yield event
            except (RedisError, OSError) as exc:
                if self._closed:
                    return
                if delay == 0.1:
                    log.warning("redis registry %s: event subscription lost: %s", self._safe_url, exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, EVENTS_BACKOFF_MAX)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse_event(data: Any) -> RegistryEvent | None:
    try:
        event = RegistryEvent.from_json(data)
        if event.kind not in ("publish", "unpublish") or not isinstance(event.epoch, int):
            raise ValueError(f"unexpected kind/epoch {event.kind!r}/{event.epoch!r}")
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("redis registry: ignoring malformed event %r: %s", data, exc)
        return None
    return event
