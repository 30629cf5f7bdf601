"""What a swarm run is asked to do: its settings (validated) and the plan of which viewer starts when."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from common.serving.client import RtmpUrl
from loadtest.http1 import HttpUrl

MAX_VIEWERS: Final = 20_000
MAX_DURATION_S: Final = 3600.0
MAX_PROBES: Final = 100
PROTOCOLS: Final = ("rtmp", "flv", "mixed")


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
    # Seconds between the end of the ramp and the start of the measuring interval. A server without a GOP
    # cache (nginx-rtmp) starts each viewer's video at the NEXT key frame: measured from the ramp's end,
    # its viewers would all miss up to one GOP of video and read as under-delivered (uniformly ~0.92 for a
    # 2 s GOP and a 15 s interval). Set it to the stream's GOP or more to compare such servers.
    settle: float = 0.0
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
        if not 0 <= self.settle < self.duration:
            raise ValueError(f"settle must be in [0, duration) seconds, got {self.settle}")
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
