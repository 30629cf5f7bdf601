"""A node of several processes (``livecdn edge --workers N``): the supervisor of its worker processes.

The supervisor serves no viewer itself. It
- resolves the node's public addresses (port 0 becomes one port) and holds them bound, never listening (so
  the kernel hands it no connection), while it runs; every worker listens on them with SO_REUSEPORT;
- opens two private loopback listening sockets per worker, RTMP for its sibling workers' pulls and HTTP
  for its own stats and metrics, and keeps them open, so a restarted worker gets the same ports;
- starts the workers (the command it is given, e.g. ``python -m livecdn edge --worker I``), each with its
  WorkerPlan in the environment, in a session of its own (a terminal's Ctrl-C reaches the supervisor,
  which stops them);
- keeps the node's one registry record: the public addresses, node id and region, and the load summed
  over the workers, asked from them at each heartbeat;
- drains the node as one: SIGTERM, or a worker telling it (DRAIN_SIGNAL) because it got SIGTERM or
  ``POST /v1/drain``, marks the record draining at once and tells every worker, each of which keeps its
  viewers until they leave or ``drain_timeout`` passes, then exits; the supervisor exits 0 when all have.
  SIGINT, or a second SIGTERM, stops every worker at once;
- restarts a worker that exits on its own, at most MAX_RESTARTS times in RESTART_WINDOW seconds; past
  that it stops the node and exits 1, saying why.
A worker whose supervisor dies (even by SIGKILL) is stopped by the kernel (WorkerPlan.exit_with_supervisor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

from common.redact import redact_url
from common.registry import NodeInfo, NodeLoad, Registry, open_registry
from common.runtime.config import HostPort, NodeSettings
from common.runtime.heartbeat import Heartbeat, node_record
from common.runtime.merge import merge_stats
from common.runtime.role import Addresses
from common.runtime.tasks import BackgroundTasks
from common.runtime.workerplan import DRAIN_SIGNAL, LOOPBACK, PLAN_ENV, WorkerPlan, settings_document
from common.runtime.workerview import WorkerView

log = logging.getLogger(__name__)

MAX_RESTARTS: Final = 5  # worker restarts allowed within RESTART_WINDOW; one more and the node stops
RESTART_WINDOW: Final = 60.0
RESTART_DELAY: Final = 0.5  # seconds before a worker that exited is started again
DRAIN_SLACK: Final = 10.0  # seconds past drain_timeout before workers still draining are stopped
STOP_TIMEOUT: Final = 10.0  # seconds stopping workers get before SIGKILL
READY_POLL: Final = 0.1  # seconds between looks at starting workers
PRIVATE_BACKLOG: Final = 1024

Process = asyncio.subprocess.Process


class SupervisorError(Exception):
    """The node cannot start: the message says why (a port in use...)."""


class RestartBudget:
    """At most ``limit`` restarts within any ``window`` seconds."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._times: deque[float] = deque(maxlen=limit)

    def allow(self) -> bool:
        now = self.clock()
        if len(self._times) == self._times.maxlen and now - self._times[0] < self.window:
            return False
        self._times.append(now)
        return True


