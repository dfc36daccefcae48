"""Connection caps through the real gateway: one address may hold only so many
connections at once and open only so many per minute; past a cap it gets a clear
``* BYE [UNAVAILABLE]`` at connect, and everyone else is unaffected. The global cap
protects the process itself."""

from __future__ import annotations

import contextlib

import pytest

from tests.support.attack import fast_limits, greeting_from
from tests.support.imap import LineClient
from tests.support.net import wait_until

pytestmark = pytest.mark.e2e

TOO_MANY = b"* BYE [UNAVAILABLE] Too many connections from your address.\r\n"


def _wait_sessions_closed(gw, ip: str, n: int) -> None:
    """Until ``n`` sessions from ``ip`` have ended: the slot is given back when the gateway
    has seen the close, not when the client closed."""
    wait_until(lambda: len(gw.events("session.end", client_ip=ip)) >= n, 5,
               what=f"{n} session.end from {ip}")


def test_per_ip_concurrency_cap(gateway):
    gw = gateway(limits=fast_limits(max_connections_per_ip=2, max_connection_rate_per_ip=50))
    crowd, other = "127.0.1.120", "127.0.2.120"
    with contextlib.ExitStack() as open_conns:
        first = open_conns.enter_context(LineClient.implicit(gw, source=crowd))
        second = open_conns.enter_context(LineClient.implicit(gw, source=crowd))
        assert first.greeting.startswith(b"* OK") and second.greeting.startswith(b"* OK")
        assert greeting_from(gw, crowd) == TOO_MANY
        refused = gw.wait_for_event("connection.refused", client_ip=crowd)
        assert refused["reason"] == "max_connections_per_ip"
        # another address is not affected, not even by a full neighbour
        assert greeting_from(gw, other).startswith(b"* OK")
        # the first two are still served
        assert first.command("n", "NOOP")[-1].startswith(b"n OK")
        second.close()
        _wait_sessions_closed(gw, crowd, 1)
        assert greeting_from(gw, crowd).startswith(b"* OK")  # a freed slot is reusable


def test_per_ip_rate_cap(gateway):
    gw = gateway(limits=fast_limits(max_connections_per_ip=20, max_connection_rate_per_ip=4))
    reconnecter, other = "127.0.1.130", "127.0.2.130"
    for _ in range(4):  # sequential: never more than one open at a time
        assert greeting_from(gw, reconnecter).startswith(b"* OK")
    assert greeting_from(gw, reconnecter) == TOO_MANY
    refused = gw.wait_for_event("connection.refused", client_ip=reconnecter)
    assert refused["reason"] == "max_connection_rate_per_ip"
    assert greeting_from(gw, other).startswith(b"* OK")


def test_global_connection_cap(gateway):
    gw = gateway(limits=fast_limits(max_connections=2, max_connections_per_ip=2))
    gw.wait_idle()  # the readiness probe's connection has ended
    with LineClient.implicit(gw, source="127.0.2.140") as a, \
            LineClient.implicit(gw, source="127.0.2.141") as b:
        assert a.greeting.startswith(b"* OK") and b.greeting.startswith(b"* OK")
        assert greeting_from(gw, "127.0.2.142") == \
            b"* BYE [UNAVAILABLE] Server busy, try again later.\r\n"
        assert gw.wait_for_event("connection.refused", client_ip="127.0.2.142")["reason"] \
            == "max_connections"
