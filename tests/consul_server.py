"""A Consul stand-in for tests on machines that cannot run Consul (no binary in Debian or PyPI, no Docker).

It implements, after Consul's HTTP API documentation, exactly the endpoints the consul:// registry uses, on
127.0.0.1 in a thread of its own (its own event loop, so it outlives any one test's loop):

- ``/v1/status/leader``
- sessions: ``/v1/session/create`` (TTL between 10 s and 24 h, else 400; ``Behavior`` release|delete;
  ``LockDelay``), ``/v1/session/renew/:id`` (404 when gone), ``/v1/session/destroy/:id``,
  ``/v1/session/info/:id``. A TTL session is invalidated when it is not renewed for **2 x TTL** (Consul's
  leader applies that grace); invalidation releases or deletes its keys (behavior) and starts the keys'
  lock-delay, during which ``acquire``/``lock`` fail.
- KV: ``GET /v1/kv/:key`` (``recurse``; blocking ``index``+``wait``: the answer waits until the index of
  what was asked for passes ``index`` or ``wait`` runs out; ``X-Consul-Index`` on every answer, 404 with the
  index when nothing matches; deletions count through a graveyard, as in Consul), ``PUT`` (``cas``: 0 =
  create only, N = only while ModifyIndex is N; ``acquire``: false when another session holds the lock;
  ``release``; a plain set keeps the lock holder), ``DELETE`` (``cas``, ``recurse``; a check-and-set delete
  of a missing key answers true, as Consul does).
- ``PUT /v1/txn`` with the KV verbs get, set, cas, lock, unlock, check-index, check-not-exists,
  check-session, delete, delete-cas: all or nothing, one Raft index for the whole transaction, 409 with
  ``Errors`` when rolled back; write results carry the entry without its value.
- agent: ``/v1/agent/service/register`` (one service, its TTL checks; a re-registration keeps a check's
  status, as Consul does, and restarts its timer), ``/v1/agent/service/deregister/:id``,
  ``/v1/agent/check/pass/:id``; health: ``/v1/health/service/:name`` (``passing``). A TTL check goes
  critical when not passed within its TTL; a service critical past ``DeregisterCriticalServiceAfter``
  (at least 1 minute) is removed.

Not modelled (docs/CONSUL.md): ACLs, datacenters, consistency modes, Raft and leader changes, node health
checks bound to sessions (serfHealth), anti-entropy delay between an agent and the catalog (here they are
one), ``acquire`` combined with ``cas`` (our client never combines them), blocking on anything but KV.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from common.system import free_port
from tests.containers import CONSUL_IMAGE

log = logging.getLogger(__name__)

MIN_SESSION_TTL = 10.0
MAX_SESSION_TTL = 86400.0
SESSION_TTL_MULTIPLIER = 2  # Consul invalidates a TTL session only after twice its TTL
MIN_DEREGISTER_AFTER = 60.0
DEFAULT_LOCK_DELAY = 15.0
MAX_WAIT = 600.0  # Consul caps blocking waits at 10 minutes
DEFAULT_WAIT = 300.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """A Go duration ("300ms", "1m30s") or a number of nanoseconds, in seconds."""
    if isinstance(value, (int, float)):
        return float(value) / 1e9
    text = str(value).strip()
    if text in ("", "0"):
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"invalid duration {text!r}")
    return total


def _field(body: dict[str, Any], name: str, default: Any = None) -> Any:
    """Consul decodes JSON keys case-insensitively (py-consul sends lower case)."""
    for key, value in body.items():
        if key.lower() == name.lower():
            return value
    return default


class TxnError(Exception):
    pass


@dataclass
class Session:
    id: str
    name: str
    ttl: float
    behavior: str
    lock_delay: float
    create_index: int
    deadline: float  # monotonic; inf without a TTL


@dataclass
class Check:
    id: str
    service_id: str
    ttl: float
    status: str
    deregister_after: float
    deadline: float
    critical_since: float | None = None


@dataclass
class State:
    index: int = 1
    kv: dict[str, dict[str, Any]] = field(default_factory=dict)
    graveyard: dict[str, int] = field(default_factory=dict)  # key -> index of its deletion
    lock_delays: dict[str, float] = field(default_factory=dict)  # key -> monotonic time the delay ends
    sessions: dict[str, Session] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: dict[str, Check] = field(default_factory=dict)


class ConsulTestServer:
    """``with ConsulTestServer() as consul: ... consul.url ...``; stop()/start() keep the port and the data (a
    server restarted on its data directory: indexes go on); start(fresh=True) loses it; freeze() makes every
    request hang, as a stopped process would."""

    kind = "in-repo Consul test server (tests/consul_server.py)"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.requests: dict[str, int] = {}  # "METHOD /v1/route" -> count, for tests that check how it was used
        self._state = State()
        self._frozen = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._changed: asyncio.Condition | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"consul://127.0.0.1:{self.port}"

    # -- running -----------------------------------------------------------------------------------

    def start(self, *, fresh: bool = False) -> ConsulTestServer:
        if self._thread is not None:
            return self
        if fresh:
            self._state = State()
        self._frozen.clear()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
            finally:
                ready.set()
            if not failure:
                loop.run_forever()
            loop.close()

        self._ready = ready
        self._thread = threading.Thread(target=run, name=f"consul test server :{self.port}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            self._thread = None
            raise RuntimeError(f"consul test server could not start on port {self.port}") from failure[0]
        return self

    async def _serve(self) -> None:
        self._changed = asyncio.Condition()
        app = web.Application()
        app.middlewares.append(self._middleware)
        r = app.router
        r.add_get("/v1/status/leader", self._leader)
        r.add_put("/v1/session/create", self._session_create)
        r.add_put("/v1/session/renew/{id}", self._session_renew)
        r.add_put("/v1/session/destroy/{id}", self._session_destroy)
        r.add_get("/v1/session/info/{id}", self._session_info)
        r.add_get("/v1/kv/{key:.*}", self._kv_get)
        r.add_put("/v1/kv/{key:.*}", self._kv_put)
        r.add_delete("/v1/kv/{key:.*}", self._kv_delete)
        r.add_put("/v1/txn", self._txn)
        r.add_put("/v1/agent/service/register", self._service_register)
        r.add_put("/v1/agent/service/deregister/{id}", self._service_deregister)
        r.add_put("/v1/agent/check/pass/{id}", self._check_pass)
        r.add_get("/v1/health/service/{name}", self._health_service)
        # A stop must not wait for blocking queries in flight: it cuts them, as a dying agent would.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        asyncio.get_running_loop().create_task(self._ticker())

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._frozen.clear()

        async def shutdown() -> None:
            assert self._runner is not None
            await self._runner.cleanup()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = self._loop = None

    def freeze(self) -> None:
        """Accept connections but answer nothing (a hung agent)."""
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def __enter__(self) -> ConsulTestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def call(self, func: Callable[[State], Any]) -> Any:
        """Run ``func`` on the server's state in its thread (for tests that look inside)."""
        assert self._loop is not None

        async def run() -> Any:
            return func(self._state)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(5)

    # -- plumbing ----------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = f"{request.method} {route.canonical if route is not None else request.path}"
        self.requests[name] = self.requests.get(name, 0) + 1
        while self._frozen.is_set():  # noqa: ASYNC110 - set from another thread: no asyncio.Event
            await asyncio.sleep(0.05)
        self._expire()
        try:
            return await handler(request)
        except (ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
            return web.Response(status=400, text=f"Request decode failed: {exc}")

    def _next_index(self) -> int:
        self._state.index += 1
        return self._state.index

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def _ticker(self) -> None:
        """Expiry happens on the server's clock, also while nobody asks (it wakes blocking queries)."""
        while True:
            await asyncio.sleep(0.05)
            if self._expire():
                await self._notify()

    def _expire(self) -> bool:
        now = time.monotonic()
        changed = False
        for session in list(self._state.sessions.values()):
            if session.deadline <= now:
                self._invalidate(session.id)
                changed = True
        for check in self._state.checks.values():
            if check.status != "critical" and check.deadline <= now:
                check.status = "critical"
                check.critical_since = now
        for check in list(self._state.checks.values()):
            if check.critical_since is not None and now - check.critical_since >= check.deregister_after:
                self._state.services.pop(check.service_id, None)
                self._state.checks = {k: c for k, c in self._state.checks.items() if c.service_id != check.service_id}
        return changed

    def _invalidate(self, session_id: str) -> None:
        session = self._state.sessions.pop(session_id, None)
        if session is None:
            return
        index = self._next_index()
        for key, entry in list(self._state.kv.items()):
            if entry.get("Session") != session_id:
                continue
            if session.lock_delay > 0:
                self._state.lock_delays[key] = time.monotonic() + session.lock_delay
            if session.behavior == "delete":
                del self._state.kv[key]
                self._state.graveyard[key] = index
            else:
                entry.pop("Session", None)
                entry["ModifyIndex"] = index

    @staticmethod
    def _json(data: Any, index: int | None = None, status: int = 200) -> web.Response:
        headers = {"X-Consul-Index": str(index)} if index is not None else {}
        return web.json_response(data, status=status, headers=headers)

    # -- status, sessions --------------------------------------------------------------------------

    async def _leader(self, request: web.Request) -> web.Response:
        return web.json_response("127.0.0.1:8300")

    async def _session_create(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        body = body or {}
        ttl_text = _field(body, "TTL", "")
        ttl = parse_duration(ttl_text) if ttl_text else 0.0
        if ttl and not MIN_SESSION_TTL <= ttl <= MAX_SESSION_TTL:
            return web.Response(status=400, text=f"Invalid Session TTL '{ttl_text}', must be between [10s=24h0m0s]")
        behavior = _field(body, "Behavior", "release") or "release"
        if behavior not in ("release", "delete"):
            return web.Response(status=400, text=f"Invalid Behavior setting '{behavior}'")
        delay = _field(body, "LockDelay")
        session = Session(
            id=str(uuid.uuid4()),
            name=str(_field(body, "Name", "")),
            ttl=ttl,
            behavior=behavior,
            lock_delay=DEFAULT_LOCK_DELAY if delay is None else parse_duration(delay),
            create_index=self._next_index(),
            deadline=time.monotonic() + ttl * SESSION_TTL_MULTIPLIER if ttl else float("inf"),
        )
        self._state.sessions[session.id] = session
        return web.json_response({"ID": session.id})

    def _session_view(self, session: Session) -> dict[str, Any]:
        return {
            "ID": session.id,
            "Name": session.name,
            "TTL": f"{session.ttl:g}s" if session.ttl else "",
            "Behavior": session.behavior,
            "LockDelay": int(session.lock_delay * 1e9),
            "CreateIndex": session.create_index,
            "ModifyIndex": session.create_index,
        }

    async def _session_renew(self, request: web.Request) -> web.Response:
        session = self._state.sessions.get(request.match_info["id"])
        if session is None:
            return web.Response(status=404, text=f"Session id '{request.match_info['id']}' not found")
        if session.ttl:
            session.deadline = time.monotonic() + session.ttl * SESSION_TTL_MULTIPLIER
        return self._json([self._session_view(session)], self._state.index)

    async def _session_destroy(self, request: web.Request) -> web.Response:
        self._invalidate(request.match_info["id"])
        await self._notify()
        return web.json_response(True)

    async def _session_info(self, request: web.Request) -> web.Response:
        session = self._state.sessions.get(request.match_info["id"])
        return self._json([self._session_view(session)] if session else [], self._state.index)

    # -- KV ----------------------------------------------------------------------------------------

    def _kv_index(self, key: str, recurse: bool) -> int:
        state = self._state
        match: Callable[[str], bool] = (lambda k: k.startswith(key)) if recurse else (lambda k: k == key)
        indexes = [e["ModifyIndex"] for k, e in state.kv.items() if match(k)]
        indexes += [i for k, i in state.graveyard.items() if match(k)]
        if indexes:
            return max(indexes)
        return max([1, *(e["ModifyIndex"] for e in state.kv.values()), *state.graveyard.values()])

    @staticmethod
    def _entry_view(entry: dict[str, Any], with_value: bool = True) -> dict[str, Any]:
        view = {k: v for k, v in entry.items() if k != "Value"}
        value = entry.get("Value")
        view["Value"] = base64.b64encode(value).decode() if with_value and value is not None else None
        return view

    async def _kv_get(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        recurse = "recurse" in request.query
        wanted = int(request.query.get("index", "0") or 0)
        if wanted:
            wait = min(parse_duration(request.query.get("wait", "")) or DEFAULT_WAIT, MAX_WAIT)
            deadline = time.monotonic() + wait + wait / 16 * 0.5  # Consul adds up to wait/16 of jitter
            assert self._changed is not None
            async with self._changed:
                while self._kv_index(key, recurse) <= wanted:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        await asyncio.wait_for(self._changed.wait(), left)
                    except TimeoutError:
                        break
        index = self._kv_index(key, recurse)
        if recurse:
            found = [self._entry_view(e) for k, e in sorted(self._state.kv.items()) if k.startswith(key)]
        else:
            found = [self._entry_view(self._state.kv[key])] if key in self._state.kv else []
        if not found:
            return web.Response(status=404, headers={"X-Consul-Index": str(index)})
        return self._json(found, index)

    def _set(self, state: State, key: str, value: bytes | None, index: int, session: str | None = None) -> None:
        """A write: create or update; a plain set keeps the lock holder, a lock sets it."""
        entry = state.kv.get(key)
        if entry is None:
            entry = {"Key": key, "CreateIndex": index, "Flags": 0, "LockIndex": 0}
            state.kv[key] = entry
            state.graveyard.pop(key, None)
        entry["Value"] = value
        entry["ModifyIndex"] = index
        if session is not None:
            if entry.get("Session") != session:
                entry["LockIndex"] = entry.get("LockIndex", 0) + 1
            entry["Session"] = session

    def _lock_error(self, state: State, key: str, session: str) -> str | None:
        if session not in state.sessions:
            return f'invalid session "{session}"'
        if state.lock_delays.get(key, 0.0) > time.monotonic():
            return f'key "{key}" is in its lock-delay'
        holder = state.kv.get(key, {}).get("Session")
        if holder is not None and holder != session:
            return f'failed to lock key "{key}": lock is already held'
        return None

    def _delete(self, state: State, key: str, index: int) -> None:
        if state.kv.pop(key, None) is not None:
            state.graveyard[key] = index

    async def _kv_put(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        value = await request.read()
        query = request.query
        state = self._state
        entry = state.kv.get(key)
        if "acquire" in query:
            session = query["acquire"]
            if session not in state.sessions:
                return web.Response(status=500, text=f'invalid session "{session}"')
            if self._lock_error(state, key, session) is not None:
                return web.json_response(False)
            self._set(state, key, value, self._next_index(), session)
        elif "release" in query:
            if entry is None or entry.get("Session") != query["release"]:
                return web.json_response(False)
            index = self._next_index()
            self._set(state, key, value, index)
            entry.pop("Session", None)
        else:
            if "cas" in query:
                cas = int(query["cas"])
                if (cas == 0 and entry is not None) or (cas != 0 and (entry is None or entry["ModifyIndex"] != cas)):
                    return web.json_response(False)
            self._set(state, key, value, self._next_index())
        await self._notify()
        return web.json_response(True)

    async def _kv_delete(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        state = self._state
        if "recurse" in request.query:
            index = self._next_index()
            for name in [k for k in state.kv if k.startswith(key)]:
                self._delete(state, name, index)
        else:
            entry = state.kv.get(key)
            if "cas" in request.query:
                cas = int(request.query["cas"])
                if entry is None:
                    return web.json_response(True)  # as Consul: nothing to delete counts as done
                if cas == 0 or entry["ModifyIndex"] != cas:
                    return web.json_response(False)
            self._delete(state, key, self._next_index())
        await self._notify()
        return web.json_response(True)

    async def _txn(self, request: web.Request) -> web.Response:
        ops = await request.json()
        trial = copy.deepcopy(self._state)
        index = trial.index + 1
        trial.index = index
        results: list[dict[str, Any]] = []
        for number, op in enumerate(ops):
            kv = _field(op, "KV")
            if kv is None:
                return web.Response(status=400, text="only KV operations are supported by this test server")
            try:
                result = self._txn_op(trial, kv, index)
            except TxnError as exc:
                return self._json({"Results": None, "Errors": [{"OpIndex": number, "What": str(exc)}]}, status=409)
            if result is not None:
                results.append({"KV": result})
        self._state = trial
        await self._notify()
        return self._json({"Results": results, "Errors": None}, index)

    def _txn_op(self, state: State, kv: dict[str, Any], index: int) -> dict[str, Any] | None:
        verb = str(_field(kv, "Verb"))
        key = str(_field(kv, "Key"))
        raw = _field(kv, "Value")
        value = base64.b64decode(raw) if raw is not None else None
        want = int(_field(kv, "Index", 0) or 0)
        session = _field(kv, "Session")
        entry = state.kv.get(key)
        if verb == "get":
            if entry is None:
                raise TxnError(f'key "{key}" doesn\'t exist')
            return self._entry_view(entry)
        if verb == "check-index":
            if entry is None or entry["ModifyIndex"] != want:
                raise TxnError(f"current modify index {entry['ModifyIndex'] if entry else 0} != {want}")
            return None
        if verb == "check-not-exists":
            if entry is not None:
                raise TxnError(f'key "{key}" exists')
            return None
        if verb == "check-session":
            if entry is None or entry.get("Session") != session:
                raise TxnError(f'key "{key}" is not locked by session "{session}"')
            return None
        if verb in ("delete", "delete-cas"):
            if verb == "delete-cas" and entry is not None and entry["ModifyIndex"] != want:
                raise TxnError(f'failed to delete key "{key}", index is stale')
            self._delete(state, key, index)
            return None
        if verb == "set":
            self._set(state, key, value, index)
        elif verb == "cas":
            if (want == 0 and entry is not None) or (want != 0 and (entry is None or entry["ModifyIndex"] != want)):
                raise TxnError(f'failed to set key "{key}", index is stale')
            self._set(state, key, value, index)
        elif verb == "lock":
            error = self._lock_error(state, key, str(session))
            if error is not None:
                raise TxnError(error)
            self._set(state, key, value, index, str(session))
        elif verb == "unlock":
            if entry is None or entry.get("Session") != session:
                raise TxnError(f'failed to unlock key "{key}": lock isn\'t held, or is held by another session')
            self._set(state, key, value, index)
            state.kv[key].pop("Session", None)
        else:
            raise TxnError(f'unknown KV verb "{verb}"')
        return self._entry_view(state.kv[key], with_value=False)

    # -- agent services and health -----------------------------------------------------------------

    async def _service_register(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = str(_field(body, "Name"))
        service_id = str(_field(body, "ID") or name)
        meta = _field(body, "Meta") or {}
        if len(meta) > 64 or any(len(k) > 128 or len(str(v)) > 512 for k, v in meta.items()):
            return web.Response(status=400, text="Invalid Service Meta: too many pairs, or a key or value too long")
        definitions = list(_field(body, "Checks") or [])
        if _field(body, "Check"):
            definitions.append(_field(body, "Check"))
        now = time.monotonic()
        old = {c.id: c for c in self._state.checks.values() if c.service_id == service_id}
        self._state.checks = {k: c for k, c in self._state.checks.items() if c.service_id != service_id}
        for number, definition in enumerate(definitions, 1):
            ttl_text = _field(definition, "TTL")
            if not ttl_text:
                return web.Response(status=400, text="this test server supports TTL checks only")
            check_id = str(_field(definition, "CheckID") or f"service:{service_id}:{number}")
            previous = old.get(check_id)
            ttl = parse_duration(ttl_text)
            reap = _field(definition, "DeregisterCriticalServiceAfter")
            self._state.checks[check_id] = Check(
                id=check_id,
                service_id=service_id,
                ttl=ttl,
                # A re-registration keeps the check's status (Consul restores it), and restarts its timer.
                status=previous.status if previous else str(_field(definition, "Status") or "critical"),
                deregister_after=max(MIN_DEREGISTER_AFTER, parse_duration(reap)) if reap else float("inf"),
                deadline=now + ttl,
                critical_since=previous.critical_since if previous else None,
            )
        self._state.services[service_id] = {
            "ID": service_id,
            "Service": name,
            "Tags": list(_field(body, "Tags") or []),
            "Address": str(_field(body, "Address") or ""),
            "Port": int(_field(body, "Port") or 0),
            "Meta": {str(k): str(v) for k, v in meta.items()},
        }
        return web.Response(text="")

    async def _service_deregister(self, request: web.Request) -> web.Response:
        service_id = request.match_info["id"]
        if self._state.services.pop(service_id, None) is None:
            return web.Response(status=404, text=f'Unknown service ID "{service_id}"')
        self._state.checks = {k: c for k, c in self._state.checks.items() if c.service_id != service_id}
        return web.Response(text="")

    async def _check_pass(self, request: web.Request) -> web.Response:
        check = self._state.checks.get(request.match_info["id"])
        if check is None:
            return web.Response(status=404, text=f'Unknown check ID "{request.match_info["id"]}"')
        check.status = "passing"
        check.critical_since = None
        check.deadline = time.monotonic() + check.ttl
        return web.Response(text="")

    async def _health_service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        entries = []
        for service_id, service in sorted(self._state.services.items()):
            if service["Service"] != name:
                continue
            checks = [
                {"Node": "consul-test", "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing"}
            ]
            checks += [
                {"Node": "consul-test", "CheckID": c.id, "Name": "TTL", "Status": c.status, "ServiceID": service_id}
                for c in self._state.checks.values()
                if c.service_id == service_id
            ]
            if "passing" in request.query and any(c["Status"] != "passing" for c in checks):
                continue
            entries.append(
                {"Node": {"Node": "consul-test", "Address": "127.0.0.1"}, "Service": service, "Checks": checks}
            )
        return self._json(entries, self._state.index)


@dataclass
class ConsulTarget:
    url: str  # consul://HOST:PORT for the registry
    address: str  # HOST:PORT of its HTTP API
    kind: str  # which Consul this is, for the test log
    server: ConsulTestServer | None = None  # the in-repo server, when that is what runs


def consul_choice() -> str:
    """Which Consul the tests use here, without starting it: a real agent (CONSUL_HTTP_ADDR), a container
    (a Docker engine answers), else the in-repo test server."""
    from tests.containers import docker_engine

    address = os.environ.get("CONSUL_HTTP_ADDR")
    if address:
        return f"the Consul agent at {address} (CONSUL_HTTP_ADDR)"
    why_not = docker_engine()
    if why_not is None:
        return f"a Consul container ({CONSUL_IMAGE}, testcontainers)"
    return f"{ConsulTestServer.kind}: CONSUL_HTTP_ADDR is not set and {why_not}"


@contextlib.contextmanager
def consul_for_tests() -> Iterator[ConsulTarget]:
    """The Consul of consul_choice(), started for the duration; says which in the log."""
    from tests.containers import consul_container, docker_engine

    kind = consul_choice()
    log.warning("consul registry tests run against %s", kind)
    print(f"\nconsul registry tests run against {kind}", file=sys.stderr)
    address = os.environ.get("CONSUL_HTTP_ADDR")
    if address:
        host_port = address.split("://", 1)[-1].rstrip("/")
        yield ConsulTarget(f"consul://{host_port}", host_port, kind)
    elif docker_engine() is None:
        with consul_container() as host_port:
            yield ConsulTarget(f"consul://{host_port}", host_port, kind)
    else:
        with ConsulTestServer() as server:
            yield ConsulTarget(server.url, server.address, kind, server)
