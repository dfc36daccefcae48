"""PROXY v2 headers, checked field by field against the spec's layout."""

from __future__ import annotations

import ipaddress
import struct

from gateway.proxy.proxyproto import SIGNATURE, proxy_v2_header


def _parse(header: bytes) -> dict:
    assert header.startswith(SIGNATURE)
    ver_cmd, fam, length = struct.unpack("!BBH", header[12:16])
    body = header[16:]
    assert len(body) == length
    out = {"ver_cmd": ver_cmd, "family": fam}
    if fam == 0x11:
        out["src"] = str(ipaddress.IPv4Address(body[0:4]))
        out["dst"] = str(ipaddress.IPv4Address(body[4:8]))
        out["sport"], out["dport"] = struct.unpack("!HH", body[8:12])
        tlvs = body[12:]
    else:
        out["src"] = str(ipaddress.IPv6Address(body[0:16]))
        out["dst"] = str(ipaddress.IPv6Address(body[16:32]))
        out["sport"], out["dport"] = struct.unpack("!HH", body[32:36])
        tlvs = body[36:]
    out["tlvs"] = {}
    while tlvs:
        kind, size = struct.unpack("!BH", tlvs[:3])
        out["tlvs"][kind] = tlvs[3:3 + size]
        tlvs = tlvs[3 + size:]
    return out


def test_ipv4_header_with_ssl_tlv():
    parsed = _parse(proxy_v2_header(("203.0.113.7", 40001), ("127.0.0.1", 993),
                                    tls_version="TLSv1.3"))
    assert parsed["ver_cmd"] == 0x21 and parsed["family"] == 0x11
    assert (parsed["src"], parsed["sport"]) == ("203.0.113.7", 40001)
    assert (parsed["dst"], parsed["dport"]) == ("127.0.0.1", 993)
    ssl_tlv = parsed["tlvs"][0x20]
    client, verify = struct.unpack("!BI", ssl_tlv[:5])
    assert client & 0x01  # PP2_CLIENT_SSL: the client connection was TLS
    assert verify == 0
    assert ssl_tlv[5:8] == struct.pack("!BH", 0x21, 7) and ssl_tlv[8:] == b"TLSv1.3"


def test_ipv6_and_mixed_families():
    parsed = _parse(proxy_v2_header(("2001:db8::1", 5), ("127.0.0.1", 993)))
    assert parsed["family"] == 0x21
    assert parsed["src"] == "2001:db8::1" and parsed["dst"] == "::ffff:7f00:1"
    assert parsed["tlvs"] == {}
