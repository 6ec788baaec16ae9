"""Network addresses, as configuration and the gateways name them."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

#: A CIDR block: an `allowed_ips` or `trusted_proxies` entry.
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def address_in(address: str | None, networks: Sequence[Network]) -> bool:
    """True when `address` is an IP inside one of `networks`."""
    if address is None or not is_ip(address):
        return False
    ip = ipaddress.ip_address(address)
    return any(ip in net for net in networks)


def is_ip(text: str) -> bool:
    """True for a plain IP address (no IPv6 zone: a client address never has one)."""
    # ipaddress takes any text after '%' as an IPv6 zone, NUL and lone surrogates included,
    # which the database would refuse.
    if "%" in text:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
