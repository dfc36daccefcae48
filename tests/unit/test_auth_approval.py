"""Device approval: the pure rules (gateway.auth.approval) and decide()'s step d, with a
real SQLite store. The shell's half (backend check, ALERT, note_device) is in
test_login_approval.py and tests/e2e/test_mfa_device_approval.py."""

from __future__ import annotations

from pathlib import Path

import pyotp
import pytest

from gateway.auth import approval
from gateway.auth.decide import (
    Deny,
    ForwardPassword,
    NeedsApproval,
    Requirement,
    decide,
)
from gateway.store import SqliteCredentialStore, open_store
from gateway.store.base import DeviceApproval, PendingDevice

T0 = 1_700_000_015.0
IP = "203.0.113.9"
CLIENT = "iPhone Mail"
PASSWORD = "correct horse"
DAY = 86400.0

TOTP_REMEMBER = Requirement(required_mfa="totp", remember_device=14 * DAY)
STRONG_REMEMBER = Requirement(required_mfa="strong", remember_device=14 * DAY)
TOTP_ONLY = Requirement(required_mfa="totp", remember_device=0)
APP_ONLY = Requirement(required_mfa="app-password", remember_device=14 * DAY)
NONE = Requirement(required_mfa="none", remember_device=14 * DAY)


@pytest.fixture
def store(tmp_path: Path) -> SqliteCredentialStore:
    s = open_store(tmp_path / "g.db", tmp_path / "k", create_key=True)
    yield s
    s.close()


@pytest.fixture
def otp(store: SqliteCredentialStore) -> pyotp.TOTP:
    secret, _ = store.enroll("alice", T0 - 600)
    assert store.verify_enrollment("alice", pyotp.TOTP(secret).at(T0 - 600), T0 - 600) == "ok"
    return pyotp.TOTP(secret)


def run(store: SqliteCredentialStore, secret: str, req: Requirement, *, user: str = "alice",
        ip: str = IP, client: str | None = CLIENT, now: float = T0, enabled: bool = True):
    return decide(user, secret, ip, client, req, store, now, True, device_approval=enabled)


def pending(id_: int = 1, *, address: str = IP, name: str = CLIENT, approved: bool = True,
            until: float | None = None, last_seen: float = T0) -> PendingDevice:
    return PendingDevice(
        id=id_, user="alice", address=address, client_name=name, first_seen=T0 - 60,
        last_seen=last_seen, state=DeviceApproval.APPROVED if approved else DeviceApproval.PENDING,
        approved_until=until,
    )


# --- which rules qualify ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("req", "enabled", "expected"),
    [
        (TOTP_REMEMBER, True, True),
        (STRONG_REMEMBER, True, True),
        (TOTP_REMEMBER, False, False),  # no web portal: nowhere to approve
        (TOTP_ONLY, True, False),  # nothing to turn an approval into
        (APP_ONLY, True, False),  # an approved device must not stand in for an app password
        (NONE, True, False),  # nothing to approve
    ],
)
def test_which_rules_qualify(req: Requirement, enabled: bool, expected: bool) -> None:
    assert approval.qualifies(req, enabled) is expected


# --- the ALERT text ----------------------------------------------------------------------------


def test_alert_names_the_portal() -> None:
    assert approval.alert_text("https://mail-gw.example.org:8443") == (
        "New device: approve it at https://mail-gw.example.org:8443 after signing in with "
        "your second factor"
    )
    assert approval.alert_text("") == (
        "New device: approve it in the web portal after signing in with your second factor"
    )


@pytest.mark.parametrize("url", ["https://a.example/x y", "https://mäil.example", "https://a\r\n"])
def test_alert_refuses_a_url_that_cannot_go_into_a_response(url: str) -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        approval.alert_text(url)


# --- matching an approval ------------------------------------------------------------------------


