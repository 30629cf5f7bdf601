"""The control plane's settings, and the syntax of its region settings (parsed once, at start-up).

Where a client is, when it does not say (?region=): its address in the operator's ranges, then the GeoIP
database, then the default region. See README, "Nearest edge without asking".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import NoDecode

from common.placement.choice import ANY_REGION
from common.runtime.config import HostPort, HostPortSetting, Settings


class ControlSettings(Settings):
    """The control plane's settings."""

    http: HostPortSetting = Field(default=HostPort("127.0.0.1", 8000), description="HTTP listen address")
    epsilon: float = Field(
        default=0.25, ge=0, description="bounded-load slack: no edge above (1+epsilon) x the average viewers"
    )
    # Viewers routed since an edge's last heartbeat count on top of its reported load (a flash crowd
    # arrives within one heartbeat). A count lapses this long after its last addition; it must outlive
    # an edge's heartbeat period, and the edges' node_ttl (3 s) is the longest a live one can have.
    pending_ttl: float = Field(
        default=3.0,
        ge=0,
        le=3600,
        description="seconds a count of viewers routed to an edge since its last heartbeat lives (0: off)",
    )
    pending_interval: float = Field(
        default=0.005,
        ge=0,
        le=1,
        description="seconds between exchanges of those counts with the registry (replicas see each other's so late)",
    )
    pending_lag: float = Field(
        default=0.3,
        ge=0,
        le=10,
        description="seconds a heartbeat lags the viewers routed to its edge: their connect time + node_list_max_age",
    )
    # Heartbeats change the node list once a second; reading and parsing it for every burst of requests
    # is most of what routing costs on a large cluster.
    node_list_max_age: float = Field(
        default=0.1, ge=0, le=10, description="seconds a node list read from the registry is routed on (0: every burst)"
    )
    # Where a client is, when it does not say (?region=): its address in the operator's ranges, then the
    # GeoIP database, then the default. The list and table settings are parsed here, once; NoDecode keeps
    # pydantic-settings from reading their LIVECDN_* values as JSON.
    region_map: Annotated[tuple[tuple[IPv4Network | IPv6Network, str], ...], NoDecode] = Field(
        default=(), description="client address ranges to regions: CIDR=REGION,... or @FILE (most specific wins)"
    )
    geoip_db: Path | None = Field(default=None, description="a MaxMind-format GeoIP database (country or city)")
    geoip_regions: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="GeoIP country or continent to region: DE=eu,continent:NA=us,..."
    )
    default_region: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.\-]{1,64}$", description="region of a client nothing else placed"
    )
    region_fallback: Annotated[dict[str, tuple[str, ...]], NoDecode] = Field(
        default_factory=dict, description="regions to try, in order, when one has no healthy node: eu=us|ap,us=eu"
    )
    trusted_proxies: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = Field(
        default=(), description="proxies whose client-address header is believed: CIDR,... or @FILE"
    )
    proxy_header: Literal["x-forwarded-for", "forwarded"] = Field(
        default="x-forwarded-for", description="the header trusted proxies set: x-forwarded-for or forwarded (RFC 7239)"
    )

    @field_validator("region_map", "trusted_proxies", "geoip_regions", "region_fallback", mode="before")
    @classmethod
    def _parse_syntax(cls, value: Any, info: ValidationInfo) -> Any:
        parse = {
            "region_map": parse_region_map,
            "trusted_proxies": parse_networks,
            "geoip_regions": parse_geoip_regions,
            "region_fallback": parse_region_fallback,
        }[str(info.field_name)]
        return parse(value)

    @field_validator("geoip_db")
    @classmethod
    def _check_geoip_db(cls, value: Path | None) -> Path | None:
        return None if value is None else check_geoip_db(value)

    @field_validator("geoip_regions")
    @classmethod
    def _geoip_needs_both(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        # One without the other does nothing, which is surely not what the operator meant. (No check when
        # geoip_db itself failed: its own error says enough.)
        if "geoip_db" in info.data:
            if info.data["geoip_db"] is not None and not value:
                raise ValueError("geoip_db is set but no country or continent is mapped to a region")
            if info.data["geoip_db"] is None and value:
                raise ValueError("a table without geoip_db does nothing: set geoip_db too")
        return value


# -- the control plane's region settings: syntax, parsed once at start-up -------------------------------

REGION_NAME: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # what a node's region may be
GEOIP_COUNTRY: Final = "country:"  # geoip_regions keys, normalized: country:DE, continent:EU
GEOIP_CONTINENT: Final = "continent:"
CONTINENTS: Final = frozenset({"AF", "AN", "AS", "EU", "NA", "OC", "SA"})  # GeoIP continent codes


def setting_entries(value: str | list[Any] | Mapping[str, Any]) -> list[tuple[str, str]]:
    """(where, text) of each entry of a list setting, `where` naming it in error messages.

    A string is 'a,b,c' (flag, env or TOML), or '@FILE' with one entry per line ('#' starts a comment,
    blank lines are skipped); a TOML array holds entries; a TOML table {KEY = VALUE} stands for
    KEY=VALUE entries (an array VALUE for 'A|B').
    """
    if isinstance(value, Mapping):
        return [
            (f"entry {key!r}", f"{key}={'|'.join(map(str, item)) if isinstance(item, (list, tuple)) else item}")
            for key, item in value.items()
        ]
    if isinstance(value, list):
        return [entry for item in value for entry in setting_entries(str(item))]
    text = value.strip()
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
        return [
            (f"{path} line {number}", item.strip())
            for number, line in enumerate(lines, 1)
            for item in line.split("#", 1)[0].split(",")
            if item.strip()
        ]
    return [(f"entry {item.strip()!r}", item.strip()) for item in text.split(",") if item.strip()]


def _pair(where: str, text: str, shape: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ValueError(f"{where}: expected {shape}")
    return key.strip(), value.strip()


def _region(where: str, name: str) -> str:
    if not REGION_NAME.match(name):
        raise ValueError(f"{where}: {name!r} is not a region name (letters, digits, '_', '-', '.'; up to 64)")
    return name


def _network(where: str, text: str) -> IPv4Network | IPv6Network:
    try:
        return ip_network(text)
    except ValueError as exc:
        raise ValueError(f"{where}: not an address range (10.0.0.0/8, 2001:db8::/32 or one address): {exc}") from None


def parse_region_map(value: Any) -> Any:
    """CIDR=REGION entries -> ((network, region), ...), most specific first (others pass to pydantic)."""
    if not isinstance(value, (str, list, Mapping)):
        return value
    regions: dict[IPv4Network | IPv6Network, str] = {}
    for where, text in setting_entries(value):
        cidr, name = _pair(where, text, "CIDR=REGION")
        network, region = _network(where, cidr), _region(where, name)
        if regions.setdefault(network, region) != region:
            raise ValueError(f"{where}: {network} is already mapped to {regions[network]!r}")
    return tuple(sorted(regions.items(), key=lambda rule: (-rule[0].prefixlen, rule[0].version, rule[0])))


def parse_networks(value: Any) -> Any:
    """CIDR (or address) entries -> (network, ...)."""
    if not isinstance(value, (str, list, Mapping)):
        return value
    return tuple(dict.fromkeys(_network(where, text) for where, text in setting_entries(value)))


def parse_geoip_regions(value: Any) -> Any:
    """CODE=REGION entries -> {'country:DE': 'eu', 'continent:EU': 'eu'}. A bare code is a country
    (ISO 3166-1 alpha-2); a continent needs 'continent:', since codes clash (NA: Namibia, North America)."""
    if not isinstance(value, (str, list, Mapping)):
        return value
    table: dict[str, str] = {}
    for where, text in setting_entries(value):
        code, name = _pair(where, text, "COUNTRY=REGION or continent:CODE=REGION")
        kind, _, code = code.upper().rpartition(":")
        if kind not in ("", "COUNTRY", "CONTINENT"):
            raise ValueError(f"{where}: {kind.lower()!r} is neither country: nor continent:")
        if kind == "CONTINENT" and code not in CONTINENTS:
            raise ValueError(f"{where}: {code!r} is not a continent code ({' '.join(sorted(CONTINENTS))})")
        if len(code) != 2 or not code.isascii() or not code.isalpha():
            raise ValueError(f"{where}: {code!r} is not a two-letter country code")
        key = (GEOIP_CONTINENT if kind == "CONTINENT" else GEOIP_COUNTRY) + code
        if table.setdefault(key, _region(where, name)) != name:
            raise ValueError(f"{where}: {key} is already mapped to {table[key]!r}")
    return table


def parse_region_fallback(value: Any) -> Any:
    """REGION=R1|R2[|*] entries -> {REGION: (R1, R2[, '*'])}: the regions tried, in order, when REGION
    has no healthy node; '*' (last only) then allows any region."""
    if not isinstance(value, (str, list, Mapping)):
        return value
    order: dict[str, tuple[str, ...]] = {}
    for where, text in setting_entries(value):
        key, chain = _pair(where, text, "REGION=OTHER|OTHER...")
        region = _region(where, key)
        then = tuple(part.strip() for part in chain.split("|"))
        for index, other in enumerate(then):
            if other == ANY_REGION and index != len(then) - 1:
                raise ValueError(f"{where}: {ANY_REGION!r} (any region) can only come last")
            if other != ANY_REGION:
                _region(where, other)
            if other == region:
                raise ValueError(f"{where}: a region cannot fall back to itself")
            if other in then[:index]:
                raise ValueError(f"{where}: {other!r} is listed twice")
        if region in order:
            raise ValueError(f"{where}: {region!r} already has a fallback list")
        order[region] = then
    return order


def check_geoip_db(path: Path) -> Path:
    """The file opens as a MaxMind DB (a wrong path fails at start-up, not on the first viewer)."""
    import maxminddb  # here: only a control plane with a GeoIP database needs the reader

    try:
        maxminddb.open_database(str(path)).close()
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise ValueError(f"{path} is not a readable MaxMind DB file: {exc}") from None
    return path
