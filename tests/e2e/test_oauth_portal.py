"""The portal's "Sign in with <provider>" on a real gateway: OpenID Connect authorization
code flow with PKCE against the suite's minimal test IdP (tests/support/jwks_server.py,
which approves ``login_as`` without a login page), driven by an HTTPS client that follows
the redirects as a browser would."""

from __future__ import annotations

import os
import urllib.parse

import httpx
import pytest

from tests.support.jwks_server import JwksServer
from tests.support.mfa import MFA_LIMITS, master_backend
from tests.support.net import free_ports

pytestmark = pytest.mark.e2e

POLICY = """\
[[rule]]
name = "blocked"
users = ["mallory"]
action = "deny"

[[rule]]
name = "everyone strong"
users = ["*"]
action = "allow"
mfa = "strong"
"""


@pytest.fixture
def idp(certs):
    srv = JwksServer(certs.ca).start()
    yield srv
    srv.stop()


@pytest.fixture
def portal(gateway, tmp_path, certs, idp):
    secret = tmp_path / "client.secret"
    secret.write_text(idp.client_secret + "\n")
    os.chmod(secret, 0o600)
    (web_port,) = free_ports(1)
    base = f"https://127.0.0.1:{web_port}"
    gw = gateway(policies={"10-p.toml": POLICY}, limits=MFA_LIMITS,
                 backend=master_backend(tmp_path),
                 web={"address": f"127.0.0.1:{web_port}", "public_url": base},
                 oauth={"issuer": idp.issuer, "audience": "imap-gateway",
                        "client_id": idp.client_id, "client_secret_file": str(secret),
                        "ca_file": str(certs.ca_path), "provider_name": "Test IdP"})
    gw.base = base
    return gw


def sign_in_with_provider(b: httpx.Client, base: str, idp: JwksServer) -> httpx.Response:
    """/oauth/start -> the provider -> /oauth/callback; the callback's answer."""
    start = b.get(f"{base}/oauth/start")
    assert start.status_code == 303, start.text
    to_idp = start.headers["location"]
    assert to_idp.startswith(idp.authorization_endpoint)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(to_idp).query)
    assert query["code_challenge_method"] == ["S256"] and query["redirect_uri"] == [
        f"{base}/oauth/callback"]
    back = b.get(to_idp)
    assert back.status_code == 302, back.text
    return b.get(back.headers["location"])


def test_sign_in_with_provider_and_mfa_in_amr_opens_the_account(portal, certs, idp):
    with httpx.Client(verify=certs.client_ssl_context(), timeout=15) as b:
        page = b.get(f"{portal.base}/")
        assert "Sign in with Test IdP" in page.text
        done = sign_in_with_provider(b, portal.base, idp)
        assert done.status_code == 200 and 'http-equiv="refresh"' in done.text
        account = b.get(f"{portal.base}/")
        assert "<h1>Your account</h1>" in account.text and "alice" in account.text
    event = portal.wait_for_event("web.signin", user="alice")
    assert event["factor"] == "oauth-mfa"
    # The code was used once; the provider saw the PKCE verifier (it checks it).
    assert idp.count("/protocol/openid-connect/token") == 1


def test_without_mfa_in_amr_the_portal_still_asks_for_its_own_factor(portal, certs, idp):
    idp.login_amr = ["pwd"]
    with httpx.Client(verify=certs.client_ssl_context(), timeout=15) as b:
        done = sign_in_with_provider(b, portal.base, idp)
        assert done.status_code == 200
        page = b.get(f"{portal.base}/")
        # alice has no authenticator here and enrolment is by invitation: the provider's
        # sign-in without MFA is not enough for the account page.
        assert "<h1>Your account</h1>" not in page.text
        assert "Invitation needed" in page.text


def test_a_callback_this_browser_did_not_start_is_refused(portal, certs, idp):
    with httpx.Client(verify=certs.client_ssl_context(), timeout=15) as attacker:
        start = attacker.get(f"{portal.base}/oauth/start")
        callback = attacker.get(start.headers["location"]).headers["location"]
    # The victim's browser is made to open the attacker's callback (login CSRF).
    with httpx.Client(verify=certs.client_ssl_context(), timeout=15) as victim:
        r = victim.get(callback)
        assert r.status_code == 400 and "Sign-in with Test IdP failed" in r.text
        assert "<h1>Your account</h1>" not in victim.get(f"{portal.base}/").text
    assert idp.count("/protocol/openid-connect/token") == 0  # the code was never redeemed


def test_policy_denies_a_blocked_user_from_the_provider_too(portal, certs, idp):
    idp.login_as = "mallory"
    with httpx.Client(verify=certs.client_ssl_context(), timeout=15) as b:
        done = sign_in_with_provider(b, portal.base, idp)
        assert done.status_code == 200 and "Sign-in with Test IdP failed" in done.text
        assert "<h1>Your account</h1>" not in b.get(f"{portal.base}/").text
    failed = portal.wait_for_event("web.signin_failed", user="mallory")
    assert failed["reason"] == "policy_denied:blocked" and failed["step"] == "oauth"


def test_sign_in_with_provider_in_a_real_browser(gateway, tmp_path, certs):
    """Chromium: the provider is another site (localhost vs the portal's 127.0.0.1), so
    the way back is a cross-site redirect, as with a real provider; the session cookie
    (SameSite=Strict) must still be there on the account page. (Answering the callback
    with a plain redirect to "/" fails this test: the account page's request would end a
    cross-site redirect chain and go without the cookie.)"""
    from playwright.sync_api import expect

    from tests.support.browser import chromium

    srv = JwksServer(certs.ca, host="localhost", cert=(certs.cert_path, certs.key_path))
    srv.start()
    try:
        secret = tmp_path / "client.secret"
        secret.write_text(srv.client_secret + "\n")
        os.chmod(secret, 0o600)
        (web_port,) = free_ports(1)
        url = f"https://127.0.0.1:{web_port}"
        gateway(policies={"10-p.toml": POLICY}, limits=MFA_LIMITS,
                backend=master_backend(tmp_path),
                web={"address": f"127.0.0.1:{web_port}", "public_url": url},
                oauth={"issuer": srv.issuer, "audience": "imap-gateway",
                       "client_id": srv.client_id, "client_secret_file": str(secret),
                       "ca_file": str(certs.ca_path), "provider_name": "Test IdP"})
        # Chromium leaves SameSite=Strict cookies off requests at the end of a cross-site
        # redirect chain only with this feature on (other browsers do it by default).
        with chromium(certs.cert_path, extra_args=(
                "--enable-features=CookieSameSiteConsidersRedirectChain",)) as context:
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.goto(url + "/")
            page.get_by_role("link", name="Sign in with Test IdP").click()
            expect(page.get_by_role("heading", name="Your account")).to_be_visible()
            assert page.url.startswith(url)
            (session,) = [c for c in context.cookies(url) if c["name"] == "__Host-session"]
            assert session["sameSite"] == "Strict"
            assert not [c for c in context.cookies(url) if c["name"] == "__Host-igw-oidc"]
    finally:
        srv.stop()
