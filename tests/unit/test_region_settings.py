"""The control plane's region settings: syntax, sources (flag, env, TOML, @FILE) and start-up errors."""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path

import pytest

from common.runtime.config import ConfigError, load_settings
from control.settings import ControlSettings
from tests.geoip import country, write_geoip_db


def settings(**flags: object) -> ControlSettings:
    return load_settings(ControlSettings, dict(flags))


def test_defaults_place_nobody() -> None:
    s = settings()
    assert s.region_map == () and s.geoip_db is None and s.geoip_regions == {}
    assert s.default_region is None and s.region_fallback == {} and s.trusted_proxies == ()
    assert s.proxy_header == "x-forwarded-for"


def test_region_map_most_specific_first_ipv4_and_ipv6() -> None:
    s = settings(region_map=" 10.0.0.0/8=eu, 10.1.0.0/16=us,2001:db8::/32=ap ,10.1.2.3=ap,")
    assert s.region_map == (
        (ip_network("10.1.2.3/32"), "ap"),
        (ip_network("2001:db8::/32"), "ap"),
        (ip_network("10.1.0.0/16"), "us"),
        (ip_network("10.0.0.0/8"), "eu"),
    )


def test_region_map_from_a_file_with_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "regions.txt"
    path.write_text("# office ranges\n\n10.0.0.0/8=eu   # Frankfurt\n  2001:db8::/32 = us\n\n")
    s = settings(region_map=f"@{path}")
    assert s.region_map == ((ip_network("2001:db8::/32"), "us"), (ip_network("10.0.0.0/8"), "eu"))


def test_a_bad_line_of_the_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "regions.txt"
    path.write_text("10.0.0.0/8=eu\n# fine\n10.0.0.300/32=us\n")
    with pytest.raises(ConfigError, match=rf"region_map \(--region-map / LIVECDN_REGION_MAP\).*{path} line 3"):
        settings(region_map=f"@{path}")


def test_environment_values_are_the_same_syntax_not_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVECDN_REGION_MAP", "10.0.0.0/8=eu")
    monkeypatch.setenv("LIVECDN_GEOIP_REGIONS", "")
    monkeypatch.setenv("LIVECDN_REGION_FALLBACK", "eu=us|ap")
    monkeypatch.setenv("LIVECDN_TRUSTED_PROXIES", "192.0.2.1,198.51.100.0/24")
    monkeypatch.setenv("LIVECDN_DEFAULT_REGION", "us")
    s = settings()
    assert s.region_map == ((ip_network("10.0.0.0/8"), "eu"),)
    assert s.region_fallback == {"eu": ("us", "ap")}
    assert s.trusted_proxies == (ip_network("192.0.2.1/32"), ip_network("198.51.100.0/24"))
    assert s.default_region == "us"
    assert settings(region_map="10.0.0.0/8=ap").region_map[0][1] == "ap"  # a flag beats the environment


def test_toml_takes_strings_arrays_and_tables(tmp_path: Path) -> None:
    db = write_geoip_db(tmp_path / "geo.mmdb", {"192.0.2.0/24": country("DE", "EU")})
    toml = tmp_path / "control.toml"
    toml.write_text(
        'region_map = ["10.0.0.0/8=eu", "10.1.0.0/16=us"]\n'
        f'geoip_db = "{db}"\n'
        'default_region = "eu"\n'
        'trusted_proxies = "10.9.0.0/16"\n'
        "[geoip_regions]\n"
        'DE = "eu"\n'
        '"continent:NA" = "us"\n'
        "[region_fallback]\n"
        'eu = ["us", "ap"]\n'
        'us = "eu|*"\n'
    )
    s = load_settings(ControlSettings, {}, toml)
    assert s.region_map == ((ip_network("10.1.0.0/16"), "us"), (ip_network("10.0.0.0/8"), "eu"))
    assert s.geoip_db == db and s.geoip_regions == {"country:DE": "eu", "continent:NA": "us"}
    assert s.region_fallback == {"eu": ("us", "ap"), "us": ("eu", "*")}
    assert s.trusted_proxies == (ip_network("10.9.0.0/16"),) and s.default_region == "eu"


