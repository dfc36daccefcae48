"""What only the PostgreSQL store has: the same schema as SQLite from its own migrations,
migrating once when instances start together, its password file, libpq's TLS parameters
passed through, and a server that goes away and comes back. The behaviour both backends
share is tested on both in test_store_sqlite.py and test_store_portal.py."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from gateway.store import StoreError, StoreSchemaError, StoreUnavailable, open_store
from gateway.store.migrations import LATEST_VERSION, MIGRATIONS, POSTGRES
from gateway.store.postgres import PostgresCredentialStore, redact_url, translate
from tests.support.postgres import PostgresServer
from tests.support.stores import StoreOpener, make_opener

T0 = 1_700_000_015.0


@pytest.fixture
def pg_opener(postgres: PostgresServer, tmp_path: Path) -> StoreOpener:
    return make_opener("postgresql", tmp_path, postgres)


def test_every_version_has_statements_for_both_backends() -> None:
    assert sorted(POSTGRES) == [v for v, _ in MIGRATIONS] == list(range(1, LATEST_VERSION + 1))


def test_both_backends_build_the_same_tables_and_columns(
    pg_opener: StoreOpener, tmp_path: Path
) -> None:
    open_store(tmp_path / "lite.db", tmp_path / "k").close()
    lite = sqlite3.connect(tmp_path / "lite.db")
    sqlite_schema = {
        table: {row[1] for row in lite.execute(f"PRAGMA table_info({table})")}
        for (table,) in lite.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    }
    sqlite_indexes = {name for (name,) in lite.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    lite.close()
    pg_opener(create_key=True).close()
    pg_schema: dict[str, set[str]] = {}
    for table, column in pg_opener.sql(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public'"):
        pg_schema.setdefault(table, set()).add(column)
    pg_indexes = {name for (name,) in pg_opener.sql(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
        "AND indexname NOT LIKE '%pkey' AND indexname NOT LIKE '%key'")}
    assert pg_schema == sqlite_schema
    assert pg_indexes == sqlite_indexes
    assert pg_opener.sql("SELECT version FROM schema_version") == [(LATEST_VERSION,)]


def test_instances_starting_together_migrate_once(pg_opener: StoreOpener) -> None:
    pg_opener.key.parent.mkdir(parents=True)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        try:
            pg_opener(create_key=False).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert pg_opener.sql("SELECT COUNT(*), MAX(version) FROM schema_version") == [
        (1, LATEST_VERSION)]


def test_newer_schema_is_refused_naming_the_url_without_password(
    pg_opener: StoreOpener,
) -> None:
    pg_opener(create_key=True).close()
    pg_opener.sql("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreSchemaError, match="schema version 99.*newer gateway") as err:
        pg_opener()
    assert pg_opener.database in str(err.value)


def test_password_comes_from_its_file_and_is_never_shown(
    pg_opener: StoreOpener, postgres: PostgresServer, tmp_path: Path
) -> None:
    with pg_opener(create_key=True) as store:
        assert postgres.password not in repr(store)
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    with pytest.raises(StoreError, match="cannot connect.*password authentication failed") as err:
        PostgresCredentialStore(pg_opener.url, pg_opener.key, password_file=wrong)
    assert "not-the-password" not in str(err.value)
    wrong.chmod(0o644)
    with pytest.raises(StoreError, match="store.password_file.*0644"):
        PostgresCredentialStore(pg_opener.url, pg_opener.key, password_file=wrong)
    # a password written into the URL is never echoed either
    url = pg_opener.url.replace("gateway@", "gateway:url-secret@")
    assert redact_url(url) == pg_opener.url.replace("gateway@", "gateway:***@")
    with pytest.raises(StoreError) as err:
        PostgresCredentialStore(url, pg_opener.key)
    assert "url-secret" not in str(err.value) and "gateway:***@" in str(err.value)


def test_sslmode_in_the_url_reaches_libpq(pg_opener: StoreOpener) -> None:
    # The test server has no TLS: libpq itself refuses when the URL demands it.
    for mode in ("require", "verify-full"):
        with pytest.raises(StoreError, match="SSL"):
            PostgresCredentialStore(pg_opener.url + f"?sslmode={mode}", pg_opener.key,
                                    password_file=pg_opener.password_file)
    with PostgresCredentialStore(pg_opener.url + "?sslmode=disable", pg_opener.key,
                                 password_file=pg_opener.password_file, create_key=True) as s:
        assert s.list_app_passwords("alice") == []


def test_url_parameters_are_kept_and_the_gateway_adds_its_timeouts(
    pg_opener: StoreOpener,
) -> None:
    url = pg_opener.url + "?options=-c%20lock_timeout%3D1234&application_name=gw-east"
    with PostgresCredentialStore(url, pg_opener.key, password_file=pg_opener.password_file,
                                 create_key=True) as store, store._conn() as db:
        assert db.execute("SHOW lock_timeout").fetchone() == ("1234ms",)
        # a stuck lock or query cannot hold a login forever
        assert db.execute("SHOW statement_timeout").fetchone() == ("5s",)
        assert db.execute("SHOW application_name").fetchone() == ("gw-east",)


def test_sqlite_spelling_is_translated_once_per_statement() -> None:
    assert translate("SELECT user, id FROM t WHERE user = ? AND x LIKE '5%'") == (
        'SELECT "user", id FROM t WHERE "user" = %s AND x LIKE \'5%%\'')
    # other words containing "user", and qualified or quoted names, are left alone
    assert translate('SELECT users, username, t.user, "user" FROM t') == (
        'SELECT users, username, t.user, "user" FROM t')


def test_server_outage_is_unavailable_then_recovers(
    pg_opener: StoreOpener, postgres: PostgresServer
) -> None:
    store = pg_opener(create_key=True)
    try:
        store.create_app_password("alice", "phone", None, None, T0)
        postgres.stop()
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as err:
                store.list_app_passwords("alice")
            assert time.monotonic() - started < 15  # bounded: never a hang
            assert postgres.password not in str(err.value)
        finally:
            postgres.start()
        # the same store object works again: the pool reconnects by itself
        deadline = time.monotonic() + 30
        while True:
            try:
                assert [i.label for i in store.list_app_passwords("alice")] == ["phone"]
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store did not reconnect"
                time.sleep(0.2)
    finally:
        store.close()
