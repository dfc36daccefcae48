"""The credential store against a real database and key file, on both backends: an SQLite
file in tmp_path and a database in a private PostgreSQL (the ``opener`` fixture).
SQLite-only tests (file modes, the raw file) take ``paths``."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest

from gateway.auth.factors import TotpResult
from gateway.store import (
    AppPasswordLabelExists,
    AppPasswordNotFound,
    AppPasswordStatus,
    CredentialStore,
    DeviceNotFound,
    SqlCredentialStore,
    StoreKeyError,
    StoreSchemaError,
    TooManyAppPasswords,
    TotpStatus,
    open_store,
)
from gateway.store.migrations import LATEST_VERSION, current_version
from gateway.store.sqlite import (
    _USERS_PER_QUERY,
    MAX_APP_PASSWORDS_PER_USER,
    MAX_TOTP_CODES_PER_USER,
)
from tests.support.stores import StoreOpener

T0 = 1_700_000_015.0  # 5 s into a TOTP step


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "state" / "gateway.db", tmp_path / "state" / "store.key"


@pytest.fixture
def store(opener: StoreOpener) -> Iterator[SqlCredentialStore]:
    s = opener(create_key=True)
    yield s
    s.close()


def enroll_active(store: SqlCredentialStore, user: str, now: float = T0) -> str:
    """Enroll and confirm TOTP with a code from the step before ``now``; return the seed."""
    secret, _uri = store.enroll(user, now)
    assert store.verify_enrollment(user, pyotp.TOTP(secret).at(now - 30), now) is TotpResult.OK
    return secret


# --- schema and files ------------------------------------------------------------------


def test_migrates_empty_database_and_is_idempotent(paths: tuple[Path, Path]) -> None:
    db, key = paths
    open_store(db, key).close()
    conn = sqlite3.connect(db)
    assert current_version(conn) == LATEST_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"schema_version", "totp", "app_passwords", "devices"} <= tables
    conn.close()
    with open_store(db, key) as again:  # reopening does not re-run migrations
        assert again.totp_status("nobody") is TotpStatus.NONE
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_newer_schema_is_refused_with_advice(paths: tuple[Path, Path]) -> None:
    db, key = paths
    open_store(db, key).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreSchemaError, match="schema version 99.*newer gateway"):
        open_store(db, key)


def test_the_store_satisfies_the_protocol(store: SqlCredentialStore) -> None:
    assert isinstance(store, CredentialStore)


def test_key_file_created_0600_only_when_asked(paths: tuple[Path, Path]) -> None:
    db, key = paths
    with open_store(db, key) as s:  # create_key=False: no key file appears
        assert not key.exists()
        with pytest.raises(StoreKeyError, match=r"store\.key does not exist.*totp enroll"):
            s.enroll("alice", T0)
    with open_store(db, key, create_key=True):
        pass
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32


def test_seed_is_not_stored_in_plaintext(
    store: SqlCredentialStore, opener: StoreOpener
) -> None:
    secret = enroll_active(store, "alice")
    pending, _ = store.enroll("bob", T0)
    store.close()
    blob = opener.dump()
    for s in (secret, pending):
        assert s.encode() not in blob
        assert s.lower().encode() not in blob


def test_missing_key_with_seeds_in_db_is_a_clear_error(opener: StoreOpener) -> None:
    key = opener.key
    with opener(create_key=True) as s:
        enroll_active(s, "alice")
    key.unlink()
    for create in (False, True):  # never mint a new key over existing seeds
        with pytest.raises(StoreKeyError, match=r"store\.key is missing.*1 user.*restore") as err:
            opener(create_key=create)
        assert err.value.key_file == str(key)
    assert not key.exists()


def test_wrong_key_fails_at_open_naming_the_file(opener: StoreOpener) -> None:
    key = opener.key
    with opener(create_key=True) as s:
        enroll_active(s, "alice")
    key.write_bytes(os.urandom(32))
    with pytest.raises(StoreKeyError, match=r"cannot decrypt.*alice.*store\.key.*restore"):
        opener()


def test_malformed_or_world_readable_key_is_refused(opener: StoreOpener) -> None:
    key = opener.key
    key.parent.mkdir(parents=True)
    key.write_bytes(b"short")
    key.chmod(0o600)
    with pytest.raises(StoreKeyError, match="holds 5 bytes, expected 32"):
        opener()
    key.write_bytes(os.urandom(32))
    key.chmod(0o644)
    with pytest.raises(StoreKeyError, match="mode 0644: must not be readable by others.*chmod 600"):
        opener()
    key.chmod(0o640)
    with pytest.raises(StoreKeyError, match="mode 0640: must not be readable by group.*chmod 600"):
        opener()


def test_seed_row_moved_to_another_user_does_not_decrypt(
    store: SqlCredentialStore, opener: StoreOpener
) -> None:
    enroll_active(store, "alice")
    opener.sql(  # an attacker with DB write access copies alice's seed to mallory
        "INSERT INTO totp (user, active_seed, last_step) SELECT 'mallory', active_seed, NULL "
        "FROM totp WHERE user = 'alice'"
    )
    with pytest.raises(StoreKeyError, match="mallory"):
        store.check_totp("mallory", "123456", T0)


# --- TOTP -------------------------------------------------------------------------------------


def test_enrollment_is_pending_until_verified(store: SqlCredentialStore) -> None:
    secret, uri = store.enroll("alice", T0)
    assert "issuer=imap-gateway" in uri and secret in uri
    assert store.totp_status("alice") is TotpStatus.PENDING
    code = pyotp.TOTP(secret).at(T0)
    assert store.check_totp("alice", code, T0) is TotpResult.NOT_ENROLLED
    assert (
        store.verify_enrollment("alice", "000000" if code != "000000" else "111111", T0)
        is TotpResult.INVALID
    )
    assert store.verify_enrollment("alice", code, T0) is TotpResult.OK
    assert store.totp_status("alice") is TotpStatus.ACTIVE
    # the code that confirmed enrollment cannot be replayed to log in
    assert store.check_totp("alice", code, T0) is TotpResult.REPLAY
    assert store.verify_enrollment("carol", "123456", T0) is TotpResult.NOT_ENROLLED


def test_check_totp_right_wrong_replay_window(store: SqlCredentialStore) -> None:
    secret = enroll_active(store, "alice")  # step(T0) - 1 consumed
    otp = pyotp.TOTP(secret)
    t = T0 + 60  # two steps later
    wrong = f"{(int(otp.at(t)) + 1) % 1_000_000:06d}"
    assert store.check_totp("alice", wrong, t) is TotpResult.INVALID
    assert store.check_totp("alice", otp.at(t - 30), t) is TotpResult.OK  # -1 step accepted
    assert store.check_totp("alice", otp.at(t - 30), t) is TotpResult.REPLAY
    assert store.check_totp("alice", otp.at(t), t) is TotpResult.OK  # newer step: fine
    assert store.check_totp("alice", otp.at(t + 30), t) is TotpResult.OK  # +1 step accepted
    # now the current step is older than the last accepted one: a replay, not a new login
    assert store.check_totp("alice", otp.at(t), t) is TotpResult.REPLAY
    later = t + 300
    assert store.check_totp("alice", otp.at(later - 60), later) is TotpResult.INVALID  # -2 steps
    assert store.check_totp("alice", otp.at(later + 60), later) is TotpResult.INVALID  # +2 steps
    assert store.check_totp("bob", otp.at(later), later) is TotpResult.NOT_ENROLLED


def test_replay_state_survives_reopen(opener: StoreOpener) -> None:
    with opener(create_key=True) as s:
        secret = enroll_active(s, "alice")
        code = pyotp.TOTP(secret).at(T0 + 30)
        assert s.check_totp("alice", code, T0 + 30) is TotpResult.OK
    with opener() as s:
        assert s.check_totp("alice", code, T0 + 30) is TotpResult.REPLAY


def test_concurrent_use_of_one_code_accepts_exactly_one(store: SqlCredentialStore) -> None:
    secret = enroll_active(store, "alice")
    t = T0 + 30
    code = pyotp.TOTP(secret).at(t)
    results: list[TotpResult] = []
    barrier = threading.Barrier(8)

    def login() -> None:
        barrier.wait()
        results.append(store.check_totp("alice", code, t))

    threads = [threading.Thread(target=login) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results.count(TotpResult.OK) == 1
    assert results.count(TotpResult.REPLAY) == 7


def test_same_client_may_reuse_its_code_while_valid(store: SqlCredentialStore) -> None:
    secret = enroll_active(store, "alice")
    t = T0 + 30
    code = pyotp.TOTP(secret).at(t)
    me = {"ip": "192.0.2.10", "client_name": "mbsync"}
    assert store.check_totp("alice", code, t, **me) is TotpResult.OK
    assert store.check_totp("alice", code, t + 1, **me) is TotpResult.OK
    # IPv4-mapped IPv6 is the same address; surrounding blanks in the ID name are ignored
    assert store.check_totp("alice", code, t + 2, ip="::ffff:192.0.2.10",
                            client_name=" mbsync ") is TotpResult.OK
    for other in ({"ip": "192.0.2.11", "client_name": "mbsync"},
                  {"ip": "192.0.2.10", "client_name": "neomutt"},
                  {"ip": "192.0.2.10", "client_name": None},
                  {}):  # no client given: strictly single-use
        assert store.check_totp("alice", code, t + 3, **other) is TotpResult.REPLAY, other
    # the reuse is per user: bob's code for the step is his own business
    bob = enroll_active(store, "bob")
    assert store.check_totp("bob", pyotp.TOTP(bob).at(t), t, **me) is TotpResult.OK
    # validity ends with the ±1 window: the end of the step after the code's
    end = (int(t) // 30 + 2) * 30
    assert store.check_totp("alice", code, end - 0.5, **me) is TotpResult.OK
    assert store.check_totp("alice", code, end, **me) is TotpResult.STALE


def test_reuse_and_enrolment_claim_survive_reopen(opener: StoreOpener) -> None:
    me = {"ip": "192.0.2.10", "client_name": "Thunderbird"}
    with opener(create_key=True) as s:
        secret, _ = s.enroll("alice", T0)
        confirm = pyotp.TOTP(secret).at(T0)
        assert s.verify_enrollment("alice", confirm, T0) is TotpResult.OK
        later = pyotp.TOTP(secret).at(T0 + 300)
        assert s.check_totp("alice", later, T0 + 300, **me) is TotpResult.OK
    with opener() as s:
        assert s.check_totp("alice", later, T0 + 301, **me) is TotpResult.OK
        assert s.check_totp("alice", later, T0 + 301, ip="192.0.2.99") is TotpResult.REPLAY
        assert s.check_totp("alice", confirm, T0 + 600, **me) is TotpResult.STALE


def test_enrolment_code_is_claimed_by_the_first_client(opener: StoreOpener) -> None:
    with opener(create_key=True) as s:
        secret, _ = s.enroll("alice", T0)
        code = pyotp.TOTP(secret).at(T0)
        assert s.verify_enrollment("alice", code, T0) is TotpResult.OK
    # claimed after a restart: the unclaimed state is in the database
    with opener() as s:
        first = {"ip": "192.0.2.10", "client_name": "Thunderbird"}
        assert s.check_totp("alice", code, T0 + 20, **first) is TotpResult.OK
        assert s.check_totp("alice", code, T0 + 21, **first) is TotpResult.OK
        assert s.check_totp("alice", code, T0 + 21, ip="192.0.2.10") is TotpResult.REPLAY
        assert s.check_totp("alice", code, T0 + 21, ip="203.0.113.5",
                            client_name="Thunderbird") is TotpResult.REPLAY
    # without a client to record, it cannot be claimed (nobody could use it again)
    with opener() as s:
        secret, _ = s.enroll("bob", T0)
        code = pyotp.TOTP(secret).at(T0)
        assert s.verify_enrollment("bob", code, T0) is TotpResult.OK
        assert s.check_totp("bob", code, T0) is TotpResult.REPLAY
        assert s.check_totp("bob", code, T0, ip="192.0.2.1") is TotpResult.OK


def test_other_codes_of_an_older_step_stay_refused(store: SqlCredentialStore) -> None:
    secret = enroll_active(store, "alice")  # step(T0) - 1 consumed by the enrolment
    otp = pyotp.TOTP(secret)
    me = {"ip": "192.0.2.10", "client_name": "mbsync"}
    assert store.check_totp("alice", otp.at(T0 + 30), T0 + 30, **me) is TotpResult.OK
    # an unused code of an older step, from the client that used the newer one
    assert store.check_totp("alice", otp.at(T0), T0 + 30, **me) is TotpResult.REPLAY


def test_concurrent_use_same_client_all_get_in_different_clients_one(
    store: SqlCredentialStore,
) -> None:
    secret = enroll_active(store, "alice")
    t = T0 + 30
    code = pyotp.TOTP(secret).at(t)

    def race(sources: list[dict[str, str]]) -> list[TotpResult]:
        results: list[TotpResult] = []
        barrier = threading.Barrier(len(sources))

        def login(src: dict[str, str]) -> None:
            barrier.wait()
            results.append(store.check_totp("alice", code, t, **src))

        threads = [threading.Thread(target=login, args=(src,)) for src in sources]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return results

    same = race([{"ip": "192.0.2.10", "client_name": "mbsync"}] * 8)
    assert same == [TotpResult.OK] * 8
    code = pyotp.TOTP(secret).at(t + 30)
    t += 30
    others = race([{"ip": f"192.0.2.{i}", "client_name": "mbsync"} for i in range(20, 28)])
    assert others.count(TotpResult.OK) == 1
    assert others.count(TotpResult.REPLAY) == 7


def test_stale_codes_are_recognised_bounded_and_forgotten_on_disable(
    store: SqlCredentialStore, opener: StoreOpener
) -> None:
    secret = enroll_active(store, "alice")
    otp = pyotp.TOTP(secret)
    first = otp.at(T0 + 30)
    assert store.check_totp("alice", first, T0 + 30, ip="192.0.2.1") is TotpResult.OK
    assert store.check_totp("alice", first, T0 + 3600) is TotpResult.STALE
    never = next(c for c in ("000000", "111111", "222222")
                 if c not in {first, otp.at(T0 - 30), otp.at(T0 + 3600), otp.at(T0 + 3570),
                              otp.at(T0 + 3630)})
    assert store.check_totp("alice", never, T0 + 3600) is TotpResult.INVALID
    # the newest MAX_TOTP_CODES_PER_USER steps are kept: 'first' is pushed out
    for i in range(2, MAX_TOTP_CODES_PER_USER + 2):
        t = T0 + 30 * i
        assert store.check_totp("alice", otp.at(t), t, ip="192.0.2.1") is TotpResult.OK
    [(kept,)] = opener.sql("SELECT COUNT(*) FROM totp_codes WHERE user = 'alice'")
    assert kept == MAX_TOTP_CODES_PER_USER
    later = T0 + 30 * (MAX_TOTP_CODES_PER_USER + 200)
    if first not in {otp.at(T0 + 30 * i) for i in range(2, MAX_TOTP_CODES_PER_USER + 2)}:
        assert store.check_totp("alice", first, later) is TotpResult.INVALID
    store.disable("alice")
    assert opener.sql("SELECT COUNT(*) FROM totp_codes") == [(0,)]


def test_code_use_is_stored_only_as_keyed_fingerprints(
    store: SqlCredentialStore, opener: StoreOpener
) -> None:
    secret = enroll_active(store, "alice")
    code = pyotp.TOTP(secret).at(T0 + 30)
    assert store.check_totp("alice", code, T0 + 30, ip="203.0.113.77",
                            client_name="VerySpecialClient") is TotpResult.OK
    store.close()
    raw = opener.dump()
    for plain in (b"203.0.113.77", b"VerySpecialClient", code.encode()):
        assert plain not in raw


def test_reenrollment_keeps_old_seed_until_confirmed_and_disable(
    store: SqlCredentialStore,
) -> None:
    old = enroll_active(store, "alice")
    new, _ = store.enroll("alice", T0 + 60)
    t = T0 + 90
    assert store.check_totp("alice", pyotp.TOTP(old).at(t), t) is TotpResult.OK
    assert store.verify_enrollment("alice", pyotp.TOTP(new).at(t), t) is TotpResult.OK
    t += 60
    assert store.check_totp("alice", pyotp.TOTP(old).at(t), t) is TotpResult.INVALID
    assert store.check_totp("alice", pyotp.TOTP(new).at(t), t) is TotpResult.OK
    assert store.disable("alice") is True
    assert store.totp_status("alice") is TotpStatus.NONE
    assert store.check_totp("alice", pyotp.TOTP(new).at(t + 30), t + 30) is TotpResult.NOT_ENROLLED
    assert store.disable("alice") is False


def test_enrollment_repr_hides_secret(store: SqlCredentialStore) -> None:
    e = store.enroll("alice", T0)
    assert e.secret not in repr(e) and "otpauth" not in repr(e)


# --- app passwords ------------------------------------------------------------------------------


def test_app_password_create_verify_and_metadata(
    store: SqlCredentialStore, opener: StoreOpener
) -> None:
    new = store.create_app_password("alice", "iPhone", ["read-only"], None, T0)
    assert new.password not in repr(new)
    assert new.info.scopes == ("read-only",) and new.info.expires is None
    ok = store.verify_app_password("alice", new.password, T0 + 1)
    assert ok.status is AppPasswordStatus.OK and ok.info is not None and ok.info.label == "iPhone"
    # typed without dashes, in capitals: still the same password
    typed = new.password.replace("-", "").upper()
    assert store.verify_app_password("alice", typed, T0 + 1).status is AppPasswordStatus.OK
    # another user's app password does not verify for alice, and vice versa
    assert store.verify_app_password("bob", new.password, T0).status is AppPasswordStatus.NO_MATCH
    assert store.list_app_passwords("alice")[0].last_client is None  # never used
    store.record_app_password_use(new.info.id, "192.0.2.9", T0 + 5, " K-9 Mail " + "x" * 100)
    [listed] = store.list_app_passwords("alice")
    assert (listed.last_used, listed.last_ip, listed.created) == (T0 + 5, "192.0.2.9", T0)
    assert listed.last_client == ("K-9 Mail " + "x" * 100)[:64]  # bounded like a device name
    store.close()
    raw = opener.dump()
    assert new.password.encode() not in raw
    assert new.password.replace("-", "").encode() not in raw
    assert b"scrypt$16384$8$1$" in raw


def test_wrong_password_costs_no_scrypt_unless_shaped(store: SqlCredentialStore) -> None:
    store.create_app_password("alice", "laptop", None, None, T0)
    plain = store.verify_app_password("alice", "correct horse battery", T0)
    assert (plain.status, plain.shaped, plain.hashes_checked) == (
        AppPasswordStatus.NO_MATCH,
        False,
        0,
    )
    guess = store.verify_app_password("alice", "abcde-fghij-kmnpq-rstuv", T0)
    assert (guess.status, guess.shaped, guess.hashes_checked) == (
        AppPasswordStatus.NO_MATCH,
        True,
        1,
    )


def test_expired_app_password_never_verifies(store: SqlCredentialStore) -> None:
    new = store.create_app_password("alice", "temp", None, T0 + 3600, T0)
    assert (
        store.verify_app_password("alice", new.password, T0 + 3599).status is AppPasswordStatus.OK
    )
    check = store.verify_app_password("alice", new.password, T0 + 3600)
    assert check.status is AppPasswordStatus.EXPIRED
    with pytest.raises(ValueError, match="future"):
        store.create_app_password("alice", "past", None, T0 - 1, T0)


def test_revoke_by_label(store: SqlCredentialStore) -> None:
    a = store.create_app_password("alice", "phone", None, None, T0)
    b = store.create_app_password("alice", "tablet", None, None, T0)
    store.revoke_app_password("alice", "phone")
    assert store.verify_app_password("alice", a.password, T0).status is AppPasswordStatus.NO_MATCH
    assert store.verify_app_password("alice", b.password, T0).status is AppPasswordStatus.OK
    assert [i.label for i in store.list_app_passwords("alice")] == ["tablet"]
    with pytest.raises(AppPasswordNotFound, match="no app password labelled 'phone'.*list alice"):
        store.revoke_app_password("alice", "phone")


def test_labels_are_unique_per_user_and_validated(store: SqlCredentialStore) -> None:
    store.create_app_password("alice", "phone", None, None, T0)
    with pytest.raises(
        AppPasswordLabelExists, match="already has an app password labelled 'phone'"
    ):
        store.create_app_password("alice", "phone", None, None, T0)
    store.create_app_password("bob", "phone", None, None, T0)  # other user: fine
    for bad in ("", "   ", "x" * 65, "tab\there"):
        with pytest.raises(ValueError, match="label"):
            store.create_app_password("alice", bad, None, None, T0)


def test_app_passwords_of_many_users_at_once(store: SqlCredentialStore, opener: StoreOpener) -> None:
    """What the revocation watcher asks each second: every user's list, in few queries."""
    made = store.create_app_password("alice", "phone", None, None, T0)
    # more users than one query takes, most with a row written directly (no scrypt)
    users = [f"u{i}" for i in range(_USERS_PER_QUERY + 20)]
    for user in users[::2]:
        opener.sql("INSERT INTO app_passwords (user, label, hash, scopes, created) "
                   "VALUES (?, 'x', 'h', '[\"full\"]', ?)", (user, T0))
    got = store.app_passwords_of(["alice", "nobody", *users])
    assert [i.id for i in got["alice"]] == [made.info.id]
    assert got["nobody"] == []
    assert all(len(got[u]) == (1 - i % 2) for i, u in enumerate(users))
    assert all(info.user == u for u in users for info in got[u])
    store.revoke_app_password("alice", "phone")
    assert store.app_passwords_of(["alice"]) == {"alice": []}


