"""App passwords end to end: the gateway verifies them and logs in to Dovecot as the
user through the rig's master user (SASL authzid or the ``user*master`` form); wrong,
expired and revoked ones are refused, and revoking one ends the sessions that use it.
Also: the credential store refuses to start without its key. The gateways of ``ap_gw``
run once per store backend (SQLite, PostgreSQL)."""

from __future__ import annotations

import time

import pytest

from tests.support.imap import LineClient, ServerClosed, sasl_plain
from tests.support.mfa import (
    FAILED,
    MFA_LIMITS,
    admin,
    admin_json,
    assert_denied,
    assert_ok,
    enroll_totp,
    login,
    master_backend,
    wait_session_end,
)

pytestmark = pytest.mark.e2e

POLICY = """\
[[rule]]
name = "alice strong"
users = ["alice"]
action = "allow"
mfa = "strong"

[[rule]]
name = "bob app passwords only"
users = ["bob"]
action = "allow"
mfa = "app-password"
"""


@pytest.fixture
def ap_gw(gateway, tmp_path, store_section):
    return gateway(policies={"10-ap.toml": POLICY}, limits=MFA_LIMITS,
                   backend=master_backend(tmp_path), store=store_section)


def _create(gw, user: str = "alice", label: str = "iPhone", *extra: str) -> str:
    made = admin_json(gw, "app-password", "create", user, "--label", label, *extra)
    assert made["user"] == user and made["label"] == label, made
    return made["password"]


def test_app_password_logs_in_through_the_master_user(ap_gw, dovecot):
    gw = ap_gw
    password = _create(gw)
    mark = dovecot.mark()
    a = login(gw, "alice", password)
    assert_ok(a, "app-password")
    # the label is logged as app_password_label (a field named app_password would be
    # redacted as a secret by the log pipeline)
    assert a.event.get("app_password_label") == "iPhone", a.event
    line = dovecot.wait_for_log(r"imap-login: Info: Login: user=<alice>, auth_user=<(\w+)>.*", since=mark)
    assert line.group(1) == "gatewaymaster", line.group(0)

    # AUTHENTICATE PLAIN carries it just as well
    with LineClient.implicit(gw) as c:
        r = c.command("a", "AUTHENTICATE PLAIN " + sasl_plain("alice", password))[-1]
        assert r.startswith(b"a OK"), r

    listed = admin(gw, "app-password", "list", "alice", "--json")
    assert password not in listed.stdout and password.replace("-", "") not in listed.stdout
    (entry,) = [e for e in admin_json(gw, "app-password", "list", "alice")["app_passwords"]]
    assert entry["label"] == "iPhone" and entry["last_ip"] == "127.0.0.1", entry
    assert entry["last_used"] is not None, entry
    # the secret never reaches the gateway's log
    assert password not in gw.log_text()


def test_separator_master_login(gateway, tmp_path, dovecot):
    gw = gateway(policies={"10-ap.toml": POLICY}, limits=MFA_LIMITS,
                 backend={**master_backend(tmp_path), "master_login": "separator"})
    password = _create(gw)
    mark = dovecot.mark()
    assert_ok(login(gw, "alice", password), "app-password")
    line = dovecot.wait_for_log(r"imap-login: Info: Login: user=<alice>, auth_user=<(\w+)>.*", since=mark)
    assert line.group(1) == "gatewaymaster", line.group(0)


def test_wrong_or_missing_app_password(ap_gw):
    gw = ap_gw
    _create(gw)
    assert_denied(login(gw, "alice", "abcde-fghij-kmnpq-rstuv"), "app_password_invalid")
    # bob's rule wants an app password: his real password is not enough
    assert_denied(login(gw, "bob", "bobpass"), "app_password_required")
    bobs = _create(gw, "bob", "Laptop")
    assert_ok(login(gw, "bob", bobs), "app-password")
    # an app password belongs to its user only
    assert_denied(login(gw, "alice", bobs), "app_password_invalid")


