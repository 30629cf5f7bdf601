"""GeoIP databases made inside tests, in the MaxMind DB format the control plane reads (no real data)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet


def country(iso_code: str, continent: str) -> dict[str, Any]:
    """A record as GeoIP2/GeoLite2 Country and City databases hold it (the fields the reader uses)."""
    return {"country": {"iso_code": iso_code}, "continent": {"code": continent}}


def write_geoip_db(path: Path, records: Mapping[str, Mapping[str, Any]], *, ip_version: int = 6) -> Path:
    """A database mapping each CIDR to its record; IPv6 databases hold IPv4 too, as real ones do."""
    writer = MMDBWriter(ip_version=ip_version, ipv4_compatible=ip_version == 6, database_type="GeoIP2-Country")
    for cidr, record in records.items():
        writer.insert_network(IPSet([cidr]), dict(record))
    writer.to_db_file(str(path))
    return path