def reserve_port(address: HostPort) -> tuple[socket.socket, HostPort]:
    """Hold a public address for the node's workers: a socket bound with SO_REUSEPORT that never listens.
    Port 0 becomes the one port every worker binds."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        if address.port:
            # A plain bind fails where anything listens, even the workers of another node, which a
            # SO_REUSEPORT bind of the same user would silently join.
            with socket.socket(family) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((address.host, address.port))
        sock = socket.socket(family)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address.host, address.port))
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise SupervisorError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    return sock, HostPort(address.host, int(sock.getsockname()[1]))


def private_listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET)
    try:
        sock.bind((LOOPBACK, 0))
        sock.listen(PRIVATE_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    def __init__(
        self,
        settings: NodeSettings,
        role: str,
        workers: int,
        command: Callable[[int], Sequence[str]],
        registry: Registry | None = None,
    ) -> None:
        if workers < 2:
            raise ValueError(f"a supervisor runs 2 workers or more, not {workers}")
        self.settings = settings
        self.role = role
        self.count = workers
        self.command = command  # the command line of worker I
        self.registry = registry if registry is not None else open_registry(settings.registry)
        self.procs: list[Process | None] = [None] * workers
        self.draining = False
        self.stopping = False
        self.failure: str | None = None
        self.budget = RestartBudget(MAX_RESTARTS, RESTART_WINDOW)
        self.addresses = Addresses(settings)
        self.plans: list[WorkerPlan] = []
        self.view = WorkerView(())
        self.heartbeat = Heartbeat(self.registry, settings, self._record)
        self._deadlines = BackgroundTasks()

    @property
    def ending(self) -> bool:
        return self.draining or self.stopping

    async def run(self) -> int:
        """Run the node until its workers have all exited: 0 after a drain or a stop, 1 when they kept failing.
        SupervisorError when it cannot start."""
        with contextlib.ExitStack() as held:
            self._plan(held)
            self._handle_signals()
            await self.registry.start()
            keepers = [asyncio.create_task(self._keep(index), name=f"worker {index}") for index in range(self.count)]
            try:
                if await self._until_ready(keepers):
                    print(self.banner(), flush=True)
                    async with self.heartbeat.running():
                        await asyncio.gather(*keepers)
                else:
                    await asyncio.gather(*keepers)
            finally:
                await self._stop_workers(keepers)
                await self._deadlines.cancel_all()
                await self.view.close()
                await self.registry.close()
                self._release_signals()
        if self.failure is not None:
            log.error("%s", self.failure)
            return 1
        log.info("every worker has exited")
        return 0

    # -- start ---------------------------------------------------------------------------------------

    def _plan(self, held: contextlib.ExitStack) -> None:
        rtmp_reserved, rtmp = reserve_port(self.settings.rtmp)
        held.callback(rtmp_reserved.close)
        http_reserved, http = reserve_port(self.settings.http)
        held.callback(http_reserved.close)
        self.settings = self.settings.model_copy(update={"rtmp": rtmp, "http": http})
        self.addresses = Addresses(self.settings)
        private: list[tuple[socket.socket, socket.socket]] = []
        for _ in range(self.count):
            pair = (private_listener(), private_listener())
            for sock in pair:
                held.callback(sock.close)
            private.append(pair)
        rtmp_ports = tuple(int(r.getsockname()[1]) for r, _ in private)
        http_ports = tuple(int(h.getsockname()[1]) for _, h in private)
        node_secret = secrets.token_urlsafe(32)
        document = settings_document(self.settings)
        self.plans = [
            WorkerPlan(index, os.getpid(), node_secret, rtmp_ports, http_ports, r.fileno(), h.fileno(), document)
            for index, (r, h) in enumerate(private)
        ]
        self.view = WorkerView(http_ports)

    def _handle_signals(self) -> None:
        loop = asyncio.get_running_loop()
        sigterms = 0

        def terminate() -> None:
            # Counted, not inferred from a drain under way: a worker may have begun one (systemd signals
            # every process of a unit at once).
            nonlocal sigterms
            sigterms += 1
            if sigterms > 1:
                self.stop("a second SIGTERM")
            else:
                self.drain("SIGTERM")

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, terminate)
            loop.add_signal_handler(signal.SIGINT, self.stop, "SIGINT")
            loop.add_signal_handler(DRAIN_SIGNAL, self.drain, "a worker began to drain")

    def _release_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, DRAIN_SIGNAL):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)

    async def _until_ready(self, keepers: Sequence[asyncio.Task[None]]) -> bool:
        """Whether every worker answers (then it listens on every port): the record is not announced before."""
        while not self.ending and not all(keeper.done() for keeper in keepers):
            if all(stats is not None for stats in await self.view.worker_stats()):
                return True
            await asyncio.sleep(READY_POLL)
        return False

    # -- the workers ---------------------------------------------------------------------------------

    async def _keep(self, index: int) -> None:
        """Run worker ``index`` until the node ends, starting it again when it exits on its own."""
        while not self.ending:
            try:
                proc = await self._spawn(index)
            except OSError as exc:
                log.error("worker %d could not be started: %s", index, exc)
            else:
                self.procs[index] = proc
                if self.ending:  # a drain or a stop began while it started
                    self._tell(proc)
                code = await proc.wait()
                self.procs[index] = None
                if self.ending:
                    log.info("worker %d (pid %d) exited (%s)", index, proc.pid, describe_exit(code))
                    return
                log.error("worker %d (pid %d) exited on its own (%s)", index, proc.pid, describe_exit(code))
            if not self.budget.allow():
                self.failure = (
                    f"worker processes failed more than {MAX_RESTARTS} times within {RESTART_WINDOW:g}s "
                    f"(the last: worker {index}); stopping the node. Their log lines above say why."
                )
                self.stop("workers keep failing")
                return
            await asyncio.sleep(RESTART_DELAY)
            if not self.ending:
                log.warning("restarting worker %d", index)

    async def _spawn(self, index: int) -> Process:
        plan = self.plans[index]
        return await asyncio.create_subprocess_exec(
            *self.command(index),
            env={**os.environ, PLAN_ENV: plan.to_env()},
            pass_fds=(plan.rtmp_fd, plan.http_fd),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _tell(self, proc: Process) -> None:
        """Pass the node's state on to one worker: stop at once, or drain."""
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT if self.stopping else DRAIN_SIGNAL)

    def _live(self) -> list[Process]:
        return [proc for proc in self.procs if proc is not None and proc.returncode is None]

    # -- drain and stop ------------------------------------------------------------------------------

    def drain(self, reason: str) -> None:
        if self.ending:
            return
        self.draining = True
        self.heartbeat.now()  # the router passes the node over from now on
        log.warning(
            "draining (%s): every worker keeps its viewers until they leave or for %gs",
            reason,
            self.settings.drain_timeout,
            extra={"event": "drain"},
        )
        for proc in self._live():
            self._tell(proc)
        self._deadlines.spawn(self._drain_deadline(), name="drain deadline")

    def stop(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.warning("stopping every worker (%s)", reason)
        for proc in self._live():
            self._tell(proc)
        self._deadlines.spawn(self._kill_deadline(), name="stop deadline")

    async def _drain_deadline(self) -> None:
        # Each worker ends its own drain at drain_timeout; this only catches one that does not.
        await asyncio.sleep(self.settings.drain_timeout + DRAIN_SLACK)
        self.stop(f"still draining {DRAIN_SLACK:g}s past drain_timeout")

    async def _kill_deadline(self) -> None:
        await asyncio.sleep(STOP_TIMEOUT)
        for proc in self._live():
            log.error("worker pid %d did not stop within %gs: killing it", proc.pid, STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    async def _stop_workers(self, keepers: Sequence[asyncio.Task[None]]) -> None:
        """However run() ends (even cancelled, or failing), no worker outlives it."""
        if not all(keeper.done() for keeper in keepers):
            self.stop("the supervisor is exiting")
            await asyncio.gather(*keepers, return_exceptions=True)
        for proc in self._live():  # a keeper cancelled while its worker ran
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    # -- the node's record ---------------------------------------------------------------------------

    async def _record(self) -> NodeInfo:
        merged = merge_stats(await self.view.worker_stats())
        node = merged["node"]
        load = NodeLoad(
            viewers=int(node.get("viewers", 0)), streams=len(merged["streams"]), bits_out=round(node.get("bits_out", 0))
        )
        return node_record(self.settings, self.role, self.addresses, load, self.draining or bool(node.get("draining")))

    def banner(self) -> str:
        urls = self.addresses
        pids = ", ".join(str(proc.pid) for proc in self._live())
        return "\n".join(
            [
                f"livecdn {self.role} {self.settings.node_id} (region {self.settings.region}, "
                f"registry {redact_url(self.registry.url)}): {self.count} worker processes (pids {pids})",
                f"  play from:  {urls.rtmp_url()}   or   {urls.http_url('/live/STREAM.flv')}",
                f"  LL-HLS:     {urls.http_url('/live/STREAM.m3u8')}",
                f"  stats:      {urls.http_url('/v1/stats')}   (the whole node)",
            ]
        )
