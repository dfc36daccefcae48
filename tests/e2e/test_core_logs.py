"""The JSON log tells operators what happened in each session, and never a secret."""

from __future__ import annotations

import base64

import pytest

from tests.support.imap import LineClient, ServerClosed, sasl_plain

pytestmark = pytest.mark.e2e


def _run(c: LineClient, *commands: tuple[str, str]) -> tuple[int, int]:
    """Send commands, return (bytes sent, bytes received) at the application level."""
    sent, received = 0, len(c.greeting)
    for tag, text in commands:
        sent += len(tag) + 1 + len(text) + 2
        try:
            received += sum(len(x) for x in c.command(tag, text))
        except ServerClosed:
            break
    return sent, received


def test_session_start_login_and_end_are_logged_with_fields(gateway):
    gw = gateway()
    with LineClient.implicit(gw) as c:
        sent, received = _run(c, ("a", "LOGIN alice alicepass"), ("b", "SELECT INBOX"),
                              ("z", "LOGOUT"))
        port = c.local_port
    sid = gw.session_id_for(port)
    start = gw.wait_for_event("session.start", session_id=sid)
    assert start["client_ip"] == "127.0.0.1"
    assert start["client_port"] == port
    assert start["listener"] == f"127.0.0.1:{gw.implicit_port}"
    assert start["tls"] == "implicit"
    ok = gw.wait_for_event("login.ok", session_id=sid)
    assert ok["user"] == "alice"
    assert ok["mechanism"].upper() == "LOGIN"
    end = gw.wait_for_event("session.end", session_id=sid)
    assert end["bytes_in"] >= sent
    assert end["bytes_out"] >= received
    assert isinstance(end["duration_s"], int | float) and 0 <= end["duration_s"] < 30


def test_denied_login_is_logged_with_user_and_reason(gateway):
    gw = gateway()
    with LineClient.implicit(gw) as c:
        r = c.command("a", "LOGIN alice wrong-password", timeout=15)[-1]
        assert r.startswith(b"a NO"), r
        sid = gw.session_id_for(c.local_port)
    denied = gw.wait_for_event("login.denied", session_id=sid)
    assert denied["user"] == "alice"
    assert denied["mechanism"].upper() == "LOGIN"
    assert denied["reason"]


def test_starttls_session_logs_tls_mode(gateway):
    gw = gateway()
    with LineClient.plain(gw) as c:
        port = c.local_port
        c.command("a", "NOOP")
    start = gw.wait_for_event("session.start", client_port=port)
    assert start["tls"] == "starttls"
    assert start["listener"] == f"127.0.0.1:{gw.starttls_port}"


def test_every_session_line_carries_a_session_id(gateway):
    gw = gateway()
    for creds in ("alice alicepass", "alice wrong-password", "nobody x"):
        with LineClient.implicit(gw) as c:
            _run(c, ("a", f"LOGIN {creds}"), ("z", "LOGOUT"))
    with LineClient.plain(gw) as c:
        _run(c, ("a", "LOGIN alice alicepass"), ("z", "LOGOUT"))
    gw.wait_idle()
    events = gw.events()
    assert len([e for e in events if e["event"] == "session.start"]) >= 4
    # process-wide lines ("gateway.listening", "gateway.stopping") belong to no session
    per_session = [e for e in events if not e["event"].startswith("gateway.")]
    missing = [e for e in per_session if not e.get("session_id")]
    assert missing == []


def test_no_password_or_sasl_payload_in_logs(gateway):
    gw = gateway()
    secrets = {
        "alicepass", "wrong-Secret-4711", "plaintext-Secret-0815",
        sasl_plain("alice", "alicepass"), sasl_plain("alice", "wrong-Secret-4711"),
        sasl_plain("alice", "plaintext-Secret-0815"),
        # the payload's tail as a client might encode it without authzid or with one
        sasl_plain("alice", "alicepass", authzid="alice"),
    }
    with LineClient.implicit(gw) as c:
        _run(c, ("a", "LOGIN alice wrong-Secret-4711"),
             ("b", "AUTHENTICATE PLAIN " + sasl_plain("alice", "wrong-Secret-4711")),
             ("c", "AUTHENTICATE PLAIN " + sasl_plain("alice", "alicepass")), ("z", "LOGOUT"))
    with LineClient.implicit(gw) as c:
        c.send(b"a AUTHENTICATE PLAIN\r\n")
        c.read_line()
        c.send(sasl_plain("alice", "alicepass", authzid="alice").encode() + b"\r\n")
        c.read_until_tagged("a")
        _run(c, ("z", "LOGOUT"))
    with LineClient.implicit(gw) as c:
        _run(c, ("a", "LOGIN {5+}\r\nalice {9+}\r\nalicepass"), ("z", "LOGOUT"))
    with LineClient.plain(gw) as c:  # refused before TLS, must not be logged either
        _run(c, ("a", "LOGIN alice plaintext-Secret-0815"),
             ("b", "AUTHENTICATE PLAIN " + sasl_plain("alice", "plaintext-Secret-0815")))
    gw.wait_idle()
    gw.stop()  # flush
    text = gw.log_text() + gw.stderr_path.read_text(errors="replace")
    assert len(gw.events("login.ok")) >= 3  # the logins happened and were logged
    leaked = [s for s in secrets if s in text]
    # also the base64 of the password alone, as a careless "payload" field might carry it
    leaked += [s for s in (base64.b64encode(b"alicepass").decode(),) if s in text]
    assert leaked == []
