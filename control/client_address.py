"""Who the client is: its address, read from proxy headers only when a trusted proxy sent them.

A header such as X-Forwarded-For is text any client can write. It is believed only when the direct peer
is one of the operator's proxies (`trusted_proxies`), and then only from the right: each trusted proxy
appends the address it got the request from, so walking the chain right to left through trusted
proxies, the first address that is not one of them is the client; anything to its left is the
client's own say and ignored. Pure: no I/O, no aiohttp.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Final, Literal

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
ProxyHeader = Literal["x-forwarded-for", "forwarded"]

HEADER_NAMES: Final[dict[ProxyHeader, str]] = {"x-forwarded-for": "X-Forwarded-For", "forwarded": "Forwarded"}


def parse_address(text: str) -> IPAddress | None:
    """An address as proxies write it: 192.0.2.1, 192.0.2.1:4711, 2001:db8::1, [2001:db8::1]:4711;
    an IPv4-mapped IPv6 address becomes IPv4 (a dual-stack socket reports IPv4 peers that way). None for
    anything else (RFC 7239 'unknown', an obfuscated '_name', garbage)."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has at least two colons
        text = text.split(":", 1)[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def forwarded_for(values: Iterable[str]) -> list[str]:
    """The `for=` node of each hop in RFC 7239 Forwarded header values, left to right ('' for a hop that
    gives none, so it breaks the chain instead of being skipped)."""
    nodes = []
    for value in values:
        for element in _split_outside_quotes(value, ","):
            if not element.strip():
                continue
            node = ""
            for pair in _split_outside_quotes(element, ";"):
                name, _, token = pair.partition("=")
                if name.strip().lower() == "for":
                    node = token.strip()
            nodes.append(node)
    return nodes


def x_forwarded_for(values: Iterable[str]) -> list[str]:
    """The addresses of X-Forwarded-For header values, left to right (several header lines join)."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


class ProxyTrust:
    """Finds a request's client address, believing `header` only from peers in `trusted`."""

    __slots__ = ("header", "trusted")

    def __init__(self, trusted: Sequence[IPNetwork] = (), header: ProxyHeader = "x-forwarded-for") -> None:
        self.trusted = tuple(trusted)
        self.header = header

    @property
    def header_name(self) -> str:
        return HEADER_NAMES[self.header]

    def is_trusted(self, address: IPAddress) -> bool:
        # A handful of ranges: a scan is as fast as anything cleverer.
        return any(address in network for network in self.trusted)

    def client(self, peer: str | None, header_values: Sequence[str]) -> IPAddress | None:
        """The client's address: the direct peer, unless it is a trusted proxy; then the right-most
        address of the header chain that is not a trusted proxy (the left-most one when all are). None
        when that hop is not an address (unknown, obfuscated, garbage): nobody can say who the client is.
        """
        address = parse_address(peer) if peer else None
        if address is None or not self.trusted or not self.is_trusted(address):
            return address
        chain = forwarded_for(header_values) if self.header == "forwarded" else x_forwarded_for(header_values)
        for text in reversed(chain):
            hop = parse_address(text)
            if hop is None:
                return None
            address = hop
            if not self.is_trusted(hop):
                break
        return address
