"""Typed settings of every process: command-line flags > LIVECDN_* environment > optional TOML file > defaults."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any, Final, NamedTuple, TypeVar

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from common.system import available_cores


class ConfigError(ValueError):
    """Settings that cannot work; the message names the setting, its flag and env var."""


class HostPort(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def public_host(self) -> str:
        """Where a client on this machine reaches a wildcard bind."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)


def parse_host_port(value: Any) -> HostPort:
    if isinstance(value, HostPort):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return HostPort(str(value[0]), int(value[1]))
    text = str(value).strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0-65535")
    return HostPort(host.strip("[]") or "0.0.0.0", port)


REGISTRY_SCHEMES: Final = ("memory://", "redis://", "rediss://", "consul://")  # what open_registry can open
REGISTRY_HELP: Final = "memory:// (one process only), redis://host:port/db or consul://host:port"


def check_registry_url(value: str) -> str:
    if not value.startswith(REGISTRY_SCHEMES):
        raise ValueError(f"unsupported registry URL {value!r}: use {REGISTRY_HELP}")
    return value


# NoDecode: a tuple type, which pydantic-settings would otherwise read from LIVECDN_RTMP / LIVECDN_HTTP as
# JSON; the value is HOST:PORT text, as flags and TOML give it.
HostPortSetting = Annotated[HostPort, NoDecode, BeforeValidator(parse_host_port)]
RegistryUrl = Annotated[str, AfterValidator(check_registry_url)]


class Settings(BaseSettings):
    """Every process's settings: flags (init) > LIVECDN_* environment > the TOML file given > defaults."""

    model_config = SettingsConfigDict(env_prefix="LIVECDN_", extra="ignore", validate_default=True)

    registry: RegistryUrl = "memory://"
    log_level: str = Field(default="info", pattern=r"(?i)^(debug|info|warning|error)$")
    log_format: str = Field(default="text", pattern=r"^(text|json)$")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        toml_file = settings_cls.model_config.get("toml_file")
        if toml_file:
            sources += (TomlConfigSettingsSource(settings_cls),)
        return sources


class NodeSettings(Settings):
    """Settings every media node (origin, edge) shares."""

    rtmp: HostPortSetting = Field(default=HostPort("127.0.0.1", 1935), description="RTMP listen address")
    http: HostPortSetting = Field(
        default=HostPort("127.0.0.1", 8080), description="HTTP listen address (health, stats, metrics)"
    )
    region: str = Field(default="default", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    node_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12], pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    chunk_size: int = Field(default=4096, ge=128, le=65536, description="outbound RTMP chunk size")
    max_message_size: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024)
    max_in_chunk_size: int = Field(default=65536, ge=128, le=16 * 1024 * 1024)
    min_in_chunk_size: int = Field(
        default=128, ge=1, le=65536, description="smallest Set Chunk Size accepted from a peer"
    )
    max_chunk_streams: int = Field(default=64, ge=4, le=65599)
    max_amf_depth: int = Field(default=16, ge=2, le=256)
    gop_max_bytes: int = Field(default=8 * 1024 * 1024, ge=0)
    gop_max_packets: int = Field(default=4096, ge=0)
    viewer_high_water: int = Field(default=1024 * 1024, ge=16 * 1024)
    viewer_max_buffer: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    viewer_max_stall: float = Field(
        default=10.0, gt=0, description="seconds a viewer may stay behind (skipping) before it is disconnected"
    )
    viewer_sndbuf: int = Field(
        default=0, ge=0, le=64 * 1024 * 1024, description="SO_SNDBUF of viewer sockets in bytes (0: kernel autotuning)"
    )
    viewer_nodelay: bool = Field(
        default=False,
        description="TCP_NODELAY on viewer sockets (off: the kernel coalesces writes awaiting an ACK, like nginx-rtmp)",
    )
    merge_phases: int = Field(
        default=0, ge=0, le=16, description="viewer groups flushed in turn across the window (0: one per 25 ms)"
    )
    merge_window: float | None = Field(
        default=None,
        ge=0,
        le=1.0,
        description="fixed seconds of packets merged into one write per viewer (0: none); unset: adaptive",
    )
    merge_window_min: float = Field(
        default=0.0, ge=0, le=1.0, description="adaptive merge window's floor, seconds (0: a write per message)"
    )
    merge_window_max: float = Field(default=0.03, ge=0, le=1.0, description="adaptive merge window's ceiling, seconds")
    merge_busy_target: float = Field(
        default=0.85, gt=0, le=1.0, description="busy fraction of the event loop the adaptive window keeps under"
    )
    handshake_timeout: float = Field(default=10.0, gt=0)
    idle_timeout: float = Field(default=30.0, gt=0)
    advertise_host: str | None = Field(
        default=None, description="host other nodes and clients use to reach this one (default: the bind host)"
    )
    heartbeat_interval: float = Field(default=1.0, gt=0, description="seconds between registry heartbeats")
    node_ttl: float = Field(
        default=3.0, gt=0, description="a node missing heartbeats this long is gone (its claims can be taken over)"
    )
    claim_ttl: float = Field(default=10.0, gt=0, description="a dead origin's stream claims lapse after this")
    publish_grace: float = Field(
        default=10.0, ge=0, description="seconds viewers wait for a publisher that left to come back (0: end at once)"
    )
    publisher_timeout: float = Field(
        default=5.0, gt=0, description="a publisher that sends no media this long is dropped"
    )
    drain_timeout: float = Field(
        default=30.0, ge=0, description="seconds a draining node (SIGTERM, POST /v1/drain) keeps its viewers"
    )
    hls_part_duration: float = Field(
        default=0.5, ge=0.1, le=5.0, description="LL-HLS part target in seconds (segments are one GOP each)"
    )
    # Limits on what one client may hold (docs/SECURITY.md).
    max_connections: int = Field(
        default=20_000, ge=0, description="RTMP connections and HTTP-FLV viewers (0: no limit)"
    )
    max_connections_per_ip: int = Field(default=1_000, ge=0, description="the same, per client address (0: no limit)")
    max_commands_per_second: float = Field(
        default=50.0, gt=0, description="RTMP command messages a connection may send per second (bursts of 2 s)"
    )
    max_unsent_bytes: int = Field(
        default=1024 * 1024, ge=64 * 1024, description="unsent bytes a connection that does not play may pile up"
    )
    # Secrets (docs/SECURITY.md): each also from a file, `*_file`, for Docker and Kubernetes secrets.
    play_secret: SecretStr | None = Field(default=None, description="signs play tokens; set: viewers need one")
    play_secret_file: Path | None = None
    cluster_secret: SecretStr | None = Field(
        default=None, description="edges prove they are edges to their upstream with it; signs webhooks"
    )
    cluster_secret_file: Path | None = None
    admin_token: SecretStr | None = Field(default=None, description="bearer token of the admin API (drain, kick)")
    admin_token_file: Path | None = None

    @model_validator(mode="after")
    def _secrets_from_files(self) -> NodeSettings:
        for name in SECRETS:
            path = getattr(self, f"{name}_file", None)
            if path is not None and getattr(self, name) is None:
                setattr(self, name, read_secret(path, name))
        return self

    @model_validator(mode="after")
    def _merge_window_bounds_in_order(self) -> NodeSettings:
        if self.merge_window_min > self.merge_window_max:
            low, high = self.merge_window_min, self.merge_window_max
            raise ValueError(f"merge_window_min ({low:g}s) must not exceed merge_window_max ({high:g}s)")
        return self

    @model_validator(mode="after")
    def _leases_outlive_their_renewals(self) -> NodeSettings:
        # A record that lapses before its next refresh makes a live node look dead: others would take its
        # streams over. Two refreshes per lease leaves room for one late one.
        if self.node_ttl < 2 * self.heartbeat_interval:
            beat = self.heartbeat_interval
            raise ValueError(f"node_ttl ({self.node_ttl:g}s) must be at least twice heartbeat_interval ({beat:g}s)")
        return self


