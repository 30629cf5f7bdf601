"""The `livecdn` command: origin, edge, control, up. Every flag is also a LIVECDN_* variable.

With `livecdn.up`, the only code that imports the roles: each command builds its settings, then the
role's node (or the control plane), and runs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from common.redact import redact_url
from common.runtime.config import (
    REGISTRY_HELP,
    ConfigError,
    EdgeSettings,
    NodeSettings,
    Settings,
    check_registry_url,
    load_settings,
)
from common.runtime.node import Node
from common.runtime.role import RoleFactory
from common.runtime.run import configure_logging, run_forever, serve, stop_on_signals
from control.settings import ControlSettings

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S", bound=Settings)


def _apply(func: F, options: list[Callable[[F], F]]) -> F:
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
        ],
    )


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
    configure_logging(settings.log_level)
    run_forever(serve(Node(settings, role)))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """livecdn: a live-video CDN of RTMP origins and edges."""


@cli.command()
@node_options
def origin(config_file: str | None, **flags: Any) -> None:
    """Run an origin node: accepts publishes, claims them in the registry, serves plays."""
    from origin.role import OriginRole

    _run_node(_settings(NodeSettings, config_file, **flags), OriginRole)


@cli.command()
@node_options
@click.option("--upstream", help="static upstream rtmp://HOST:PORT/APP, any RTMP server [LIVECDN_UPSTREAM]")
@click.option("--parent-region", help="pull through an edge of this region (mid tier) [LIVECDN_PARENT_REGION]")
@click.option("--idle-grace", type=float, help="seconds a pull outlives its last viewer [LIVECDN_IDLE_GRACE, 15]")
def edge(config_file: str | None, **flags: Any) -> None:
    """Run an edge node: pulls each stream once on demand and fans it out to viewers."""
    from edge.role import EdgeRole

    _run_node(_settings(EdgeSettings, config_file, **flags), EdgeRole)


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
    configure_logging(settings.log_level)
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
def up(host: str, rtmp_port: int, http_port: int, registry: str, idle_grace: float, log_level: str) -> None:
    """Start a whole local cluster: origin, two edges in two regions, control plane."""
    from livecdn.up import UpOptions
    from livecdn.up import up as run_up

    configure_logging(log_level)
    options = UpOptions(host=host, rtmp_port=rtmp_port, http_port=http_port, registry=registry, idle_grace=idle_grace)
    run_forever(run_up(options))


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="livecdn")
