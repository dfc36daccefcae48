"""The credential store on PostgreSQL, shared by every gateway instance that names it.

``[store] url = "postgresql://gateway@db.example.org/gateway"`` (libpq's URL: host,
port, database, and parameters such as ``sslmode=verify-full&sslrootcert=...``, passed
through to libpq unchanged) with the password in ``[store] password_file``. Every
instance must also use the same ``[store] key_file``: the seeds in the database are
encrypted with it.

Rules of this module:

1. Same methods, same SQL as SQLite (``SqlCredentialStore``). The SQL is written in
   SQLite's spelling; ``_PgConnection`` translates the two differences, ``?`` into
   ``%s`` and the column ``user`` (a reserved word here) into ``"user"``, once per
   statement text (cached). Schema: ``migrations.POSTGRES``, the same versions.
2. Atomic across hosts: each ``_conn()``/``_transaction()`` is one database
   transaction on one pooled connection (COMMIT at the end, ROLLBACK on error), and
   the TOTP check locks the user's ``totp`` row (``SELECT ... FOR UPDATE``), so of
   several instances racing with one fresh code exactly one wins; code markers are
   also UNIQUE (``INSERT ... ON CONFLICT DO NOTHING``). A revoked app password is a
   deleted row: every instance's credential watcher sees it at its next look (1 s).
3. Never hangs a login: a connection is waited for at most ACQUIRE_TIMEOUT, a new one
   connects within ``connect_timeout`` (CONNECT_TIMEOUT unless the URL says), and
   statements are cut at STATEMENT_TIMEOUT. Any of those, or a connection that breaks,
   raises ``StoreUnavailable``; the pool reconnects by itself when the server is back.
4. The password is read from its file once at open and handed to libpq; it is never in
   a repr, a message or a log line (URLs are shown without it).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from gateway.secretfile import SecretTextError, read_secret_text
from gateway.store.errors import StoreError, StoreSchemaError, StoreUnavailable
from gateway.store.migrations import LATEST_VERSION, POSTGRES
from gateway.store.sqlite import SqlCredentialStore

#: Connections per gateway process: the shell runs store calls in worker threads, and
#: a few at once cover a busy process (more only wait on the database's own locks).
POOL_MAX = 8
#: Longest a store call waits for a pooled connection (the server may be down).
ACQUIRE_TIMEOUT = 3.0
#: libpq's connect_timeout unless the URL sets one.
CONNECT_TIMEOUT = 3
#: Server-side limit on one statement (ms): a stuck lock must not hold a login forever.
STATEMENT_TIMEOUT_MS = 5000
#: How long the pool keeps retrying one failed connection attempt before it gives up
#: and lets the next request start a fresh one: short, so that logins work again soon
#: after the server returns (the pool's retries back off exponentially).
RECONNECT_TIMEOUT = 5.0
#: pg_advisory_xact_lock keys held while migrating ("imapgw" in ASCII) and enrolling.
_MIGRATION_LOCK = 0x696D61706777
_ENROLMENT_LOCK = _MIGRATION_LOCK + 1

# The pool's own reconnect warnings (one unstructured stderr line per retry while the
# server is down) say nothing the store does not: callers get StoreUnavailable and log
# store.unavailable as JSON. A handler here keeps Python's last-resort stderr printer off;
# a root handler an embedding program configures still sees them.
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())

_USER_COLUMN = re.compile(r'(?<![\w."])user(?![\w"])')


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """SQLite's spelling of a statement in PostgreSQL's (see rule 1)."""
    return _USER_COLUMN.sub('"user"', sql.replace("%", "%%").replace("?", "%s"))


def redact_url(url: str) -> str:
    """``url`` without a password in its user part (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class _PgConnection:
    """A pooled psycopg connection that takes SQLite-spelled statements."""

    __slots__ = ("_conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> psycopg.Cursor[Any]:
        return self._conn.execute(translate(sql), params)

    def executemany(self, sql: str, params: Sequence[Sequence[object]]) -> psycopg.Cursor[Any]:
        cur = self._conn.cursor()
        cur.executemany(translate(sql), params)
        return cur


class PostgresCredentialStore(SqlCredentialStore):
    """CredentialStore on PostgreSQL. Open once per process; share it between threads.

    Opening connects, migrates (under an advisory lock: instances starting together
    migrate once) and checks the key file like the SQLite store; a database that
    cannot be reached then is a StoreError naming the URL (the gateway does not start).
    """

    _integrity_error: ClassVar[type[Exception]] = psycopg.errors.UniqueViolation
    _lock_row: ClassVar[str] = " FOR UPDATE"
    remote: ClassVar[bool] = True
    _serialize_enrolment: ClassVar[str] = f"SELECT pg_advisory_xact_lock({_ENROLMENT_LOCK})"

    def __init__(
        self,
        url: str,
        key_file: str | os.PathLike[str],
        *,
        password_file: str | os.PathLike[str] | None = None,
        create_key: bool = False,
        pool_max: int = POOL_MAX,
    ) -> None:
        self.url = url
        self.key_file = str(key_file)
        self._fp_key = None
        self._cipher = None
        try:
            given = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise StoreError(f"store.url: {_one_line(exc)}") from None
        # Defaults for what the URL leaves out; what it says wins (options are added to).
        kwargs: dict[str, Any] = {"application_name": given.get("application_name")
                                  or "imap-gateway",
                                  "connect_timeout": given.get("connect_timeout")
                                  or CONNECT_TIMEOUT}
        kwargs["options"] = " ".join(filter(None, [
            f"-c statement_timeout={STATEMENT_TIMEOUT_MS}", str(given.get("options") or "")]))
        if password_file is not None:
            kwargs["password"] = _read_password(password_file)
        self._migrate(kwargs)
        self._pool = ConnectionPool(
            url, kwargs=kwargs, min_size=1, max_size=pool_max, open=False,
            timeout=ACQUIRE_TIMEOUT, reconnect_timeout=RECONNECT_TIMEOUT,
            check=ConnectionPool.check_connection, name="credential-store",
        )
        try:
            try:
                self._pool.open(wait=True, timeout=ACQUIRE_TIMEOUT + CONNECT_TIMEOUT)
            except PoolTimeout:
                raise StoreUnavailable(
                    f"cannot connect to the credential database {self._where()}") from None
            self._cipher = self._open_cipher(create_key)
        except BaseException:
            self._pool.close()
            raise

    def _migrate(self, kwargs: dict[str, Any]) -> int:
        where = redact_url(self.url)
        try:
            conn = psycopg.connect(self.url, **kwargs)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to the credential database {where}: {_one_line(exc)}"
            ) from None
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version "
                             "(version INTEGER NOT NULL)")
                row = conn.execute("SELECT version FROM schema_version").fetchone()
                version = 0 if row is None else int(row[0])
                if version > LATEST_VERSION:
                    raise StoreSchemaError(
                        f"credential database {where} has schema version {version}, but "
                        f"this gateway knows only up to {LATEST_VERSION}: run the newer "
                        "gateway version on every instance, or restore a backup made before "
                        "the upgrade"
                    )
                for target in sorted(POSTGRES):
                    if target <= version:
                        continue
                    try:
                        with conn.transaction():  # a savepoint: the error names the step
                            for statement in POSTGRES[target]:
                                conn.execute(statement)
                    except psycopg.Error as exc:
                        raise StoreSchemaError(
                            f"credential database {where}: migration to schema version "
                            f"{target} failed: {_one_line(exc)}; the database was left at "
                            f"version {version}"
                        ) from None
                    version = target
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
        except psycopg.Error as exc:
            raise StoreError(
                f"credential database {where}: cannot migrate: {_one_line(exc)}") from None
        finally:
            conn.close()
        return version

    def __repr__(self) -> str:
        return (f"PostgresCredentialStore(url={redact_url(self.url)!r}, "
                f"key_file={self.key_file!r})")

    def _where(self) -> str:
        return redact_url(self.url)

    def close(self) -> None:
        self._pool.close()

    @contextlib.contextmanager
    def _conn(self) -> Iterator[_PgConnection]:
        """One pooled connection, one transaction (COMMIT at the end, ROLLBACK on error).

        Connection trouble becomes StoreUnavailable, any other database error StoreError;
        the store's own errors (and a UNIQUE violation the caller did not catch) pass.
        """
        try:
            with self._pool.connection() as conn:
                yield _PgConnection(conn)
        except PoolTimeout:
            raise StoreUnavailable(
                f"credential database {self._where()}: no connection within "
                f"{ACQUIRE_TIMEOUT:g} s (is the server down or every connection busy?)"
            ) from None
        except (psycopg.OperationalError, psycopg.errors.QueryCanceled) as exc:
            raise StoreUnavailable(
                f"credential database {self._where()}: {_one_line(exc)}") from None
        except psycopg.Error as exc:
            raise StoreError(f"credential database {self._where()}: {_one_line(exc)}") from None

    # Every _conn() is already one transaction; the row lock (_lock_row) makes the
    # read-decide-write ones atomic across instances.
    _transaction = _conn


def _read_password(path: str | os.PathLike[str]) -> str:
    try:
        return read_secret_text(path, "store.password_file")
    except SecretTextError as exc:
        raise StoreError(str(exc)) from None


def _one_line(exc: BaseException) -> str:
    """A psycopg error's first line (libpq's messages span lines; none holds a secret:
    libpq never repeats the password)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
