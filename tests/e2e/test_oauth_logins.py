"""OAuth 2.0 logins end to end: curl (--oauth2-bearer, OAUTHBEARER and XOAUTH2) and
imaplib through the gateway to the real Dovecot, which the gateway logs in to through
the master user.

The tokens are signed by the suite's own keys and the provider's discovery document and
JWKS are served over HTTPS by tests/support/jwks_server.py (no OpenID provider from the
package registries runs here without a browser-driven login; see README "OAuth logins").
"""

from __future__ import annotations

import base64
import imaplib
import time
import uuid

import pytest

from tests.support.clients import curl
from tests.support.imap import LineClient, imaps
from tests.support.jwks_server import (
    AUDIENCE,
    JwksServer,
    TokenSigner,
    hs256_with_public_key,
    new_key,
    tampered,
    unsigned_token,
)
from tests.support.mfa import MFA_LIMITS, master_backend

pytestmark = pytest.mark.e2e

FAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"

POLICY = """\
[[rule]]
name = "alice strong"
users = ["alice"]
action = "allow"
mfa = "strong"

[[rule]]
name = "bob password or token"
users = ["bob"]
action = "allow"
mfa = "none"
"""


@pytest.fixture
def idp(certs):
    srv = JwksServer(certs.ca).start()
    yield srv
    srv.stop()


def oauth_gateway(gateway, tmp_path, certs, idp: JwksServer, limits=None, **oauth):
    return gateway(
        policies={"10-oauth.toml": POLICY}, limits=limits or MFA_LIMITS,
        backend=master_backend(tmp_path),
        oauth={"issuer": idp.issuer, "audience": AUDIENCE, "ca_file": str(certs.ca_path),
               **oauth})


@pytest.fixture
def gw(gateway, tmp_path, certs, idp):
    return oauth_gateway(gateway, tmp_path, certs, idp)


def oauthbearer_ir(user: str | None, token: str) -> str:
    a = f"a={user}" if user else ""
    return base64.b64encode(
        f"n,{a},\x01host=127.0.0.1\x01port=993\x01auth=Bearer {token}\x01\x01".encode()
    ).decode()


def raw_oauth_login(gw, user: str | None, token: str, *, source: str | None = None
                    ) -> tuple[list[bytes], dict]:
    """AUTHENTICATE OAUTHBEARER with SASL-IR; after an error challenge, answer ^A.
    Returns the lines the gateway sent for the command and its login verdict event."""
    c = LineClient.implicit(gw, source=source, timeout=15)
    try:
        sid = gw.session_id_for(c.local_port)
        c.send(f"a AUTHENTICATE OAUTHBEARER {oauthbearer_ir(user, token)}\r\n")
        lines = [c.read_line()]
        if lines[0].startswith(b"+ "):
            c.send(b"AQ==\r\n")
            lines.append(c.read_line())
        event = None
        deadline = time.monotonic() + 10
        while event is None and time.monotonic() < deadline:
            found = (gw.events("login.ok", session_id=sid)
                     + gw.events("login.denied", session_id=sid))
            event = found[0] if found else None
            time.sleep(0.05)
        assert event is not None, gw.tail()
        return lines, event
    finally:
        c.close()


def assert_refused(lines: list[bytes], event: dict, reason: str) -> None:
    """The RFC 7628 error challenge, then the uniform NO; the reason only in the log."""
    assert lines[0].startswith(b"+ "), lines
    challenge = base64.b64decode(lines[0][2:].strip())
    assert b'"status":"invalid_token"' in challenge and b"openid-configuration" in challenge
    assert lines[1] == b"a " + FAILED, lines
    assert event["event"] == "login.denied" and event["reason"] == reason, event


def test_capabilities_offer_oauth_after_tls(gw):
    c = LineClient.implicit(gw, timeout=15)
    caps = c.command("c", "CAPABILITY")[0]
    c.close()
    assert b"AUTH=OAUTHBEARER" in caps and b"AUTH=XOAUTH2" in caps and b"SASL-IR" in caps


