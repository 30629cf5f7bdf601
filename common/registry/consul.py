"""consul://host:port[/prefix] — the registry on a Consul datacenter, through the py-consul client (consul.aio).

How the contract maps onto Consul (docs/CONSUL.md has the reasoning and the operator's view):

- **Nodes** are Consul services: service name ``{prefix}`` (so ``origin.livecdn.service.consul`` resolves),
  id ``{prefix}-<node id>``, tags ``[role, region]``, the NodeInfo fields in the service's Meta, and one TTL
  check (TTL = the node TTL). Each heartbeat re-registers the service (the load and ``draining`` change) and
  passes the check; a node that stops heartbeating goes critical after its TTL and drops out of
  ``nodes()``, which lists only passing instances (``/v1/health/service/{prefix}?passing``). A clean
  shutdown deregisters it; Consul reaps a critical one after a minute.
- **Stream claims** are KV keys ``{prefix}/streams/<app>/<name>`` holding the claim as JSON, locked by this
  process's Consul session (TTL, ``behavior=delete``, lock-delay 0). The **epoch** is the key's
  CreateIndex: a Raft index, so it only grows, across every stream, and each claim (new, re-claimed by the
  same origin, taken over) creates the key anew in one transaction — ``check-index`` on the ModifyIndex
  (or ``check-not-exists``) + ``delete`` + ``lock`` — so two origins never both win. Renewals and
  releases are check-and-set writes on the ModifyIndex after checking the CreateIndex, so only the holder
  of that epoch can extend or end it.
- **Lease time** is the ``expires`` wall-clock deadline in the value, extended by each renewal: Consul
  session TTLs are at least 10 s and are only a lower bound (invalidation may take twice as long), far
  coarser than a claim TTL. The session is the safety net: if this process dies, Consul deletes every key
  it held 10-20 s later. Clocks of the nodes must agree to well under ``claim_ttl`` (NTP).
- **Events** come from a blocking query on the ``streams/`` prefix (``?index=&wait=``), diffed against the
  previous answer. A release leaves a *tombstone* (the claim marked ``released``) for a few seconds, so a
  watcher that sees a claim and its release in one answer still reports both, in index order.

Every call fails with RegistryError within ~2 s when the agent does not answer (blocking reads excepted:
they wait for changes by design, and end at once on close()).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import consul  # type: ignore[import-untyped]
import consul.aio  # type: ignore[import-untyped]

from common.backoff import Backoff
from common.redact import redact_url
from common.registry.base import NodeInfo, NodeLoad, Registry, RegistryError, RegistryEvent, StreamClaim, wall_clock

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 8500
DEFAULT_PREFIX: Final = "livecdn"
REQUEST_TIMEOUT: Final = 2.0  # seconds per call: an agent that does not answer fails the call in ~2 s
SESSION_TTL: Final = 10  # seconds: Consul's minimum; invalidation happens between 1x and 2x of it
SESSION_RENEW_EVERY: Final = SESSION_TTL / 3
KEEPER_TICK: Final = 1.0  # seconds between the session keeper's looks (renewal due? tombstones to sweep?)
TOMBSTONE_LINGER: Final = 5.0  # seconds a released claim stays visible to watchers before it is deleted
EVENTS_WAIT: Final = 10  # seconds a blocking query waits for a change before it is asked again
EVENTS_BACKOFF_MAX: Final = 2.0  # seconds between attempts while the agent is away
CLAIM_ATTEMPTS: Final = 5  # a claim transaction that lost a race is decided again on what won, this often
NODE_CHECK_REAP: Final = "1m"  # Consul's minimum: a critical (dead) node's service is removed after this
_PREFIX_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")


def parse_consul_url(url: str) -> tuple[str, int, str]:
    """consul://host[:port][/prefix] -> (host, port, prefix). The prefix names the KV folder and the service."""
    parts = urlsplit(url)
    if parts.scheme != "consul" or not parts.hostname:
        raise ValueError(f"expected consul://HOST:PORT[/PREFIX], got {redact_url(url)!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ValueError(f"bad port in consul registry URL {redact_url(url)!r}: {exc}") from None
    prefix = parts.path.strip("/") or DEFAULT_PREFIX
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"bad prefix {prefix!r} in consul registry URL: letters, digits, '-' and '_' only")
    return parts.hostname, port, prefix


