"""The `livecdn` command: origin, edge, control, up. Every flag is also a LIVECDN_* variable."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from common.config import ConfigError, NodeSettings, load_settings
from common.node import configure_logging, run


def node_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--rtmp", help="RTMP listen HOST:PORT [LIVECDN_RTMP, default 127.0.0.1:1935]"),
        click.option("--http", help="HTTP listen HOST:PORT [LIVECDN_HTTP, default 127.0.0.1:8080]"),
        click.option("--registry", help="memory://, redis://host:port/db or consul://host:port [LIVECDN_REGISTRY]"),
        click.option("--region", help="region of this node [LIVECDN_REGION, default 'default']"),
        click.option("--node-id", help="stable node id [LIVECDN_NODE_ID, default random]"),
        click.option("--log-level", help="debug, info, warning, error [LIVECDN_LOG_LEVEL]"),
        click.option(
            "--config",
            "config_file",
            envvar="LIVECDN_CONFIG",
            type=click.Path(dir_okay=False),
            help="TOML file with settings (flags and env win) [LIVECDN_CONFIG]",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _settings(cls: type[NodeSettings], config_file: str | None, **flags: Any) -> NodeSettings:
    try:
        return load_settings(cls, flags, config_file)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """livecdn: a live-video CDN of RTMP origins and edges."""


@cli.command()
@node_options
def origin(config_file: str | None, **flags: Any) -> None:
    """Run an origin node: accepts publishes, serves plays."""
    from origin.node import OriginNode

    settings = _settings(NodeSettings, config_file, **flags)
    configure_logging(settings.log_level)
    run(OriginNode(settings))


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="livecdn")
