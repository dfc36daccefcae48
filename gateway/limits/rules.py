"""Pure escalation rules: addresses to networks, tarpit delays, ban lifetimes.

Rules of this module:
1. No state, no clock reads, no I/O: every input is an argument, so each rule can be
   tested (and explained) with plain numbers.
2. Every function is O(1) or O(prefix length) and bounded, whatever the input: these run
   for every connection and every failed login, including during a flood.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from gateway.netaddr import IPAddress, IPNetwork, unmap_ipv4

# 2**64 seconds is already far past any cap; larger exponents only risk float overflow.
_MAX_EXPONENT = 64


class InvalidAddress(ValueError):
    """The shell passed something that is not an IP address (a bug in the caller)."""


@lru_cache(maxsize=8192)
def parse_ip(ip: str) -> IPAddress:
    """Parse ``ip``; an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) becomes IPv4.

    Mapped addresses appear on dual-stack sockets; without this an attacker's IPv4 address
    would be counted in a different key (and a different /64) than the same address seen
    on an IPv4 listener. An IPv6 zone (``%eth0``) is dropped: it names our interface, not
    the client.
    """
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        raise InvalidAddress(f"not an IP address: {ip!r} (pass the peer address as text)") from None
    return unmap_ipv4(addr)


def canonical_ip(ip: str) -> str:
    """The one spelling of ``ip`` used in keys (lower-case, compressed, v4-mapped unwrapped)."""
    return str(parse_ip(ip))


@lru_cache(maxsize=8192)
def subnet_of(ip: str, v4_prefix: int, v6_prefix: int) -> str:
    """The /v4_prefix or /v6_prefix network holding ``ip``, as CIDR text."""
    addr = parse_ip(ip)
    prefix = v4_prefix if addr.version == 4 else v6_prefix
    return str(ipaddress.ip_network((addr, prefix), strict=False))


def host_network(ip: str) -> str:
    """``ip`` as a single-host CIDR (``/32`` or ``/128``): the network string of an IP ban."""
    addr = parse_ip(ip)
    return f"{addr}/{addr.max_prefixlen}"


def network_key(network: IPNetwork) -> str:
    """Compact storage key of a network: ``v<version>:<address as hex>/<prefix>``.

    Not for humans (``Ban.network`` keeps the CIDR text); chosen because it is cheap to
    compute for every prefix of an address (see ``covering_network_keys``).
    """
    return f"v{network.version}:{int(network.network_address):x}/{network.prefixlen}"


@lru_cache(maxsize=4096)
def covering_network_keys(ip: str) -> tuple[str, ...]:
    """Keys of every network that contains ``ip``, host first: where a ban for it may live.

    An admin may ban any prefix (``10.0.0.0/16``), so a connect check looks up all of them
    (33 keys for IPv4, 129 for IPv6) in one batched read. Integer masks and hex keep this
    near 30 us even for IPv6, which matters when a flood sends every packet from a new
    address; the cache helps when addresses repeat.
    """
    addr = parse_ip(ip)
    bits = addr.max_prefixlen
    as_int = int(addr)
    full = (1 << bits) - 1
    v = addr.version
    return tuple(
        f"v{v}:{as_int & (full ^ ((1 << (bits - plen)) - 1)):x}/{plen}"
        for plen in range(bits, -1, -1)
    )


def normalize_network(text: str) -> IPNetwork:
    """Parse an admin-supplied network or address; host bits are cleared (``10.0.0.7/24`` ->
    ``10.0.0.0/24``) and v4-mapped IPv6 hosts become IPv4."""
    try:
        if "/" not in text:
            addr = parse_ip(text)
            return ipaddress.ip_network((addr, addr.max_prefixlen))
        net = ipaddress.ip_network(text, strict=False)
        mapped = getattr(net.network_address, "ipv4_mapped", None)
        if mapped is not None and net.prefixlen >= 96:
            # Clients are matched as plain IPv4: ::ffff:192.0.2.0/120 means 192.0.2.0/24.
            return ipaddress.ip_network((mapped, net.prefixlen - 96))
        return net
    except (ValueError, InvalidAddress):
        raise InvalidAddress(
            f"not an IP address or CIDR network: {text!r} (examples: 192.0.2.7, 192.0.2.0/24)"
        ) from None


def is_allow_listed(ip: str, allow: Iterable[IPNetwork]) -> bool:
    """True when ``ip`` is inside one of ``[limits] allow_networks``."""
    addr = parse_ip(ip)
    return any(addr.version == n.version and addr in n for n in allow)


def overlaps_allow_list(network: IPNetwork, allow: Iterable[IPNetwork]) -> IPNetwork | None:
    """The first allow-listed network that ``network`` overlaps, or None."""
    for n in allow:
        if n.version == network.version and network.overlaps(n):
            return n
    return None


def tarpit_seconds(failures: int, base: float, cap: float) -> float:
    """Delay before answering a failed login: ``base * 2**(failures-1)``, at most ``cap``.

    ``failures`` counts the failures in the window including this one, so the first
    failure waits ``base``, the second ``2*base``... A client that never failed waits 0.
    """
    if failures <= 0 or base <= 0:
        return 0.0
    return min(base * 2.0 ** min(failures - 1, _MAX_EXPONENT), cap)


def ban_ttl(offences: int, base: float, cap: float) -> float:
    """Lifetime of a ban for the ``offences``-th offence: ``base * 2**(offences-1)``, at most
    ``cap``. Repeat offenders stay out longer; a one-off mistake costs ``base``."""
    return min(base * 2.0 ** min(max(offences, 1) - 1, _MAX_EXPONENT), cap)


_SPRAY_LABEL = b"imap-gateway/password-spray-fingerprint/v1"


def spray_secret(key: bytes) -> bytes:
    """The key of spray fingerprints, derived from ``key`` (the ``[store] key_file``).

    Instances that share ``[state] redis`` must compute the same fingerprint for the same
    password, so a per-process random key would not do; they already share the store's
    key file (it decrypts the TOTP seeds they all read), so it is derived from that, under
    its own label: the TOTP key itself is never used for anything else.
    """
    return hmac.new(key, _SPRAY_LABEL, hashlib.sha256).digest()


def spray_fingerprint(secret: bytes, password: str) -> bytes:
    """``HMAC-SHA256(secret, password)[:8]``: the same for every user, so one password
    tried against many accounts is seen as one. Only stored (hex) with a TTL, never logged;
    without ``secret`` it cannot be checked against a dictionary."""
    data = password.encode("utf-8", "surrogateescape")
    return hmac.new(secret, data, hashlib.sha256).digest()[:8]
