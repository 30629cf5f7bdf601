"""`livecdn up`: a whole local cluster in one process — an origin, two edges in two regions, the control
plane — on loopback, sharing one registry (in-memory by default: nothing else to install)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from common import signing
from common.keys import StreamKey
from common.redact import redact_url
from common.registry import open_registry
from common.runtime.config import EdgeSettings, HostPort, OriginSettings
from common.runtime.node import Node
from common.runtime.run import start_node, stop_on_signals
from control.node import serve_control
from control.settings import ControlSettings
from edge.role import EdgeRole
from origin.role import OriginRole

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpOptions:
    host: str = "127.0.0.1"
    rtmp_port: int = 1935  # origin; the edges take the next two (0: any free ports)
    http_port: int = 8080  # control plane; origin and edges take the next three (0: any free ports)
    registry: str = "memory://"
    regions: tuple[str, str] = ("eu", "us")
    idle_grace: float = 15.0
    publish_secret: str | None = None  # None: one is generated for this run (and never printed)
    demo_stream: str = "live/demo"  # the stream the banner's signed publish URL is for
    demo_ttl: int = 24 * 3600  # seconds that URL stays valid


@dataclass(frozen=True)
class Secrets:
    publish: str
    cluster: str
    generated: bool

    @classmethod
    def for_run(cls, options: UpOptions) -> Secrets:
        return cls(
            publish=options.publish_secret or secrets.token_urlsafe(32),
            cluster=secrets.token_urlsafe(32),
            generated=options.publish_secret is None,
        )


def _port(base: int, offset: int) -> int:
    return 0 if base == 0 else base + offset


async def up(options: UpOptions, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    registry = open_registry(options.registry)
    host = options.host
    first, second = options.regions
    keys = Secrets.for_run(options)
    cluster_secret = SecretStr(keys.cluster)
    nodes: list[Node] = [
        Node(
            OriginSettings(
                rtmp=HostPort(host, _port(options.rtmp_port, 0)),
                http=HostPort(host, _port(options.http_port, 1)),
                registry=options.registry,
                region=first,
                node_id="origin-1",
                publish_secret=SecretStr(keys.publish),
                cluster_secret=cluster_secret,
            ),
            OriginRole,
            registry,
        )
    ]
    for index, region in enumerate((first, second)):
        nodes.append(
            Node(
                EdgeSettings(
                    rtmp=HostPort(host, _port(options.rtmp_port, 1 + index)),
                    http=HostPort(host, _port(options.http_port, 2 + index)),
                    registry=options.registry,
                    region=region,
                    node_id=f"edge-{region}-1",
                    idle_grace=options.idle_grace,
                    cluster_secret=cluster_secret,
                    workers=1,  # every node of `up` shares this one process
                ),
                EdgeRole,
                registry,
            )
        )
    runners: list[web.AppRunner] = []
    control_url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    control_stop = asyncio.Event()
    control = asyncio.create_task(
        serve_control(
            ControlSettings(registry=options.registry, http=HostPort(host, options.http_port)),
            control_stop,
            registry=registry,
            on_ready=control_url.set_result,
        ),
        name="control plane",
    )
    try:
        for node in nodes:
            runners.append(await start_node(node))
        waiting: set[asyncio.Future[Any]] = {control, control_url}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if control in done:
            control.result()  # raises what stopped it
        print(_banner(nodes, control_url.result(), options, keys), flush=True)
        await stop.wait()
        log.info("shutting down the local cluster")
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        control_stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await control


def _banner(nodes: list[Node], control: str, options: UpOptions, keys: Secrets) -> str:
    origin, *edges = nodes
    where = f"origin {origin.settings.node_id}, region {origin.settings.region}"
    demo = StreamKey.parse(options.demo_stream)
    signed = signing.sign(keys.publish, signing.PUBLISH, demo, int(time.time()) + options.demo_ttl)
    how = (
        "the publish secret was generated for this run; set LIVECDN_PUBLISH_SECRET to sign your own URLs"
        if keys.generated
        else "sign URLs for other names: livecdn sign --stream live/NAME (with LIVECDN_PUBLISH_SECRET)"
    )
    lines = [
        f"livecdn up: a local cluster (registry {redact_url(options.registry)})",
        f"  control:  {control}/   (status page; {control}/v1/nodes, {control}/v1/streams)",
        f"  publish:  {origin.addresses.rtmp_url(demo.app, demo.name)}?{signed}",
        f"            ({where}; signed for {demo}, valid {options.demo_ttl // 3600} h; {how})",
    ]
    for index, edge in enumerate(edges):
        label = "  play:     " if index == 0 else "            "
        lines.append(
            f"{label}{edge.addresses.rtmp_url()}   or   {edge.addresses.http_url('/live/STREAM.flv')}   "
            f"({edge.settings.node_id}, region {edge.settings.region})"
        )
    lines += [
        f"  route:    {control}/v1/route/play?stream=live/STREAM&region={edges[-1].settings.region}",
        f"  Replace STREAM with {demo.name} (or a name you signed). Ctrl-C stops everything.",
    ]
    return "\n".join(lines)