def read_secret(path: Path, name: str) -> SecretStr:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{name}_file: cannot read {path}: {exc.strerror or exc}") from None
    if not text:
        raise ValueError(f"{name}_file: {path} is empty")
    return SecretStr(text)


SECRETS: Final = ("publish_secret", "play_secret", "cluster_secret", "admin_token")


def secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


class OriginSettings(NodeSettings):
    """Who may publish: a signed URL (publish_secret), a webhook (on_publish), both, or anyone if asked for."""

    publish_secret: SecretStr | None = Field(default=None, description="signs publish URLs (livecdn sign)")
    publish_secret_file: Path | None = None
    on_publish: AnyHttpUrl | None = Field(default=None, description="webhook asked before each publish (POST)")
    on_publish_timeout: float = Field(default=3.0, gt=0, le=30, description="seconds the webhook has to answer")
    on_publish_fail_open: bool = Field(
        default=False, description="allow publishes when the webhook cannot be reached (default: refuse them)"
    )
    open_publish: bool = Field(default=False, description="let anyone publish any stream (no publish auth)")

    @model_validator(mode="after")
    def _someone_decides_who_publishes(self) -> OriginSettings:
        if self.publish_secret is None and self.on_publish is None and not self.open_publish:
            raise ValueError(
                "nothing decides who may publish: set publish_secret (signed URLs: livecdn sign) and/or "
                "on_publish (a webhook), or open_publish=true to let anyone publish"
            )
        if self.on_publish is not None and self.cluster_secret is None:
            raise ValueError("on_publish needs cluster_secret: it signs each webhook request")
        return self


class EdgeSettings(NodeSettings):
    upstream: str | None = Field(
        default=None,
        pattern=r"^rtmp://[^/]+/[^/?]+/?$",
        description="static upstream rtmp://HOST:PORT/APP (any server)",
    )
    parent_region: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.\-]{1,64}$", description="pull through an edge of this region (mid tier)"
    )
    idle_grace: float = Field(default=15.0, ge=0, description="seconds a pull outlives its last viewer")
    pull_timeout: float = Field(default=5.0, gt=0, description="seconds to resolve and start an upstream pull")
    reconnect_window: float = Field(
        default=30.0, gt=0, description="seconds a lost upstream is retried with no source before viewers are told"
    )
    upstream_timeout: float = Field(
        default=5.0, gt=0, description="a pull that delivers no media this long is abandoned and re-resolved"
    )
    # Edges only: an origin's claims and publishers live in one process (docs/ARCHITECTURE.md, "Workers").
    workers: int = Field(
        default_factory=available_cores,
        ge=1,
        description="processes sharing the node's ports, one pull per stream between them (1: one process)",
    )


S = TypeVar("S", bound=Settings)


def load_settings(cls: type[S], overrides: dict[str, Any] | None = None, config_file: str | Path | None = None) -> S:
    """Build settings, turning validation errors into one readable ConfigError."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    target: type[S] = cls
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        target = type(cls.__name__, (cls,), {"model_config": {**cls.model_config, "toml_file": path}})
    try:
        return target(**given)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            if not field:  # a rule across settings: its message names them
                lines.append(str(error["msg"]).removeprefix("Value error, "))
                continue
            flag = "--" + field.replace("_", "-")
            # The input is never echoed for a secret.
            got = "" if field in SECRETS or field.endswith("_file") else f" (got {error.get('input')!r})"
            lines.append(f"{field} ({flag} / LIVECDN_{field.upper()}): {error['msg']}{got}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from None
