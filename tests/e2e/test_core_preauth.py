"""The pre-auth dialogue: ID, literals, SASL forms, and every bound on pre-auth input
(bad commands, line length, literal size, time, connections per IP)."""

from __future__ import annotations

import time

import pytest

from tests.support.imap import LineClient, ServerClosed, sasl_plain, tagged_status

pytestmark = pytest.mark.e2e


def _logout(c: LineClient) -> None:
    try:
        c.command("z", "LOGOUT")
    except (ServerClosed, TimeoutError):
        pass


def test_id_is_answered_before_login(gateway):
    gw = gateway()
    with LineClient.implicit(gw) as c:
        resp = c.command("a", 'ID ("name" "e2e-test" "version" "1")')
        assert tagged_status(resp[-1]) == b"OK", resp
        assert [r for r in resp if r.upper().startswith(b"* ID ")], resp


def test_login_with_synchronizing_literals(gateway):
    gw = gateway()
    with LineClient.implicit(gw) as c:
        c.send(b"a LOGIN {5}\r\n")
        assert c.read_line().startswith(b"+"), "server must ask for the literal"
        c.send(b"alice {9}\r\n")
        assert c.read_line().startswith(b"+")
        c.send(b"alicepass\r\n")
        r = c.read_until_tagged("a")[-1]
        assert r.startswith(b"a OK"), r
        _logout(c)


def test_login_with_non_synchronizing_literals_in_one_send(gateway):
    gw = gateway()
    with LineClient.implicit(gw) as c:
        c.send(b"a LOGIN {5+}\r\nalice {9+}\r\nalicepass\r\n")
        resp = c.read_until_tagged("a")
        assert not [r for r in resp if r.startswith(b"+")], resp
        assert resp[-1].startswith(b"a OK"), resp
        _logout(c)


def test_authenticate_plain_with_initial_response(gateway):
    gw = gateway()
    with LineClient.implicit(gw) as c:
        r = c.command("a", "AUTHENTICATE PLAIN " + sasl_plain("alice", "alicepass"))[-1]
        assert r.startswith(b"a OK"), r
        _logout(c)


def test_authenticate_plain_with_continuation(gateway):
    gw = gateway()
    with LineClient.implicit(gw) as c:
        c.send(b"a AUTHENTICATE PLAIN\r\n")
        assert c.read_line().startswith(b"+")
        c.send(sasl_plain("alice", "alicepass").encode() + b"\r\n")
        r = c.read_until_tagged("a")[-1]
        assert r.startswith(b"a OK"), r
        _logout(c)


def test_authenticate_cancelled_with_star_then_connection_still_usable(gateway):
    gw = gateway()
    with LineClient.implicit(gw) as c:
        c.send(b"a AUTHENTICATE PLAIN\r\n")
        assert c.read_line().startswith(b"+")
        c.send(b"*\r\n")
        r = c.read_until_tagged("a")[-1]
        assert r.startswith(b"a BAD"), r  # RFC 9051 6.2.2: a cancelled exchange is BAD
        r = c.command("b", "LOGIN alice alicepass")[-1]
        assert r.startswith(b"b OK"), r
        _logout(c)


def test_unknown_command_gets_bad_and_connection_stays(gateway):
    gw = gateway()
    with LineClient.implicit(gw) as c:
        r = c.command("a", "FROBNICATE now")[-1]
        assert r.startswith(b"a BAD"), r
        assert tagged_status(c.command("b", "NOOP")[-1]) == b"OK"


def test_too_many_bad_commands_get_bye_and_close(gateway):
    gw = gateway(limits={"max_bad_commands": 3})
    with LineClient.implicit(gw) as c:
        for i in range(2):  # below the bound: plain BAD, connection open
            r = c.command(f"x{i}", "FROBNICATE")[-1]
            assert r.startswith(f"x{i} BAD".encode()), r
        c.send(b"".join(b"x%d FROBNICATE\r\n" % i for i in range(2, 8)))
        rest = c.expect_close(5)
    lines = rest.splitlines()
    assert lines and lines[-1].startswith(b"* BYE"), rest  # BYE is the last word
    # The 3rd or, counting "more than 3", the 4th bad command ends it; x4.. are never read.
    answered = [x for x in lines if x.startswith(b"x")]
    assert [x.split(b" ")[0] for x in answered] in ([b"x2"], [b"x2", b"x3"]), rest
    assert all(x.split(b" ")[1] == b"BAD" for x in answered), rest


def test_overlong_line_gets_bye_and_close(gateway):
    gw = gateway()  # max_line = 8192
    with LineClient.implicit(gw) as c:
        # a long line under the bound is just a command
        r = c.command("a", 'ID ("name" "' + "n" * 3000 + '")')[-1]
        assert tagged_status(r) in (b"OK", b"BAD", b"NO"), r
        c.send(b"b NOOP " + b"x" * 9000 + b"\r\n")
        rest = c.expect_close(5)
    assert b"* BYE" in rest, rest


def test_oversized_synchronizing_literal_is_refused_without_continuation(gateway):
    gw = gateway()  # max_preauth_literal = 8192
    with LineClient.implicit(gw) as c:
        c.send(b"a LOGIN alice {9000}\r\n")
        try:
            first = c.read_line()
        except ServerClosed as e:
            first = str(e).encode()
        assert not first.startswith(b"+"), "server asked for a literal above its limit"
        assert first.startswith((b"a BAD", b"a NO", b"* BYE")), first


def test_oversized_non_synchronizing_literal_gets_bye_and_close(gateway):
    gw = gateway()
    with LineClient.implicit(gw) as c:
        c.send(b"a LOGIN alice {9000+}\r\n")
        try:
            c.send(b"b LOGOUT\r\n".ljust(9000, b"y") + b"\r\n")
        except OSError:
            pass  # the server may already have closed
        rest = c.expect_close(5)
    assert b"* BYE" in rest or b"a BAD" in rest, rest
    assert b"b OK" not in rest, "literal bytes were executed as a command"


def test_preauth_timeout_closes_idle_connection_with_bye(gateway):
    gw = gateway(limits={"preauth_timeout": "1s"})
    with LineClient.implicit(gw) as c:
        t0 = time.monotonic()
        rest = c.expect_close(5)
        elapsed = time.monotonic() - t0
    assert b"* BYE" in rest, rest
    assert 0.5 <= elapsed <= 3.0, elapsed


def test_fourth_connection_from_one_ip_is_refused_with_bye(gateway):
    gw = gateway(limits={"max_connections_per_ip": 3})
    gw.wait_idle()  # the readiness probe's session must be over
    clients = [LineClient.implicit(gw) for _ in range(3)]
    try:
        for c in clients:
            assert c.greeting.startswith(b"* OK"), c.greeting
        with LineClient.implicit(gw, read_greeting=False) as fourth:
            data = fourth.expect_close(5)
        assert data.startswith(b"* BYE"), data
        # the bound is on concurrent connections: after one leaves, a new one is welcome
        leaving = clients.pop()
        sid = gw.session_id_for(leaving.local_port)
        _logout(leaving)
        gw.wait_for_event("session.end", session_id=sid)
        with LineClient.implicit(gw) as again:
            assert again.greeting.startswith(b"* OK"), again.greeting
    finally:
        for c in clients:
            c.close()
