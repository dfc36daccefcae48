"""AUTHENTICATE OAUTHBEARER / XOAUTH2 in the pre-auth machine, driven byte by byte:
offered only after TLS and only when OAuth is on; the token reaches the shell in a
LoginRequest and nowhere else; a refused token gets the RFC 7628 error challenge, the
client's ^A, then the uniform NO."""

from __future__ import annotations

import base64

import pytest

from gateway.imap import sasl
from gateway.imap.preauth import (
    CAPS_TLS,
    CAPS_TLS_OAUTH,
    LoginRequest,
    PreauthConnection,
    PreauthLimits,
    PreauthState,
    SendData,
)

CHALLENGE = base64.b64encode(b'{"status":"invalid_token"}')
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
FAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"


def conn(oauth: bool = True, tls: bool = True) -> PreauthConnection:
    return PreauthConnection(tls_active=tls, starttls_allowed=not tls, limits=PreauthLimits(),
                             oauth_challenge=CHALLENGE if oauth else None)


def feed(c: PreauthConnection, data: bytes, split: bool = False):
    pieces = [data[i:i + 1] for i in range(len(data))] if split else [data]
    sent, other = bytearray(), []
    for p in pieces:
        for ev in c.receive_data(p):
            if isinstance(ev, SendData):
                sent += ev.data
            else:
                other.append(ev)
    return bytes(sent), other


def oauthbearer(user: str | None, token: str = TOKEN) -> bytes:
    a = f"a={user}" if user is not None else ""
    return base64.b64encode(
        f"n,{a},\x01host=localhost\x01port=993\x01auth=Bearer {token}\x01\x01".encode())


def xoauth2(user: str, token: str = TOKEN) -> bytes:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode())


def test_mechanisms_are_offered_after_tls_only_when_oauth_is_on():
    sent, _ = feed(conn(), b"a CAPABILITY\r\n")
    assert b"AUTH=OAUTHBEARER AUTH=XOAUTH2" in sent and CAPS_TLS_OAUTH.encode() in sent
    sent, _ = feed(conn(oauth=False), b"a CAPABILITY\r\n")
    assert CAPS_TLS.encode() in sent and b"OAUTH" not in sent
    sent, _ = feed(conn(tls=False), b"a CAPABILITY\r\n")
    assert b"AUTH=" not in sent


def test_oauth_mechanism_refused_when_off_and_before_tls():
    sent, _ = feed(conn(oauth=False), b"a AUTHENTICATE XOAUTH2 " + xoauth2("alice") + b"\r\n")
    assert sent == b"a NO Unsupported authentication mechanism.\r\n"
    sent, other = feed(conn(tls=False), b"a AUTHENTICATE OAUTHBEARER " + oauthbearer("alice")
                       + b"\r\n")
    assert b"PRIVACYREQUIRED" in sent and not any(isinstance(e, LoginRequest) for e in other)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("mech, message, user", [
    ("OAUTHBEARER", oauthbearer("alice"), "alice"),
    ("OAUTHBEARER", oauthbearer(None), ""),
    ("XOAUTH2", xoauth2("alice"), "alice"),
])
def test_initial_response_becomes_a_login_request(mech, message, user, split):
    c = conn()
    sent, other = feed(c, f"t1 AUTHENTICATE {mech} ".encode() + message + b"\r\n", split)
    assert sent == b""
    assert other == [LoginRequest(b"t1", mech, user, TOKEN)]
    assert TOKEN not in repr(other)


def test_without_initial_response_the_server_sends_an_empty_challenge():
    c = conn()
    sent, _ = feed(c, b"t1 AUTHENTICATE XOAUTH2\r\n")
    assert sent == b"+ \r\n"
    sent, other = feed(c, xoauth2("bob") + b"\r\n")
    assert other == [LoginRequest(b"t1", "XOAUTH2", "bob", TOKEN)]


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("answer", [b"AQ==", b"*", b""])
def test_refused_token_gets_error_challenge_then_uniform_no(answer, split):
    c = conn()
    feed(c, b"t1 AUTHENTICATE OAUTHBEARER " + oauthbearer("alice") + b"\r\n")
    events = c.login_failed()
    assert events == [SendData(b"+ " + CHALLENGE + b"\r\n")]
    assert c.state is PreauthState.AUTHENTICATING
    sent, other = feed(c, answer + b"\r\n", split)
    assert sent == b"t1 " + FAILED and other == []
    assert c.state is PreauthState.NOT_AUTHENTICATED
    # The session goes on: a next command is read normally.
    sent, _ = feed(c, b"t2 NOOP\r\n")
    assert sent == b"t2 OK NOOP completed.\r\n"


def test_unavailable_is_answered_without_the_challenge():
    c = conn()
    feed(c, b"t1 AUTHENTICATE XOAUTH2 " + xoauth2("alice") + b"\r\n")
    (ev,) = c.login_unavailable()
    assert isinstance(ev, SendData) and ev.data.startswith(b"t1 NO [UNAVAILABLE]")


def test_password_mechanisms_still_fail_without_a_challenge():
    c = conn()
    feed(c, b"t1 AUTHENTICATE PLAIN " + base64.b64encode(b"\0alice\0pw") + b"\r\n")
    assert c.login_failed() == [SendData(b"t1 " + FAILED)]


@pytest.mark.parametrize("raw", [
    b"n,a=alice,\x01auth=Bearer tok\x01",           # one ^A at the end
    b"p=tls-unique,,\x01auth=Bearer tok\x01\x01",    # channel binding: not offered
    b"n,a=alice,\x01host=x\x01\x01",                 # no auth=
    b"n,a=alice,\x01auth=Basic dG9r\x01\x01",        # not a bearer token
    b"n,a=alice,\x01auth=Bearer to ken\x01\x01",     # not a b64token
    b"n,a=al\r\nice,\x01auth=Bearer tok\x01\x01",    # CR LF in the user
    b"n,a=al=ice,\x01auth=Bearer tok\x01\x01",       # bad saslname escape
])
def test_malformed_oauthbearer_messages(raw):
    assert isinstance(sasl.decode_oauthbearer(base64.b64encode(raw)), sasl.SaslError)


@pytest.mark.parametrize("raw", [
    b"user=alice\x01auth=Bearer tok\x01",
    b"auth=Bearer tok\x01\x01",
    b"user=\x01auth=Bearer tok\x01\x01",
    b"user=alice\x01auth=Bearer tok\x01extra=1\x01\x01",
])
def test_malformed_xoauth2_messages(raw):
    assert isinstance(sasl.decode_xoauth2(base64.b64encode(raw)), sasl.SaslError)


def test_saslname_escapes_are_decoded():
    got = sasl.decode_oauthbearer(base64.b64encode(b"y,a=a=2Cb=3Dc,\x01auth=Bearer t\x01\x01"))
    assert got == sasl.BearerCredentials("a,b=c", "t")


def test_malformed_message_is_a_bad_and_no_login():
    c = conn()
    sent, other = feed(c, b"t1 AUTHENTICATE XOAUTH2 " + base64.b64encode(b"junk") + b"\r\n")
    assert sent.startswith(b"t1 BAD Invalid SASL") and other and not any(
        isinstance(e, LoginRequest) for e in other)
