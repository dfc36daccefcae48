"""Backend trouble never hangs a client, and a vanished client never leaves a backend
session behind."""

from __future__ import annotations

import time

import pytest

from tests.support.imap import LineClient, tagged_status
from tests.support.net import free_port

pytestmark = pytest.mark.e2e


def _timed_login(c: LineClient, timeout: float = 15) -> tuple[bytes, float]:
    t0 = time.monotonic()
    r = c.command("a", "LOGIN alice alicepass", timeout=timeout)[-1]
    return r, time.monotonic() - t0


def test_backend_down_gives_unavailable_and_gateway_keeps_serving(gateway):
    closed = free_port()  # nothing listens there
    gw = gateway(backend={"address": f"127.0.0.1:{closed}", "connect_timeout": "2s"})
    with LineClient.implicit(gw) as c:
        r, elapsed = _timed_login(c)
    assert r.startswith(b"a NO [UNAVAILABLE]"), r
    assert elapsed < 2 + 1, elapsed
    gw.wait_for_event("backend.error")
    with LineClient.implicit(gw) as again:  # the gateway itself is still fine
        assert again.greeting.startswith(b"* OK")
        assert tagged_status(again.command("b", "CAPABILITY")[-1]) == b"OK"


def test_silent_backend_gives_unavailable_within_connect_timeout(gateway, fake_silent_backend):
    gw = gateway(backend={"address": fake_silent_backend, "connect_timeout": "1s"})
    with LineClient.implicit(gw) as c:
        c.send(b"a LOGIN alice alicepass\r\n")
        t0 = time.monotonic()
        # while that login waits for a greeting that never comes, other clients are served
        with LineClient.implicit(gw) as other:
            assert tagged_status(other.command("b", "NOOP", timeout=1)[-1]) == b"OK"
        r = c.read_until_tagged("a", timeout=10)[-1]
        elapsed = time.monotonic() - t0
    assert r.startswith(b"a NO [UNAVAILABLE]"), r
    assert elapsed < 1 + 1, elapsed


def test_vanished_client_ends_session_and_backend_session(gateway, dovecot):
    gw = gateway()
    mark = dovecot.mark()
    c = LineClient.implicit(gw)
    assert c.command("a", "LOGIN alice alicepass")[-1].startswith(b"a OK")
    assert tagged_status(c.command("b", "SELECT INBOX")[-1]) == b"OK"
    sid = gw.session_id_for(c.local_port)
    dovecot.wait_for_log(rf"Login: user=<alice>.*session=<{sid}>", since=mark)
    c.abort()  # RST, no LOGOUT
    end = gw.wait_for_event("session.end", timeout=5, session_id=sid)
    assert end["bytes_in"] > 0
    # Dovecot's imap process for this session logs its disconnect (x-session-id joins them)
    dovecot.wait_for_log(rf"imap\(alice\)<\d+><{sid}>: Info: Disconnected", since=mark)
