"""decide(): every branch of the per-login factor decision, with a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pyotp
import pytest

from gateway.auth.decide import (
    Deny,
    ForwardPassword,
    Requirement,
    UseAppPassword,
    decide,
)
from gateway.store import SqliteCredentialStore, open_store

T0 = 1_700_000_015.0
IP = "192.0.2.10"
CLIENT = "Thunderbird"
PASSWORD = "correct horse"

TOTP = Requirement(required_mfa="totp", remember_device=0)
TOTP_REMEMBER = Requirement(required_mfa="totp", remember_device=14 * 86400)
STRONG = Requirement(required_mfa="strong")
APP_ONLY = Requirement(required_mfa="app-password")
NONE = Requirement(required_mfa="none")


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


def run(
    store: SqliteCredentialStore,
    secret: str,
    req: Requirement,
    *,
    user: str = "alice",
    ip: str = IP,
    now: float = T0,
    master: bool = True,
):
    return decide(user, secret, ip, CLIENT, req, store, now, master)


# --- app passwords -------------------------------------------------------------------------


def test_app_password_wins_under_any_policy_and_records_use(store: SqliteCredentialStore) -> None:
    new = store.create_app_password("alice", "phone", ["read-only"], None, T0)
    for req in (NONE, TOTP, STRONG, APP_ONLY):
        plan = run(store, new.password, req)
        assert plan == UseAppPassword("alice", new.info.id, ("read-only",), "phone")
        assert plan.factor == "app-password"
    [info] = store.list_app_passwords("alice")
    assert (info.last_used, info.last_ip) == (T0, IP)


def test_app_password_without_master_user_is_denied(store: SqliteCredentialStore) -> None:
    new = store.create_app_password("alice", "phone", None, None, T0)
    assert run(store, new.password, STRONG, master=False) == Deny("master_user_missing")
    assert store.list_app_passwords("alice")[0].last_used is None


def test_expired_app_password_is_denied_not_forwarded(store: SqliteCredentialStore) -> None:
    new = store.create_app_password("alice", "temp", None, T0 + 10, T0)
    # even with policy "none": an expired app password must not go to the backend as a password
    assert run(store, new.password, NONE, now=T0 + 10) == Deny("app_password_expired")


def test_policy_app_password_denies_passwords_and_wrong_app_passwords(
    store: SqliteCredentialStore, otp: pyotp.TOTP
) -> None:
    assert run(store, PASSWORD, APP_ONLY) == Deny("app_password_required")
    assert run(store, f"{PASSWORD}${otp.at(T0)}", APP_ONLY) == Deny("app_password_required")
    assert run(store, "abcde-fghij-kmnpq-rstuv", APP_ONLY) == Deny("app_password_invalid")


def test_revoked_app_password_is_not_accepted(store: SqliteCredentialStore) -> None:
    new = store.create_app_password("alice", "phone", None, None, T0)
    store.revoke_app_password("alice", "phone")
    assert run(store, new.password, STRONG) == Deny("app_password_invalid")


# --- TOTP -------------------------------------------------------------------------------------


@pytest.mark.parametrize("req", [TOTP, STRONG])
def test_valid_suffix_forwards_the_stripped_password(
    store: SqliteCredentialStore, otp: pyotp.TOTP, req: Requirement
) -> None:
    plan = run(store, f"{PASSWORD}${otp.at(T0)}", req)
    assert plan == ForwardPassword("alice", PASSWORD, totp_ok=True, remember=False)
    assert plan.factor == "totp"


def test_remember_flag_follows_policy_ttl(store: SqliteCredentialStore, otp: pyotp.TOTP) -> None:
    plan = run(store, f"{PASSWORD}${otp.at(T0)}", TOTP_REMEMBER)
    assert isinstance(plan, ForwardPassword) and plan.remember and plan.totp_ok


def test_totp_denials(store: SqliteCredentialStore, otp: pyotp.TOTP) -> None:
    code = otp.at(T0)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert run(store, f"{PASSWORD}${wrong}", TOTP) == Deny("totp_invalid")
    assert isinstance(run(store, f"{PASSWORD}${code}", TOTP), ForwardPassword)
    assert run(store, f"{PASSWORD}${code}", TOTP) == Deny("totp_replay")
    assert run(store, f"{PASSWORD}${otp.at(T0 - 90)}", TOTP) == Deny("totp_invalid")  # 3 steps old
    assert run(store, PASSWORD, TOTP) == Deny("totp_required")
    assert run(store, PASSWORD, TOTP, user="bob") == Deny("totp_not_enrolled")
    assert run(store, f"{PASSWORD}$123456", STRONG, user="bob") == Deny("totp_not_enrolled")


def test_plain_suffix_only_when_policy_says_plain(
    store: SqliteCredentialStore, otp: pyotp.TOTP
) -> None:
    code = otp.at(T0)
    assert run(store, PASSWORD + code, TOTP) == Deny("totp_required")
    plain = Requirement(required_mfa="totp", totp_suffix="plain")
    assert run(store, PASSWORD + code, plain) == ForwardPassword("alice", PASSWORD, True, False)


def test_remembered_device_forwards_whole_secret(
    store: SqliteCredentialStore, otp: pyotp.TOTP
) -> None:
    # first login with TOTP, the shell remembers the device after backend success
    plan = run(store, f"{PASSWORD}${otp.at(T0)}", TOTP_REMEMBER)
    assert isinstance(plan, ForwardPassword) and plan.remember
    store.remember("alice", IP, CLIENT, TOTP_REMEMBER.remember_device, T0)
    # later, from the same /24 and client, no code needed
    later = T0 + 3600
    plan = run(store, PASSWORD, TOTP_REMEMBER, ip="192.0.2.99", now=later)
    assert plan == ForwardPassword(
        "alice", PASSWORD, totp_ok=False, remember=False, remembered_device=True
    )
    assert plan.factor == "remembered-device"
    # a password that merely looks like it has a suffix is forwarded whole on a remembered device
    valid = {otp.at(later + d * 30) for d in (-1, 0, 1)}
    odd = "my$pass$" + next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)
    assert run(store, odd, TOTP_REMEMBER, now=later).password == odd  # type: ignore[union-attr]
    # another network still needs TOTP; forgetting the device brings TOTP back
    assert run(store, PASSWORD, TOTP_REMEMBER, ip="198.51.100.1", now=later) == Deny(
        "totp_required"
    )
    store.forget("alice", "all")
    assert run(store, PASSWORD, TOTP_REMEMBER, now=later) == Deny("totp_required")


def test_policy_none_forwards_whole_secret_even_with_a_code(
    store: SqliteCredentialStore, otp: pyotp.TOTP
) -> None:
    secret = f"{PASSWORD}${otp.at(T0)}"
    assert run(store, secret, NONE) == ForwardPassword(
        "alice", secret, totp_ok=False, remember=False
    )
    assert run(store, secret, TOTP).totp_ok  # type: ignore[union-attr]  # the code was not consumed


def test_unknown_requirement_fails_closed(store: SqliteCredentialStore) -> None:
    assert run(store, PASSWORD, Requirement(required_mfa="sometimes")) == Deny(
        "mfa_requirement_unknown"
    )


def test_plan_reprs_never_show_secrets(store: SqliteCredentialStore, otp: pyotp.TOTP) -> None:
    app = store.create_app_password("alice", "phone", None, None, T0)
    code = otp.at(T0)
    plans = [
        run(store, app.password, STRONG),
        run(store, f"{PASSWORD}${code}", TOTP),
        run(store, f"{PASSWORD}${code}", TOTP),  # replay -> Deny
        run(store, PASSWORD, NONE),
    ]
    assert [type(p) for p in plans] == [UseAppPassword, ForwardPassword, Deny, ForwardPassword]
    for p in plans:
        text = repr(p) + str(p)
        for secret in (PASSWORD, "horse", code, app.password, app.password.replace("-", "")):
            assert secret not in text