def test_app_password_satisfies_a_totp_user_too(ap_gw):
    """mfa = "strong": an enrolled TOTP user may still use an app password (no code)."""
    gw = ap_gw
    enroll_totp(gw, "alice")
    assert_ok(login(gw, "alice", _create(gw)), "app-password")


def test_expired_app_password(ap_gw):
    gw = ap_gw
    password = _create(gw, "alice", "Short", "--expires", "1s")
    time.sleep(2)
    assert_denied(login(gw, "alice", password), "app_password_expired")


def test_revoking_ends_the_live_session_and_later_logins(ap_gw):
    gw = ap_gw
    password = _create(gw)
    keeper = _create(gw, "alice", "Desktop")
    a = login(gw, "alice", password, keep=True)
    assert_ok(a, "app-password")
    other = login(gw, "alice", keeper, keep=True)
    assert_ok(other, "app-password")
    c = a.client
    try:
        assert c.command("s", "SELECT INBOX")[-1].startswith(b"s OK")
        admin(gw, "app-password", "revoke", "alice", "iPhone")
        revoked_at = time.monotonic()
        try:
            rest = c.expect_close(timeout=4)
        except ServerClosed:
            rest = b""
        closed_after = time.monotonic() - revoked_at
    finally:
        c.close()
    assert b"* BYE" in rest, rest
    assert closed_after < 2.5, f"session closed {closed_after:.1f}s after revoke"
    assert wait_session_end(gw, a.event["session_id"])["reason"] == "app_password_revoked"
    # the session using another app password goes on
    try:
        assert other.client.command("n", "NOOP")[-1].startswith(b"n OK")
    finally:
        other.client.close()
    later = login(gw, "alice", password)
    assert later.response == b"a " + FAILED, later.response
    assert later.event["event"] == "login.denied", later.event
    assert later.reason.startswith("app_password_"), later.event


def test_without_master_user_app_passwords_are_refused(gateway):
    gw = gateway(policies={"10-ap.toml": POLICY}, limits=MFA_LIMITS)
    warnings = [e for e in gw.events("gateway.config_warning") if "master_user" in e.get("detail", "")]
    assert warnings, gw.tail()
    # the CLI cannot ask Dovecot about alice without a master user: --force makes one anyway
    assert_denied(login(gw, "alice", _create(gw, "alice", "iPhone", "--force")),
                  "master_user_missing")


def test_missing_store_key_stops_the_gateway(gateway):
    gw = gateway(policies={"10-ap.toml": POLICY}, limits=MFA_LIMITS)
    enroll_totp(gw, "alice")
    key = gw.dir / "state" / "store.key"
    assert key.is_file()
    assert gw.stop() is not None
    key.unlink()
    gw.start()
    deadline = time.monotonic() + 10
    while gw.returncode is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw.returncode not in (None, 0), gw.tail()
    assert str(key) in gw.stderr_path.read_text(), gw.tail()


def test_a_wrong_master_password_refuses_app_passwords_without_counting_the_client(
        gateway, tmp_path, store_section, dovecot):
    """The gateway's own master login failing is the gateway's fault: the client gets the
    uniform failure, the log says why (``backend.master_login_failed``), and the attempts
    are not counted against the client's address or account (no ban however many)."""
    backend = master_backend(tmp_path)
    (tmp_path / "master.pass").write_text("not-the-master-password\n")
    strict = {**MFA_LIMITS, "ip_fail_threshold": 2, "subnet_fail_threshold": 2,
              "user_fail_threshold": 2, "user_ip_fail_threshold": 2}
    gw = gateway(policies={"10-ap.toml": POLICY}, limits=strict, backend=backend,
                 store=store_section)
    # Five different credentials: a repeated one would be counted once anyway.
    for n in range(5):  # a counted failure would ban after 2
        made = admin_json(gw, "app-password", "create", "alice", "--label", f"d{n}", "--force")
        a = login(gw, "alice", made["password"])
        assert_denied(a, "master_login_failed")
    # Dovecot's answer, readable (a field named "code" would be redacted as a TOTP code)
    assert gw.events("backend.master_login_failed")[0]["backend_code"] == "AUTHENTICATIONFAILED"
    assert not gw.events("ban.created")
