"""The client side TLS stream (gateway/proxy/tlsstream.py) as clients meet it: a handshake
that fails is logged with why (a client that speaks no TLS, one that leaves), and a logged-in
client that ends its connection -- with close_notify or without -- ends the session as
closed by the client, never as a lost connection."""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.support.imap import LineClient

pytestmark = pytest.mark.e2e


def test_plaintext_at_the_implicit_tls_port_is_a_protocol_failure(gateway):
    gw = gateway()
    gw.wait_idle(timeout=10)
    with socket.create_connection((gw.host, gw.implicit_port), timeout=10) as s:
        s.sendall(b"a LOGIN alice alicepass\r\n")
        s.settimeout(10)
        try:
            while s.recv(4096):  # at most a TLS alert, then the close
                pass
        except ConnectionResetError:
            pass
    event = gw.wait_for_event("tls.handshake_failed", timeout=10)
    assert event["reason"] == "protocol"
    assert gw.wait_for_event("session.end", timeout=10, reason="tls_protocol")


def test_a_client_that_leaves_during_the_handshake_is_an_eof(gateway):
    """Not a protocol failure: port scanners and TCP health checks do this."""
    gw = gateway()
    gw.wait_idle(timeout=10)
    with socket.create_connection((gw.host, gw.implicit_port), timeout=10):
        pass
    assert gw.wait_for_event("tls.handshake_failed", timeout=10)["reason"] == "eof"


def test_a_client_silent_in_the_handshake_is_closed_at_its_deadline_without_a_byte(gateway):
    """The handshake deadline (``[limits] tls_handshake_timeout``) ends a client that
    connects and says nothing; it gets no plaintext BYE (an implicit-TLS client could not
    read one), and the pre-auth deadline, which is longer, is not what ended it."""
    gw = gateway(limits={"tls_handshake_timeout": "1s", "preauth_timeout": "30s"})
    gw.wait_idle(timeout=10)
    with socket.create_connection((gw.host, gw.implicit_port), timeout=10) as s:
        s.settimeout(10)
        assert s.recv(4096) == b""  # closed by the gateway, nothing written first
    assert gw.wait_for_event("tls.handshake_failed", timeout=10)["reason"] == "timeout"
    end = gw.wait_for_event("session.end", timeout=10, reason="tls_timeout")
    assert 0.9 <= end["duration_s"] < 5


@pytest.mark.parametrize("close_notify", [True, False])
def test_a_logged_in_client_closing_ends_the_session_as_client_closed(gateway, close_notify):
    gw = gateway()
    gw.wait_idle(timeout=10)
    c = LineClient.implicit(gw, timeout=10)
    assert c.command("a", "LOGIN alice alicepass")[-1].startswith(b"a OK")
    assert c.command("b", "NOOP")[-1].startswith(b"b OK")
    if close_notify:
        try:
            c.sock.unwrap()  # sends close_notify, then waits for the gateway's
        except (ssl.SSLError, OSError):
            pass  # the gateway closes without answering it: fine, the session is over
    c.close()
    end = gw.wait_for_event("session.end", timeout=10, user="alice")
    assert end["reason"] == "client_closed"
