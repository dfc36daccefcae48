"""The web portal's data in the credential store: login history, recovery codes, invites,
devices waiting for approval, web sessions. Real database and key file, on both backends
(SQLite in tmp_path, a database in a private PostgreSQL: the ``opener`` fixture);
the clock is passed in."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.auth import factors
from gateway.store import (
    CredentialStore,
    DeviceApproval,
    DeviceNotFound,
    LoginProtocol,
    LoginRecord,
    LoginResult,
    SqlCredentialStore,
    open_store,
    sqlite_portal,
)
from gateway.store.migrations import LATEST_VERSION, current_version
from gateway.store.sqlite_portal import MAX_PENDING_DEVICES_PER_USER
from tests.support.stores import StoreOpener

T0 = 1_700_000_000.0
DAY = 86400.0


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "state" / "gateway.db", tmp_path / "state" / "store.key"


@pytest.fixture
def store(opener: StoreOpener) -> Iterator[SqlCredentialStore]:
    s = opener(create_key=True)
    yield s
    s.close()


def raw_db(store: SqlCredentialStore, opener: StoreOpener) -> bytes:
    """Every byte the database holds, after closing the store."""
    store.close()
    return opener.dump()


def attempt(t: float, user: str = "alice", **kw) -> LoginRecord:
    fields = dict(time=t, user=user, address="192.0.2.10", client_name="Thunderbird",
                  factor="totp", result=LoginResult.SUCCESS, protocol=LoginProtocol.IMAP,
                  reason="ok")
    fields.update(kw)
    return LoginRecord(**fields)


# --- schema ---------------------------------------------------------------------------------


def test_migration_appends_the_portal_tables_to_a_version_1_database(
    paths: tuple[Path, Path],
) -> None:
    """A database made by the previous release (schema 1, with data) is upgraded in place."""
    from gateway.store.migrations import _v1_initial

    db, key = paths
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    _v1_initial(conn)
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.execute("INSERT INTO devices (user, network, client_name, created, expires, last_seen) "
                 "VALUES ('alice', '192.0.2.0/24', 'x', 1, 2e9, 1)")
    conn.close()
    with open_store(db, key, create_key=True) as s:
        assert isinstance(s, CredentialStore)
        assert len(s.list_devices("alice")) == 1
        s.record_login(attempt(T0))
    conn = sqlite3.connect(db)
    assert current_version(conn) == LATEST_VERSION == 4
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"totp_codes", "login_history", "recovery_codes", "invites", "pending_devices",
            "web_sessions"} <= tables
    conn.close()


# --- login history -----------------------------------------------------------------------------


def test_history_lists_a_users_newest_attempts_first(store: SqlCredentialStore) -> None:
    store.record_login(attempt(T0))
    store.record_login(attempt(T0 + 10, result=LoginResult.FAILURE, factor="none",
                               reason="totp_replay", address="::ffff:198.51.100.7",
                               client_name="mbsync"))
    store.record_login(attempt(T0 + 20, protocol=LoginProtocol.WEB, client_name="",
                               address="2001:db8::1"))
    store.record_login(attempt(T0 + 5, user="bob"))
    entries = store.recent_logins("alice")
    assert [e.time for e in entries] == [T0 + 20, T0 + 10, T0]
    web, failed, ok = entries
    assert (web.protocol, web.address, web.client_name) == ("web", "2001:db8::1", "")
    assert (failed.result, failed.reason, failed.factor) == ("failure", "totp_replay", "none")
    assert failed.address == "198.51.100.7"  # IPv4-mapped IPv6 shown as IPv4
    assert (ok.result, ok.protocol, ok.client_name, ok.factor) == (
        "success", "imap", "Thunderbird", "totp")
    assert all(e.id > 0 for e in entries)
    assert [e.time for e in store.recent_logins("alice", limit=2)] == [T0 + 20, T0 + 10]
    assert [e.user for e in store.recent_logins("bob")] == ["bob"]
    assert store.recent_logins("carol") == []


def test_history_fields_are_bounded_and_values_checked(store: SqlCredentialStore) -> None:
    store.record_login(attempt(T0, user="u" * 1000, client_name="c" * 1000, reason="r" * 500,
                               address="not-an-ip" * 50))
    [e] = store.recent_logins("u" * 256)
    assert (len(e.user), len(e.client_name), len(e.reason), len(e.address)) == (256, 64, 64, 64)
    with pytest.raises(ValueError):
        store.record_login(attempt(T0, protocol="pop3"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.record_login(attempt(T0, result="maybe"))  # type: ignore[arg-type]


def test_prune_removes_entries_older_than_the_retention(store: SqlCredentialStore) -> None:
    for age_days in (100, 91, 89, 1):
        store.record_login(attempt(T0 - age_days * DAY))
    store.record_login(attempt(T0 - 95 * DAY, user="bob"))
    assert store.prune_login_history(T0, 90 * DAY) == 3
    assert [round((T0 - e.time) / DAY) for e in store.recent_logins("alice")] == [1, 89]
    assert store.recent_logins("bob") == []
    assert store.prune_login_history(T0, 90 * DAY) == 0
    with pytest.raises(ValueError, match="positive"):
        store.prune_login_history(T0, 0)


def test_prune_works_in_batches(store: SqlCredentialStore, monkeypatch) -> None:
    monkeypatch.setattr(sqlite_portal, "PRUNE_BATCH", 10)
    rows = [(T0 - 10 * DAY, "alice", "192.0.2.1", "", "none", "failure", "imap", "x")] * 27
    with store._transaction() as db:
        db.executemany(
            "INSERT INTO login_history (time, user, address, client_name, factor, result, "
            "protocol, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    assert store.prune_login_history(T0, DAY) == 27
    assert store.recent_logins("alice") == []


# --- recovery codes -------------------------------------------------------------------------------


def test_recovery_codes_are_shown_once_stored_hashed_and_work_once(
    store: SqlCredentialStore, opener: StoreOpener
) -> None:
    new = store.generate_recovery_codes("alice", T0)
    assert len(new.codes) == factors.RECOVERY_CODE_COUNT == 10
    assert len(set(new.codes)) == 10
    for code in new.codes:
        assert code not in repr(new)
    assert store.recovery_codes_left("alice") == 10
    first, second = new.codes[0], new.codes[1]
    # typed in capitals, without the dash: the same code
    assert store.use_recovery_code("alice", first.replace("-", "").upper(), T0 + 1)
    assert not store.use_recovery_code("alice", first, T0 + 2)  # used up
    assert store.recovery_codes_left("alice") == 9
    assert not store.use_recovery_code("bob", second, T0)  # alice's code is not bob's
    assert not store.use_recovery_code("alice", "not a code", T0)
    assert not store.use_recovery_code("alice", "aaaaa-aaaaa", T0)
    assert store.use_recovery_code("alice", second, T0 + 3)
    raw = raw_db(store, opener)
    for code in new.codes:
        assert code.encode() not in raw and code.replace("-", "").encode() not in raw
    assert b"scrypt$16384$8$1$" in raw


def test_regenerating_recovery_codes_replaces_all(store: SqlCredentialStore) -> None:
    old = store.generate_recovery_codes("alice", T0)
    store.use_recovery_code("alice", old.codes[0], T0)
    new = store.generate_recovery_codes("alice", T0 + 60)
    assert store.recovery_codes_left("alice") == 10
    assert not store.use_recovery_code("alice", old.codes[1], T0 + 61)
    assert store.use_recovery_code("alice", new.codes[9], T0 + 61)


def test_a_recovery_code_raced_twice_works_once(store: SqlCredentialStore) -> None:
    new = store.generate_recovery_codes("alice", T0)
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def use() -> None:
        barrier.wait()
        results.append(store.use_recovery_code("alice", new.codes[3], T0))

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]


def test_recovery_code_check_costs_one_scrypt(monkeypatch) -> None:
    codes = factors.generate_recovery_codes()
    hashes = factors.hash_recovery_codes(codes)
    calls = []
    real = factors._scrypt
    monkeypatch.setattr(factors, "_scrypt", lambda *a: calls.append(1) or real(*a))
    assert factors.match_recovery_code(factors.normalize_recovery_code(codes[7]), hashes) == 7
    assert len(calls) == 1
    assert factors.match_recovery_code("zzzzzzzzzz", hashes + ["garbage", "scrypt$x$y"]) is None


# --- invites --------------------------------------------------------------------------------------


def test_invite_is_one_time_hashed_and_expires(
    store: SqlCredentialStore, opener: StoreOpener
) -> None:
    new = store.create_invite("alice", 72 * 3600, T0)
    assert new.token not in repr(new) and len(new.token) >= 40
    assert (new.info.user, new.info.expires, new.info.consumed) == ("alice", T0 + 72 * 3600, None)
    assert new.info.is_usable(T0)
    used = store.consume_invite(new.token, T0 + 60)
    assert used is not None and used.user == "alice" and used.consumed == T0 + 60
    assert store.consume_invite(new.token, T0 + 61) is None  # consumed once
    late = store.create_invite("bob", 3600, T0)
    assert store.consume_invite(late.token, T0 + 3600) is None  # expired
    assert store.consume_invite("", T0) is None
    assert store.consume_invite("x" * 10_000, T0) is None
    assert [(i.user, i.consumed) for i in store.list_invites("alice")] == [("alice", T0 + 60)]
    raw = raw_db(store, opener)
    assert new.token.encode() not in raw and late.token.encode() not in raw


def test_invite_raced_twice_is_consumed_once(store: SqlCredentialStore) -> None:
    new = store.create_invite("alice", 3600, T0)
    results = []
    barrier = threading.Barrier(6)

    def consume() -> None:
        barrier.wait()
        results.append(store.consume_invite(new.token, T0 + 1))

    threads = [threading.Thread(target=consume) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1


def test_invite_lifetime_must_be_positive(store: SqlCredentialStore) -> None:
    with pytest.raises(ValueError, match="positive"):
        store.create_invite("alice", 0, T0)


# --- devices waiting for approval ---------------------------------------------------------------


def test_device_is_noted_pending_then_approved_until(store: SqlCredentialStore) -> None:
    dev = store.note_device("alice", "192.0.2.10", " Thunderbird ", T0)
    assert (dev.state, dev.client_name, dev.first_seen, dev.approved_until) == (
        DeviceApproval.PENDING, "Thunderbird", T0, None)
    assert not dev.is_approved(T0)
    again = store.note_device("alice", "192.0.2.10", "Thunderbird", T0 + 60)
    assert (again.id, again.first_seen, again.last_seen) == (dev.id, T0, T0 + 60)
    # the exact address is the key, not the /24
    other = store.note_device("alice", "192.0.2.11", "Thunderbird", T0 + 61)
    assert other.id != dev.id
    approved = store.approve_device("alice", dev.id, T0 + DAY, T0 + 120)
    assert approved.state is DeviceApproval.APPROVED and approved.is_approved(T0 + DAY - 1)
    assert not approved.is_approved(T0 + DAY)
    # seen again: the approval stays
    assert store.note_device("alice", "192.0.2.10", "Thunderbird", T0 + 130).is_approved(T0 + 130)
    forever = store.approve_device("alice", other.id, None, T0 + 140)
    assert forever.is_approved(T0 + 1000 * DAY)
    assert [d.id for d in store.list_pending_devices("alice")] == [dev.id, other.id]
    with pytest.raises(ValueError, match="future"):
        store.approve_device("alice", dev.id, T0, T0 + 1)
    with pytest.raises(DeviceNotFound):
        store.approve_device("bob", dev.id, None, T0)  # not bob's
    assert store.remove_pending_device("alice", dev.id) == 1
    with pytest.raises(DeviceNotFound):
        store.remove_pending_device("alice", dev.id)
    assert store.remove_pending_device("alice", "all") == 1
    assert store.list_pending_devices("alice") == []


def test_pending_devices_are_bounded_per_user_keeping_approved(
    store: SqlCredentialStore,
) -> None:
    keep = store.note_device("alice", "192.0.2.1", "approved", T0)
    store.approve_device("alice", keep.id, None, T0)
    for i in range(MAX_PENDING_DEVICES_PER_USER + 5):
        store.note_device("alice", f"198.51.100.{i}", "spray", T0 + 1 + i)
    devices = store.list_pending_devices("alice")
    assert len(devices) == MAX_PENDING_DEVICES_PER_USER
    assert keep.id in {d.id for d in devices}
    # the least recently seen pending ones went
    assert "198.51.100.0" not in {d.address for d in devices}


# --- web sessions ---------------------------------------------------------------------------------


def test_web_session_lifecycle(store: SqlCredentialStore, opener: StoreOpener) -> None:
    new = store.create_web_session("alice", 3600, T0)
    assert new.session_id not in repr(new) and new.session.csrf_secret not in repr(new)
    assert not new.session.mfa_done
    got = store.get_web_session(new.session_id, T0 + 1)
    assert got is not None and got.user == "alice" and got.csrf_secret == new.session.csrf_secret
    # the second factor done: a new id, the old one stops working (no session fixation)
    upgraded = store.complete_web_session_mfa(new.session_id, T0 + 2)
    assert upgraded is not None and upgraded.session_id != new.session_id
    assert upgraded.session.mfa_done and upgraded.session.id == new.session.id
    assert store.get_web_session(new.session_id, T0 + 3) is None
    assert store.complete_web_session_mfa(new.session_id, T0 + 3) is None
    live = store.get_web_session(upgraded.session_id, T0 + 3)
    assert live is not None and live.mfa_done
    assert store.get_web_session(upgraded.session_id, T0 + 3600) is None  # expired
    assert store.get_web_session("x" * 5000, T0) is None
    raw = raw_db(store, opener)
    for token in (new.session_id, upgraded.session_id):
        assert token.encode() not in raw


def test_web_sessions_revoke_one_and_all(store: SqlCredentialStore) -> None:
    a = store.create_web_session("alice", 3600, T0, mfa_done=True)
    b = store.create_web_session("alice", 3600, T0 + 1)
    c = store.create_web_session("alice", 3600, T0 + 2)
    bob = store.create_web_session("bob", 3600, T0)
    assert [s.id for s in store.list_web_sessions("alice", T0 + 5)] == [
        a.session.id, b.session.id, c.session.id]
    assert store.end_web_session(a.session_id)  # logout
    assert not store.end_web_session(a.session_id)
    assert not store.revoke_web_session("alice", bob.session.id)  # not alice's
    assert store.revoke_web_session("alice", b.session.id)
    assert store.get_web_session(b.session_id, T0 + 5) is None
    assert store.revoke_web_sessions("alice") == 1
    assert store.get_web_session(c.session_id, T0 + 5) is None
    assert store.get_web_session(bob.session_id, T0 + 5) is not None
    with pytest.raises(ValueError, match="positive"):
        store.create_web_session("alice", 0, T0)


def test_prune_expired_sessions_and_invites(store: SqlCredentialStore) -> None:
    store.create_web_session("alice", 60, T0)
    keep = store.create_web_session("alice", 3600, T0)
    store.create_invite("alice", 60, T0)
    kept_invite = store.create_invite("bob", 3600, T0)
    assert store.prune_expired(T0 + 60) == 2
    assert [s.id for s in store.list_web_sessions("alice", T0 + 60)] == [keep.session.id]
    assert store.list_invites("alice") == []
    assert store.consume_invite(kept_invite.token, T0 + 61) is not None


def test_portal_records_never_show_secrets(store: SqlCredentialStore) -> None:
    codes = store.generate_recovery_codes("alice", T0)
    invite = store.create_invite("alice", 60, T0)
    session = store.create_web_session("alice", 60, T0)
    text = " ".join(repr(x) + str(x) for x in (codes, invite, session, session.session,
                                               invite.info, store.list_web_sessions("alice", T0)))
    for secret in (*codes.codes, invite.token, session.session_id, session.session.csrf_secret):
        assert secret not in text