@dataclass(frozen=True, slots=True)
class _Held:
    """A claim key as read from Consul: the claim, its lease deadline, whether it is a release tombstone."""

    claim: StreamClaim  # epoch = the key's CreateIndex
    modify_index: int
    expires: float
    released: bool

    @property
    def live(self) -> bool:
        return not self.released and self.expires > wall_clock()


class ConsulRegistry(Registry):
    def __init__(self, url: str, *, prefix: str | None = None) -> None:
        self.url = url
        self._host, self._port, url_prefix = parse_consul_url(url)
        self.prefix = prefix or url_prefix
        self._safe_url = redact_url(url)
        self._streams = f"{self.prefix}/streams/"
        self._client: Any = None  # consul.aio.Consul, made in the running loop (it owns an aiohttp session)
        self._closed = False
        self._session: str | None = None
        self._session_lock = asyncio.Lock()
        self._session_renewed = 0.0
        self._keeper: asyncio.Task[None] | None = None
        self._tombstones: dict[str, tuple[int, float]] = {}  # stream key -> (epoch, released at, monotonic)

    # -- connection --------------------------------------------------------------------------------

    def _api(self) -> Any:
        if self._closed:
            raise RegistryError(f"consul registry {self._safe_url}: used after close()")
        if self._client is None:
            with warnings.catch_warnings():
                # py-consul 1.8 passes arguments that aiohttp >= 3.10 deprecates; nothing we can change.
                warnings.filterwarnings("ignore", r"(ssl_context|verify_ssl) is deprecated", DeprecationWarning)
                self._client = consul.aio.Consul(host=self._host, port=self._port, connections_timeout=REQUEST_TIMEOUT)
        return self._client

    async def start(self) -> None:
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None and self._client is not None:
            # Destroying the session deletes whatever it still holds (behavior=delete): a clean stop leaves
            # nothing to lapse. Best effort: an unreachable agent lets the session time out instead.
            with contextlib.suppress(Exception):
                await self._client.session.destroy(session)
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn the client's failures into RegistryError (CancelledError passes through untouched)."""
        try:
            yield
        except RegistryError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            detail = str(exc) or type(exc).__name__
            raise RegistryError(f"consul registry {self._safe_url} unreachable during {what}: {detail}") from exc
        except (consul.ConsulException, ValueError, KeyError, TypeError, RuntimeError) as exc:
            # RuntimeError: aiohttp's "Session is closed" when close() ends a call in flight.
            raise RegistryError(f"consul registry {self._safe_url} failed {what}: {exc}") from exc

    async def ping(self) -> bool:
        try:
            with self._errors("ping"):
                return bool(await self._api().status.leader())
        except RegistryError:
            return False

    # -- nodes -------------------------------------------------------------------------------------

    def _service_id(self, node_id: str) -> str:
        return f"{self.prefix}-{node_id}"

    async def heartbeat(self, node: NodeInfo, ttl: float) -> None:
        service_id = self._service_id(node.id)
        check_id = f"{service_id}-ttl"
        meta = {
            "id": node.id,
            "role": node.role,
            "region": node.region,
            "rtmp": node.rtmp,
            "http": node.http,
            "viewers": str(node.load.viewers),
            "streams": str(node.load.streams),
            "bits_out": repr(float(node.load.bits_out)),
            "draining": "1" if node.draining else "0",
            "updated": repr(wall_clock()),
        }
        host, _, port = node.rtmp.rpartition(":")
        check = {
            "CheckID": check_id,
            "Name": "livecdn heartbeat",
            "TTL": f"{max(1, round(ttl * 1000))}ms",
            "Status": "passing",
            "DeregisterCriticalServiceAfter": NODE_CHECK_REAP,
        }
        api = self._api()
        with self._errors(f"heartbeat of node {node.id!r}"):
            # Re-registering updates the Meta (load, draining) at once; the pass resets the TTL (a
            # re-registration keeps a check's previous status, so a lapsed node needs the pass to come back).
            await api.agent.service.register(
                self.prefix,
                service_id=service_id,
                address=host.strip("[]") or None,
                port=int(port) if port.isdigit() else None,
                tags=[node.role, node.region],
                meta=meta,
                check=check,
            )
            await api.agent.check.ttl_pass(check_id)

    async def remove_node(self, node_id: str) -> None:
        with self._errors(f"removal of node {node_id!r}"):
            await self._api().agent.service.deregister(self._service_id(node_id))  # unknown ids: 404, fine

    async def nodes(self, role: str | None = None) -> list[NodeInfo]:
        with self._errors("node listing"):
            _, entries = await self._api().health.service(self.prefix, passing=True)
        result = []
        for entry in entries or []:
            meta = (entry.get("Service") or {}).get("Meta") or {}
            try:
                info = NodeInfo(
                    id=meta["id"],
                    role=meta["role"],
                    region=meta["region"],
                    rtmp=meta["rtmp"],
                    http=meta["http"],
                    load=NodeLoad(int(meta["viewers"]), int(meta["streams"]), float(meta["bits_out"])),
                    draining=meta["draining"] == "1",
                    updated=float(meta["updated"]),
                )
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("consul registry: skipping malformed service %r: %s", entry.get("Service"), exc)
                continue
            if role is None or info.role == role:
                result.append(info)
        return sorted(result, key=lambda n: n.id)

    # -- the session that holds this process's claims ----------------------------------------------

    async def _session_id(self) -> str:
        async with self._session_lock:
            if self._session is None:
                with self._errors("session creation"):
                    self._session = await self._api().session.create(
                        name=f"{self.prefix} claims", behavior="delete", ttl=SESSION_TTL, lock_delay=0
                    )
                self._session_renewed = time.monotonic()
            if self._keeper is None or self._keeper.done():
                self._keeper = asyncio.create_task(self._keep(), name="consul session keeper")
            assert self._session is not None
            return self._session

    def _session_lost(self, session: str) -> None:
        if self._session == session:
            log.warning("consul registry %s: session %s is gone; its claims are re-made", self._safe_url, session)
            self._session = None

    async def _keep(self) -> None:
        """Renews the session well within its TTL and deletes release tombstones once watchers saw them."""
        while True:
            await asyncio.sleep(KEEPER_TICK)
            session = self._session
            if session is not None and time.monotonic() - self._session_renewed >= SESSION_RENEW_EVERY:
                try:
                    with self._errors("session renewal"):
                        await self._api().session.renew(session)
                    self._session_renewed = time.monotonic()
                except RegistryError as exc:
                    if isinstance(exc.__cause__, consul.NotFound):
                        self._session_lost(session)  # invalidated (agent restarted, frozen past 2x TTL)
                    else:
                        log.debug("consul registry: session renewal failed (retrying): %s", exc)
            await self._sweep_tombstones()

    async def _sweep_tombstones(self) -> None:
        now = time.monotonic()
        for key, (epoch, released_at) in list(self._tombstones.items()):
            if now - released_at < TOMBSTONE_LINGER:
                continue
            try:
                _, held = await self._read(key)
                if held is not None and held.released and held.claim.epoch == epoch:
                    with self._errors(f"tombstone removal of {key!r}"):
                        await self._api().kv.delete(self._key(key), cas=held.modify_index)
            except RegistryError as exc:
                log.debug("consul registry: tombstone of %r stays for now: %s", key, exc)
                continue
            if self._tombstones.get(key, (None,))[0] == epoch:
                del self._tombstones[key]

    # -- streams -----------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return self._streams + key

    def _parse(self, entry: dict[str, Any]) -> _Held | None:
        try:
            data = json.loads(entry["Value"] or b"null")
            claim = StreamClaim(
                key=str(data["key"]),
                origin=str(data["origin"]),
                rtmp_url=str(data["rtmp_url"]),
                epoch=int(entry["CreateIndex"]),
                since=float(data["since"]),
            )
            return _Held(claim, int(entry["ModifyIndex"]), float(data["expires"]), bool(data.get("released")))
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("consul registry: skipping malformed claim %r: %s", entry.get("Key"), exc)
            return None

    async def _read(self, key: str) -> tuple[int, _Held | None]:
        """(the key's ModifyIndex, 0 when absent; the claim it holds, None when absent or unreadable)."""
        with self._errors(f"lookup of {key!r}"):
            _, entry = await self._api().kv.get(self._key(key))
        if not entry:
            return 0, None
        return int(entry["ModifyIndex"]), self._parse(entry)

    async def _read_all(self, index: int = 0, wait: int | None = None) -> tuple[int, list[_Held]]:
        timeout = None if wait is None else wait + wait / 16 + REQUEST_TIMEOUT  # Consul adds up to wait/16
        with self._errors("stream listing"):
            new_index, entries = await self._api().kv.get(
                self._streams,
                recurse=True,
                index=index or None,
                wait=f"{wait}s" if wait else None,
                connections_timeout=timeout,
            )
        held = [h for h in (self._parse(e) for e in entries or []) if h is not None]
        return int(new_index), held

    @staticmethod
    def _value(claim: StreamClaim, expires: float, *, released: float | None = None) -> bytes:
        data: dict[str, Any] = {
            "key": claim.key,
            "origin": claim.origin,
            "rtmp_url": claim.rtmp_url,
            "since": claim.since,
            "expires": expires,
        }
        if released is not None:
            data["released"] = released
        return json.dumps(data, separators=(",", ":")).encode()

    async def _txn(self, ops: list[dict[str, Any]], what: str) -> tuple[bool, Any]:
        """(committed, body) of a KV transaction; a rolled-back one (409) is not an error."""
        api = self._api()
        with self._errors(what):
            response = await api.http.put(lambda r: r, "/v1/txn", data=json.dumps(ops), headers=api.prepare_headers())
            if response.code not in (200, 409):
                raise consul.ConsulException(f"{response.code} {response.body}")
            return response.code == 200, json.loads(response.body)

    async def claim(
        self, key: str, origin: str, rtmp_url: str, ttl: float, *, take_over: int | None = None
    ) -> StreamClaim | None:
        for _ in range(CLAIM_ATTEMPTS):
            modify_index, held = await self._read(key)
            if held is not None and held.live and held.claim.origin != origin and held.claim.epoch != take_over:
                return None
            session = await self._session_id()
            since = wall_clock()
            draft = StreamClaim(key, origin, rtmp_url, 0, since)
            value = base64.b64encode(self._value(draft, since + ttl)).decode()
            path = self._key(key)
            guard: list[dict[str, Any]]
            if not modify_index:
                guard = [{"KV": {"Verb": "check-not-exists", "Key": path}}]
            else:  # free (expired, released, unreadable), ours, or taken over: replaced only while unchanged
                guard = [
                    {"KV": {"Verb": "check-index", "Key": path, "Index": modify_index}},
                    {"KV": {"Verb": "delete", "Key": path}},
                ]
            lock = {"KV": {"Verb": "lock", "Key": path, "Value": value, "Session": session}}
            committed, body = await self._txn([*guard, lock], f"claim of {key!r}")
            if committed:
                created = [r["KV"] for r in body.get("Results") or [] if (r.get("KV") or {}).get("Key") == path]
                if not created:
                    raise RegistryError(f"consul registry {self._safe_url}: claim of {key!r} returned no entry")
                return StreamClaim(key, origin, rtmp_url, int(created[-1]["CreateIndex"]), since)
            errors = " ".join(str(e.get("What", "")) for e in body.get("Errors") or [])
            if "session" in errors.lower():
                self._session_lost(session)
            # Otherwise another writer changed the key between our read and our write: decide again.
        return None

    async def renew(self, claim: StreamClaim, ttl: float) -> bool:
        for _ in range(3):
            _, held = await self._read(claim.key)
            if held is None or not held.live or held.claim.epoch != claim.epoch:
                return False
            value = self._value(held.claim, wall_clock() + ttl)
            with self._errors(f"renewal of {claim.key!r}"):
                # A plain check-and-set keeps the lock (the Session) and the CreateIndex: same epoch.
                if await self._api().kv.put(self._key(claim.key), value, cas=held.modify_index):
                    return True
        return False

    async def release(self, claim: StreamClaim) -> bool:
        for _ in range(3):
            _, held = await self._read(claim.key)
            if held is None or not held.live or held.claim.epoch != claim.epoch:
                return False
            now = wall_clock()
            value = self._value(held.claim, now, released=now)
            with self._errors(f"release of {claim.key!r}"):
                done = await self._api().kv.put(self._key(claim.key), value, cas=held.modify_index)
            if done:
                self._tombstones[claim.key] = (claim.epoch, time.monotonic())
                return True
        return False

    async def lookup(self, key: str) -> StreamClaim | None:
        _, held = await self._read(key)
        return held.claim if held is not None and held.live else None

    async def streams(self) -> list[StreamClaim]:
        _, held = await self._read_all()
        return sorted((h.claim for h in held if h.live), key=lambda c: c.key)

    # -- events ------------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[RegistryEvent]:
        """Changes of the claims, from blocking queries. The first answer is the baseline (no events); after
        an outage the next answer is diffed against the last one seen, so claims made meanwhile are reported.
        Ends at once when the registry is closed."""
        known: dict[str, _Held] | None = None
        index = 0
        backoff = Backoff(initial=0.1, maximum=EVENTS_BACKOFF_MAX)
        failing = False
        while not self._closed:
            try:
                new_index, held = await self._read_all(index, EVENTS_WAIT if index else None)
            except RegistryError as exc:
                if self._closed:
                    return
                if not failing:
                    log.warning("consul registry %s: event watch lost (retrying): %s", self._safe_url, exc)
                failing = True
                index = 0
                await asyncio.sleep(backoff.next_delay())
                continue
            if failing:
                log.info("consul registry %s: event watch restored", self._safe_url)
                failing = False
                backoff.reset()
            snapshot = {h.claim.key: h for h in held}
            if known is not None:
                for event in _changes(known, snapshot, new_index):
                    yield event
            known = snapshot
            # Consul's advice: an index that went backwards (a restored snapshot) starts over; never block on 0.
            index = 0 if new_index < index else max(new_index, 1)


def _changes(before: dict[str, _Held], after: dict[str, _Held], index: int) -> list[RegistryEvent]:
    """The events between two views of the claims, in the order they happened (by Raft index)."""
    found: list[tuple[int, int, RegistryEvent]] = []
    for key, now in after.items():
        claim = now.claim
        was = before.get(key)
        if was is None or was.claim.epoch != claim.epoch:
            found.append((claim.epoch, claim.epoch, RegistryEvent("publish", key, claim.origin, claim.epoch)))
            if now.released:  # claimed and released between two answers: the tombstone tells both
                found.append(
                    (now.modify_index, claim.epoch, RegistryEvent("unpublish", key, claim.origin, claim.epoch))
                )
        elif now.released and not was.released:
            found.append((now.modify_index, claim.epoch, RegistryEvent("unpublish", key, claim.origin, claim.epoch)))
    for key, was in before.items():
        if key not in after and not was.released:  # deleted (its session ended) without a tombstone seen
            claim = was.claim
            found.append((index, claim.epoch, RegistryEvent("unpublish", key, claim.origin, claim.epoch)))
    return [event for _, _, event in sorted(found, key=lambda item: (item[0], item[1]))]
