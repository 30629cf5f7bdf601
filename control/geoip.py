"""Region of an address from a GeoIP database the operator supplies (MaxMind DB format) and a table from
country or continent to region.

Records are read as GeoIP2/GeoLite2 Country and City, and DB-IP, databases write them
(`country.iso_code`, else `registered_country.iso_code`; `continent.code`), or flat as ipinfo's
(`country_code`, `continent_code`). The country decides when the table names it, else the continent.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import maxminddb

from control.client_address import IPAddress
from control.settings import GEOIP_CONTINENT, GEOIP_COUNTRY


def _code(record: Mapping[str, Any], *paths: tuple[str, ...]) -> str | None:
    """The first of the record's fields at `paths` that is a string, upper-cased."""
    for path in paths:
        value: Any = record
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if isinstance(value, str) and value:
            return value.upper()
    return None


def country_and_continent(record: Any) -> tuple[str | None, str | None]:
    if not isinstance(record, Mapping):
        return None, None
    country = _code(record, ("country", "iso_code"), ("registered_country", "iso_code"), ("country_code",))
    continent = _code(record, ("continent", "code"), ("continent_code",))
    return country, continent


class GeoipRegions:
    """An open GeoIP database and the operator's table (keys 'country:DE', 'continent:EU')."""

    def __init__(self, reader: maxminddb.Reader, table: Mapping[str, str]) -> None:
        self._reader = reader
        self._table = dict(table)

    @classmethod
    def open(cls, path: Path | str, table: Mapping[str, str]) -> GeoipRegions:
        # The C extension's memory map when it is built (MODE_AUTO): a lookup is a few microseconds, so it
        # runs on the event loop with no thread hop.
        return cls(maxminddb.open_database(str(path)), table)

    def lookup(self, address: IPAddress) -> str | None:
        try:
            record = self._reader.get(address)
        except ValueError:  # an IPv6 address in an IPv4-only database
            return None
        country, continent = country_and_continent(record)
        if country is not None and (region := self._table.get(GEOIP_COUNTRY + country)) is not None:
            return region
        if continent is not None:
            return self._table.get(GEOIP_CONTINENT + continent)
        return None

    def close(self) -> None:
        self._reader.close()
