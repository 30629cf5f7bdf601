"""Which region a client is in, when it does not say: the operator's address ranges, then the GeoIP
database, then the default region. The settings are parsed once at start-up (common.runtime.config);
per request this does only lookups.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from control.client_address import IPAddress, IPNetwork
from control.geoip import GeoipRegions
from control.settings import ControlSettings


class RegionSource(StrEnum):
    """What decided a client's region (the `region_source` of a routing answer)."""

    QUERY = "query"  # the client said it: ?region=
    NETWORK = "network"  # its address is in a range of region_map
    GEOIP = "geoip"  # the GeoIP database placed its address in a country or continent of geoip_regions
    DEFAULT = "default"  # nothing else did: default_region
    NONE = "none"  # nothing did and there is no default: no region, every node is a candidate


@dataclass(frozen=True, slots=True)
class RegionChoice:
    region: str | None
    source: RegionSource


class NetworkRegions:
    """The operator's address ranges -> regions; the most specific range holding an address wins.

    Ranges are kept per IP version and prefix length, longest first, as {network bits: region}: a
    lookup masks the address once per prefix length in use (a few dict lookups) however many ranges.
    """

    __slots__ = ("_tables",)

    def __init__(self, rules: Iterable[tuple[IPNetwork, str]] = ()) -> None:
        by_length: dict[tuple[int, int], dict[int, str]] = {}
        for network, region in rules:
            # setdefault: of two identical ranges the first listed wins (the settings refuse a conflict).
            by_length.setdefault((network.version, network.prefixlen), {}).setdefault(
                int(network.network_address), region
            )
        self._tables: dict[int, list[tuple[int, dict[int, str]]]] = {4: [], 6: []}
        for (version, length), table in sorted(by_length.items(), key=lambda item: -item[0][1]):
            bits = 32 if version == 4 else 128
            mask = ((1 << length) - 1) << (bits - length)
            self._tables[version].append((mask, table))

    def lookup(self, address: IPAddress) -> str | None:
        value = int(address)
        for mask, table in self._tables[address.version]:
            region = table.get(value & mask)
            if region is not None:
                return region
        return None


class ClientRegions:
    """Decides a client's region: the one it asked for, else its address's (network, then GeoIP), else
    the default. Owns the GeoIP database it is given (close() closes it)."""

    def __init__(
        self,
        networks: NetworkRegions | None = None,
        geoip: GeoipRegions | None = None,
        default: str | None = None,
    ) -> None:
        self.networks = NetworkRegions() if networks is None else networks
        self.geoip = geoip
        self.default = default

    @classmethod
    def from_settings(cls, settings: ControlSettings) -> ClientRegions:
        geoip = None
        if settings.geoip_db is not None:
            geoip = GeoipRegions.open(settings.geoip_db, settings.geoip_regions)
        return cls(NetworkRegions(settings.region_map), geoip, settings.default_region)

    def decide(self, asked: str | None, address: IPAddress | None) -> RegionChoice:
        if asked is not None:
            return RegionChoice(asked, RegionSource.QUERY)
        if address is not None:
            region = self.networks.lookup(address)
            if region is not None:
                return RegionChoice(region, RegionSource.NETWORK)
            region = self.geoip.lookup(address) if self.geoip is not None else None
            if region is not None:
                return RegionChoice(region, RegionSource.GEOIP)
        if self.default is not None:
            return RegionChoice(self.default, RegionSource.DEFAULT)
        return RegionChoice(None, RegionSource.NONE)

    def close(self) -> None:
        if self.geoip is not None:
            self.geoip.close()
