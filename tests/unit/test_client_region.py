"""A client's region from its address: the operator's ranges, the GeoIP database, the default."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.runtime.config import load_settings
from control.client_address import IPNetwork
from control.client_region import ClientRegions, NetworkRegions, RegionChoice, RegionSource
from control.geoip import GeoipRegions
from control.settings import ControlSettings, parse_region_map
from tests.geoip import country, write_geoip_db


def rules(text: str) -> list[tuple[IPNetwork, str]]:
    return list(parse_region_map(text))


def test_the_most_specific_range_wins() -> None:
    table = NetworkRegions(rules("10.0.0.0/8=eu,10.1.0.0/16=us,10.1.2.0/24=ap,10.1.2.3/32=sa,2001:db8::/32=v6"))
    assert table.lookup(ip_address("10.200.0.1")) == "eu"
    assert table.lookup(ip_address("10.1.200.1")) == "us"
    assert table.lookup(ip_address("10.1.2.4")) == "ap"
    assert table.lookup(ip_address("10.1.2.3")) == "sa"
    assert table.lookup(ip_address("11.0.0.1")) is None
    assert table.lookup(ip_address("2001:db8:1::1")) == "v6"
    assert table.lookup(ip_address("2001:db9::1")) is None
    assert table.lookup(ip_address("::a01:203")) is None  # the IPv6 address with 10.1.2.3's bits is not it
    assert NetworkRegions().lookup(ip_address("10.0.0.1")) is None


def test_order_of_the_rules_does_not_matter() -> None:
    forward = rules("0.0.0.0/0=any,10.0.0.0/8=eu")
    assert NetworkRegions(forward).lookup(ip_address("10.0.0.1")) == "eu"
    assert NetworkRegions(reversed(forward)).lookup(ip_address("10.0.0.1")) == "eu"
    assert NetworkRegions(forward).lookup(ip_address("192.0.2.1")) == "any"


networks = st.builds(
    lambda value, length: IPv4Network((value, length), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 32)
)


@settings(max_examples=200, deadline=None)
@given(
    table=st.dictionaries(networks, st.sampled_from(["eu", "us", "ap", "sa"]), max_size=20),
    probes=st.lists(st.integers(0, 2**32 - 1).map(IPv4Address), min_size=1, max_size=20),
)
def test_lookup_is_the_longest_matching_prefix(table: dict[IPv4Network, str], probes: list[IPv4Address]) -> None:
    regions = NetworkRegions(table.items())
    probes += [network.network_address for network in table]  # addresses that surely hit some range
    for address in probes:
        holding = [network for network in table if address in network]
        expected = table[max(holding, key=lambda n: n.prefixlen)] if holding else None
        assert regions.lookup(address) == expected


@pytest.fixture
def geoip(tmp_path: Path) -> Iterator[GeoipRegions]:
    db = write_geoip_db(
        tmp_path / "geo.mmdb",
        {
            "192.0.2.0/25": country("DE", "EU"),
            "192.0.2.128/25": country("PT", "EU"),
            "198.51.100.0/24": country("BR", "SA"),
            "203.0.113.0/24": {"registered_country": {"iso_code": "JP"}, "continent": {"code": "AS"}},
            "2001:db8::/32": {"country_code": "US", "continent_code": "NA"},  # ipinfo's flat layout
            "2001:db9::/32": {"continent": {"code": "OC"}},
        },
    )
    regions = GeoipRegions.open(
        db, {"country:DE": "eu-central", "continent:EU": "eu", "country:JP": "ap", "country:US": "us"}
    )
    yield regions
    regions.close()


@pytest.mark.parametrize(
    ("address", "region"),
    [
        ("192.0.2.1", "eu-central"),  # the country, when the table names it
        ("192.0.2.200", "eu"),  # else the continent
        ("198.51.100.1", None),  # neither named
        ("203.0.113.1", "ap"),  # no country: the registered country
        ("2001:db8::1", "us"),
        ("2001:db9::1", None),
        ("10.0.0.1", None),  # not in the database
    ],
)
def test_geoip_country_then_continent(geoip: GeoipRegions, address: str, region: str | None) -> None:
    assert geoip.lookup(ip_address(address)) == region


def test_an_ipv4_only_database_answers_nothing_for_ipv6(tmp_path: Path) -> None:
    db = write_geoip_db(tmp_path / "v4.mmdb", {"192.0.2.0/24": country("DE", "EU")}, ip_version=4)
    regions = GeoipRegions.open(db, {"country:DE": "eu"})
    try:
        assert regions.lookup(ip_address("192.0.2.1")) == "eu"
        assert regions.lookup(IPv6Address("2001:db8::1")) is None
    finally:
        regions.close()


def test_decision_order_query_network_geoip_default(geoip: GeoipRegions) -> None:
    regions = ClientRegions(NetworkRegions(rules("192.0.2.0/28=lan")), geoip, "fallback")
    decide = regions.decide
    assert decide("ap", ip_address("192.0.2.1")) == RegionChoice("ap", RegionSource.QUERY)
    assert decide(None, ip_address("192.0.2.1")) == RegionChoice("lan", RegionSource.NETWORK)
    assert decide(None, ip_address("192.0.2.100")) == RegionChoice("eu-central", RegionSource.GEOIP)
    assert decide(None, ip_address("198.51.100.1")) == RegionChoice("fallback", RegionSource.DEFAULT)
    assert decide(None, None) == RegionChoice("fallback", RegionSource.DEFAULT)
    assert ClientRegions().decide(None, ip_address("192.0.2.1")) == RegionChoice(None, RegionSource.NONE)


def test_built_from_settings(tmp_path: Path) -> None:
    db = write_geoip_db(tmp_path / "geo.mmdb", {"198.51.100.0/24": country("BR", "SA")})
    s = load_settings(
        ControlSettings,
        {
            "region_map": "192.0.2.0/24=eu",
            "geoip_db": str(db),
            "geoip_regions": "continent:SA=sa",
            "default_region": "us",
        },
    )
    regions = ClientRegions.from_settings(s)
    try:
        assert regions.decide(None, ip_address("192.0.2.9")).region == "eu"
        assert regions.decide(None, ip_address("198.51.100.9")) == RegionChoice("sa", RegionSource.GEOIP)
        assert regions.decide(None, ip_address("203.0.113.9")) == RegionChoice("us", RegionSource.DEFAULT)
    finally:
        regions.close()
    assert ClientRegions.from_settings(ControlSettings()).geoip is None


def test_ipv6_ranges() -> None:
    table = NetworkRegions([(ip_network("2001:db8::/32"), "a"), (ip_network("2001:db8:ff::/48"), "b")])
    assert table.lookup(IPv6Address("2001:db8:ff::1")) == "b"
    assert table.lookup(IPv6Address("2001:db8:fe::1")) == "a"