def test_geoip_table_keys_bare_codes_are_countries(tmp_path: Path) -> None:
    db = write_geoip_db(tmp_path / "geo.mmdb", {"192.0.2.0/24": country("DE", "EU")})
    s = settings(geoip_db=str(db), geoip_regions="de=eu, country:FR=eu,NA=af,continent:na=us,Continent:EU=eu")
    assert s.geoip_regions == {
        "country:DE": "eu",
        "country:FR": "eu",
        "country:NA": "af",  # Namibia: a bare code is a country, the continent needs its prefix
        "continent:NA": "us",
        "continent:EU": "eu",
    }


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("region_map", "10.0.0.0/8", "entry '10.0.0.0/8': expected CIDR=REGION"),
        ("region_map", "10.0.0.1/8=eu", "entry '10.0.0.1/8=eu': not an address range"),
        ("region_map", "eu=10.0.0.0/8", "entry 'eu=10.0.0.0/8': not an address range"),
        ("region_map", "10.0.0.0/33=eu", "entry '10.0.0.0/33=eu'"),
        ("region_map", "10.0.0.0/8=e u", "'e u' is not a region name"),
        ("region_map", "10.0.0.0/8=eu,10.0.0.0/8=us", "10.0.0.0/8 is already mapped to 'eu'"),
        ("region_map", "@/nonexistent/regions.txt", "cannot read /nonexistent/regions.txt"),
        ("trusted_proxies", "10.0.0.0/8,proxy.example", "entry 'proxy.example': not an address range"),
        ("region_fallback", "eu", "entry 'eu': expected REGION=OTHER|OTHER"),
        ("region_fallback", "eu=eu|us", "cannot fall back to itself"),
        ("region_fallback", "eu=us|us", "'us' is listed twice"),
        ("region_fallback", "eu=*|us", "can only come last"),
        ("region_fallback", "eu=us,eu=ap", "'eu' already has a fallback list"),
        ("region_fallback", "eu=u s", "'u s' is not a region name"),
        ("default_region", "e u", "String should match pattern"),
        ("proxy_header", "x-real-ip", "'x-forwarded-for' or 'forwarded'"),
        ("geoip_regions", "DE=eu", "without geoip_db does nothing"),
        ("geoip_db", "/nonexistent/geo.mmdb", "/nonexistent/geo.mmdb does not exist"),
    ],
)
def test_a_bad_entry_stops_start_up_naming_setting_and_entry(setting: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(**{setting: value})
    text = str(caught.value)
    assert f"{setting} (--{setting.replace('_', '-')} / LIVECDN_{setting.upper()})" in text
    assert message in text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("XX:DE=eu", "'xx' is neither country: nor continent:"),
        ("continent:XX=eu", "'XX' is not a continent code"),
        ("DEU=eu", "'DEU' is not a two-letter country code"),
        ("DE=eu,de=us", "country:DE is already mapped to 'eu'"),
    ],
)
def test_bad_geoip_table_entries(tmp_path: Path, value: str, message: str) -> None:
    db = write_geoip_db(tmp_path / "geo.mmdb", {"192.0.2.0/24": country("DE", "EU")})
    with pytest.raises(ConfigError, match="geoip_regions") as caught:
        settings(geoip_db=str(db), geoip_regions=value)
    assert message in str(caught.value)


def test_a_geoip_db_needs_a_table_and_must_be_one(tmp_path: Path) -> None:
    db = write_geoip_db(tmp_path / "geo.mmdb", {"192.0.2.0/24": country("DE", "EU")})
    with pytest.raises(ConfigError, match=r"geoip_regions.*geoip_db is set but no country"):
        settings(geoip_db=str(db))
    text = tmp_path / "not-a-db.mmdb"
    text.write_text("10.0.0.0/8=eu\n")
    with pytest.raises(ConfigError, match=r"geoip_db .*not-a-db\.mmdb is not a readable MaxMind DB"):
        settings(geoip_db=str(text), geoip_regions="DE=eu")


def test_parsed_settings_validate_again_unchanged() -> None:
    """Settings built from another's values (as a copy does) keep them: the parsers accept their output."""
    s = settings(region_map="10.0.0.0/8=eu", region_fallback="eu=us|*", trusted_proxies="10.9.0.0/16")
    again = ControlSettings(**s.model_dump())
    assert again.region_map == s.region_map and again.region_fallback == s.region_fallback
    assert again.trusted_proxies == s.trusted_proxies