def test_approval_matches_network_and_client_name() -> None:
    dev = pending()
    assert approval.approved_device([dev], IP, CLIENT, T0) == dev
    # same /24, other address: a phone's address moved within its network
    assert approval.approved_device([dev], "203.0.113.200", CLIENT, T0) == dev
    assert approval.approved_device([dev], "::ffff:203.0.113.9", CLIENT, T0) == dev
    assert approval.approved_device([dev], "203.0.114.9", CLIENT, T0) is None
    assert approval.approved_device([dev], IP, "Thunderbird", T0) is None
    assert approval.approved_device([dev], IP, None, T0) is None
    assert approval.approved_device([dev], "not an ip", CLIENT, T0) is None
    # the name is compared bounded and stripped, like a remembered device's
    long = pending(name="x" * 64)
    assert approval.approved_device([long], IP, " " + "x" * 100, T0) == long
    unnamed = pending(name="")
    assert approval.approved_device([unnamed], IP, None, T0) == unnamed


def test_only_valid_approvals_match() -> None:
    assert approval.approved_device([pending(approved=False)], IP, CLIENT, T0) is None
    assert approval.approved_device([pending(until=T0)], IP, CLIENT, T0) is None  # ended
    assert approval.approved_device([pending(until=T0 + 1)], IP, CLIENT, T0) is not None
    assert approval.approved_device([pending(address="garbage")], IP, CLIENT, T0) is None
    older, newer = pending(1, last_seen=T0 - 10), pending(2, address="203.0.113.7")
    assert approval.approved_device([newer, older], IP, CLIENT, T0) == newer
    assert approval.approved_device([older, newer], IP, CLIENT, T0) == newer


def test_approval_until_and_check_deadline() -> None:
    assert approval.approval_until(T0) == T0 + approval.DEFAULT_APPROVAL_VALIDITY
    assert approval.approval_until(T0, 60) == T0 + 60
    with pytest.raises(ValueError):
        approval.approval_until(T0, 0)
    # the check ends a margin before the uniform delay: 50 ms, or a tenth of a short delay
    assert approval.check_deadline(100.0, 0.5, 15) == pytest.approx(100.45)
    assert approval.check_deadline(100.0, 0.1, 15) == pytest.approx(100.09)
    # no uniform delay configured: the backend's login timeout bounds it
    assert approval.check_deadline(100.0, 0.0, 15) == 115.0


def test_describe_device() -> None:
    dev = pending(last_seen=T0)
    assert approval.describe_device(dev, T0 + 150) == "iPhone Mail from 203.0.113.9, 2 min ago"
    assert approval.describe_device(dev, T0 + 5) == "iPhone Mail from 203.0.113.9, just now"
    assert approval.describe_device(dev, T0 - 5) == "iPhone Mail from 203.0.113.9, just now"
    assert approval.describe_device(pending(name=""), T0 + 3 * 3600).endswith(", 3 h ago")
    assert approval.describe_device(pending(name=""), T0).startswith("Unnamed mail client from")
    assert approval.ago(DAY) == "1 day ago"
    assert approval.ago(5 * DAY + 1) == "5 days ago"


# --- decide(): step d ------------------------------------------------------------------------------


def test_password_only_from_a_new_device_needs_approval(
    store: SqliteCredentialStore, otp: pyotp.TOTP
) -> None:
    plan = run(store, PASSWORD, TOTP_REMEMBER)
    assert plan == NeedsApproval("alice", PASSWORD)
    assert plan.factor == "none"
    assert PASSWORD not in repr(plan)
    assert run(store, PASSWORD, STRONG_REMEMBER) == NeedsApproval("alice", PASSWORD)
    # decide() records nothing: only the shell does, after the backend accepted the password
    assert store.list_pending_devices("alice") == []


def test_same_plan_whoever_the_user_is(store: SqliteCredentialStore, otp: pyotp.TOTP) -> None:
    # enrolled, not enrolled, not known at all: the same plan, so the same answer
    for user in ("alice", "bob", "nosuchuser"):
        assert run(store, PASSWORD, TOTP_REMEMBER, user=user) == NeedsApproval(user, PASSWORD)


