"""OAuth logins attacked from outside: malformed and misdirected OAUTHBEARER/XOAUTH2
exchanges against a running gateway with ``[oauth]`` on (the set-up of
tests/e2e/test_oauth_logins.py). Each shape must end in a clean refusal, the session must
stay usable where the protocol allows it, and no token may reach the log.
"""

from __future__ import annotations

import base64
import ssl

import pytest

from tests.e2e.test_oauth_logins import FAILED, oauth_gateway, oauthbearer_ir
from tests.support.imap import LineClient
from tests.support.jwks_server import JwksServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def idp(certs):
    srv = JwksServer(certs.ca).start()
    yield srv
    srv.stop()


@pytest.fixture
def gw(gateway, tmp_path, certs, idp):
    return oauth_gateway(gateway, tmp_path, certs, idp)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_sasl_ir_and_continuation_log_in_alike_and_the_token_stays_out_of_the_log(gw, idp):
    tokens = []
    for form in ("ir", "continuation"):
        token = idp.signer.token("bob")
        tokens.append(token)
        c = LineClient.implicit(gw, timeout=15)
        if form == "ir":
            c.send(f"a AUTHENTICATE OAUTHBEARER {oauthbearer_ir('bob', token)}\r\n")
        else:
            c.send("a AUTHENTICATE OAUTHBEARER\r\n")
            assert c.read_line() == b"+ \r\n"
            c.send(oauthbearer_ir("bob", token) + "\r\n")
        assert c.read_until_tagged("a")[-1].startswith(b"a OK"), form
        assert c.command("b", "SELECT INBOX")[-1].startswith(b"b OK"), form
        c.close()
    # XOAUTH2 naming another user than the token's: refused like a bad token.
    c = LineClient.implicit(gw, timeout=15)
    token = idp.signer.token("bob")
    tokens.append(token)
    message = b64("user=alice\x01auth=Bearer " + token + "\x01\x01")
    c.send(f"a AUTHENTICATE XOAUTH2 {message}\r\n")
    assert c.read_line().startswith(b"+ ")
    c.send("AQ==\r\n")
    assert c.read_line() == b"a " + FAILED
    c.close()
    gw.wait_for_event("login.denied", reason="oauth_user_mismatch")
    log = gw.log_text()
    for token in tokens:
        assert token not in log
        assert token.split(".")[2] not in log  # not even the signature part


def test_malformed_oauth_messages_are_refused_and_the_session_goes_on(gw, idp):
    token = idp.signer.token("bob")
    good = oauthbearer_ir("bob", token)
    shapes = {
        "no auth=": b64("n,a=bob,\x01host=127.0.0.1\x01\x01"),
        "basic scheme": b64("n,a=bob,\x01auth=Basic Ym9iOnB3\x01\x01"),
        "bad padding": good.rstrip("=")[:-1],
        "extra padding": good + "=",
        "channel binding": b64(f"p=tls-unique,,\x01auth=Bearer {token}\x01\x01"),
        "one ^A at the end": b64(f"n,,\x01auth=Bearer {token}\x01"),
    }
    for name, message in shapes.items():
        # a connection each: max_bad_commands closes a connection after a few BADs
        c = LineClient.implicit(gw, timeout=15)
        c.send(f"t AUTHENTICATE OAUTHBEARER {message}\r\n")
        reply = c.read_line()
        assert reply.startswith(b"t BAD "), (name, reply)
        assert token.encode() not in reply
        assert c.command("n", "NOOP")[-1].startswith(b"n OK"), name
        c.close()
    # A cancelled exchange, then a good one on the same connection.
    c = LineClient.implicit(gw, timeout=15)
    c.send("c AUTHENTICATE XOAUTH2\r\n")
    assert c.read_line() == b"+ \r\n"
    c.send("*\r\n")
    assert c.read_line().startswith(b"c BAD ")
    c.send(f"d AUTHENTICATE OAUTHBEARER {good}\r\n")
    assert c.read_until_tagged("d")[-1].startswith(b"d OK")
    c.close()
    assert token not in gw.log_text()


def test_the_answer_to_the_error_challenge_is_never_run_as_a_command(gw, idp):
    """Whatever the client answers to the RFC 7628 error challenge (RFC 7628 wants ^A),
    the answer is the end of the failed exchange: the uniform NO, and the line is not
    executed even when it reads like a command."""
    c = LineClient.implicit(gw, timeout=15)
    for n, answer in enumerate(("x LOGOUT", "*", "", "AQ== AQ==")):
        bad = idp.signer.token("bob", aud="another-app")
        c.send(f"a{n} AUTHENTICATE OAUTHBEARER {oauthbearer_ir(None, bad)}\r\n")
        assert c.read_line().startswith(b"+ "), answer
        c.send(answer + "\r\n")
        assert c.read_line() == f"a{n} ".encode() + FAILED, answer
    assert c.command("z", "NOOP")[-1].startswith(b"z OK")  # still open: LOGOUT never ran
    c.close()


def test_a_token_as_the_login_password_is_a_failed_password_login(gw, idp):
    token = idp.signer.token("bob")
    c = LineClient.implicit(gw, timeout=15)
    reply = c.command("a", f"LOGIN bob {token}")[-1]
    c.close()
    assert reply == b"a " + FAILED
    assert token not in gw.log_text()


def test_a_megabyte_token_line_is_refused_before_it_ends(gw, idp):
    """max_line (8192 by default) bounds what the gateway reads of one line: it gives up
    on the connection while the 1 MB line is still arriving (it is not buffered to its
    end) and the token's bytes never reach the log."""
    huge = "A" * (1 << 20)
    head = ("a AUTHENTICATE OAUTHBEARER " + b64("n,,\x01auth=Bearer " + huge + "\x01\x01")
            + "\r\n").encode()
    c = LineClient.implicit(gw, timeout=30)
    sid = gw.session_id_for(c.local_port)
    sent = 0
    try:
        while sent < len(head):
            c.send(head[sent:sent + 16384])
            sent += 16384
    except (OSError, ssl.SSLError):
        pass  # the gateway closed the connection while the line was still coming
    try:
        rest = c.expect_close(timeout=30)
    except (OSError, ssl.SSLError):
        rest = b""
    c.close()
    assert b"OK" not in rest
    end = gw.wait_for_event("session.end", session_id=sid)
    assert end["reason"] == "line_too_long", end
    assert end["bytes_in"] < 128 * 1024, end  # read up to max_line and a few TLS records
    # the gateway is still serving
    c = LineClient.implicit(gw, timeout=15)
    assert c.command("b", "NOOP")[-1].startswith(b"b OK")
    c.close()
    assert "A" * 200 not in gw.log_text()