def test_app_password_count_is_capped(store: SqlCredentialStore, opener: StoreOpener) -> None:
    # fill the table directly: creating 20 through the API would cost 20 scrypts
    for i in range(MAX_APP_PASSWORDS_PER_USER):
        opener.sql(
            "INSERT INTO app_passwords (user, label, hash, scopes, created) VALUES (?, ?, 'x', '[\"full\"]', ?)",
            ("alice", f"l{i}", T0),
        )
    with pytest.raises(TooManyAppPasswords, match="limit is 20.*revoke"):
        store.create_app_password("alice", "one more", None, None, T0)


# --- remembered devices ------------------------------------------------------------------------------


def test_device_remembered_then_forgotten(store: SqlCredentialStore) -> None:
    dev = store.remember("alice", "192.0.2.10", "Thunderbird", 3600, T0)
    assert (dev.network, dev.client_name, dev.expires) == ("192.0.2.0/24", "Thunderbird", T0 + 3600)
    assert store.is_remembered("alice", "192.0.2.200", "Thunderbird", T0 + 10)  # same /24
    assert not store.is_remembered("alice", "192.0.3.10", "Thunderbird", T0 + 10)  # other /24
    assert not store.is_remembered("alice", "192.0.2.10", "K-9 Mail", T0 + 10)  # other client
    assert not store.is_remembered("bob", "192.0.2.10", "Thunderbird", T0 + 10)  # other user
    assert store.forget("alice", dev.id) == 1
    assert not store.is_remembered("alice", "192.0.2.10", "Thunderbird", T0 + 20)
    with pytest.raises(DeviceNotFound, match="devices list alice"):
        store.forget("alice", dev.id)


