"""The `livecdn` command: origin, edge, control, up. Every flag is also a LIVECDN_* variable.

With `livecdn.up`, the only code that imports the roles: each command builds its settings, then the
role's node (or the control plane), and runs it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from common import signing
from common.keys import StreamKey
from common.redact import redact_url
from common.runtime.config import (
    REGISTRY_HELP,
    ConfigError,
    EdgeSettings,
    NodeSettings,
    OriginSettings,
    Settings,
    check_registry_url,
    load_settings,
)
from common.runtime.node import Node
from common.runtime.role import RoleFactory
from common.runtime.run import configure_logging, run_forever, serve, stop_on_signals
from common.runtime.supervisor import Supervisor, SupervisorError
from common.runtime.workerplan import PlanError, WorkerPlan
from control.settings import ControlSettings

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S", bound=Settings)


def _apply(func: F, options: Sequence[Callable[[Any], Any]]) -> F:
    for option in reversed(options):
        func = option(func)
    return func


def common_options(func: F) -> F:
    """What every process takes: the registry, the log level and a TOML file of settings."""
    return _apply(
        func,
        [
            click.option("--registry", help=f"{REGISTRY_HELP} [LIVECDN_REGISTRY, default memory://]"),
            click.option("--log-level", help="debug, info, warning, error [LIVECDN_LOG_LEVEL]"),
            click.option("--log-format", help="text or json (one object per line) [LIVECDN_LOG_FORMAT]"),
            click.option(
                "--config",
                "config_file",
                envvar="LIVECDN_CONFIG",
                type=click.Path(dir_okay=False),
                help="TOML file with settings (flags and env win) [LIVECDN_CONFIG]",
            ),
        ],
    )


def node_options(func: F) -> F:
    return _apply(
        common_options(func),
        [
            click.option("--rtmp", help="RTMP listen HOST:PORT [LIVECDN_RTMP, default 127.0.0.1:1935]"),
            click.option("--http", help="HTTP listen HOST:PORT [LIVECDN_HTTP, default 127.0.0.1:8080]"),
            click.option("--region", help="region of this node [LIVECDN_REGION, default 'default']"),
            click.option("--node-id", help="stable node id [LIVECDN_NODE_ID, default random]"),
            click.option("--advertise-host", help="host others reach this node at [LIVECDN_ADVERTISE_HOST]"),
            *secret_options("play-secret", "signs play tokens; set: viewers need one"),
            *secret_options("cluster-secret", "edges present it to their upstream; signs webhooks"),
            *secret_options("admin-token", "bearer token of the admin API (drain, kick)"),
        ],
    )


def secret_options(name: str, what: str) -> list[Callable[[Any], Any]]:
    """--NAME and --NAME-file. A flag shows in the process list: prefer the variable or the file."""
    env = "LIVECDN_" + name.upper().replace("-", "_")
    return [
        click.option(f"--{name}", help=f"{what} [{env}; better: {env}_FILE or --{name}-file]"),
        click.option(f"--{name}-file", type=click.Path(dir_okay=False), help=f"read {name} from a file [{env}_FILE]"),
    ]


def _publish_secret_options(func: F) -> F:
    return _apply(func, secret_options("publish-secret", "signs publish URLs (livecdn sign)"))


def _settings(cls: type[S], config_file: str | None, **flags: Any) -> S:
    try:
        return load_settings(cls, flags, config_file)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _registry_url(value: str) -> str:
    try:
        return check_registry_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _run_node(settings: NodeSettings, role: RoleFactory) -> None:
    configure_logging(settings.log_level, settings.log_format, settings.node_id)
    run_forever(serve(Node(settings, role)))


def _supervise(settings: EdgeSettings) -> None:
    """An edge of several processes: this one supervises, each worker is `python -m livecdn edge --worker I`."""
    configure_logging(settings.log_level, settings.log_format, settings.node_id)

    def worker_command(index: int) -> list[str]:
        return [sys.executable, "-m", "livecdn", "edge", "--worker", str(index)]

    try:
        code = run_forever(Supervisor(settings, "edge", settings.workers, worker_command).run())
    except SupervisorError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


def _run_worker(index: int, role: RoleFactory) -> None:
    """One worker process of an edge: everything it runs on comes from its supervisor's plan."""
    try:
        plan = WorkerPlan.from_env(os.environ, index)
    except PlanError as exc:
        raise click.UsageError(str(exc)) from None
    settings = EdgeSettings.model_validate(plan.settings)
    configure_logging(settings.log_level, settings.log_format, settings.node_id, index)
    armed = plan.exit_with_supervisor()
    run_forever(serve(Node(settings, role, worker=plan), watch_parent=not armed))


