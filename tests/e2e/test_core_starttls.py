"""Before TLS no credential may cross the wire, and nothing sent before the handshake
survives it (the STARTTLS command-injection class of bugs)."""

from __future__ import annotations

import re
import time

import pytest

from tests.support.imap import LineClient, ServerClosed, sasl_plain, tagged_status

pytestmark = pytest.mark.e2e


def _caps(line: bytes) -> set[bytes]:
    """Capability atoms of a greeting ``* OK [CAPABILITY ...]`` or a ``* CAPABILITY`` line."""
    m = re.search(rb"\[CAPABILITY ([^\]]*)\]", line) or re.match(rb"\* CAPABILITY (.*)\r\n", line)
    assert m, f"no capability list in {line!r}"
    return set(m.group(1).upper().split())


def _capability_command(c: LineClient, tag: str) -> set[bytes]:
    resp = c.command(tag, "CAPABILITY")
    assert tagged_status(resp[-1]) == b"OK", resp
    lines = [r for r in resp if r.upper().startswith(b"* CAPABILITY ")]
    assert len(lines) == 1, resp
    return _caps(lines[0])


def test_before_tls_starttls_and_logindisabled_offered_and_no_auth_mechanism(gateway):
    gw = gateway()
    with LineClient.plain(gw) as c:
        for caps in (_caps(c.greeting), _capability_command(c, "a")):
            assert {b"IMAP4REV1", b"STARTTLS", b"LOGINDISABLED"} <= caps
            assert not [x for x in caps if x.startswith(b"AUTH=")], caps


def test_login_and_authenticate_before_tls_are_refused_without_reaching_dovecot(
        gateway, dovecot):
    gw = gateway()
    mark = dovecot.mark()
    with LineClient.plain(gw) as c:
        r = c.command("a", "LOGIN carol carolpass")[-1]
        # names the port this gateway offers implicit TLS on, not a guess of 993
        assert r == (b"a NO [PRIVACYREQUIRED] Plaintext authentication is disabled; use "
                     b"STARTTLS or port %d.\r\n" % gw.implicit_port), r
        r = c.command("b", "AUTHENTICATE PLAIN " + sasl_plain("carol", "carolpass"))[-1]
        assert r.startswith(b"b NO [PRIVACYREQUIRED]"), r
        # Without SASL-IR the server must not even ask for the credentials ("+").
        r = c.command("c", "AUTHENTICATE PLAIN")
        assert [x for x in r if x.startswith(b"+")] == [], r
        assert r[-1].startswith(b"c NO [PRIVACYREQUIRED]"), r
        # the connection stays usable: the client can still upgrade
        assert tagged_status(c.command("d", "STARTTLS")[-1]) == b"OK"
    gw.wait_for_event("login.plaintext_blocked")
    deadline = time.monotonic() + 5
    while len(gw.events("login.plaintext_blocked")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(gw.events("login.plaintext_blocked")) == 3
    time.sleep(0.5)  # Dovecot's log process writes asynchronously
    log = dovecot.log_since(mark)
    assert "carol" not in log, f"Dovecot saw a login attempt:\n{log}"


def test_capabilities_change_after_starttls(gateway):
    gw = gateway()
    with LineClient.plain(gw) as c:
        before = _capability_command(c, "a")
        assert tagged_status(c.command("b", "STARTTLS")[-1]) == b"OK"
        c.starttls(gw.client_ssl_context())
        after = _capability_command(c, "c")
    assert b"STARTTLS" in before and b"AUTH=PLAIN" not in before
    assert b"AUTH=PLAIN" in after
    assert b"STARTTLS" not in after and b"LOGINDISABLED" not in after


def test_commands_pipelined_after_starttls_are_discarded(gateway):
    gw = gateway()
    with LineClient.plain(gw) as c:
        c.send(b"a STARTTLS\r\nb CAPABILITY\r\n")
        ok = c.read_response()
        assert ok.startswith(b"a OK"), ok
        time.sleep(0.3)  # give a vulnerable server time to answer "b" in plaintext
        c.starttls(gw.client_ssl_context())  # raises if plaintext bytes followed the OK
        resp = c.command("c", "NOOP")
        assert tagged_status(resp[-1]) == b"OK"
        assert resp == [resp[-1]], f"unrequested responses after TLS: {resp!r}"
        # nothing else arrives later either (no late answer to the injected "b")
        with pytest.raises(TimeoutError):
            c.read_line(timeout=0.5)
        c.send(b"d LOGOUT\r\n")
        try:
            rest = c.expect_close(3)
        except TimeoutError:
            rest = b""
        assert b"\r\nb " not in b"\r\n" + rest


def test_starttls_handshake_then_login_works(gateway):
    gw = gateway()
    with LineClient.plain(gw) as c:
        assert tagged_status(c.command("a", "STARTTLS")[-1]) == b"OK"
        c.starttls(gw.client_ssl_context())
        r = c.command("b", "LOGIN alice alicepass")[-1]
        assert r.startswith(b"b OK"), r
        try:
            c.command("z", "LOGOUT")
        except ServerClosed:
            pass
