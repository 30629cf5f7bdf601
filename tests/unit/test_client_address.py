"""The client's address behind proxies: headers believed only from trusted peers, read from the right."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.client_address import ProxyTrust, forwarded_for, parse_address, x_forwarded_for

PROXIES = ProxyTrust([ip_network("10.9.0.0/16"), ip_network("fd00::/8")])
FORWARDED = ProxyTrust([ip_network("10.9.0.0/16")], "forwarded")


def ip(text: str) -> object:
    return ip_address(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        (" 192.0.2.1:4711 ", "192.0.2.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ('"[2001:db8::1]"', "2001:db8::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),  # a dual-stack socket's IPv4 peer
        ("unknown", None),
        ("_hidden", None),
        ("[2001:db8::1", None),
        ("", None),
        ("999.0.0.1", None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    assert parse_address(text) == (None if expected is None else ip_address(expected))


def test_header_values_split_into_hops() -> None:
    assert x_forwarded_for(["192.0.2.1, 10.9.0.1", "10.9.0.2"]) == ["192.0.2.1", "10.9.0.1", "10.9.0.2"]
    assert forwarded_for(
        [
            'for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711"',
            'by=10.9.0.1, for="_x;y,z";proto=https, for=10.9.0.2',
        ]
    ) == ["192.0.2.60", '"[2001:db8:cafe::17]:4711"', "", '"_x;y,z"', "10.9.0.2"]


def test_an_untrusted_peer_is_the_client_whatever_it_sends() -> None:
    assert PROXIES.client("192.0.2.7", ["198.51.100.1"]) == ip("192.0.2.7")
    assert ProxyTrust().client("10.9.0.1", ["198.51.100.1"]) == ip("10.9.0.1")  # no trusted proxies at all
    assert FORWARDED.client("192.0.2.7", ["for=198.51.100.1"]) == ip("192.0.2.7")


def test_a_trusted_peer_is_believed_from_the_right() -> None:
    # The client forged the left-most entry; the proxies appended the rest.
    assert PROXIES.client("10.9.0.1", ["203.0.113.9, 198.51.100.1, 10.9.0.2"]) == ip("198.51.100.1")
    assert PROXIES.client("10.9.0.1", ["198.51.100.1"]) == ip("198.51.100.1")
    assert PROXIES.client("fd00::1", ["2001:db8::5"]) == ip("2001:db8::5")
    assert PROXIES.client("::ffff:10.9.0.1", ["198.51.100.1"]) == ip("198.51.100.1")


def test_a_trusted_peer_without_a_header_is_itself_the_client() -> None:
    assert PROXIES.client("10.9.0.1", []) == ip("10.9.0.1")
    assert PROXIES.client("10.9.0.1", ["10.9.0.3, 10.9.0.2"]) == ip("10.9.0.3")  # all proxies: the left-most


def test_a_hop_that_is_not_an_address_leaves_the_client_unknown() -> None:
    assert PROXIES.client("10.9.0.1", ["198.51.100.1, unknown"]) is None
    assert PROXIES.client("10.9.0.1", ["garbage"]) is None
    # ...but garbage left of the first untrusted hop is the client's own say, and ignored.
    assert PROXIES.client("10.9.0.1", ["garbage, 198.51.100.1"]) == ip("198.51.100.1")
    assert FORWARDED.client("10.9.0.1", ["for=198.51.100.1, by=10.9.0.5"]) is None
    assert PROXIES.client(None, ["198.51.100.1"]) is None  # no peer address (a unix socket)


def test_only_the_configured_header_counts() -> None:
    assert FORWARDED.client("10.9.0.1", ['for="198.51.100.1:80";proto=https']) == ip("198.51.100.1")
    assert FORWARDED.header_name == "Forwarded" and PROXIES.header_name == "X-Forwarded-For"


untrusted = st.integers(0, 2**32 - 1).map(IPv4Address).filter(lambda a: a not in ip_network("10.9.0.0/16"))
trusted = st.integers(0, 2**16 - 1).map(lambda n: IPv4Address(int(IPv4Address("10.9.0.0")) + n))


@settings(max_examples=200, deadline=None)
@given(forged=st.lists(untrusted, max_size=4), client=untrusted, hops=st.lists(trusted, max_size=4), peer=trusted)
def test_forged_entries_never_win(
    forged: list[IPv4Address], client: IPv4Address, hops: list[IPv4Address], peer: IPv4Address
) -> None:
    """Whatever a client writes left of what the trusted proxies appended, the address the last trusted
    proxy saw is the one believed; and from an untrusted peer nothing written counts."""
    chain = ", ".join(str(a) for a in [*forged, client, *hops])
    assert PROXIES.client(str(peer), [chain]) == client
    assert PROXIES.client(str(client), [chain]) == client
    element = ", ".join(f"for={a}" for a in [*forged, client, *hops])
    assert FORWARDED.client(str(peer), [element]) == client
