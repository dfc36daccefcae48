"""The self-service portal's handlers over ASGI, with a real SQLite store, a real limiter
and a real policy; only Dovecot is a stand-in (tests/support/portal.py).

Sign-in (password, second factor, uniform failures through the limiter), what each stage
of a web session may do, the authenticator, app passwords, devices, recent activity,
invitations, sessions (rotation, expiry, sign-out) and CSRF.
"""

from __future__ import annotations

import re
import time

import pytest
from structlog.testing import capture_logs

from gateway.proxy.values import BackendLoginResult
from gateway.store.base import (
    AppPasswordStatus,
    DeviceApproval,
    LoginProtocol,
    LoginRecord,
    LoginResult,
    TotpStatus,
)
from gateway.web.csrf import PRESESSION_COOKIE, SESSION_COOKIE
from gateway.web.portal import browser_name
from gateway.web.qr import qr_svg
from tests.support.portal import (
    PASSWORDS,
    Clock,
    PortalClient,
    enroll_active,
    make_services,
    totp_code,
)

UNIFORM = "Sign-in failed. Check your user name and password and try again."


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def services(tmp_path):
    s = make_services(tmp_path)
    yield s
    s.store.close()


@pytest.fixture
def invite_services(tmp_path):
    s = make_services(tmp_path, web={"enrollment": "invite"})
    yield s
    s.store.close()


def client(services, clock, ip: str = "192.0.2.10") -> PortalClient:
    return PortalClient(services, clock, client=(ip, 50000))


def set_cookie_headers(r) -> list[str]:
    return r.headers.get_list("set-cookie")


def signed_in_full(services, clock, user: str = "alice") -> tuple[PortalClient, str]:
    """A browser through both steps for a user with an active authenticator; its key."""
    secret = enroll_active(services.store, user, clock.now)
    clock.advance(30)
    c = client(services, clock)
    c.follow(c.sign_in(user))
    r = c.submit("/verify", {"code": totp_code(secret, clock.now)})
    assert r.headers["location"] == "/", r.text
    c.follow(r)
    return c, secret


# -- the password ----------------------------------------------------------------------


