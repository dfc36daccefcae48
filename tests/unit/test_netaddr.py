"""One spelling of a client's address for every layer."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.netaddr import plain_ip, unmap_ipv4


@pytest.mark.parametrize("text, plain", [
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("::FFFF:192.0.2.7", "192.0.2.7"),
    ("::ffff:c000:207", "192.0.2.7"),  # the same mapped address in hex groups
    ("192.0.2.7", "192.0.2.7"),
    ("2001:DB8:0:0::1", "2001:db8::1"),
    ("::1", "::1"),
    ("::192.0.2.7", "::c000:207"),  # IPv4-compatible (deprecated), not mapped: stays IPv6
])
def test_plain_ip(text, plain):
    assert plain_ip(text) == plain


def test_plain_ip_refuses_what_is_not_an_address():
    with pytest.raises(ValueError):
        plain_ip("example.org")


def test_unmap_ipv4_keeps_other_addresses():
    v6 = ipaddress.ip_address("2001:db8::1")
    assert unmap_ipv4(v6) is v6
    assert unmap_ipv4(ipaddress.ip_address("::ffff:10.0.0.1")) == ipaddress.ip_address("10.0.0.1")
