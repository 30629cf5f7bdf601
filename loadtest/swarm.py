"""The viewer swarm: thousands of RTMP / HTTP-FLV viewers in one asyncio process (``run_swarm``).

The viewers themselves (counting and probe viewers, one shared scratch buffer) are in ``loadtest.viewers``;
this module ramps them up, measures the steady interval after the ramp, prints progress and reports.

Definitions used by the report (first frame and lag: see ``loadtest.probe``):

* **measuring interval**: from the moment the ramp completes (every viewer attempt has either started
  playing or failed) to the end of the run. delivered/expected = bytes received by counting viewers that
  were playing at the start of the interval, during it / (those viewers x expected bitrate x interval).
  Expected bitrate: ``bitrate_kbps`` if given, else the median over probes of media payload bytes over
  the span of media timestamps they received (interval frames; all frames if the interval is too short).
  Received bytes are wire bytes (RTMP chunk headers, FLV tag headers, HTTP chunk framing: ~1% at a few
  Mbit/s), so a fully fed swarm reads slightly above 1.0. ``SO_RCVLOWAT`` leaves up to rcvlowat bytes per
  viewer unread in the kernel at any moment; at both ends of the interval those are added (``FIONREAD``),
  so the count is exact rather than quantized to rcvlowat-sized reads.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections import Counter
from typing import Any, Final, TextIO

from common.system import raise_fd_limit
from loadtest.publisher import EPOCH_FIELD
from loadtest.stats import delivered_ratio, percentile
from loadtest.swarm_config import SwarmConfig, ViewerSpec, plan_viewers
from loadtest.swarm_report import SwarmReport
from loadtest.swarm_state import SCRATCH_BYTES, SwarmState
from loadtest.viewers import (
    CONNECTING,
    FlvSwarmViewer,
    RtmpSwarmViewer,
    SwarmViewer,
    ViewerFailed,
    os_error_reason,
)

FD_MARGIN: Final = 64  # file descriptors kept free beyond one per viewer


class _SwarmRun:
    """One run: ramps the viewers up, marks the measuring interval, prints progress, builds the report."""

    def __init__(self, config: SwarmConfig, progress: bool, out: TextIO) -> None:
        self.config = config
        self.progress = progress
        self.out = out
        self.state = SwarmState(config)
        self.specs = plan_viewers(config.viewers, config.probes, config.protocol)
        self.viewers: list[SwarmViewer] = []
        self.connected = 0
        self.probes_connected = 0
        self.failures: Counter[str] = Counter()
        self.measured: list[SwarmViewer] = []
        self.measure_start = 0.0
        self.measure_end = 0.0
        self.ramp_done: float | None = None
        self.t0 = 0.0
        self._last_progress = (0.0, 0)
        self._addresses: dict[str, tuple[int, Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the run ---------------------------------------------------------------------------------------

    async def run(self) -> SwarmReport:
        loop = asyncio.get_running_loop()
        raise_fd_limit(self.config.viewers + FD_MARGIN)
        await self._resolve()
        self.t0 = loop.time()
        self._last_progress = (self.t0, 0)
        ramp = asyncio.create_task(self._ramp())
        progress = asyncio.create_task(self._progress()) if self.progress else None
        try:
            async with asyncio.timeout_at(self.t0 + self.config.duration):
                await ramp
                await asyncio.sleep(self.config.settle)
                self._begin_measuring()
                await asyncio.Event().wait()  # steady state until the deadline
        except TimeoutError:
            pass
        finally:
            self.measure_end = loop.time()
            for viewer in self.measured:
                viewer.mark_end = viewer.received()
            for task in (ramp, progress, *self._tasks):
                if task is not None:
                    task.cancel()
            for viewer in self.viewers:
                viewer.close()
            await asyncio.gather(ramp, *self._tasks, return_exceptions=True)
            if progress is not None:
                await asyncio.gather(progress, return_exceptions=True)
                self._print_progress(final=True)
            await asyncio.sleep(0.05)  # let the transports run connection_lost and release their sockets
        return self.report(loop.time() - self.t0)

    async def _resolve(self) -> None:
        loop = asyncio.get_running_loop()
        kinds = {spec.protocol for spec in self.specs}
        targets: dict[str, tuple[str, int]] = {}
        if "rtmp" in kinds:
            rtmp = self.config.rtmp_url
            targets["rtmp"] = (rtmp.host, rtmp.port)
        if "flv" in kinds:
            http = self.config.http_url
            targets["flv"] = (http.host, http.port)
        for kind, (host, port) in targets.items():
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
            if not infos:
                raise OSError(f"cannot resolve {host}")
            family, _type, _proto, _name, address = infos[0]
            self._addresses[kind] = (family, address)

    async def _ramp(self) -> None:
        loop = asyncio.get_running_loop()
        attempts: list[asyncio.Task[None]] = []
        rate = self.config.ramp
        for spec in self.specs:
            delay = self.t0 + spec.index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._start(spec))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            attempts.append(task)
        await asyncio.gather(*attempts)
        self.ramp_done = loop.time() - self.t0

    async def _start(self, spec: ViewerSpec) -> None:
        loop = asyncio.get_running_loop()
        viewer: SwarmViewer
        if spec.protocol == "rtmp":
            viewer = RtmpSwarmViewer(self.state, spec, self.config.rtmp_url)
        else:
            viewer = FlvSwarmViewer(self.state, spec, self.config.http_url)
        self.viewers.append(viewer)
        if viewer.probe is not None:
            viewer.probe.started()
        family, address = self._addresses[spec.protocol]
        stage = "tcp connect"
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setblocking(False)
                if self.config.rcvbuf:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.rcvbuf)
                await loop.sock_connect(sock, address)
                await loop.create_connection(lambda: viewer, sock=sock)
                sock = None  # the transport owns it now
                stage = "play start"
                await viewer.started
        except TimeoutError:
            self._failed(viewer, f"timeout ({stage}, {self.config.connect_timeout:g}s)")
        except ViewerFailed as exc:
            self._failed(viewer, exc.reason)
        except OSError as exc:
            self._failed(viewer, os_error_reason(stage, exc))
        else:
            self.connected += 1
            self.state.playing += 1
            if viewer.probe is not None:
                self.probes_connected += 1
        finally:
            if sock is not None:
                sock.close()

    def _failed(self, viewer: SwarmViewer, reason: str) -> None:
        self.failures[reason] += 1
        viewer.close()

    def _begin_measuring(self) -> None:
        self.measure_start = asyncio.get_running_loop().time()
        self.measured = [v for v in self.viewers if v.counting]
        for viewer in self.measured:
            viewer.mark = viewer.received()
        self.state.measuring = True

    # -- progress ------------------------------------------------------------------------------------

    async def _progress(self) -> None:
        period = 1.0 if self.out.isatty() else 5.0
        while True:
            await asyncio.sleep(period)
            self._print_progress(final=False)

    def _print_progress(self, final: bool) -> None:
        tty = self.out.isatty()
        now = asyncio.get_running_loop().time()
        if final:
            if tty:
                self.out.write("\n")
                self.out.flush()
            return
        last_t, last_bytes = self._last_progress
        state = self.state
        mbps = (state.bytes_total - last_bytes) * 8 / max(now - last_t, 1e-9) / 1e6
        self._last_progress = (now, state.bytes_total)
        lag = state.lag.approx_percentile(95)
        lag_s = "-" if lag is None else f"{lag:.0f} ms"
        failed = sum(self.failures.values())
        dropped = sum(state.drops.values())
        line = (
            f"[{now - self.t0:6.1f}s] viewers {state.playing}/{self.config.viewers} playing, "
            f"{failed} failed, {dropped} dropped | {mbps:8.1f} Mbit/s | probe lag p95 {lag_s}"
        )
        if tty:
            self.out.write("\r\x1b[K" + line)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    # -- the report ----------------------------------------------------------------------------------

    def report(self, elapsed: float) -> SwarmReport:
        config, state = self.config, self.state
        interval = self.measure_end - self.measure_start if state.measuring else 0.0
        per_viewer = [(v.mark_end - v.mark) for v in self.measured]
        interval_bytes = sum(per_viewer)
        kbps = [b * 8 / interval / 1000 for b in per_viewer] if interval > 0 else []
        expected, source = self._expected_kbps()
        lag = state.lag.summary()
        first = state.first_frame.summary()
        lag_note = ""
        if lag.count == 0:
            probes = sum(1 for v in self.viewers if v.probe is not None and v.state != CONNECTING)
            if probes and not state.epochs_seen:
                lag_note = f"no {EPOCH_FIELD} in onMetaData (not the loadtest publisher?)"
            elif not probes:
                lag_note = "no probe viewer played"
        return SwarmReport(
            url=config.url,
            flv_url=config.flv_url,
            protocol=config.protocol,
            viewers_target=config.viewers,
            viewers_connected=self.connected,
            viewers_failed=sum(self.failures.values()),
            viewers_dropped=sum(state.drops.values()),
            viewers_pending=config.viewers - self.connected - sum(self.failures.values()),
            failure_reasons=dict(self.failures),
            drop_reasons=dict(state.drops),
            probes_target=sum(1 for s in self.specs if s.probe),
            probes_connected=self.probes_connected,
            bytes_received=state.bytes_total,
            ramp_per_s=config.ramp,
            ramp_seconds=self.ramp_done,
            measure_offset_s=self.measure_start - self.t0 if state.measuring else None,
            interval_seconds=interval,
            interval_viewers=len(self.measured),
            interval_bytes=interval_bytes,
            received_mbps=interval_bytes * 8 / interval / 1e6 if interval > 0 else None,
            viewer_kbps_p50=percentile(kbps, 50),
            viewer_kbps_p5=percentile(kbps, 5),
            viewer_kbps_min=min(kbps) if kbps else None,
            expected_kbps=expected,
            expected_kbps_source=source,
            delivered_ratio=delivered_ratio(interval_bytes, len(self.measured), expected, interval),
            lag_samples=lag.count,
            lag_p50_ms=lag.p50,
            lag_p95_ms=lag.p95,
            lag_max_ms=lag.max,
            lag_note=lag_note,
            first_frame_samples=first.count,
            first_frame_p50_ms=first.p50,
            first_frame_p95_ms=first.p95,
            first_frame_max_ms=first.max,
            duration_s=elapsed,
            settings={
                "rcvlowat": config.rcvlowat,
                "rcvlowat_errors": state.rcvlowat_errors,
                "rcvbuf": config.rcvbuf,
                "connect_timeout": config.connect_timeout,
                "settle": config.settle,
                "duration": config.duration,
                "probes": config.probes,
                "scratch_bytes": SCRATCH_BYTES,
                "loop": _loop_name(),
            },
        )

    def _expected_kbps(self) -> tuple[float | None, str]:
        if self.config.bitrate_kbps is not None:
            return self.config.bitrate_kbps, "given"
        estimates: list[float] = []
        for viewer in self.viewers:
            probe = viewer.probe
            if probe is None:
                continue
            rate = probe.rate_interval.kbps()
            if rate is None:
                rate = probe.rate_all.kbps()
            if rate is not None:
                estimates.append(rate)
        if not estimates:
            return None, "none"
        return percentile(estimates, 50), "probes"


def _loop_name() -> str:
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__name__}"


async def run_swarm(config: SwarmConfig, *, progress: bool = True, out: TextIO | None = None) -> SwarmReport:
    """Run the swarm described by ``config`` for ``config.duration`` seconds and report.

    Everything it opened is closed when it returns (or is cancelled). Progress goes to ``out``
    (stderr by default): one refreshed line per second on a TTY, else a line every 5 s.
    """
    swarm = _SwarmRun(config, progress, out if out is not None else sys.stderr)
    return await swarm.run()