def _refuse_an_island(registry: str, who: str, would_miss: str, instead: str = "") -> None:
    """memory:// cannot span processes: an edge or control plane started on its own with it would start
    fine and never see anyone. (`livecdn up` builds its nodes in one process and shares one registry, so this
    check lives here, in the commands that start one process, not in the Node class.)"""
    if registry.startswith("memory://"):
        raise click.UsageError(
            f"registry (--registry / LIVECDN_REGISTRY) is {registry}, which lives inside this one process: "
            f"{who} would never see {would_miss} started as other processes. Use a shared registry, "
            f"--registry redis://HOST:PORT/DB or consul://HOST:PORT (or LIVECDN_REGISTRY){instead}, or run a whole "
            "local cluster in one process with `livecdn up`."
        )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """livecdn: a live-video CDN of RTMP origins and edges."""


@cli.command()
@node_options
@_publish_secret_options
@click.option("--on-publish", help="webhook URL asked (POST) before each publish; 2xx allows [LIVECDN_ON_PUBLISH]")
@click.option(
    "--open-publish",
    is_flag=True,
    default=None,
    help="let ANYONE publish any stream: no publish auth [LIVECDN_OPEN_PUBLISH]",
)
def origin(config_file: str | None, **flags: Any) -> None:
    """Run an origin node: accepts publishes, claims them in the registry, serves plays."""
    from origin.role import OriginRole

    _run_node(_settings(OriginSettings, config_file, **flags), OriginRole)


@cli.command()
@node_options
@click.option("--upstream", help="static upstream rtmp://HOST:PORT/APP, any RTMP server [LIVECDN_UPSTREAM]")
@click.option("--parent-region", help="pull through an edge of this region (mid tier) [LIVECDN_PARENT_REGION]")
@click.option("--idle-grace", type=float, help="seconds a pull outlives its last viewer [LIVECDN_IDLE_GRACE, 15]")
@click.option(
    "--workers",
    type=int,
    help="processes sharing the node's ports, one pull per stream between them; 1: a single process "
    "[LIVECDN_WORKERS, default: the cores this process may use]",
)
@click.option("--worker", "worker_index", type=int, hidden=True, help="internal: run as worker I of a supervisor")
def edge(config_file: str | None, worker_index: int | None, **flags: Any) -> None:
    """Run an edge node: pulls each stream once on demand and fans it out to viewers."""
    from edge.role import EdgeRole

    if worker_index is not None:
        _run_worker(worker_index, EdgeRole)
        return
    settings = _settings(EdgeSettings, config_file, **flags)
    if not settings.upstream:  # a static upstream needs no registry; origins and parent edges do
        _refuse_an_island(
            settings.registry, "this edge", "the origins (or parent edges)", ", give it a static --upstream"
        )
    if settings.workers > 1:
        _supervise(settings)
    else:
        _run_node(settings, EdgeRole)