def test_curl_oauth2_bearer_lists_alices_mailboxes(gw, certs, idp, dovecot):
    # curl 7.88 (Debian 12) sends OAUTHBEARER whenever the server offers it, even with
    # --login-options AUTH=XOAUTH2; XOAUTH2 is covered by imaplib below.
    box = f"oauth-{uuid.uuid4().hex[:8]}"
    assert dovecot.populate("alice", box, 1, 500, tag=box) == 1
    token = idp.signer.token("alice")
    url = f"imaps://127.0.0.1:{gw.implicit_port}/"
    # The token goes in curl's config on stdin, not argv (the process list shows argv).
    p = curl(url, user="alice", password="", cacert=certs.ca_path,
             extra=["--login-options", "AUTH=OAUTHBEARER"],
             config=f'oauth2-bearer = "{token}"\n')
    assert p.returncode == 0, p.stderr
    assert box.encode() in p.stdout
    ok = gw.wait_for_event("login.ok", mechanism="OAUTHBEARER")
    assert ok["user"] == "alice" and ok["factor"] == "oauth-mfa"
    assert token not in gw.log_text()


def test_curl_with_an_expired_token_is_denied(gw, certs, idp):
    token = idp.signer.token("alice", exp=int(time.time()) - 3600)
    p = curl(f"imaps://127.0.0.1:{gw.implicit_port}/", user="alice", password="",
             cacert=certs.ca_path, extra=["--login-options", "AUTH=OAUTHBEARER"],
             config=f'oauth2-bearer = "{token}"\n')
    assert p.returncode == 67, p.stderr  # CURLE_LOGIN_DENIED
    denied = gw.wait_for_event("login.denied", mechanism="OAUTHBEARER")
    assert denied["reason"] == "oauth_expired"


def test_imaplib_xoauth2_reads_mail_through_the_master_user(gw, idp, dovecot):
    box = f"oauth-{uuid.uuid4().hex[:8]}"
    assert dovecot.populate("bob", box, 2, 800, tag=box) == 2
    token = idp.signer.token("bob", kid="ed-1", amr=["pwd"])
    mark = dovecot.mark()
    m = imaps(gw)
    answers = iter([f"user=bob\x01auth=Bearer {token}\x01\x01", ""])
    typ, _ = m.authenticate("XOAUTH2", lambda _challenge: next(answers))
    assert typ == "OK"
    typ, data = m.select(box, readonly=True)
    assert typ == "OK" and data == [b"2"]
    m.logout()
    ok = gw.wait_for_event("login.ok", user="bob")
    assert ok["factor"] == "oauth" and ok["mechanism"] == "XOAUTH2"
    # Dovecot saw a master-user login for bob (the user has no password to send).
    line = dovecot.wait_for_log(r"imap-login: Info: Login: user=<bob>, auth_user=<(\w+)>.*",
                                since=mark)
    assert line.group(1) == "gatewaymaster", line.group(0)


def test_imaplib_refused_token_gets_no_after_the_error_challenge(gw, idp):
    token = idp.signer.token("bob", aud="someone-else")
    m = imaps(gw)
    seen: list[bytes] = []

    def answer(challenge: bytes) -> str:
        seen.append(challenge)
        return f"user=bob\x01auth=Bearer {token}\x01\x01" if len(seen) == 1 else "\x01"
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.authenticate("XOAUTH2", answer)
    assert b"invalid_token" in seen[-1]
    m.shutdown()


def _refused_tokens(idp: JwksServer) -> dict[str, tuple[str, str]]:
    s = idp.signer
    now = int(time.time())
    stranger = TokenSigner(idp.issuer, [new_key("rotated-9", "RS256")])
    wrong_issuer = TokenSigner("https://127.0.0.1:1/realms/other", [s.keys["rsa-1"]])
    return {
        "expired": (s.token("alice", exp=now - 600, iat=now - 900, nbf=now - 900),
                    "oauth_expired"),
        "wrong_audience": (s.token("alice", aud="another-app"), "oauth_wrong_audience"),
        "wrong_issuer": (wrong_issuer.token("alice"), "oauth_wrong_issuer"),
        "unknown_kid": (stranger.token("alice"), "oauth_unknown_kid"),
        "alg_none": (unsigned_token(s.claims("alice"), "rsa-1"), "oauth_bad_alg"),
        "hs256_public_key": (hs256_with_public_key(s.claims("alice"), s.keys["rsa-1"]),
                             "oauth_bad_alg"),
        "tampered": (tampered(s.token("bob"), preferred_username="alice"),
                     "oauth_bad_signature"),
    }