def test_device_expires_after_ttl_and_refresh_keeps_id(store: SqlCredentialStore) -> None:
    dev = store.remember("alice", "2001:db8:5:6::1", None, 100, T0)
    assert store.is_remembered("alice", "2001:db8:5:6:ffff::2", "", T0 + 99)  # same /64
    assert not store.is_remembered("alice", "2001:db8:5:7::1", "", T0 + 99)  # other /64
    # remembering again before expiry (a new TOTP login) extends it and keeps the id
    again = store.remember("alice", "2001:db8:5:6::9", "", 100, T0 + 50)
    assert again.id == dev.id and again.expires == T0 + 150
    assert store.is_remembered("alice", "2001:db8:5:6::1", "", T0 + 149)
    assert not store.is_remembered("alice", "2001:db8:5:6::1", "", T0 + 150)
    assert [d.id for d in store.list_devices("alice")] == [dev.id]


def test_forget_all_and_other_users_untouched(store: SqlCredentialStore) -> None:
    store.remember("alice", "192.0.2.1", "a", 3600, T0)
    store.remember("alice", "198.51.100.1", "b", 3600, T0)
    bob = store.remember("bob", "192.0.2.1", "a", 3600, T0)
    with pytest.raises(DeviceNotFound):
        store.forget("alice", bob.id)  # ids of other users' devices are not alice's to forget
    assert store.forget("alice", "all") == 2
    assert store.list_devices("alice") == []
    assert store.is_remembered("bob", "192.0.2.1", "a", T0 + 1)