@cli.command()
@common_options
@click.option("--http", help="HTTP listen HOST:PORT [LIVECDN_HTTP, default 127.0.0.1:8000]")
@click.option(
    "--epsilon",
    type=float,
    help="bounded-load slack: no edge above (1+epsilon) x the average viewers [LIVECDN_EPSILON, default 0.25]",
)
@click.option(
    "--region-map",
    help="client address ranges to regions, most specific wins: CIDR=REGION,... or @FILE [LIVECDN_REGION_MAP]",
)
@click.option("--geoip-db", help="MaxMind-format GeoIP database file [LIVECDN_GEOIP_DB]")
@click.option(
    "--geoip-regions",
    help="GeoIP country or continent to region: DE=eu,continent:NA=us,... [LIVECDN_GEOIP_REGIONS]",
)
@click.option("--default-region", help="region of a client nothing else placed [LIVECDN_DEFAULT_REGION, default none]")
@click.option(
    "--region-fallback",
    help="regions to try, in order, when one has no healthy node: eu=us|ap,us=eu|* [LIVECDN_REGION_FALLBACK]",
)
@click.option(
    "--trusted-proxies",
    help="proxies whose client-address header is believed: CIDR,... or @FILE [LIVECDN_TRUSTED_PROXIES]",
)
@click.option(
    "--proxy-header",
    help="header the trusted proxies set: x-forwarded-for or forwarded [LIVECDN_PROXY_HEADER, default x-forwarded-for]",
)
def control(config_file: str | None, **flags: Any) -> None:
    """Run the control plane: routes publishers to origins and viewers to edges."""
    from control.node import serve_control

    settings = _settings(ControlSettings, config_file, **flags)
    _refuse_an_island(settings.registry, "the control plane", "the origins and edges")
    configure_logging(settings.log_level, settings.log_format, "control")
    registry = redact_url(settings.registry)

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await serve_control(
            settings,
            stop,
            on_ready=lambda url: print(f"livecdn control plane on {url} (registry {registry})", flush=True),
        )

    run_forever(main())


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="loopback address every node binds")
@click.option(
    "--rtmp-port",
    type=int,
    default=1935,
    show_default=True,
    help="origin RTMP port; edges take the next two (0: any free ports)",
)
@click.option(
    "--http-port",
    type=int,
    default=8080,
    show_default=True,
    help="control plane port; origin and edges take the next three (0: any free ports)",
)
@click.option(
    "--registry",
    envvar="LIVECDN_REGISTRY",
    default="memory://",
    show_default=True,
    help=f"{REGISTRY_HELP} [LIVECDN_REGISTRY]",
    callback=lambda ctx, param, value: _registry_url(value),
)
@click.option(
    "--idle-grace",
    type=float,
    default=15.0,
    show_default=True,
    help="seconds an edge keeps a pull after its last viewer",
)
@click.option("--log-level", envvar="LIVECDN_LOG_LEVEL", default="info", show_default=True)
@click.option(
    "--log-format", envvar="LIVECDN_LOG_FORMAT", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option(
    "--publish-secret",
    envvar="LIVECDN_PUBLISH_SECRET",
    help="signs publish URLs [LIVECDN_PUBLISH_SECRET; default: generated for this run, never printed]",
)
def up(
    host: str,
    rtmp_port: int,
    http_port: int,
    registry: str,
    idle_grace: float,
    log_level: str,
    log_format: str,
    publish_secret: str | None,
) -> None:
    """Start a whole local cluster: origin, two edges in two regions, control plane."""
    from livecdn.up import UpOptions
    from livecdn.up import up as run_up

    configure_logging(log_level, log_format)  # no node field: one process runs every node
    options = UpOptions(
        host=host,
        rtmp_port=rtmp_port,
        http_port=http_port,
        registry=registry,
        idle_grace=idle_grace,
        publish_secret=publish_secret,
    )
    run_forever(run_up(options))


@cli.command()
@click.option("--secret", help="the secret to sign with [default: LIVECDN_PUBLISH_SECRET or LIVECDN_PLAY_SECRET]")
@click.option("--stream", required=True, help="APP/NAME")
@click.option("--ttl", type=click.IntRange(1, 10 * 365 * 86400), default=3600, show_default=True, help="seconds")
@click.option("--action", type=click.Choice(["publish", "play"]), default="publish", show_default=True)
def sign(secret: str | None, stream: str, ttl: int, action: str) -> None:
    """Print the query string that lets a URL publish or play STREAM for TTL seconds:

    ffmpeg ... -f flv "rtmp://HOST/live/x?$(livecdn sign --stream live/x --ttl 3600)"
    """
    secret = secret or os.environ.get(f"LIVECDN_{action.upper()}_SECRET")
    if not secret:
        raise click.UsageError(f"no secret: pass --secret or set LIVECDN_{action.upper()}_SECRET")
    try:
        key = StreamKey.parse(stream)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--stream") from None
    if not key.valid:
        raise click.BadParameter(f"invalid stream {stream!r}", param_hint="--stream")
    click.echo(signing.sign(secret, action, key, int(time.time()) + ttl))


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="livecdn")
