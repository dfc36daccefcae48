"""PROXY protocol v2 header builder (pure; no I/O).

The gateway terminates TLS, so Dovecot sees a plaintext connection from the gateway.
With ``disable_plaintext_auth = yes`` Dovecot refuses logins on a connection it does
not consider secured, and after PROXY forwarding it judges the *client's* address.
The PP2_TYPE_SSL TLV (with PP2_CLIENT_SSL set) tells Dovecot that the client side was
TLS, which is the truth; without it logins of forwarded addresses fail with
LOGINDISABLED (see the dovecot-rig README, gotcha 10).

Spec: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt, section 2.2.
"""

from __future__ import annotations

import ipaddress
import struct

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_VERSION_PROXY = 0x21  # version 2, command PROXY
_AF_INET_STREAM = 0x11
_AF_INET6_STREAM = 0x21
_PP2_TYPE_SSL = 0x20
_PP2_SUBTYPE_SSL_VERSION = 0x21
_PP2_CLIENT_SSL = 0x01


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def proxy_v2_header(
    src: tuple[str, int], dst: tuple[str, int], *, tls_version: str | None = None
) -> bytes:
    """Build a PROXY v2 header for a TCP connection from ``src`` to ``dst``.

    ``tls_version`` (e.g. ``"TLSv1.3"``) adds the SSL TLV saying the client connection
    was TLS. If the two addresses are of different families, the IPv4 one is mapped
    into IPv6 so the header stays valid.
    """
    s_ip = ipaddress.ip_address(src[0])
    d_ip = ipaddress.ip_address(dst[0])
    if s_ip.version != d_ip.version:
        if s_ip.version == 4:
            s_ip = ipaddress.IPv6Address(f"::ffff:{s_ip}")
        if d_ip.version == 4:
            d_ip = ipaddress.IPv6Address(f"::ffff:{d_ip}")
    family = _AF_INET_STREAM if s_ip.version == 4 else _AF_INET6_STREAM
    body = s_ip.packed + d_ip.packed + struct.pack("!HH", src[1], dst[1])
    if tls_version is not None:
        ssl_value = struct.pack("!BI", _PP2_CLIENT_SSL, 0) + _tlv(
            _PP2_SUBTYPE_SSL_VERSION, tls_version.encode("ascii")
        )
        body += _tlv(_PP2_TYPE_SSL, ssl_value)
    return SIGNATURE + struct.pack("!BBH", _VERSION_PROXY, family, len(body)) + body