def test_remember_prunes_expired_and_rejects_zero_ttl(store: SqlCredentialStore) -> None:
    store.remember("alice", "192.0.2.1", "old", 10, T0)
    store.remember("alice", "192.0.2.1", "new", 3600, T0 + 20)
    assert [d.client_name for d in store.list_devices("alice")] == ["new"]
    with pytest.raises(ValueError, match="ttl"):
        store.remember("alice", "192.0.2.1", "x", 0, T0)


def test_is_remembered_marks_last_seen_and_ignores_garbage_ip(store: SqlCredentialStore) -> None:
    store.remember("alice", "192.0.2.1", "c", 3600, T0)
    assert store.is_remembered("alice", "192.0.2.7", "c", T0 + 50)
    [d] = store.list_devices("alice")
    assert d.last_seen == T0 + 50
    assert not store.is_remembered("alice", "not-an-ip", "c", T0 + 50)


def test_running_store_picks_up_key_created_later_by_admin(opener: StoreOpener) -> None:
    with opener() as gateway:  # started before any key existed
        with opener(create_key=True) as admin_cli:
            secret = enroll_active(admin_cli, "alice")
        code = pyotp.TOTP(secret).at(T0 + 30)
        assert gateway.check_totp("alice", code, T0 + 30) is TotpResult.OK