def test_the_signin_page_has_the_contract_words_and_no_inline_script(services, clock):
    c = client(services, clock)
    r = c.page("/")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert "<h1>Sign in</h1>" in r.text
    assert '<label for="username">Username</label>' in r.text
    assert '<label for="password">Password</label>' in r.text
    assert '<button type="submit">Sign in</button>' in r.text
    assert "<script>" not in r.text and "onclick" not in r.text
    presession = [h for h in set_cookie_headers(r) if h.startswith(PRESESSION_COOKIE + "=")]
    assert presession and all(a in presession[0] for a in
                              ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"))
    assert c.session_cookie is None  # nobody is signed in yet


def test_a_good_password_opens_a_session_with_a_new_strict_cookie(services, clock):
    c = client(services, clock)
    c.page("/")
    before = dict(c.cookies)
    r = c.submit("/signin", {"username": "alice", "password": "alicepass"})
    assert r.status_code == 303 and r.headers["location"] == "/authenticator"
    (cookie,) = [h for h in set_cookie_headers(r) if h.startswith(SESSION_COOKIE + "=")]
    for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert attribute in cookie
    assert "Domain" not in cookie and SESSION_COOKIE.startswith("__Host-")
    assert c.session_cookie not in before.values()  # a new id, never one the browser had
    session = services.store.get_web_session(c.session_cookie, clock.now)
    assert session is not None and session.user == "alice" and not session.mfa_done
    assert session.expires == clock.now + services.config.web.session_ttl
    # the backend was asked with the browser's address, and the connection closed
    assert services.backend_logins == ["alice"] and services.backend_closed == 1
    assert services.endpoints[0].ip == "192.0.2.10"


@pytest.mark.parametrize("user, password", [
    ("alice", "wrong"), ("nobody", "x"), ("mallory", "mallorypass"), ("", "x"),
    ("alice", ""), ("al\x00ice", "alicepass")])
def test_every_failed_signin_looks_the_same(services, clock, user, password):
    c = client(services, clock)
    c.page("/")
    with capture_logs() as logs:
        r = c.submit("/signin", {"username": user, "password": password})
    assert r.status_code == 200 and UNIFORM in r.text
    assert c.session_cookie is None
    # the form comes back with the user name, never the password
    assert 'type="password" autocomplete="current-password" required>' in r.text
    (failed,) = [e for e in logs if e["event"] == "web.signin_failed"]
    assert failed["step"] == "password" and failed["client_ip"] == "192.0.2.10"
    assert all(password not in str(e) for e in logs if password)
    if user == "mallory":  # a deny rule for the user denies the portal too, before Dovecot
        assert failed["reason"] == "policy_denied:blocked" and services.backend_logins == []


def test_failures_take_the_uniform_minimum_time(tmp_path, clock):
    services = make_services(tmp_path, limits={"auth_failure_delay": "300ms"})
    c = client(services, clock)
    c.page("/")
    started = time.monotonic()
    r = c.submit("/signin", {"username": "alice", "password": "wrong"})
    assert UNIFORM in r.text and time.monotonic() - started >= 0.3
    started = time.monotonic()
    c.page("/")
    c.submit("/signin", {"username": "alice", "password": "alicepass"})
    assert time.monotonic() - started < 0.3  # success is not held back
    services.store.close()


def test_portal_failures_count_against_the_source_like_imap_ones(tmp_path, clock):
    services = make_services(tmp_path, limits={"user_ip_fail_threshold": 3,
                                               "ip_fail_threshold": 5})
    c = client(services, clock)
    for n in range(3):
        c.page("/")
        c.submit("/signin", {"username": "alice", "password": f"guess{n}"})
    # the (user, address) pair is blocked now, even with the right password
    c.page("/")
    r = c.submit("/signin", {"username": "alice", "password": "alicepass"})
    assert UNIFORM in r.text and c.session_cookie is None
    assert services.backend_logins == ["alice"] * 3  # the blocked try never reached Dovecot
    history = services.store.recent_logins("alice")
    assert history[0].reason == "user_ip_failures" and history[0].protocol is LoginProtocol.WEB
    assert all(h.result is LoginResult.FAILURE for h in history)
    # another user from the same address: the address is near its ban threshold
    for n in range(2):
        c.page("/")
        c.submit("/signin", {"username": "bob", "password": f"guess{n}"})
    c.page("/")
    assert UNIFORM in c.submit("/signin", {"username": "bob", "password": "bobpass"}).text
    assert services.store.recent_logins("bob")[0].reason.startswith("banned:")
    services.store.close()


def test_an_unreachable_backend_is_said_plainly_and_not_counted(services, clock):
    services.backend_down = True
    c = client(services, clock)
    c.page("/")
    r = c.submit("/signin", {"username": "alice", "password": "alicepass"})
    assert r.status_code == 503 and "cannot be reached" in r.text
    services.backend_down = False
    services.backend_answer = BackendLoginResult(ok=False, line=b"gw1 NO [UNAVAILABLE] x\r\n",
                                                 code="UNAVAILABLE")
    c.page("/")
    assert c.submit("/signin", {"username": "alice", "password": "alicepass"}).status_code == 503
    assert services.store.recent_logins("alice")[0].reason == "backend_unavailable"


def test_a_user_name_with_the_master_separator_is_refused(tmp_path, clock):
    master = tmp_path / "master.pass"
    master.write_text("masterpass\n")
    master.chmod(0o600)
    services = make_services(tmp_path)
    services.config = services.config.model_copy(update={"backend": services.config.backend.model_copy(
        update={"master_user": "gatewaymaster", "master_password_file": master})})
    c = client(services, clock)
    c.page("/")
    r = c.submit("/signin", {"username": "alice*gatewaymaster", "password": "masterpass"})
    assert UNIFORM in r.text and services.backend_logins == []
    services.store.close()


# -- the second factor -------------------------------------------------------------------


def test_with_an_authenticator_the_session_can_only_enter_its_code(services, clock):
    secret = enroll_active(services.store, "alice", clock.now)
    clock.advance(30)
    c = client(services, clock)
    r = c.sign_in("alice")
    assert r.headers["location"] == "/verify"
    first_id = c.session_cookie
    page = c.follow(r)
    assert '<label for="code">Code</label>' in page.text
    assert re.search(r"<button type=\"submit\">Sign in</button>", page.text)
    for path in ("/", "/app-passwords", "/devices", "/activity", "/authenticator"):
        r = c.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/verify", path
    c.page("/verify")
    for path, fields in (("/app-passwords", {"label": "x"}), ("/devices/approve", {"id": "1"}),
                         ("/authenticator/setup", {}), ("/signout/everywhere", {})):
        r = c.submit(path, fields)
        assert r.status_code == 303 and r.headers["location"] == "/verify", path
    assert services.store.list_app_passwords("alice") == []
    # no sign-in is booked before the second factor
    assert services.store.recent_logins("alice") == []

    r = c.submit("/verify", {"code": "000000" if totp_code(secret, clock.now) != "000000"
                             else "111111"})
    assert r.status_code == 200 and "That code did not work" in r.text
    assert services.store.recent_logins("alice")[0].reason == "totp_invalid"
    r = c.submit("/verify", {"code": totp_code(secret, clock.now)})
    assert r.status_code == 303 and r.headers["location"] == "/"
    # the id rotated: the old one is worth nothing now
    assert c.session_cookie != first_id
    assert services.store.get_web_session(first_id, clock.now) is None
    session = services.store.get_web_session(c.session_cookie, clock.now)
    assert session is not None and session.mfa_done
    page = c.follow(r)
    assert "<h1>Your account</h1>" in page.text
    (ok,) = [h for h in services.store.recent_logins("alice") if h.result is LoginResult.SUCCESS]
    assert (ok.factor, ok.protocol, ok.client_name) == ("totp", LoginProtocol.WEB, "browser")


def test_a_totp_code_signs_in_once(services, clock):
    secret = enroll_active(services.store, "alice", clock.now)
    clock.advance(30)
    code = totp_code(secret, clock.now)
    a = client(services, clock)
    a.follow(a.sign_in())
    assert a.submit("/verify", {"code": code}).status_code == 303
    b = client(services, clock, ip="192.0.2.11")
    b.follow(b.sign_in())
    r = b.submit("/verify", {"code": code})
    assert r.status_code == 200 and "That code did not work" in r.text
    assert services.store.recent_logins("alice")[0].reason == "totp_replay"


def test_a_recovery_code_works_once(services, clock):
    enroll_active(services.store, "alice", clock.now)
    codes = services.store.generate_recovery_codes("alice", clock.now).codes
    c = client(services, clock)
    c.follow(c.sign_in())
    r = c.submit("/verify", {"code": codes[3].upper().replace("-", " ")})
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert services.store.recovery_codes_left("alice") == 9
    assert services.store.recent_logins("alice")[0].factor == "recovery-code"
    d = client(services, clock, ip="192.0.2.11")
    d.follow(d.sign_in())
    assert "That code did not work" in d.submit("/verify", {"code": codes[3]}).text


def test_too_many_wrong_codes_end_the_half_signed_in_session(tmp_path, clock):
    services = make_services(tmp_path, limits={"user_ip_fail_threshold": 3})
    enroll_active(services.store, "alice", clock.now)
    c = client(services, clock)
    c.follow(c.sign_in())
    first = c.session_cookie
    for n in range(2):
        assert "That code did not work" in c.submit("/verify", {"code": f"aaaaa-bbbb{n}"}).text
    r = c.submit("/verify", {"code": "aaaaa-bbbbc"})
    assert "Too many wrong codes" in r.text and c.session_cookie is None
    assert services.store.get_web_session(first, clock.now) is None
    services.store.close()


def test_the_second_factor_must_come_within_the_sign_in_window(services, clock):
    enroll_active(services.store, "alice", clock.now)
    c = client(services, clock)
    c.follow(c.sign_in())
    stale = c.session_cookie
    clock.advance(16 * 60)
    r = c.get("/verify")
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert services.store.get_web_session(stale, clock.now) is None


# -- enrolment -----------------------------------------------------------------------------


def test_the_qr_code_carries_the_configured_totp_issuer(tmp_path, clock):
    services = make_services(tmp_path, store={"totp_issuer": "Example Mail"})
    try:
        c = client(services, clock)
        c.follow(c.sign_in())
        r = c.submit("/authenticator/setup", {})
        key = re.search(r'id="totp-key"[^>]*>([A-Z2-7 ]+)<', r.text).group(1).replace(" ", "")
        svg = re.search(r'<svg [^>]*class="qr".*?</svg>', r.text, re.S).group(0)
        uri = ("otpauth://totp/Example%20Mail:alice?secret=" + key + "&issuer=Example%20Mail")
        assert svg == qr_svg(uri, label="QR code for your authenticator app")
    finally:
        services.store.close()


def test_password_enrolment_sets_up_the_authenticator_and_shows_recovery_codes(services, clock):
    c = client(services, clock)
    page = c.follow(c.sign_in())
    assert "<h1>Authenticator</h1>" in page.text
    assert '<button type="submit">Set up authenticator</button>' in page.text
    # nothing but the set-up before the authenticator is on
    assert c.get("/app-passwords").headers["location"] == "/authenticator"
    r = c.submit("/authenticator/setup", {})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert re.search(r'<svg [^>]*class="qr"[^>]*role="img"', r.text)  # inline, no image URL
    assert "<img" not in r.text and "otpauth://" not in r.text
    key = re.search(r'id="totp-key"[^>]*>([A-Z2-7 ]+)<', r.text).group(1)
    assert '<label for="code">Code</label>' in r.text
    assert '<button type="submit">Turn on</button>' in r.text
    assert services.store.totp_status("alice") is TotpStatus.PENDING

    wrong = c.submit("/authenticator/enable", {"code": "12345"})
    assert wrong.status_code == 400 and "does not match" in wrong.text
    half = c.session_cookie
    r = c.submit("/authenticator/enable", {"code": totp_code(key, clock.now)})
    assert r.status_code == 200
    codes = re.findall(r"<li><code>([a-z0-9]{5}-[a-z0-9]{5})</code></li>", r.text)
    assert len(codes) == 10 and len(set(codes)) == 10
    assert services.store.totp_status("alice") is TotpStatus.ACTIVE
    assert services.store.recovery_codes_left("alice") == 10
    # the confirmation completed the second factor: the id rotated, the page's forms
    # carry the new session's token, everything is open now
    assert c.session_cookie != half
    assert services.store.get_web_session(c.session_cookie, clock.now).mfa_done
    c.last_page = r.text
    assert c.page("/app-passwords").status_code == 200
    # shown once: no page shows them again
    assert codes[0] not in c.page("/authenticator").text


def test_invite_enrolment_needs_an_invitation_used_once(invite_services, clock):
    services = invite_services
    c = client(services, clock)
    r = c.sign_in()
    assert r.headers["location"] == "/"
    page = c.follow(r)
    assert "<h1>Invitation needed</h1>" in page.text
    assert c.get("/authenticator").headers["location"] == "/"
    assert c.submit("/authenticator/setup", {}).headers["location"] == "/"
    assert services.store.totp_status("alice") is TotpStatus.NONE

    token = services.store.create_invite("alice", 3600, clock.now).token
    link = f"/invite/{token}"
    # opening the link uses nothing (a mail scanner may fetch it)
    page = c.page(link)
    assert "<h1>Accept your invitation</h1>" in page.text and f'action="{link}"' in page.text
    assert services.store.list_invites("alice")[0].consumed is None
    # a wrong password does not use it up either
    r = c.submit(link, {"username": "alice", "password": "wrong"})
    assert UNIFORM in r.text and services.store.list_invites("alice")[0].consumed is None
    with capture_logs() as logs:
        r = c.submit(link, {"username": "alice", "password": "alicepass"})
    assert r.status_code == 200 and 'class="qr"' in r.text
    assert services.store.list_invites("alice")[0].consumed == clock.now
    used = [e for e in logs if e["event"] == "web.invite_used"]
    assert used and used[0]["user"] == "alice"
    assert token not in str(logs)
    key = re.search(r'id="totp-key"[^>]*>([A-Z2-7 ]+)<', r.text).group(1)
    # the set-up page belongs to the session this request opened: its token works
    r = c.submit("/authenticator/enable", {"code": totp_code(key, clock.now)})
    assert r.status_code == 200 and "Recovery codes" in r.text
    assert services.store.totp_status("alice") is TotpStatus.ACTIVE

    again = client(services, clock, ip="192.0.2.20")
    again.page(link)
    r = again.submit(link, {"username": "alice", "password": "alicepass"})
    assert r.status_code == 410 and "cannot be used" in r.text and again.session_cookie is None


def test_an_invitation_is_for_its_own_user_only(invite_services, clock):
    services = invite_services
    token = services.store.create_invite("alice", 3600, clock.now).token
    c = client(services, clock)
    c.page(f"/invite/{token}")
    r = c.submit(f"/invite/{token}", {"username": "bob", "password": "bobpass"})
    assert r.status_code == 410
    assert services.store.totp_status("bob") is TotpStatus.NONE


def test_with_invitations_a_pending_setup_can_be_confirmed_but_not_restarted(
        invite_services, clock):
    services = invite_services
    secret, _ = services.store.enroll("alice", clock.now)  # an admin's `totp enroll`
    c = client(services, clock)
    page = c.follow(c.sign_in())
    assert "waiting for its first code" in page.text
    assert "Set up authenticator" not in page.text
    assert c.submit("/authenticator/setup", {}).headers["location"] == "/authenticator"
    r = c.submit("/authenticator/enable", {"code": totp_code(secret, clock.now)})
    assert r.status_code == 200 and services.store.totp_status("alice") is TotpStatus.ACTIVE


def test_turning_the_authenticator_off_needs_a_current_code(services, clock):
    c, secret = signed_in_full(services, clock)
    page = c.page("/authenticator")
    assert "Turn off" in page.text
    codes = services.store.generate_recovery_codes("alice", clock.now).codes
    for wrong in ("", codes[0], "123"):
        r = c.submit("/authenticator/disable", {"code": wrong})
        assert r.status_code == 400 and "not the current code" in r.text
    assert services.store.recovery_codes_left("alice") == 10  # not used up by the attempt
    clock.advance(30)
    r = c.submit("/authenticator/disable", {"code": totp_code(secret, clock.now)})
    assert r.status_code == 303
    assert services.store.totp_status("alice") is TotpStatus.NONE


# -- app passwords ---------------------------------------------------------------------------


def test_app_passwords_are_created_shown_once_listed_and_revoked(services, clock):
    c, _ = signed_in_full(services, clock)
    page = c.page("/app-passwords")
    assert "<h1>App passwords</h1>" in page.text
    for label in ("Label", "Access", "Mailboxes", "Expires"):
        assert re.search(rf'<label for="\w+">{label}</label>', page.text), label
    assert '<button type="submit">Create app password</button>' in page.text
    with capture_logs() as logs:
        r = c.submit("/app-passwords", {"label": "Phone", "access": "read-only",
                                        "mailboxes": "INBOX, Archive/*", "expires": "30d"})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    password = re.search(r'id="new-password"[^>]*>([a-z0-9-]{23})<', r.text).group(1)
    assert 'data-copy="new-password"' in r.text
    # what the mail client needs: server from [web] public_url, ports from the listeners
    assert "<code>mail.example.org</code>" in r.text
    assert "<code>993</code>, security: SSL/TLS" in r.text
    assert "<code>143</code>, security: STARTTLS" in r.text
    assert "<code>alice</code>" in r.text
    assert password not in str(logs)
    check = services.store.verify_app_password("alice", password, clock.now)
    assert check.status is AppPasswordStatus.OK
    assert check.info.scopes == ("read-only", "mailboxes=INBOX,Archive/*")
    assert check.info.expires == clock.now + 30 * 86400

    services.store.record_app_password_use(check.info.id, "198.51.100.7", clock.now + 5, "K-9 Mail")
    listing = c.page("/app-passwords").text
    assert password not in listing and password.replace("-", "") not in listing
    row = re.search(r"<tr>\s*<th scope=\"row\"[^>]*>Phone</th>.*?</tr>", listing, re.S).group(0)
    for text in ("Read only", "INBOX, Archive/*", "198.51.100.7", "K-9 Mail",
                 '<button type="submit" class="danger"'):
        assert text in row, text
    assert ">Revoke</button>" in row

    dup = c.submit("/app-passwords", {"label": "Phone", "access": "full", "expires": "never"})
    assert dup.status_code == 400 and "already have an app password" in dup.text
    bad = c.submit("/app-passwords", {"label": "x", "access": "admin", "expires": "never"})
    assert bad.status_code == 400

    r = c.submit("/app-passwords/revoke", {"label": "Phone"})
    assert r.status_code == 303 and r.headers["location"] == "/app-passwords"
    assert services.store.list_app_passwords("alice") == []
    assert "You have no app passwords yet." in c.page("/app-passwords").text


# -- devices -----------------------------------------------------------------------------------


def test_remembered_devices_are_listed_and_forgotten(services, clock):
    c, _ = signed_in_full(services, clock)
    device = services.store.remember("alice", "198.51.100.7", "Thunderbird", 86400, clock.now)
    services.store.remember("bob", "198.51.100.7", "Thunderbird", 86400, clock.now)
    page = c.page("/devices")
    assert "Thunderbird" in page.text and "198.51.100.0/24" in page.text
    assert ">Forget</button>" in page.text
    assert c.submit("/devices/forget", {"id": str(device.id)}).status_code == 303
    assert services.store.list_devices("alice") == []
    assert len(services.store.list_devices("bob")) == 1  # another user's stays


def test_pending_devices_are_approved_for_the_rules_remember_time(services, clock):
    c, _ = signed_in_full(services, clock)
    waiting = services.store.note_device("alice", "198.51.100.7", "iPhone Mail", clock.now)
    page = c.page("/devices")
    assert "<h2 id=\"h-pending\">Pending devices</h2>" in page.text
    assert "iPhone Mail" in page.text and ">Approve</button>" in page.text
    assert c.submit("/devices/approve", {"id": str(waiting.id)}).status_code == 303
    (approved,) = services.store.list_pending_devices("alice")
    assert approved.state is DeviceApproval.APPROVED
    assert approved.approved_until == clock.now + 14 * 86400  # the rule's remember_device
    assert ">Approve</button>" not in c.page("/devices").text


def test_a_device_cannot_be_approved_where_the_rule_remembers_none(services, clock):
    c, _ = signed_in_full(services, clock, user="carol")
    waiting = services.store.note_device("carol", "198.51.100.7", "Mail", clock.now)
    c.page("/devices")
    r = c.submit("/devices/approve", {"id": str(waiting.id)})
    assert r.status_code == 400 and "cannot be approved" in r.text
    assert services.store.list_pending_devices("carol")[0].state is DeviceApproval.PENDING


def test_approval_needs_a_session_that_completed_the_second_factor(services, clock):
    waiting = services.store.note_device("alice", "198.51.100.7", "Mail", clock.now)
    c = client(services, clock)
    c.follow(c.sign_in())  # enrollment = password: signed in, no second factor yet
    r = c.submit("/devices/approve", {"id": str(waiting.id)})
    assert r.status_code == 303 and r.headers["location"] == "/authenticator"
    assert services.store.list_pending_devices("alice")[0].state is DeviceApproval.PENDING


# -- recent activity ------------------------------------------------------------------------------


def test_recent_activity_shows_imap_and_web_logins(services, clock):
    services.store.record_login(LoginRecord(
        time=clock.now - 100, user="alice", address="203.0.113.5", client_name="mbsync",
        factor="app-password", result=LoginResult.SUCCESS, protocol=LoginProtocol.IMAP,
        reason="ok"))
    services.store.record_login(LoginRecord(
        time=clock.now - 50, user="alice", address="203.0.113.66", client_name="",
        factor="none", result=LoginResult.FAILURE, protocol=LoginProtocol.IMAP,
        reason="backend_rejected"))
    c, _ = signed_in_full(services, clock)
    page = c.page("/activity").text
    assert "<h1>Recent activity</h1>" in page
    rows = re.findall(r"<tr>\s*<td.*?</tr>", page, re.S)
    assert len(rows) == 3
    web, failed, imap = rows
    assert "Web" in web and "192.0.2.10" in web and "Authenticator code" in web
    assert "Success" in web
    assert "IMAP" in failed and "Failed</span>: wrong password" in failed
    assert "mbsync" in imap and "App password" in imap and "203.0.113.5" in imap


def test_browser_names_for_the_history():
    assert browser_name("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                        "HeadlessChrome/126.0.0.0 Safari/537.36") == "Chrome"
    assert browser_name("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 "
                        "Firefox/128.0") == "Firefox"
    assert browser_name("") == "browser"


# -- sessions ---------------------------------------------------------------------------------


def test_sign_out_ends_the_session_and_clears_the_cookie(services, clock):
    c, _ = signed_in_full(services, clock)
    old = c.session_cookie
    r = c.submit("/signout", {})
    assert r.status_code == 303
    assert any(h.startswith(f"{SESSION_COOKIE}=;") and "Max-Age=0" in h
               for h in set_cookie_headers(r))
    assert services.store.get_web_session(old, clock.now) is None
    assert "<h1>Sign in</h1>" in c.page("/").text


def test_sign_out_everywhere_revokes_every_session_of_the_user(services, clock):
    a, secret = signed_in_full(services, clock)
    clock.advance(30)
    b = client(services, clock, ip="192.0.2.11")
    b.follow(b.sign_in())
    b.follow(b.submit("/verify", {"code": totp_code(secret, clock.now)}))
    other = signed_in_full(services, clock, user="bob")[0]
    assert len(services.store.list_web_sessions("alice", clock.now)) == 2
    a.page("/")
    assert a.submit("/signout/everywhere", {}).status_code == 303
    assert services.store.list_web_sessions("alice", clock.now) == []
    r = b.get("/app-passwords")
    assert r.status_code == 303 and r.headers["location"] == "/"
    # the dead cookie is cleared
    assert any(h.startswith(f"{SESSION_COOKIE}=;") for h in set_cookie_headers(r))
    assert other.page("/app-passwords").status_code == 200  # bob is still signed in


def test_signing_in_again_ends_the_browsers_previous_session(services, clock):
    c = client(services, clock)
    c.sign_in("alice")
    first = c.session_cookie
    c.page("/authenticator")  # e.g. another tab still shows the sign-in form: posts it
    c.post("/signin", data={"csrf_token": c.token(), "username": "bob", "password": "bobpass"})
    assert c.session_cookie != first
    assert services.store.get_web_session(first, clock.now) is None
    assert services.store.get_web_session(c.session_cookie, clock.now).user == "bob"


def test_session_ttl_is_honoured(tmp_path, clock):
    services = make_services(tmp_path, web={"session_ttl": "1h"})
    c, _ = signed_in_full(services, clock)
    assert c.page("/activity").status_code == 200
    clock.advance(3600)
    r = c.get("/activity")
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "<h1>Sign in</h1>" in c.page("/").text
    services.store.close()


# -- CSRF -------------------------------------------------------------------------------------------


def test_every_state_change_needs_the_token_of_this_session(services, clock):
    c, _ = signed_in_full(services, clock)
    for path in ("/app-passwords", "/app-passwords/revoke", "/devices/forget",
                 "/devices/approve", "/authenticator/setup", "/signout", "/signout/everywhere",
                 "/signin", "/verify"):
        r = c.post(path, data={"label": "x"})
        assert r.status_code == 403 and "CSRF" in r.text, path
    # a token from another browser's session does not work here
    other = signed_in_full(services, clock, user="bob")[0]
    other_token = other.token(other.page("/app-passwords").text)
    r = c.post("/app-passwords", data={"csrf_token": other_token, "label": "Stolen",
                                       "access": "full", "expires": "never"})
    assert r.status_code == 403
    assert services.store.list_app_passwords("alice") == []
    # a token from before the second factor is dead after the rotation
    secret = enroll_active(services.store, "carol", clock.now)
    clock.advance(30)
    d = client(services, clock)
    d.follow(d.sign_in("carol"))
    early = d.token()
    d.follow(d.submit("/verify", {"code": totp_code(secret, clock.now)}))
    r = d.post("/app-passwords", data={"csrf_token": early, "label": "x", "access": "full",
                                       "expires": "never"})
    assert r.status_code == 403


def test_pages_carry_the_security_headers(services, clock):
    c, _ = signed_in_full(services, clock)
    for path in ("/", "/app-passwords", "/devices", "/activity", "/authenticator"):
        r = c.page(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert r.headers["cache-control"] == "no-store", path
        assert "<script>" not in r.text, path


def test_no_secret_reaches_the_log(services, clock):
    with capture_logs() as logs:
        c, secret = signed_in_full(services, clock)
        c.page("/app-passwords")
        r = c.submit("/app-passwords", {"label": "Phone", "access": "full", "expires": "never"})
        password = re.search(r'id="new-password"[^>]*>([a-z0-9-]{23})<', r.text).group(1)
    text = str(logs)
    for secret_text in (PASSWORDS["alice"], secret, password, c.session_cookie):
        assert secret_text not in text


def test_store_trouble_is_a_plain_503_page(services, clock, monkeypatch):
    from gateway.store.errors import StoreError

    c, _ = signed_in_full(services, clock)

    def broken(user):
        raise StoreError("database is locked")

    monkeypatch.setattr(services.store, "list_app_passwords", broken)
    with capture_logs() as logs:
        r = c.page("/app-passwords")
    assert r.status_code == 503 and "cannot be shown right now" in r.text
    assert "content-security-policy" in r.headers
    assert [e for e in logs if e["event"] == "store.error"]