def test_bad_tokens_are_refused_the_same_way(gw, idp):
    for name, (token, reason) in _refused_tokens(idp).items():
        lines, event = raw_oauth_login(gw, None, token)
        assert_refused(lines, event, reason)
        assert token not in gw.log_text(), name
    # The made-up kid refetched the key set once: first load + one refetch.
    assert idp.count("/certs") == 2


def test_token_of_another_user_cannot_pick_the_mailbox(gw, idp):
    lines, event = raw_oauth_login(gw, "alice", idp.signer.token("bob"))
    assert_refused(lines, event, "oauth_user_mismatch")


def test_policy_strong_needs_mfa_in_amr(gw, idp):
    lines, event = raw_oauth_login(gw, None, idp.signer.token("alice", amr=["pwd"]))
    assert_refused(lines, event, "mfa_required:strong")
    lines, event = raw_oauth_login(gw, None, idp.signer.token("alice", amr=["pwd", "hwk"]))
    assert lines[0].startswith(b"a OK"), lines
    assert event["event"] == "login.ok" and event["factor"] == "oauth-mfa"


def test_key_rotation_without_restart_and_outage_keeps_cached_keys(gateway, tmp_path, certs,
                                                                   idp):
    # No rate limit on refetches here, so the unknown kid during the outage does try.
    gw = oauth_gateway(gateway, tmp_path, certs, idp, jwks_refetch_interval="0s")
    idp.served_kids = ["rsa-1"]
    lines, event = raw_oauth_login(gw, None, idp.signer.token("alice", kid="rsa-1"))
    assert event["event"] == "login.ok", event
    # The provider adds a key and starts signing with it: no restart, no SIGHUP.
    idp.served_kids = ["rsa-1", "ec-1"]
    lines, event = raw_oauth_login(gw, None, idp.signer.token("alice", kid="ec-1"))
    assert event["event"] == "login.ok", event
    gw.wait_for_event("oauth.keys_loaded", why="unknown_kid")
    # The provider goes down: tokens signed by keys already cached still work.
    idp.down = True
    lines, event = raw_oauth_login(gw, None, idp.signer.token("alice", kid="ec-1"))
    assert event["event"] == "login.ok", event
    lines, event = raw_oauth_login(gw, None, idp.signer.token("alice", kid="ed-1"))
    assert_refused(lines, event, "oauth_unknown_kid")
    gw.wait_for_event("oauth.keys_fetch_failed")


def test_token_failures_feed_the_limiter(gateway, tmp_path, certs, idp):
    limits = {**MFA_LIMITS, "ip_fail_threshold": 3}
    gw = oauth_gateway(gateway, tmp_path, certs, idp, limits=limits)
    source = "127.0.0.23"
    for i in range(3):
        token = idp.signer.token("bob", aud=f"wrong-{i}")  # three distinct bad tokens
        lines, event = raw_oauth_login(gw, None, token, source=source)
        assert event["reason"] == "oauth_wrong_audience"
    ban = gw.wait_for_event("ban.created")
    assert ban["network"].startswith(source)


def test_jwks_file_is_reloaded_on_sighup(gateway, tmp_path, certs, idp):
    """Air-gapped: keys from a local file, nothing fetched; SIGHUP re-reads it, so a key
    taken out of the file stops working without a restart."""
    import json
    import os
    import signal

    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(idp.signer.jwks(["rsa-1"])))
    gw = oauth_gateway(gateway, tmp_path, certs, idp, jwks_file=str(jwks),
                       jwks_refetch_interval="1h")
    lines, event = raw_oauth_login(gw, None, idp.signer.token("alice", kid="rsa-1"))
    assert event["event"] == "login.ok", event
    jwks.write_text(json.dumps(idp.signer.jwks(["ec-1"])))  # rsa-1 retired
    os.kill(gw.pid, signal.SIGHUP)
    gw.wait_for_event("oauth.keys_loaded", why="sighup")
    lines, event = raw_oauth_login(gw, None, idp.signer.token("alice", kid="rsa-1"))
    assert_refused(lines, event, "oauth_unknown_kid")
    lines, event = raw_oauth_login(gw, None, idp.signer.token("alice", kid="ec-1"))
    assert event["event"] == "login.ok", event
    assert idp.requests == []  # nothing was fetched from the provider