def test_instances_with_different_key_files_cannot_both_enrol(
    opener: StoreOpener, tmp_path: Path
) -> None:
    """Gateways sharing a database must share the key: the second key is refused before
    it could encrypt a seed the others cannot read."""
    with opener(create_key=True) as first:
        enroll_active(first, "alice")
    other_key = tmp_path / "other" / "store.key"
    other = StoreOpener(opener.backend, other_key, opener.db_path, opener.pg,
                        opener.database, opener.password_file)
    other_key.parent.mkdir()
    other_key.write_bytes(os.urandom(32))
    other_key.chmod(0o600)
    # (opening with it already fails: it cannot decrypt alice's seed)
    with pytest.raises(StoreKeyError, match="cannot decrypt"):
        other()
    # an instance that started before the first seed existed finds out at enrolment
    with opener(create_key=True) as s:
        s.disable("alice")
        with other() as late:
            with opener() as first:
                enroll_active(first, "bob")
            with pytest.raises(StoreKeyError, match=r"other/store\.key is not the key.*same "
                                                    r"key file") as err:
                late.enroll("carol", T0)
            assert err.value.key_file == str(other_key)
            assert late.totp_status("carol") is TotpStatus.NONE
        assert s.totp_status("bob") is TotpStatus.ACTIVE
