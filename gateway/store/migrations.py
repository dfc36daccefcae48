"""Schema migrations, one per schema version, for both backends.

Each version has SQLite's function and PostgreSQL's statements (``POSTGRES``, applied by
``gateway.store.postgres``): the same tables, columns, constraints and indexes, in each
dialect's types (PostgreSQL: DOUBLE PRECISION times, BYTEA blobs, identity ids, the
reserved word ``user`` quoted). A version number means the same schema in both.

Rules of this module:

1. A migration is appended, never edited once released: databases in the field
   have already run the old text. Version N turns schema N-1 into N; a new version
   is added to both lists (a test checks that they agree on versions and columns).
2. Each migration runs inside the same transaction that bumps
   ``schema_version``; a failure leaves the database at the previous version.
3. Two gateway processes starting at once cannot both migrate: SQLite's
   ``BEGIN IMMEDIATE`` takes the write lock first, PostgreSQL's migration takes a
   transaction-scoped advisory lock first.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from gateway.store.errors import StoreSchemaError


def _v1_initial(db: sqlite3.Connection) -> None:
    # totp: one row per user. active_seed/pending_seed are AES-GCM blobs (keyfile.py).
    # last_step is the newest accepted RFC 6238 counter: replay protection.
    db.execute(
        """CREATE TABLE totp (
            user TEXT PRIMARY KEY,
            active_seed BLOB,
            activated REAL,
            pending_seed BLOB,
            pending_since REAL,
            last_step INTEGER
        )"""
    )
    db.execute(
        """CREATE TABLE app_passwords (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user TEXT NOT NULL,
            label TEXT NOT NULL,
            hash TEXT NOT NULL,
            scopes TEXT NOT NULL,
            created REAL NOT NULL,
            expires REAL,
            last_used REAL,
            last_ip TEXT,
            UNIQUE (user, label)
        )"""
    )
    db.execute(
        """CREATE TABLE devices (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user TEXT NOT NULL,
            network TEXT NOT NULL,
            client_name TEXT NOT NULL,
            created REAL NOT NULL,
            expires REAL NOT NULL,
            last_seen REAL NOT NULL,
            UNIQUE (user, network, client_name)
        )"""
    )


def _v2_totp_codes(db: sqlite3.Connection) -> None:
    # totp_codes: one row per accepted time step of a user (totp.last_step stays the
    # replay counter). origin 'login': a login's fresh code; 'enrolment': the code that
    # confirmed enrolment, which one client may still claim for its first login.
    # source: HMAC fingerprint of (user, client address, IMAP ID name) of the client that
    # used the step, which may use it again while it is valid; NULL = nobody yet.
    # code_fp: HMAC fingerprint of (user, the six digits), to recognise a saved stale code.
    # Bounded per user by the store (newest steps kept).
    db.execute(
        """CREATE TABLE totp_codes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user TEXT NOT NULL,
            step INTEGER NOT NULL,
            code_fp BLOB NOT NULL,
            origin TEXT NOT NULL CHECK (origin IN ('login', 'enrolment')),
            source BLOB,
            accepted REAL NOT NULL,
            UNIQUE (user, step, code_fp)
        )"""
    )
    db.execute("CREATE INDEX totp_codes_by_code ON totp_codes (user, code_fp)")


def _v3_portal(db: sqlite3.Connection) -> None:
    # What the self-service web portal reads and writes. Secrets are never stored in
    # clear: recovery codes as scrypt (like app passwords), invite tokens and web
    # session ids as SHA-256 (random 256-bit values: a slow hash adds nothing).
    db.execute(
        """CREATE TABLE login_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            time REAL NOT NULL,
            user TEXT NOT NULL,
            address TEXT NOT NULL,
            client_name TEXT NOT NULL,
            factor TEXT NOT NULL,
            result TEXT NOT NULL CHECK (result IN ('success', 'failure')),
            protocol TEXT NOT NULL CHECK (protocol IN ('imap', 'web')),
            reason TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX login_history_by_user ON login_history (user, time)")
    db.execute("CREATE INDEX login_history_by_time ON login_history (time)")
    db.execute(
        """CREATE TABLE recovery_codes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user TEXT NOT NULL,
            hash TEXT NOT NULL,
            created REAL NOT NULL,
            used REAL
        )"""
    )
    db.execute("CREATE INDEX recovery_codes_by_user ON recovery_codes (user)")
    db.execute(
        """CREATE TABLE invites (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            token_hash BLOB NOT NULL UNIQUE,
            user TEXT NOT NULL,
            created REAL NOT NULL,
            expires REAL NOT NULL,
            consumed REAL
        )"""
    )
    db.execute("CREATE INDEX invites_by_user ON invites (user)")
    db.execute(
        """CREATE TABLE pending_devices (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user TEXT NOT NULL,
            address TEXT NOT NULL,
            client_name TEXT NOT NULL,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'approved')),
            approved_until REAL,
            UNIQUE (user, address, client_name)
        )"""
    )
    db.execute(
        """CREATE TABLE web_sessions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            token_hash BLOB NOT NULL UNIQUE,
            user TEXT NOT NULL,
            created REAL NOT NULL,
            expires REAL NOT NULL,
            mfa_done INTEGER NOT NULL DEFAULT 0,
            csrf_secret TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX web_sessions_by_user ON web_sessions (user)")


def _v4_app_password_client(db: sqlite3.Connection) -> None:
    # The IMAP ID name of the client that last used an app password, next to last_ip:
    # the portal lists it so a user can tell which device a password is in.
    db.execute("ALTER TABLE app_passwords ADD COLUMN last_client TEXT")


MIGRATIONS: list[tuple[int, Callable[[sqlite3.Connection], None]]] = [
    (1, _v1_initial),
    (2, _v2_totp_codes),
    (3, _v3_portal),
    (4, _v4_app_password_client),
]

LATEST_VERSION = MIGRATIONS[-1][0]

_PG_TIME = "DOUBLE PRECISION"
_PG_ID = "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"

#: PostgreSQL's statements for each version of MIGRATIONS (same numbers, same schema).
POSTGRES: dict[int, tuple[str, ...]] = {
    1: (
        f"""CREATE TABLE totp (
            "user" TEXT PRIMARY KEY,
            active_seed BYTEA,
            activated {_PG_TIME},
            pending_seed BYTEA,
            pending_since {_PG_TIME},
            last_step BIGINT
        )""",
        f"""CREATE TABLE app_passwords (
            {_PG_ID},
            "user" TEXT NOT NULL,
            label TEXT NOT NULL,
            hash TEXT NOT NULL,
            scopes TEXT NOT NULL,
            created {_PG_TIME} NOT NULL,
            expires {_PG_TIME},
            last_used {_PG_TIME},
            last_ip TEXT,
            UNIQUE ("user", label)
        )""",
        f"""CREATE TABLE devices (
            {_PG_ID},
            "user" TEXT NOT NULL,
            network TEXT NOT NULL,
            client_name TEXT NOT NULL,
            created {_PG_TIME} NOT NULL,
            expires {_PG_TIME} NOT NULL,
            last_seen {_PG_TIME} NOT NULL,
            UNIQUE ("user", network, client_name)
        )""",
    ),
    2: (
        f"""CREATE TABLE totp_codes (
            {_PG_ID},
            "user" TEXT NOT NULL,
            step BIGINT NOT NULL,
            code_fp BYTEA NOT NULL,
            origin TEXT NOT NULL CHECK (origin IN ('login', 'enrolment')),
            source BYTEA,
            accepted {_PG_TIME} NOT NULL,
            UNIQUE ("user", step, code_fp)
        )""",
        'CREATE INDEX totp_codes_by_code ON totp_codes ("user", code_fp)',
    ),
    3: (
        f"""CREATE TABLE login_history (
            {_PG_ID},
            time {_PG_TIME} NOT NULL,
            "user" TEXT NOT NULL,
            address TEXT NOT NULL,
            client_name TEXT NOT NULL,
            factor TEXT NOT NULL,
            result TEXT NOT NULL CHECK (result IN ('success', 'failure')),
            protocol TEXT NOT NULL CHECK (protocol IN ('imap', 'web')),
            reason TEXT NOT NULL
        )""",
        'CREATE INDEX login_history_by_user ON login_history ("user", time)',
        "CREATE INDEX login_history_by_time ON login_history (time)",
        f"""CREATE TABLE recovery_codes (
            {_PG_ID},
            "user" TEXT NOT NULL,
            hash TEXT NOT NULL,
            created {_PG_TIME} NOT NULL,
            used {_PG_TIME}
        )""",
        'CREATE INDEX recovery_codes_by_user ON recovery_codes ("user")',
        f"""CREATE TABLE invites (
            {_PG_ID},
            token_hash BYTEA NOT NULL UNIQUE,
            "user" TEXT NOT NULL,
            created {_PG_TIME} NOT NULL,
            expires {_PG_TIME} NOT NULL,
            consumed {_PG_TIME}
        )""",
        'CREATE INDEX invites_by_user ON invites ("user")',
        f"""CREATE TABLE pending_devices (
            {_PG_ID},
            "user" TEXT NOT NULL,
            address TEXT NOT NULL,
            client_name TEXT NOT NULL,
            first_seen {_PG_TIME} NOT NULL,
            last_seen {_PG_TIME} NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'approved')),
            approved_until {_PG_TIME},
            UNIQUE ("user", address, client_name)
        )""",
        f"""CREATE TABLE web_sessions (
            {_PG_ID},
            token_hash BYTEA NOT NULL UNIQUE,
            "user" TEXT NOT NULL,
            created {_PG_TIME} NOT NULL,
            expires {_PG_TIME} NOT NULL,
            mfa_done INTEGER NOT NULL DEFAULT 0,
            csrf_secret TEXT NOT NULL
        )""",
        'CREATE INDEX web_sessions_by_user ON web_sessions ("user")',
    ),
    4: ("ALTER TABLE app_passwords ADD COLUMN last_client TEXT",),
}


def current_version(db: sqlite3.Connection) -> int:
    """The schema version of ``db``; 0 for an empty database."""
    row = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if row is None:
        return 0
    row = db.execute("SELECT version FROM schema_version").fetchone()
    return 0 if row is None else int(row[0])


def migrate(db: sqlite3.Connection, path: str) -> int:
    """Bring ``db`` (autocommit connection) to LATEST_VERSION; return the version reached.

    Raises StoreSchemaError if the database is newer than this code, which means
    an older gateway binary is pointed at a database a newer one upgraded.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = current_version(db)
        if version > LATEST_VERSION:
            raise StoreSchemaError(
                f"credential database {path} has schema version {version}, but this gateway "
                f"knows only up to {LATEST_VERSION}: run the newer gateway version, or restore "
                "a backup made before the upgrade"
            )
        for target, step in MIGRATIONS:
            if target <= version:
                continue
            try:
                step(db)
            except sqlite3.Error as exc:
                raise StoreSchemaError(
                    f"credential database {path}: migration to schema version {target} failed: "
                    f"{exc}; the database was left at version {version}"
                ) from exc
            version = target
        db.execute("DELETE FROM schema_version")
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return version
