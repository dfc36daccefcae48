"""Device approval as a user goes through it: a mail client on a new device, the portal
in a real headless Chromium, the real gateway in front of the real Dovecot.

Alice has an authenticator; the policy asks for a strong factor and remembers devices.
Her phone's mail app (IMAP ID name "iPhone Mail") logs in with the password alone and is
refused with ``NO [ALERT]`` naming the portal's address. She signs in there with her
password and an authenticator code, finds the phone under "Pending devices" and clicks
"Approve"; the phone's next login with the password alone gets in. A wrong password from
another new device gets the very same answer and leaves nothing on the page.
"""

from __future__ import annotations

import imaplib

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.test_mfa_device_approval import DELAY, imaplib_login, raw_login
from tests.support.browser import chromium
from tests.support.gatewayproc import GatewayProcess
from tests.support.mfa import MFA_LIMITS, code_at, enroll_totp
from tests.support.net import free_ports

pytestmark = pytest.mark.e2e

POLICY = """\
[[rule]]
name = "a strong factor, devices remembered for 14 days"
users = ["*"]
action = "allow"
mfa = "strong"
remember_device = "14d"
"""
TIMEOUT_MS = 10_000


def approval_portal_gateway(gateway) -> tuple[GatewayProcess, str]:
    """A gateway whose portal's public URL is the address the browser opens."""
    port = free_ports(1)[0]
    url = f"https://127.0.0.1:{port}"
    # the delay of the device-approval suite: Dovecot's answer to a right password
    # always comes inside it, so the device is noted
    limits = {**MFA_LIMITS, "auth_failure_delay": f"{int(DELAY * 1000)}ms"}
    gw = gateway(web={"address": f"127.0.0.1:{port}", "public_url": url},
                 policies={"00-approval.toml": POLICY}, limits=limits)
    return gw, url


def sign_in_with_code(page: Page, url: str, code: str) -> None:
    page.goto(url + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Username", exact=True).fill("alice")
    page.get_by_label("Password", exact=True).fill("alicepass")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("heading", name="Enter your code")).to_be_visible()
    page.get_by_label("Code", exact=True).fill(code)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("heading", name="Your account")).to_be_visible()


def test_alice_approves_her_new_phone_in_the_portal(gateway):
    gw, url = approval_portal_gateway(gateway)
    secret, step = enroll_totp(gw, "alice")
    alert = (f"[ALERT] New device: approve it at {url} after signing in with your "
             "second factor")

    # -- the phone's first login: refused, and the refusal says where to go -------------
    with pytest.raises(imaplib.IMAP4.error) as err:
        imaplib_login(gw, "alice", "alicepass", "iPhone Mail")
    assert alert in str(err.value), err.value

    # a wrong password from another new device: the same bytes as the right password
    right, _ = raw_login(gw, "alice", "alicepass", "iPhone Mail")
    wrong, _ = raw_login(gw, "alice", "not-alicepass", "Outlook")
    assert right == wrong == f"a NO {alert}\r\n".encode(), (right, wrong)

    with chromium(gw.certs.cert_path) as context:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        sign_in_with_code(page, url, code_at(secret, step + 1))

        # -- the devices page: the phone waits, the wrong password left nothing -----------
        page.get_by_role("navigation").get_by_role("link", name="Devices").click()
        expect(page.get_by_role("heading", name="Devices", exact=True)).to_be_visible()
        pending = page.get_by_role("region", name="Pending devices")
        expect(pending.get_by_role("heading", name="Pending devices")).to_be_visible()
        row = pending.get_by_role("row").filter(has_text="iPhone Mail")
        expect(row).to_have_count(1)
        expect(row.get_by_role("rowheader")).to_have_text("iPhone Mail")
        expect(row).to_contain_text("127.0.0.1")
        expect(row).to_contain_text("Waiting")
        expect(pending.locator("tbody tr")).to_have_count(1)
        assert "Outlook" not in page.content()

        # -- approve it ------------------------------------------------------------------
        row.get_by_role("button", name="Approve").click()
        row = page.get_by_role("region", name="Pending devices").get_by_role("row").filter(
            has_text="iPhone Mail")
        expect(row).to_contain_text("Approved")
        expect(row.get_by_role("button", name="Approve")).to_have_count(0)
        gw.wait_for_event("web.device_approved", user="alice")

    # -- the phone's next login, the password alone: in --------------------------------
    m = imaplib_login(gw, "alice", "alicepass", "iPhone Mail")
    try:
        assert m.select("INBOX")[0] == "OK"  # a real Dovecot session
    finally:
        m.logout()
    assert gw.wait_for_event("login.ok", user="alice")["factor"] == "remembered-device"
    assert "alicepass" not in gw.log_text()
