"""The self-service portal in a real headless Chromium, against a real gateway in front
of the real Dovecot: what a user does, click by click, and what the mail side sees.

Alice signs in with her Dovecot password, sets up the authenticator (the key read from
the page, codes from pyotp), logs in over IMAP with ``password$code``, creates an app
password and logs in with it over IMAP, finds that login under "Recent activity",
revokes the app password while its IMAP session is open and sees the session end. An
invitation link works once. Along the way: cookie flags, the Content-Security-Policy
(and that the page's own script runs under it), and a POST without the CSRF token.
"""

from __future__ import annotations

import imaplib
import re
import time
from typing import Any

import pyotp
import pytest
from playwright.sync_api import Page, expect

import tests.support.imap  # noqa: F401  (registers imaplib's ID command)
from tests.support.browser import chromium
from tests.support.mfa import MFA_LIMITS, admin_json, master_backend
from tests.support.net import free_ports

pytestmark = pytest.mark.e2e

POLICY = """\
[[rule]]
name = "everyone: a strong factor, devices remembered for 14 days"
action = "allow"
mfa = "strong"
remember_device = "14d"
"""
TIMEOUT_MS = 10_000


def portal_gateway(gateway, tmp_path, **web: Any):
    port = free_ports(1)[0]
    url = f"https://127.0.0.1:{port}"
    gw = gateway(web={"address": f"127.0.0.1:{port}", "public_url": url, **web},
                 policies={"10-portal.toml": POLICY}, limits=MFA_LIMITS,
                 backend=master_backend(tmp_path))
    gw.url = url
    return gw


def imap_login(gw, user: str, secret: str, client_name: str = "e2e-imaplib") -> imaplib.IMAP4_SSL:
    conn = imaplib.IMAP4_SSL(gw.host, gw.implicit_port, ssl_context=gw.client_ssl_context(),
                             timeout=10)
    typ, _ = conn._simple_command("ID", f'("name" "{client_name}")')
    assert typ == "OK"
    conn.login(user, secret)
    return conn


def sign_in(page: Page, url: str, user: str = "alice", password: str = "alicepass") -> None:
    page.goto(url + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Username", exact=True).fill(user)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()


def code_now(key: str, ahead: int = 0) -> str:
    return pyotp.TOTP(key).at(time.time() + 30 * ahead)


def set_up_authenticator(page: Page) -> tuple[str, str, list[str]]:
    """From the authenticator page: scan (read the key), confirm; (key, code, recovery codes)."""
    page.get_by_role("button", name="Set up authenticator").click()
    qr = page.locator("svg.qr")
    expect(qr).to_be_visible()
    assert qr.get_attribute("role") == "img"
    key = page.locator("#totp-key").inner_text().replace(" ", "")
    # keep clear of a step boundary: the code must still be current when it arrives
    if 30 - time.time() % 30 < 2:
        time.sleep(30 - time.time() % 30 + 0.2)
    code = code_now(key)
    page.get_by_label("Code", exact=True).fill(code)
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_role("heading", name="Recovery codes")).to_be_visible()
    codes = page.locator("#recovery-codes code").all_inner_texts()
    return key, code, codes