def test_without_approval_the_denials_stay(store: SqliteCredentialStore, otp: pyotp.TOTP) -> None:
    assert run(store, PASSWORD, TOTP_REMEMBER, enabled=False) == Deny("totp_required")
    assert run(store, PASSWORD, TOTP_REMEMBER, user="bob", enabled=False) == Deny(
        "totp_not_enrolled")
    assert run(store, PASSWORD, TOTP_ONLY) == Deny("totp_required")
    assert run(store, PASSWORD, APP_ONLY) == Deny("app_password_required")


def test_a_code_or_an_app_password_is_answered_as_before(
    store: SqliteCredentialStore, otp: pyotp.TOTP
) -> None:
    code = otp.at(T0)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert run(store, f"{PASSWORD}${wrong}", TOTP_REMEMBER) == Deny("totp_invalid")
    assert run(store, f"{PASSWORD}${wrong}", TOTP_REMEMBER, user="bob") == Deny(
        "totp_not_enrolled")
    assert run(store, "abcde-fghij-kmnpq-rstuv", TOTP_REMEMBER) == Deny("app_password_invalid")
    ok = run(store, f"{PASSWORD}${code}", TOTP_REMEMBER)
    assert ok == ForwardPassword("alice", PASSWORD, totp_ok=True, remember=True)


def test_a_remembered_device_needs_no_approval(
    store: SqliteCredentialStore, otp: pyotp.TOTP
) -> None:
    store.remember("alice", IP, CLIENT, TOTP_REMEMBER.remember_device, T0)
    plan = run(store, PASSWORD, TOTP_REMEMBER, now=T0 + 60)
    assert plan == ForwardPassword("alice", PASSWORD, totp_ok=False, remember=False,
                                   remembered_device=True)


def test_an_approved_device_is_forwarded_and_remembered(
    store: SqliteCredentialStore, otp: pyotp.TOTP
) -> None:
    noted = store.note_device("alice", IP, CLIENT, T0)
    # pending: still asks
    assert run(store, PASSWORD, TOTP_REMEMBER, now=T0 + 60) == NeedsApproval("alice", PASSWORD)
    store.approve_device("alice", noted.id, approval.approval_until(T0 + 60), T0 + 60)
    plan = run(store, PASSWORD, TOTP_REMEMBER, ip="203.0.113.10", now=T0 + 120)
    assert plan == ForwardPassword("alice", PASSWORD, totp_ok=False, remember=True,
                                   remembered_device=True, approval_id=noted.id)
    assert plan.factor == "remembered-device"
    # not for another client program, another network, another user, or once it ended
    assert run(store, PASSWORD, TOTP_REMEMBER, client="Thunderbird", now=T0 + 120) == (
        NeedsApproval("alice", PASSWORD))
    assert run(store, PASSWORD, TOTP_REMEMBER, ip="198.51.100.1", now=T0 + 120) == (
        NeedsApproval("alice", PASSWORD))
    assert run(store, PASSWORD, TOTP_REMEMBER, user="bob", now=T0 + 120) == (
        NeedsApproval("bob", PASSWORD))
    assert run(store, PASSWORD, TOTP_REMEMBER, now=T0 + 60 + DAY) == (
        NeedsApproval("alice", PASSWORD))
    # nor when approval is off or the rule no longer qualifies
    assert run(store, PASSWORD, TOTP_REMEMBER, enabled=False, now=T0 + 120) == (
        Deny("totp_required"))
    assert run(store, PASSWORD, TOTP_ONLY, now=T0 + 120) == Deny("totp_required")


def test_an_approval_for_a_user_without_totp_works_too(store: SqliteCredentialStore) -> None:
    # an administrator may approve (imap-gateway devices approve) for a user who has no
    # second factor to sign in to the portal with
    noted = store.note_device("bob", IP, CLIENT, T0)
    store.approve_device("bob", noted.id, None, T0)
    plan = run(store, PASSWORD, STRONG_REMEMBER, user="bob", now=T0 + 60)
    assert isinstance(plan, ForwardPassword) and plan.approval_id == noted.id and plan.remember
