"""Screenshots of the portal's pages for the README: docs/screenshots/*.png.

    make screenshots            # or: PYTHONPATH=. .venv/bin/python scripts/portal_screenshots.py

Starts what the e2e suite starts (a throw-away Dovecot, the gateway with a portal, the
headless Chromium of tests/support/browser.py), walks through the pages as alice would,
with a little history made on the way (IMAP logins, a device waiting for approval), and
saves one PNG per page. alice is also in ``[web] admins``: the admin pages
(``admin-*.png``) are shot in the same session, with logins happening while the live
events page is open, a ban added from the bans page and an IMAP session left open for the
sessions page. Everything runs on loopback and is removed afterwards.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyotp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The gateway runs as `python -m gateway`: it must import this tree too, not another
# installed copy.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)

import tests.support.imap  # noqa: E402,F401  (registers imaplib's ID command)
from gateway.store import open_store  # noqa: E402
from tests.support.browser import chromium  # noqa: E402
from tests.support.certs import make_certs  # noqa: E402
from tests.support.dovecot import start_rig  # noqa: E402
from tests.support.gatewayproc import GatewayFactory  # noqa: E402
from tests.support.mfa import MFA_LIMITS, master_backend  # noqa: E402
from tests.support.net import free_ports  # noqa: E402

POLICY = """\
[[rule]]
name = "everyone"
action = "allow"
mfa = "strong"
remember_device = "14d"
"""


def imap_login(gw, secret: str, name: str, source: str = "127.0.0.1") -> None:
    conn = imaplib.IMAP4_SSL(gw.host, gw.implicit_port, ssl_context=gw.client_ssl_context(),
                             timeout=10)
    conn._simple_command("ID", f'("name" "{name}")')
    try:
        conn.login("alice", secret)
        conn.select("INBOX")
        conn.logout()
    except imaplib.IMAP4.error:
        conn.shutdown()


def open_imap(gw, secret: str, name: str) -> imaplib.IMAP4_SSL:
    """A logged-in IMAP session left open (for the admin sessions page)."""
    conn = imaplib.IMAP4_SSL(gw.host, gw.implicit_port, ssl_context=gw.client_ssl_context(),
                             timeout=10)
    conn._simple_command("ID", f'("name" "{name}")')
    conn.login("alice", secret)
    conn.select("INBOX")
    return conn


def admin_pages(page, gw, url: str, out: Path, app_password: str) -> None:
    """The admin pages, from alice's session (signed in with her code, in [web] admins)."""
    page.goto(url + "/admin")
    page.locator("#feed-status").get_by_text("Live").wait_for()
    # events arrive while the page is open: a login, a wrong password, a new device
    imap_login(gw, app_password, "iOS Mail")
    imap_login(gw, "not-my-password", "unknown")
    imap_login(gw, "alicepass", "Outlook")
    page.locator('#live-events li[data-event="login.denied"]').first.wait_for()
    page.locator('#live-events li[data-event="login.ok"]').first.wait_for()
    shoot(page, out, "admin-events")

    page.get_by_role("link", name="Bans").click()
    page.fill("#ban-network", "203.0.113.0/24")
    page.fill("#ban-ttl", "1h")
    page.fill("#ban-reason", "password spraying")
    page.get_by_role("button", name="Ban").click()
    page.get_by_text("Banned 203.0.113.0/24").wait_for()
    shoot(page, out, "admin-bans")

    # the phone's app password, and Thunderbird (a remembered device: the password alone)
    conns = [open_imap(gw, app_password, "iOS Mail"), open_imap(gw, "alicepass", "Thunderbird")]
    try:
        page.goto(url + "/admin/sessions")
        page.locator("#sessions").get_by_text("authenticated").first.wait_for()
        shoot(page, out, "admin-sessions")
    finally:
        for conn in conns:
            conn.logout()

    page.goto(url + "/admin/users?user=alice")
    page.locator("#totp-status").wait_for()
    shoot(page, out, "admin-users")


def shoot(page, out: Path, name: str) -> None:
    path = out / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshots: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def run(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="igw-shots-"))
    rig = start_rig()
    factory = GatewayFactory(work, make_certs(work / "certs"), f"127.0.0.1:{rig.imap_port}")
    try:
        port = free_ports(1)[0]
        url = f"https://localhost:{port}"
        gw = factory(web={"address": f"127.0.0.1:{port}", "public_url": url,
                          "enrollment": "password", "admins": ["alice"]},
                     policies={"10-everyone.toml": POLICY}, limits=MFA_LIMITS,
                     backend=master_backend(work))
        with chromium(gw.certs.cert_path, viewport=(1100, 760)) as context:
            page = context.new_page()
            page.goto(url + "/")
            page.get_by_label("Username", exact=True).fill("alice")
            shoot(page, out, "signin")
            page.get_by_label("Password", exact=True).fill("alicepass")
            page.get_by_role("button", name="Sign in", exact=True).click()
            page.get_by_role("button", name="Set up authenticator").click()
            page.locator("svg.qr").wait_for()
            key = page.locator("#totp-key").inner_text().replace(" ", "")
            shoot(page, out, "authenticator-setup")
            if 30 - time.time() % 30 < 2:
                time.sleep(3)
            code = pyotp.TOTP(key).now()
            page.get_by_label("Code", exact=True).fill(code)
            page.get_by_role("button", name="Turn on").click()
            page.get_by_role("heading", name="Recovery codes").wait_for()
            shoot(page, out, "recovery-codes")

            # some history: a client with a code (remembered), app passwords in use
            imap_login(gw, f"alicepass${code}", "Thunderbird")
            made = {}
            for label, access, mailboxes, expires in (
                    ("Phone", "full", "", "In 1 year"),
                    ("Laptop mbsync", "read-only", "INBOX, Archive/*", "In 90 days")):
                page.goto(url + "/app-passwords")
                page.get_by_label("Label", exact=True).fill(label)
                page.get_by_label("Access", exact=True).select_option(access)
                page.get_by_label("Mailboxes", exact=True).fill(mailboxes)
                page.get_by_label("Expires", exact=True).select_option(label=expires)
                page.get_by_role("button", name="Create app password").click()
                page.get_by_role("heading", name="App password created").wait_for()
                made[label] = page.locator("#new-password").inner_text()
                if label == "Phone":
                    shoot(page, out, "app-password-created")
            imap_login(gw, made["Phone"], "iOS Mail")
            imap_login(gw, made["Laptop mbsync"], "mbsync")
            imap_login(gw, "not-my-password", "unknown")
            with open_store(gw.dir / "state" / "gateway.db", gw.dir / "state" / "store.key") as s:
                s.note_device("alice", "198.51.100.23", "Outlook", time.time())

            page.goto(url + "/app-passwords")
            shoot(page, out, "app-passwords")
            page.goto(url + "/devices")
            shoot(page, out, "devices")
            page.goto(url + "/activity")
            shoot(page, out, "activity")
            page.goto(url + "/")
            shoot(page, out, "account")

            admin_pages(page, gw, url, out, made["Phone"])
            page.goto(url + "/")

            page.get_by_role("button", name="Sign out", exact=True).click()
            page.get_by_label("Username", exact=True).fill("alice")
            page.get_by_label("Password", exact=True).fill("alicepass")
            page.get_by_role("button", name="Sign in", exact=True).click()
            page.get_by_role("heading", name="Enter your code").wait_for()
            shoot(page, out, "verify")
    finally:
        factory.stop_all()
        rig.stop()
        shutil.rmtree(rig.dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots",
                        help="directory for the PNG files (default: docs/screenshots)")
    run(parser.parse_args().out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