def test_alice_secures_her_mail_in_a_real_browser(gateway, tmp_path, dovecot):
    gw = portal_gateway(gateway, tmp_path, enrollment="password")
    url = gw.url
    with chromium(gw.certs.cert_path) as context:
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))

        # -- sign in with the Dovecot password; the page's headers ---------------------
        first = page.goto(url + "/")
        csp = first.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        sign_in(page, url)
        expect(page.get_by_role("heading", name="Authenticator")).to_be_visible()
        (cookie,) = [c for c in context.cookies(url) if c["name"] == "__Host-session"]
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/" and cookie["domain"] == "127.0.0.1"
        half_signed_in = cookie["value"]

        # -- the authenticator ------------------------------------------------------------
        key, code, recovery = set_up_authenticator(page)
        assert len(recovery) == 10 and len(set(recovery)) == 10
        (cookie,) = [c for c in context.cookies(url) if c["name"] == "__Host-session"]
        assert cookie["value"] != half_signed_in  # rotated when the second factor completed
        page.get_by_role("link", name="Continue").click()
        expect(page.get_by_role("heading", name="Your account")).to_be_visible()

        # a mail client logs in with password$code (the code that confirmed the set-up)
        conn = imap_login(gw, "alice", f"alicepass${code}", client_name="Thunderbird")
        assert conn.select("INBOX")[0] == "OK"
        conn.logout()
        assert gw.events("login.ok", user="alice")[-1]["factor"] == "totp"

        # -- an app password, used by imaplib through the gateway ---------------------------
        page.get_by_role("navigation").get_by_role("link", name="App passwords").click()
        expect(page.get_by_role("heading", name="App passwords", exact=True)).to_be_visible()
        page.get_by_label("Label", exact=True).fill("Phone")
        page.get_by_label("Access", exact=True).select_option("full")
        page.get_by_label("Expires", exact=True).select_option(label="In 90 days")
        page.get_by_role("button", name="Create app password").click()
        expect(page.get_by_role("heading", name="App password created")).to_be_visible()
        password = page.locator("#new-password").inner_text()
        assert re.fullmatch(r"([a-z2-9]{5}-){3}[a-z2-9]{5}", password)
        settings = page.locator("dl.settings").inner_text()
        assert "127.0.0.1" in settings and "alice" in settings
        assert str(gw.implicit_port) in settings and "SSL/TLS" in settings
        assert str(gw.starttls_port) in settings and "STARTTLS" in settings
        page.get_by_role("button", name="Copy").click()  # the static script, under the CSP
        expect(page.get_by_role("button", name="Copied")).to_be_visible()
        assert page.evaluate("navigator.clipboard.readText()") == password

        conn = imap_login(gw, "alice", password)
        assert conn.select("INBOX")[0] == "OK"
        app_session = gw.events("login.ok", factor="app-password")[-1]["session_id"]

        # -- the login shows up: recent activity and the app password's last use ---------------
        page.get_by_role("navigation").get_by_role("link", name="Recent activity").click()
        expect(page.get_by_role("heading", name="Recent activity")).to_be_visible()
        rows = page.locator("tbody tr")
        # the gateway writes the login history once a second (in batches)
        deadline = time.monotonic() + 5
        while "e2e-imaplib" not in rows.nth(0).inner_text() and time.monotonic() < deadline:
            time.sleep(0.3)
            page.reload()
        newest = rows.nth(0).inner_text()
        assert "IMAP" in newest and "e2e-imaplib" in newest and "App password" in newest
        assert "Success" in newest and "127.0.0.1" in newest
        text = page.locator("tbody").inner_text()
        assert "Thunderbird" in text and "Authenticator code" in text
        assert re.search(r"Web\s+127\.0\.0\.1\s+Chrome\s+Password", text)  # this sign-in

        page.get_by_role("navigation").get_by_role("link", name="App passwords").click()
        row = page.get_by_role("row").filter(has_text="Phone")
        expect(row).to_contain_text("e2e-imaplib")
        expect(row).to_contain_text("127.0.0.1")
        assert password not in page.content()

        # -- revoked while its IMAP session is open: the session ends within 2 s ------------
        conn.sock.settimeout(5)
        row.get_by_role("button", name="Revoke").click()
        expect(page.get_by_text("You have no app passwords yet.")).to_be_visible()
        revoked = time.monotonic()
        data = b""
        try:
            while b"BYE" not in data:
                chunk = conn.sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        assert b"* BYE App password revoked." in data, data
        assert time.monotonic() - revoked < 2.0
        gw.wait_for_event("session.end", session_id=app_session, reason="app_password_revoked")
        conn.shutdown()
        with pytest.raises(imaplib.IMAP4.error):
            imap_login(gw, "alice", password)

        # -- CSRF: a POST from the browser, with its cookies, but without the token ------------
        refused = page.evaluate("""async () => {
            const r = await fetch("/app-passwords", {method: "POST",
                headers: {"Content-Type": "application/x-www-form-urlencoded"},
                body: "label=Forged&access=full&expires=never"});
            return r.status;
        }""")
        assert refused == 403
        page.reload()
        expect(page.get_by_text("You have no app passwords yet.")).to_be_visible()

        # -- sign out, and back in with a code ------------------------------------------------
        page.get_by_role("button", name="Sign out", exact=True).click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        sign_in(page, url)
        expect(page.get_by_role("heading", name="Enter your code")).to_be_visible()
        page.get_by_label("Code", exact=True).fill(code_now(key, ahead=1))
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page.get_by_role("heading", name="Your account")).to_be_visible()

        # no CSP violation, no failed load but the forged POST's 403
        assert not [m for m in console if "Content Security Policy" in m
                    or (m.startswith("error") and "status of 403" not in m)], console

    log = gw.log_text()
    for secret in ("alicepass", key, password, password.replace("-", ""), *recovery):
        assert secret not in log
    signins = gw.events("web.signin", user="alice")
    assert [e["factor"] for e in signins] == ["none", "totp"]


def test_an_invitation_link_works_once(gateway, tmp_path, dovecot):
    gw = portal_gateway(gateway, tmp_path, enrollment="invite")
    url = gw.url
    invite = admin_json(gw, "users", "invite", "alice")
    link = invite["url"]
    assert link == f"{url}/invite/{invite['token']}"
    with chromium(gw.certs.cert_path) as context:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        # the password alone opens nothing here
        sign_in(page, url)
        expect(page.get_by_role("heading", name="Invitation needed")).to_be_visible()
        # the link: sign in there, and the set-up starts
        page.goto(link)
        expect(page.get_by_role("heading", name="Accept your invitation")).to_be_visible()
        page.get_by_label("Username", exact=True).fill("alice")
        page.get_by_label("Password", exact=True).fill("alicepass")
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page.locator("svg.qr")).to_be_visible()
        key = page.locator("#totp-key").inner_text().replace(" ", "")
        page.get_by_label("Code", exact=True).fill(code_now(key))
        page.get_by_role("button", name="Turn on").click()
        expect(page.get_by_role("heading", name="Recovery codes")).to_be_visible()

    with chromium(gw.certs.cert_path) as context:  # another browser, the same link
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(link)
        page.get_by_label("Username", exact=True).fill("alice")
        page.get_by_label("Password", exact=True).fill("alicepass")
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page.get_by_role("heading", name="Invitation not valid")).to_be_visible()
        assert not [c for c in context.cookies(url) if c["name"] == "__Host-session"]

    assert gw.events("web.invite_used", user="alice")
    assert gw.events("web.invite_refused", user="alice", reason="unusable")
    assert invite["token"] not in gw.log_text()
