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
OTHER_IP = "198.51.100.7"
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
    client: str | None = CLIENT,
    now: float = T0,
    master: bool = True,
):
    return decide(user, secret, ip, client, req, store, now, master)


# --- app passwords -------------------------------------------------------------------------


def test_app_password_wins_under_any_policy_and_records_use(store: SqliteCredentialStore) -> None:
    new = store.create_app_password("alice", "phone", ["read-only"], None, T0)
    for req in (NONE, TOTP, STRONG, APP_ONLY):
        plan = run(store, new.password, req)
        assert plan == UseAppPassword("alice", new.info.id, ("read-only",), "phone")
        assert plan.factor == "app-password"
    [info] = store.list_app_passwords("alice")
    assert (info.last_used, info.last_ip, info.last_client) == (T0, IP, CLIENT)


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
    assert run(store, f"{PASSWORD}${code}", TOTP, ip=OTHER_IP) == Deny("totp_replay")
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
    valid = {otp.at(later + d * 30) for d in (-1, 0, 1)} | {otp.at(T0), otp.at(T0 - 600)}
    odd = "my$pass$" + next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)
    assert run(store, odd, TOTP_REMEMBER, now=later).password == odd  # type: ignore[union-attr]
    # another network still needs TOTP; forgetting the device brings TOTP back
    assert run(store, PASSWORD, TOTP_REMEMBER, ip="198.51.100.1", now=later) == Deny(
        "totp_required"
    )
    store.forget("alice", "all")
    assert run(store, PASSWORD, TOTP_REMEMBER, now=later) == Deny("totp_required")


# --- mail clients: parallel connections, the enrolment code, saved stale codes -------------


def test_same_code_same_client_opens_parallel_connections(
    store: SqliteCredentialStore, otp: pyotp.TOTP
) -> None:
    saved = f"{PASSWORD}${otp.at(T0)}"
    forward = ForwardPassword("alice", PASSWORD, totp_ok=True, remember=False)
    # mbsync opens several connections with the one saved password$code, and reconnects
    for dt in (0, 0, 1, 20, 54.5):  # T0 is 5 s into its step: valid until T0 + 55
        assert run(store, saved, TOTP, client="mbsync", now=T0 + dt) == forward
    # the same code from anywhere else is a replay: another address, or another client
    # program on the same address, or a client that sent no IMAP ID
    assert run(store, saved, TOTP, client="mbsync", ip="192.0.2.11") == Deny("totp_replay")
    assert run(store, saved, TOTP, client="neomutt") == Deny("totp_replay")
    assert run(store, saved, TOTP, client=None) == Deny("totp_replay")
    # past its validity (±1 step) the code is spent for everyone, the same client too
    assert run(store, saved, TOTP, client="mbsync", now=T0 + 75) == Deny("totp_stale")


def test_reuse_is_for_the_step_the_client_used_even_after_a_newer_step(
    store: SqliteCredentialStore, otp: pyotp.TOTP
) -> None:
    mine = f"{PASSWORD}${otp.at(T0)}"
    assert run(store, mine, TOTP).totp_ok  # type: ignore[union-attr]
    # the user logs in elsewhere with the next code
    assert run(store, f"{PASSWORD}${otp.at(T0 + 30)}", TOTP, ip=OTHER_IP, now=T0 + 30).totp_ok  # type: ignore[union-attr]
    # the first client's parallel connection still gets in; nobody else with its code
    assert run(store, mine, TOTP, now=T0 + 31).totp_ok  # type: ignore[union-attr]
    assert run(store, mine, TOTP, ip=OTHER_IP, now=T0 + 31) == Deny("totp_replay")


def test_enrolment_code_logs_in_the_first_client_only(store: SqliteCredentialStore) -> None:
    # enrol, confirm with the current code, put that same code into the mail client
    secret, _ = store.enroll("bob", T0 - 20)
    code = pyotp.TOTP(secret).at(T0 - 10)
    assert store.verify_enrollment("bob", code, T0 - 10) == "ok"
    saved = f"{PASSWORD}${code}"
    forward = ForwardPassword("bob", PASSWORD, totp_ok=True, remember=False)
    assert run(store, saved, TOTP, user="bob", client="Thunderbird") == forward
    assert run(store, saved, TOTP, user="bob", client="Thunderbird", now=T0 + 5) == forward
    # the code is now that client's: another client (or address) cannot claim it
    assert run(store, saved, TOTP, user="bob", client="K-9 Mail") == Deny("totp_replay")
    assert run(store, saved, TOTP, user="bob", ip=OTHER_IP) == Deny("totp_replay")


def test_enrolment_code_once_its_validity_passed_is_stale(store: SqliteCredentialStore) -> None:
    secret, _ = store.enroll("bob", T0)
    code = pyotp.TOTP(secret).at(T0)
    assert store.verify_enrollment("bob", code, T0) == "ok"
    # configured two minutes later: the code left its ±1 step window; a fresh one is needed
    assert run(store, f"{PASSWORD}${code}", TOTP, user="bob", now=T0 + 120) == Deny("totp_stale")
    fresh = pyotp.TOTP(secret).at(T0 + 120)
    assert run(store, f"{PASSWORD}${fresh}", TOTP, user="bob", now=T0 + 120).totp_ok  # type: ignore[union-attr]


def test_remembered_device_ignores_a_saved_stale_code(
    store: SqliteCredentialStore, otp: pyotp.TOTP
) -> None:
    saved = f"{PASSWORD}${otp.at(T0)}"
    assert run(store, saved, TOTP_REMEMBER).remember  # type: ignore[union-attr]
    store.remember("alice", IP, CLIENT, TOTP_REMEMBER.remember_device, T0)
    remembered = ForwardPassword(
        "alice", PASSWORD, totp_ok=False, remember=False, remembered_device=True
    )
    # hours later the client still sends password$<old code>: the password part goes on
    later = T0 + 6 * 3600
    assert run(store, saved, TOTP_REMEMBER, now=later) == remembered
    # a neighbour in the same /24 with the same client name (same device key) while
    # the code is still valid: spent for TOTP (another address), fine for the device
    assert run(store, saved, TOTP_REMEMBER, ip="192.0.2.99", now=T0 + 5) == remembered
    # not remembered there: the stale code is refused, and the log says why
    assert run(store, saved, TOTP_REMEMBER, ip=OTHER_IP, now=later) == Deny("totp_stale")
    # digits that are no code of alice's stay part of the password (see the test above)
    used = {otp.at(T0), otp.at(T0 - 600)}  # this login's code, the enrolment's
    never = next(c for c in ("000000", "111111", "222222") if c not in used)
    assert run(store, f"{PASSWORD}${never}", TOTP_REMEMBER, now=later) == ForwardPassword(
        "alice", f"{PASSWORD}${never}", totp_ok=False, remember=False, remembered_device=True
    )


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
        run(store, f"{PASSWORD}${code}", TOTP, ip=OTHER_IP),  # replay -> Deny
        run(store, PASSWORD, NONE),
    ]
    assert [type(p) for p in plans] == [UseAppPassword, ForwardPassword, Deny, ForwardPassword]
    for p in plans:
        text = repr(p) + str(p)
        for secret in (PASSWORD, "horse", code, app.password, app.password.replace("-", "")):
            assert secret not in text
