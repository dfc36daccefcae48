"""IP address types and the one rule for spelling a client's address.

Rules of this module:
1. Standard library only, no I/O, no state: the shell, the decision layers and the
   config may all import it (it imports nothing from ``gateway``).
2. An IPv4 client is always seen as IPv4. A dual-stack socket reports it as an
   IPv4-mapped IPv6 address (``::ffff:192.0.2.7``); if one layer kept that spelling and
   another did not, the same client would get two failure counters, two bans, and an
   IPv4 policy rule or allow-list entry would not match it.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def unmap_ipv4(addr: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` becomes ``a.b.c.d``; every other address is returned as is."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def plain_ip(text: str) -> str:
    """The canonical text of an address: IPv4-mapped IPv6 unwrapped, IPv6 compressed.

    ``"::ffff:192.0.2.7"`` -> ``"192.0.2.7"``. Raises ``ValueError`` for text that is not
    an IP address.
    """
    return str(unmap_ipv4(ipaddress.ip_address(text)))
