"""Network addresses, as configuration and the gateways name them."""

from __future__ import annotations

import ipaddress

#: A CIDR block: an `allowed_ips` or `trusted_proxies` entry.
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
