"""The viewer swarm: thousands of RTMP / HTTP-FLV viewers in one asyncio process.

Two kinds of viewer, both ``asyncio.BufferedProtocol``s reading into ONE shared preallocated scratch
buffer (``get_buffer`` and ``buffer_updated`` run back to back on the loop thread, so sharing is safe):

* **counting viewers** (the many) set up the session (RTMP: handshake, connect, createStream, play with
  the sans-IO ``ClientSession``; HTTP-FLV: a hand-written GET and the status line), then stop parsing and
  only count bytes. RTMP ones still send Acknowledgements per the server's window (they cannot answer
  a Ping Request, which they no longer see). Once playing, their sockets get ``SO_RCVLOWAT`` so the
  kernel wakes us for large reads only (this also lets the server write in fewer, larger segments).
* **probe viewers** (a few) parse every message and measure first-frame time and lag.

Definitions used by the report:

* **first frame**: connect start (before the TCP connect) -> first video key frame that is not a sequence
  header, per probe.
* **lag** per video frame (not sequence headers) = wall time now - (publisher epoch + media timestamp),
  with the epoch from ``livecdnEpochMs`` in onMetaData (the loadtest publisher sets it; without it lag is
  None). **Join burst**: frames the publisher sent before this probe's play started (epoch + timestamp <
  the wall time at play start: the GOP-cache replay) are not lag samples; every later frame is.
  Publisher and swarm must share a clock (same host, or NTP-synced hosts).
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
import contextlib
import errno
import fcntl
import json
import math
import resource
import socket
import struct
import sys
import termios
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO, cast

from common.client import RtmpUrl
from common.media.flv import is_video_keyframe, is_video_sequence_header
from common.rtmp import amf0
from common.rtmp.chunk import encode_message
from common.rtmp.errors import ProtocolError
from common.rtmp.events import (
    ConnectAccepted,
    ConnectionFailed,
    ConnectRejected,
    MediaReceived,
    PlayStarted,
    StatusReceived,
    StreamCreated,
)
from common.rtmp.messages import CSID_PROTOCOL, MessageType, u32_payload
from common.rtmp.session import ClientSession
from loadtest.flvfile import TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO, FlvError, FlvReader
from loadtest.http1 import ChunkedDecoder, HeadReader, HttpError, HttpUrl
from loadtest.publisher import EPOCH_FIELD
from loadtest.stats import Distribution, RateEstimator, delivered_ratio, is_join_burst, percentile

MAX_VIEWERS: Final = 20_000
MAX_DURATION_S: Final = 3600.0
MAX_PROBES: Final = 100
SCRATCH_BYTES: Final = 1024 * 1024  # the one buffer every viewer reads into
DEFAULT_ACK_WINDOW: Final = 2_500_000  # RTMP: ack every this many bytes if the server announced no window
FD_MARGIN: Final = 64  # file descriptors kept free beyond one per viewer
PROTOCOLS: Final = ("rtmp", "flv", "mixed")

_CONNECTING, _PLAYING, _CLOSED = 0, 1, 2


@dataclass
class SwarmConfig:
    url: str  # rtmp://host:port/app/name (or the http://.../app/name.flv URL for protocol "flv")
    viewers: int = 100
    ramp: float = 100.0  # viewers started per second
    duration: float = 30.0  # seconds, total (ramp included); a hard bound
    protocol: str = "rtmp"  # rtmp | flv | mixed (alternating)
    probes: int = 5  # viewers (out of ``viewers``) that parse everything and measure lag/first frame
    bitrate_kbps: float | None = None  # expected stream bitrate; None: measured by the probes
    rcvlowat: int = 64 * 1024  # SO_RCVLOWAT on counting viewers once playing (0: leave the default)
    rcvbuf: int | None = None  # SO_RCVBUF for every viewer socket, before connect (None: kernel default)
    connect_timeout: float = 10.0  # TCP connect + session setup until playing
    flv_url: str | None = None  # http://host:port/app/name.flv for flv/mixed
    # The publisher's epoch (ms) when the server rewrites onMetaData and drops livecdnEpochMs (nginx-rtmp
    # does); the loadtest publisher prints it at start. Metadata that carries the field wins.
    epoch_ms: float | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if not 1 <= self.viewers <= MAX_VIEWERS:
            raise ValueError(f"viewers must be in 1..{MAX_VIEWERS}, got {self.viewers}")
        if not 0 < self.duration <= MAX_DURATION_S:
            raise ValueError(f"duration must be in (0, {MAX_DURATION_S:g}] seconds, got {self.duration}")
        if not self.ramp > 0 or not math.isfinite(self.ramp):
            raise ValueError(f"ramp must be a positive number of viewers per second, got {self.ramp}")
        if not 0 <= self.probes <= MAX_PROBES:
            raise ValueError(f"probes must be in 0..{MAX_PROBES}, got {self.probes}")
        if not 0 < self.connect_timeout <= 120:
            raise ValueError(f"connect_timeout must be in (0, 120] seconds, got {self.connect_timeout}")
        if self.bitrate_kbps is not None and not self.bitrate_kbps > 0:
            raise ValueError(f"bitrate_kbps must be positive, got {self.bitrate_kbps}")
        if not 0 <= self.rcvlowat <= 16 * 1024 * 1024:
            raise ValueError(f"rcvlowat must be in 0..16 MiB, got {self.rcvlowat}")
        if self.rcvbuf is not None:
            if not 4096 <= self.rcvbuf <= 64 * 1024 * 1024:
                raise ValueError(f"rcvbuf must be in 4 KiB..64 MiB, got {self.rcvbuf}")
            if self.rcvlowat * 2 > self.rcvbuf:
                # A locked receive buffer that cannot hold the low-water mark would never wake the reader.
                raise ValueError(f"rcvlowat ({self.rcvlowat}) must be at most half of rcvbuf ({self.rcvbuf})")
        if self.url.startswith("http://") and self.flv_url is None:
            self.flv_url = self.url
        if self.protocol in ("rtmp", "mixed"):
            RtmpUrl.parse(self.url)  # raises ValueError with the reason
        if self.protocol in ("flv", "mixed"):
            if self.flv_url is None:
                raise ValueError(f"protocol {self.protocol} needs an HTTP-FLV URL (flv_url / --flv-url)")
            HttpUrl.parse(self.flv_url)

    @property
    def rtmp_url(self) -> RtmpUrl:
        return RtmpUrl.parse(self.url)

    @property
    def http_url(self) -> HttpUrl:
        return HttpUrl.parse(self.flv_url or self.url)


@dataclass(frozen=True, slots=True)
class ViewerSpec:
    index: int
    protocol: str  # rtmp or flv
    probe: bool


def plan_viewers(viewers: int, probes: int, protocol: str) -> list[ViewerSpec]:
    """Who starts when: probes spread evenly over the ramp (the first viewer is one: it sees the cold
    start); in ``mixed`` mode probes and counting viewers each alternate rtmp/flv."""
    probes = min(probes, viewers)
    probe_at = {k * viewers // probes for k in range(probes)} if probes else set()
    specs: list[ViewerSpec] = []
    seen = {True: 0, False: 0}
    for index in range(viewers):
        is_probe = index in probe_at
        if protocol == "mixed":
            kind = "rtmp" if seen[is_probe] % 2 == 0 else "flv"
        else:
            kind = protocol
        seen[is_probe] += 1
        specs.append(ViewerSpec(index, kind, is_probe))
    return specs


@dataclass
class SwarmReport:
    url: str
    flv_url: str | None
    protocol: str
    viewers_target: int
    viewers_connected: int  # reached playing (RTMP Play.Start / HTTP 200)
    viewers_failed: int  # never reached playing
    viewers_dropped: int  # were playing, then the server closed or reset the connection
    viewers_pending: int  # still connecting (or not yet started) when the run ended
    failure_reasons: dict[str, int]
    drop_reasons: dict[str, int]
    probes_target: int
    probes_connected: int
    bytes_received: int  # every viewer, whole run, wire bytes
    ramp_per_s: float
    ramp_seconds: float | None  # start -> every attempt resolved; None if the run ended first
    interval_seconds: float  # measuring interval (after the ramp), see the module notes
    interval_viewers: int  # counting viewers playing at the start of the interval
    interval_bytes: int  # what they received during it
    received_mbps: float | None  # interval_bytes as Mbit/s
    viewer_kbps_p50: float | None  # per counting viewer over the interval
    viewer_kbps_p5: float | None
    viewer_kbps_min: float | None
    expected_kbps: float | None
    expected_kbps_source: str  # "given", "probes" or "none"
    delivered_ratio: float | None
    lag_samples: int
    lag_p50_ms: float | None
    lag_p95_ms: float | None
    lag_max_ms: float | None
    lag_note: str  # why lag is None, if it is
    first_frame_samples: int
    first_frame_p50_ms: float | None
    first_frame_p95_ms: float | None
    first_frame_max_ms: float | None
    duration_s: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    def table(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"

        def num(value: float | None, fmt: str = ".1f") -> str:
            return "-" if value is None else format(value, fmt)

        target = self.url if self.protocol != "flv" else (self.flv_url or self.url)
        if self.protocol == "mixed":
            target = f"{self.url} + {self.flv_url}"
        s = self.settings
        rcvbuf = s.get("rcvbuf") or "kernel default"
        rows = [
            ("target", f"{target} ({self.protocol})"),
            (
                "viewers",
                f"{self.viewers_target} target, {self.viewers_connected} connected, {self.viewers_failed} failed, "
                f"{self.viewers_dropped} dropped by server, {self.viewers_pending} pending at the end "
                f"({self.probes_connected}/{self.probes_target} probes connected)",
            ),
            ("ramp", f"{self.ramp_per_s:g}/s, completed in {num(self.ramp_seconds)} s"),
            (
                "measured interval",
                f"{self.interval_seconds:.1f} s after the ramp, {self.interval_viewers} counting viewers",
            ),
            (
                "received",
                f"{self.interval_bytes / 1e6:.1f} MB = {num(self.received_mbps)} Mbit/s; per viewer kbit/s "
                f"p50 {num(self.viewer_kbps_p50, '.0f')}, p5 {num(self.viewer_kbps_p5, '.0f')}, "
                f"min {num(self.viewer_kbps_min, '.0f')}",
            ),
            ("expected bitrate", f"{num(self.expected_kbps, '.0f')} kbit/s ({self.expected_kbps_source})"),
            ("delivered/expected", num(self.delivered_ratio, ".3f")),
            (
                "lag (probes)",
                f"p50 {ms(self.lag_p50_ms)} / p95 {ms(self.lag_p95_ms)} / max {ms(self.lag_max_ms)} ms "
                f"({self.lag_samples} frames){'; ' + self.lag_note if self.lag_note else ''}",
            ),
            (
                "first frame (probes)",
                f"p50 {ms(self.first_frame_p50_ms)} / p95 {ms(self.first_frame_p95_ms)} / "
                f"max {ms(self.first_frame_max_ms)} ms ({self.first_frame_samples} probes)",
            ),
            ("total received", f"{self.bytes_received / 1e6:.1f} MB in {self.duration_s:.1f} s"),
            (
                "settings",
                f"SO_RCVLOWAT {s.get('rcvlowat')} B, SO_RCVBUF {rcvbuf}, connect timeout {s.get('connect_timeout')} s, "
                f"loop {s.get('loop')}",
            ),
        ]
        for reason, count in sorted(self.failure_reasons.items(), key=lambda kv: -kv[1]):
            rows.append(("failed", f"{count} x {reason}"))
        for reason, count in sorted(self.drop_reasons.items(), key=lambda kv: -kv[1]):
            rows.append(("dropped", f"{count} x {reason}"))
        width = max(len(name) for name, _ in rows)
        lines = ["livecdn loadtest swarm report", "-" * 72]
        lines += [f"{name.ljust(width)}  {value}" for name, value in rows]
        return "\n".join(lines)


class ViewerFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a failure nobody awaits any more (timed out) is not an error


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0) or type(exc).__name__


def _os_error_reason(stage: str, exc: OSError) -> str:
    return f"{stage}: {_errno_name(exc)}"


class _Probe:
    """Measurements of one probe viewer: epoch from onMetaData, first frame, lag, media rate."""

    __slots__ = ("epoch_ms", "first_frame_ms", "play_started_wall_ms", "rate_all", "rate_interval", "swarm", "t_start")

    def __init__(self, swarm: _Swarm) -> None:
        self.swarm = swarm
        self.t_start = time.monotonic()
        self.play_started_wall_ms = 0.0
        self.epoch_ms: float | None = swarm.config.epoch_ms
        self.first_frame_ms: float | None = None
        self.rate_all = RateEstimator()
        self.rate_interval = RateEstimator()

    def started(self) -> None:
        self.t_start = time.monotonic()

    def playing(self) -> None:
        self.play_started_wall_ms = time.time() * 1000.0

    def on_media(self, type_id: int, timestamp: int, payload: bytes) -> None:
        if type_id == TAG_SCRIPT:
            self._on_data(payload)
            return
        if type_id != TAG_VIDEO and type_id != TAG_AUDIO:
            return
        if type_id == TAG_VIDEO and is_video_sequence_header(payload):
            return
        self.rate_all.add(timestamp, len(payload))
        if self.swarm.measuring:
            self.rate_interval.add(timestamp, len(payload))
        if type_id != TAG_VIDEO:
            return
        if self.first_frame_ms is None and is_video_keyframe(payload):
            self.first_frame_ms = (time.monotonic() - self.t_start) * 1000.0
            self.swarm.first_frame.add(self.first_frame_ms)
        epoch = self.epoch_ms
        if epoch is not None and not is_join_burst(self.play_started_wall_ms, epoch, timestamp):
            self.swarm.lag.add(time.time() * 1000.0 - (epoch + timestamp))

    def _on_data(self, payload: bytes) -> None:
        try:
            values = amf0.decode(payload)
        except ProtocolError:
            return
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            epoch = values[1].get(EPOCH_FIELD)
            if isinstance(epoch, float) and math.isfinite(epoch) and epoch > 0:
                self.epoch_ms = epoch
                self.swarm.epochs_seen += 1


class _Viewer(asyncio.BufferedProtocol):
    """What RTMP and HTTP-FLV viewers share: the scratch buffer, byte counts, lifecycle, failures."""

    def __init__(self, swarm: _Swarm, spec: ViewerSpec) -> None:
        self.swarm = swarm
        self.spec = spec
        self.probe = _Probe(swarm) if spec.probe else None
        self.transport: asyncio.Transport | None = None
        self.nbytes = 0  # every byte received on this connection
        self.mark = 0  # bytes received (read + waiting in the kernel) when the measuring interval began
        self.mark_end = 0  # the same when it ended
        self.counting = False  # fast path: playing, not a probe, bytes are not looked at
        self.state = _CONNECTING
        self.closing = False  # we are closing it (failure, end of run): not a drop
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started.add_done_callback(_consume)

    # -- asyncio callbacks ---------------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.swarm.scratch

    def buffer_updated(self, nbytes: int) -> None:
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = _CLOSED
        self.counting = False
        reason = f"reset ({_errno_name(exc)})" if isinstance(exc, OSError) else "closed by server"
        if was == _CONNECTING:
            if not self.started.done():
                self.started.set_exception(ViewerFailed(reason + " before playing"))
        elif was == _PLAYING and not self.closing:
            self.swarm.viewer_dropped(self, reason)

    # -- shared logic --------------------------------------------------------------------------------

    def received(self) -> int:
        """Bytes read so far plus those waiting unread in the kernel's receive queue (FIONREAD): exact
        interval accounting although SO_RCVLOWAT leaves up to that many bytes unread at any moment."""
        return self.nbytes + (_unread_bytes(self.transport) if self.state == _PLAYING else 0)

    def _data(self, nbytes: int) -> bytes:
        return bytes(self.swarm.scratch_view[:nbytes])

    def _playing(self) -> None:
        if self.state != _CONNECTING:
            return
        self.state = _PLAYING
        if self.probe is not None:
            self.probe.playing()
        else:
            self.counting = True
            self._set_rcvlowat()
        if not self.started.done():
            self.started.set_result(None)

    def _set_rcvlowat(self) -> None:
        lowat = self.swarm.config.rcvlowat
        if not lowat or self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
        except OSError:
            self.swarm.rcvlowat_errors += 1

    def fail(self, reason: str) -> None:
        """Setup went wrong: resolve ``started`` with the reason and close (never retried)."""
        if not self.started.done():
            self.started.set_exception(ViewerFailed(reason))
        if self.state == _PLAYING and not self.closing:
            self.swarm.viewer_dropped(self, reason)
        self.close()

    def close(self) -> None:
        self.closing = True
        self.counting = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class RtmpViewer(_Viewer):
    def __init__(self, swarm: _Swarm, spec: ViewerSpec, url: RtmpUrl) -> None:
        super().__init__(swarm, spec)
        self.url = url
        self.session: ClientSession | None = ClientSession(url.app, url.tc_url)
        self.window = DEFAULT_ACK_WINDOW
        self.acked = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._flush()  # C0 + C1

    def buffer_updated(self, nbytes: int) -> None:
        self.nbytes += nbytes
        self.swarm.bytes_total += nbytes
        if self.counting:
            if self.nbytes - self.acked >= self.window:
                self.acked = self.nbytes
                ack = encode_message(CSID_PROTOCOL, 0, MessageType.ACKNOWLEDGEMENT, 0, u32_payload(self.nbytes), 128)
                if self.transport is not None:
                    self.transport.write(ack)
            return
        session = self.session
        if session is None:
            return
        for event in session.receive_data(self._data(nbytes)):
            kind = type(event)
            if kind is MediaReceived:
                if self.probe is not None:
                    media = cast(MediaReceived, event)
                    self.probe.on_media(media.type_id, media.timestamp, media.payload)
            elif kind is ConnectAccepted:
                session.create_stream()
            elif kind is StreamCreated:
                session.play(cast(StreamCreated, event).stream_id, self.url.name)
            elif kind is PlayStarted:
                self._playing()
                if self.counting:
                    self._stop_parsing(session)
                    break
            elif kind is StatusReceived:
                status = cast(StatusReceived, event)
                if status.level == "error":
                    self.fail(f"rtmp {status.code or 'error status'}")
                    return
            elif kind is ConnectRejected:
                self.fail(f"rtmp connect rejected {cast(ConnectRejected, event).code}")
                return
            elif kind is ConnectionFailed:
                self.fail(f"rtmp protocol error: {cast(ConnectionFailed, event).reason}")
                return
        self._flush()

    def _stop_parsing(self, session: ClientSession) -> None:
        """From here on only bytes are counted; acks continue from the session's own bookkeeping
        (the server's Window Acknowledgement Size and our last ack), so the sequence has no gap."""
        self.window = session.peer_window or DEFAULT_ACK_WINDOW
        self.acked = session.acknowledged
        self._flush()
        self.session = None  # the parser's state is no longer needed; free it

    def _flush(self) -> None:
        session = self.session
        if session is None or self.transport is None or self.transport.is_closing():
            return
        data = session.data_to_send()
        if data:
            self.transport.write(data)


class FlvViewer(_Viewer):
    def __init__(self, swarm: _Swarm, spec: ViewerSpec, url: HttpUrl) -> None:
        super().__init__(swarm, spec)
        self.url = url
        self.head: HeadReader | None = HeadReader()
        self.chunked: ChunkedDecoder | None = None
        self.flv: FlvReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        cast(asyncio.Transport, transport).write(self.url.get_request())

    def buffer_updated(self, nbytes: int) -> None:
        self.nbytes += nbytes
        self.swarm.bytes_total += nbytes
        if self.counting:
            return
        data = self._data(nbytes)
        try:
            if self.head is not None:
                got = self.head.feed(data)
                if got is None:
                    return
                head, data = got
                self.head = None
                if head.status != 200:
                    self.fail(f"http {head.status}")
                    return
                if self.probe is not None:
                    self.chunked = ChunkedDecoder() if head.chunked else None
                    self.flv = FlvReader()
                self._playing()
                if self.counting:
                    return
            self._probe_body(data)
        except (HttpError, FlvError) as exc:
            self.fail(f"http-flv protocol error: {exc}")

    def _probe_body(self, data: bytes) -> None:
        if self.flv is None or self.probe is None:
            return
        if self.chunked is not None:
            data = self.chunked.feed(data)
        for tag in self.flv.feed(data):
            self.probe.on_media(tag.tag_type, tag.timestamp, tag.payload)


class _Swarm:
    def __init__(self, config: SwarmConfig, progress: bool, out: TextIO) -> None:
        self.config = config
        self.progress = progress
        self.out = out
        self.scratch = bytearray(SCRATCH_BYTES)
        self.scratch_view = memoryview(self.scratch)
        self.specs = plan_viewers(config.viewers, config.probes, config.protocol)
        self.viewers: list[_Viewer] = []
        self.connected = 0
        self.playing = 0
        self.probes_connected = 0
        self.failures: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.bytes_total = 0
        self.lag = Distribution()
        self.first_frame = Distribution()
        self.epochs_seen = 0
        self.rcvlowat_errors = 0
        self.measuring = False
        self.measured: list[_Viewer] = []
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
        _ensure_fd_limit(self.config.viewers + FD_MARGIN)
        await self._resolve()
        self.t0 = loop.time()
        self._last_progress = (self.t0, 0)
        ramp = asyncio.create_task(self._ramp())
        progress = asyncio.create_task(self._progress()) if self.progress else None
        try:
            async with asyncio.timeout_at(self.t0 + self.config.duration):
                await ramp
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
        viewer: _Viewer
        if spec.protocol == "rtmp":
            viewer = RtmpViewer(self, spec, self.config.rtmp_url)
        else:
            viewer = FlvViewer(self, spec, self.config.http_url)
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
            self._failed(viewer, _os_error_reason(stage, exc))
        else:
            self.connected += 1
            self.playing += 1
            if viewer.probe is not None:
                self.probes_connected += 1
        finally:
            if sock is not None:
                sock.close()

    def _failed(self, viewer: _Viewer, reason: str) -> None:
        self.failures[reason] += 1
        viewer.close()

    def viewer_dropped(self, viewer: _Viewer, reason: str) -> None:
        self.drops[reason] += 1
        self.playing -= 1

    def _begin_measuring(self) -> None:
        self.measure_start = asyncio.get_running_loop().time()
        self.measured = [v for v in self.viewers if v.counting]
        for viewer in self.measured:
            viewer.mark = viewer.received()
        self.measuring = True

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
        mbps = (self.bytes_total - last_bytes) * 8 / max(now - last_t, 1e-9) / 1e6
        self._last_progress = (now, self.bytes_total)
        lag = self.lag.approx_percentile(95)
        lag_s = "-" if lag is None else f"{lag:.0f} ms"
        failed = sum(self.failures.values())
        dropped = sum(self.drops.values())
        line = (
            f"[{now - self.t0:6.1f}s] viewers {self.playing}/{self.config.viewers} playing, "
            f"{failed} failed, {dropped} dropped | {mbps:8.1f} Mbit/s | probe lag p95 {lag_s}"
        )
        if tty:
            self.out.write("\r\x1b[K" + line)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    # -- the report ----------------------------------------------------------------------------------

    def report(self, elapsed: float) -> SwarmReport:
        config = self.config
        interval = self.measure_end - self.measure_start if self.measuring else 0.0
        per_viewer = [(v.mark_end - v.mark) for v in self.measured]
        interval_bytes = sum(per_viewer)
        kbps = [b * 8 / interval / 1000 for b in per_viewer] if interval > 0 else []
        expected, source = self._expected_kbps()
        lag = self.lag.summary()
        first = self.first_frame.summary()
        lag_note = ""
        if lag.count == 0:
            probes = sum(1 for v in self.viewers if v.probe is not None and v.state != _CONNECTING)
            if probes and not self.epochs_seen:
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
            viewers_dropped=sum(self.drops.values()),
            viewers_pending=config.viewers - self.connected - sum(self.failures.values()),
            failure_reasons=dict(self.failures),
            drop_reasons=dict(self.drops),
            probes_target=sum(1 for s in self.specs if s.probe),
            probes_connected=self.probes_connected,
            bytes_received=self.bytes_total,
            ramp_per_s=config.ramp,
            ramp_seconds=self.ramp_done,
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
                "rcvlowat_errors": self.rcvlowat_errors,
                "rcvbuf": config.rcvbuf,
                "connect_timeout": config.connect_timeout,
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


def _unread_bytes(transport: asyncio.Transport | None) -> int:
    if transport is None or transport.is_closing():
        return 0
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return int(struct.unpack("i", raw)[0])


def _loop_name() -> str:
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__name__}"


def _ensure_fd_limit(needed: int) -> None:
    """One descriptor per viewer: raise the soft limit towards the hard one, or refuse to start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < needed:
        raise OSError(f"need {needed} file descriptors, the limit is {soft} (raise it with ulimit -n)")


async def run_swarm(config: SwarmConfig, *, progress: bool = True, out: TextIO | None = None) -> SwarmReport:
    """Run the swarm described by ``config`` for ``config.duration`` seconds and report.

    Everything it opened is closed when it returns (or is cancelled). Progress goes to ``out``
    (stderr by default): one refreshed line per second on a TTY, else a line every 5 s.
    """
    swarm = _Swarm(config, progress, out if out is not None else sys.stderr)
    return await swarm.run()
