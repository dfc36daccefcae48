"""The credential store's SQL (shared with PostgreSQL) and its embedded backend: one
SQLite file plus a key file for TOTP seeds.

``SqlCredentialStore`` holds every method; ``SqliteCredentialStore`` gives it one SQLite
connection, ``gateway.store.postgres.PostgresCredentialStore`` a connection pool.

Rules of this module:

1. Thread-safe by construction: SQLite's one connection (``check_same_thread=False``)
   is guarded by a lock held only around SQL, never around scrypt, so slow app
   password checks from several worker threads run in parallel (PostgreSQL: a pooled
   connection is held only around SQL, the same way).
2. State changes that must not race (TOTP replay counter and code owners,
   enrollment) are one conditional UPDATE or one ``_transaction`` each: atomic in
   SQLite even across processes sharing the file (BEGIN IMMEDIATE, WAL mode, busy
   timeout), and in PostgreSQL across hosts (the row lock ``_lock_row`` takes).
3. Costs: ``verify_app_password`` runs at most one scrypt per app password of that
   user (capped at MAX_APP_PASSWORDS_PER_USER) and none at all when the secret is
   not shaped like an app password. Everything else is a few indexed queries.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from gateway.auth.factors import (
    TotpResult,
    device_client_name,
    device_network,
    fingerprint_key,
    generate_app_password,
    hash_app_password,
    new_totp_secret,
    normalize_app_password,
    totp_code_fingerprint,
    totp_matching_step,
    totp_source_fingerprint,
    totp_uri,
    validate_scopes,
    verify_app_password_hash,
)
from gateway.secretfile import create_secret_file
from gateway.store.base import (
    AppPasswordCheck,
    AppPasswordInfo,
    AppPasswordStatus,
    DeviceInfo,
    NewAppPassword,
    TotpEnrollment,
    TotpStatus,
)
from gateway.store.errors import (
    AppPasswordLabelExists,
    AppPasswordNotFound,
    DeviceNotFound,
    StoreError,
    StoreKeyError,
    TooManyAppPasswords,
)
from gateway.store.keyfile import SeedCipher, load_key
from gateway.store.migrations import migrate
from gateway.store.sqlite_portal import SqlPortalTables

# Bounds the scrypt work one login can cause (see verify_app_password).
MAX_APP_PASSWORDS_PER_USER = 20
# Bounds the rows one user's logins can create; the least recently seen go first.
MAX_DEVICES_PER_USER = 50
LABEL_MAX = 64
# Accepted TOTP steps kept per user (totp_codes): the reuse rule needs only the last
# few, recognising a mail client's saved stale code needs its code still listed. A
# user who logs in with this many fresh codes elsewhere before a client reconnects
# makes that client's saved code unknown again (its login then needs a fresh code).
MAX_TOTP_CODES_PER_USER = 100

#: Bounds the parameters of one IN (...) list (SQLite's limit is 32766, PostgreSQL's 65535).
_USERS_PER_QUERY = 500
_APP_COLS = "id, user, label, scopes, created, expires, last_used, last_ip, last_client"
_DEV_COLS = "id, user, network, client_name, created, expires, last_seen"


class SqlCredentialStore(SqlPortalTables):
    """The CredentialStore methods, in SQL that SQLite and PostgreSQL both run.

    A backend subclass provides the connection: ``_conn()`` (one statement or a few
    reads) and ``_transaction()`` (a read-decide-write that must be atomic against
    other threads and other gateway processes), the exception a UNIQUE violation
    raises, and ``_lock_row``, the clause that makes a SELECT inside a transaction
    hold the row until COMMIT where the database needs it (PostgreSQL's
    ``FOR UPDATE``; SQLite's BEGIN IMMEDIATE already locks the whole database).

    The SQL is written in SQLite's spelling (``?`` placeholders, the column ``user``);
    the PostgreSQL connection translates those two (``gateway.store.postgres``).
    """

    key_file: str
    _cipher: SeedCipher | None
    _fp_key: bytes | None
    _integrity_error: ClassVar[type[Exception]] = sqlite3.IntegrityError
    _lock_row: ClassVar[str] = ""
    #: A statement that makes concurrent enrolments take turns (the first seeds of two
    #: instances with different keys must not both be written); SQLite's BEGIN
    #: IMMEDIATE already does.
    _serialize_enrolment: ClassVar[str] = ""
    #: Every call is a network round trip (and may wait for a server that is down): the
    #: trio shell must run even the cheap ones in a worker thread, never on its loop.
    remote: ClassVar[bool] = False

    def _conn(self) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def _transaction(self) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def _where(self) -> str:
        """The database as messages name it (a path, or a URL without its password)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    def _open_cipher(self, create_key: bool) -> SeedCipher | None:
        has_seed = "active_seed IS NOT NULL OR pending_seed IS NOT NULL"
        with self._conn() as db:
            (seeds,) = db.execute(f"SELECT COUNT(*) FROM totp WHERE {has_seed}").fetchone()
            sample = db.execute(
                f"SELECT user, COALESCE(active_seed, pending_seed) FROM totp WHERE {has_seed} "
                "LIMIT 1"
            ).fetchone()
        key = load_key(self.key_file, create=create_key and not seeds)
        if key is None:
            if seeds:
                raise StoreKeyError(
                    f"TOTP key file {self.key_file} is missing, but {self._where()} holds "
                    f"encrypted TOTP seeds for {seeds} user(s): restore the key file from "
                    "backup (check [store] key_file), or disable and re-enroll those users",
                    key_file=self.key_file,
                )
            return None
        cipher = SeedCipher(key, self.key_file)
        self._fp_key = fingerprint_key(key)
        if sample is not None:
            user, blob = sample
            cipher.decrypt(user, bytes(blob))  # raises StoreKeyError naming the file if wrong
        return cipher

    def _require_cipher(self) -> SeedCipher:
        if self._cipher is None:
            # An admin command may have created the key file since we opened
            # (first `totp enroll` while the gateway runs): pick it up.
            key = load_key(self.key_file, create=False)
            if key is not None:
                self._fp_key = fingerprint_key(key)
                self._cipher = SeedCipher(key, self.key_file)
                return self._cipher
            raise StoreKeyError(
                f"TOTP key file {self.key_file} does not exist: run `imap-gateway totp enroll "
                "USER` (it creates the key file) or start the gateway once to create it",
                key_file=self.key_file,
            )
        return self._cipher

    def _require_fp_key(self) -> bytes:
        self._require_cipher()  # loads the key file if an admin created it since
        assert self._fp_key is not None
        return self._fp_key

    # --- TOTP ---------------------------------------------------------------------

    def enroll(self, user: str, now: float) -> TotpEnrollment:
        """Create a pending seed for ``user``; it takes effect on verify_enrollment.

        An already active seed keeps working until the new one is confirmed, so a
        user who re-enrolls and gives up half way is not locked out. Enrolling
        again replaces an unconfirmed pending seed.

        Several gateway instances share one database, so they must share the key file:
        a seed this key cannot decrypt already in the database means another instance
        (or admin command) uses another key, and enrolling is refused with a
        StoreKeyError saying so, before a seed under a second key could exist.
        """
        cipher = self._require_cipher()
        secret = new_totp_secret()
        blob = cipher.encrypt(user, secret)
        with self._transaction() as db:
            if self._serialize_enrolment:
                db.execute(self._serialize_enrolment)
            other = db.execute(
                "SELECT user, COALESCE(active_seed, pending_seed) FROM totp "
                "WHERE active_seed IS NOT NULL OR pending_seed IS NOT NULL LIMIT 1"
            ).fetchone()
            if other is not None:
                try:
                    cipher.decrypt(other[0], bytes(other[1]))
                except StoreKeyError:
                    raise StoreKeyError(
                        f"TOTP key file {self.key_file} is not the key the seeds in "
                        f"{self._where()} are encrypted with: another gateway instance or "
                        "admin command uses a different [store] key_file. Every instance "
                        "must use the same key file: copy it from one whose TOTP logins work",
                        key_file=self.key_file,
                    ) from None
            db.execute(
                "INSERT INTO totp (user, pending_seed, pending_since) VALUES (?, ?, ?) "
                "ON CONFLICT (user) DO UPDATE SET pending_seed = excluded.pending_seed, "
                "pending_since = excluded.pending_since",
                (user, blob, now),
            )
        return TotpEnrollment(user=user, secret=secret, uri=totp_uri(secret, user))

    def verify_enrollment(self, user: str, code: str, now: float) -> TotpResult:
        """Activate the pending seed if ``code`` is valid for it now (±1 step).

        The code's step becomes the last accepted step, so no other code of that
        step or an older one can log in. The confirming code itself is recorded as
        unclaimed: the first client that logs in with it while it is still valid
        may, and then only that client (see check_totp). That is the normal flow
        "confirm with the current code, then put the same code into the mail
        client"; refusing it would lock the user out until the next code appears.
        """
        with self._conn() as db:
            row = db.execute(
                "SELECT pending_seed FROM totp WHERE user = ?", (user,)
            ).fetchone()
        if row is None or row[0] is None:
            return TotpResult.NOT_ENROLLED
        blob = row[0]
        step = totp_matching_step(self._require_cipher().decrypt(user, blob), code, now)
        if step is None:
            return TotpResult.INVALID
        code_fp = totp_code_fingerprint(self._require_fp_key(), user, code)
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE totp SET active_seed = pending_seed, activated = ?, pending_seed = NULL, "
                "pending_since = NULL, last_step = ? WHERE user = ? AND pending_seed = ?",
                (now, step, user, blob),
            )
            if cur.rowcount != 1:
                # a concurrent enroll replaced the seed this code was for
                return TotpResult.INVALID
            db.execute(
                "INSERT INTO totp_codes (user, step, code_fp, origin, source, accepted) "
                "VALUES (?, ?, ?, 'enrolment', NULL, ?) ON CONFLICT DO NOTHING",
                (user, step, code_fp, now),
            )
            _prune_totp_codes(db, user)
        return TotpResult.OK

    def disable(self, user: str) -> bool:
        """Remove the user's TOTP (active and pending). Returns whether there was any."""
        with self._transaction() as db:
            db.execute("DELETE FROM totp_codes WHERE user = ?", (user,))
            return db.execute("DELETE FROM totp WHERE user = ?", (user,)).rowcount > 0

    def totp_status(self, user: str) -> TotpStatus:
        with self._conn() as db:
            row = db.execute(
                "SELECT active_seed IS NOT NULL, pending_seed IS NOT NULL FROM totp WHERE user = ?",
                (user,),
            ).fetchone()
        if row is None:
            return TotpStatus.NONE
        if row[0]:
            return TotpStatus.ACTIVE
        return TotpStatus.PENDING if row[1] else TotpStatus.NONE

    def check_totp(
        self,
        user: str,
        code: str,
        now: float,
        *,
        ip: str | None = None,
        client_name: str | None = None,
    ) -> TotpResult:
        """Check a login's TOTP code; a fresh one consumes its time step.

        A code is valid within ±1 step (30 s) of ``now``. Then, in this order:

        - its step is newer than the last accepted one: ``ok``. It becomes the last
          accepted step, recorded with the client that used it (the exact ``ip`` and
          the IMAP ID ``client_name``, as a keyed fingerprint);
        - that same client again, with that same code: ``ok`` (a mail client opening
          parallel connections or reconnecting with its saved ``password$code``);
        - the code that confirmed enrolment, not yet used by any client: ``ok``, and
          the client that used it is recorded (it alone may use it again);
        - otherwise ``replay``: an older step, or a step another client used.

        A code that is not valid now is ``stale`` if this user logged in (or confirmed
        enrolment) with these six digits before, among the last
        MAX_TOTP_CODES_PER_USER accepted steps, else ``invalid``.

        Without ``ip`` there is no client to compare with: the code is single-use.
        All of it holds across restarts (it is in the database) and across
        processes sharing the file: the decision is one BEGIN IMMEDIATE transaction,
        so of several clients racing with one fresh code exactly one wins.
        Raises StoreKeyError if the seed cannot be decrypted: fail closed.
        """
        with self._conn() as db:
            row = db.execute(
                "SELECT active_seed FROM totp WHERE user = ?", (user,)
            ).fetchone()
        if row is None or row[0] is None:
            return TotpResult.NOT_ENROLLED
        blob = row[0]
        step = totp_matching_step(self._require_cipher().decrypt(user, blob), code, now)
        fp_key = self._require_fp_key()
        code_fp = totp_code_fingerprint(fp_key, user, code)
        if step is None:
            with self._conn() as db:
                known = db.execute(
                    "SELECT 1 FROM totp_codes WHERE user = ? AND code_fp = ? LIMIT 1",
                    (user, code_fp),
                ).fetchone()
            return TotpResult.STALE if known else TotpResult.INVALID
        source = None if ip is None else totp_source_fingerprint(fp_key, user, ip, client_name)
        with self._transaction() as db:
            row = db.execute(
                "SELECT last_step FROM totp WHERE user = ? AND active_seed = ?" + self._lock_row,
                (user, blob),
            ).fetchone()
            if row is None:
                return TotpResult.INVALID  # disabled or re-enrolled since the seed was read
            (last_step,) = row
            if last_step is None or step > last_step:
                db.execute("UPDATE totp SET last_step = ? WHERE user = ?", (step, user))
                db.execute(
                    "INSERT INTO totp_codes (user, step, code_fp, origin, source, accepted) "
                    "VALUES (?, ?, ?, 'login', ?, ?) ON CONFLICT DO NOTHING",
                    (user, step, code_fp, source, now),
                )
                _prune_totp_codes(db, user)
                return TotpResult.OK
            used = db.execute(
                "SELECT id, origin, source FROM totp_codes WHERE user = ? AND step = ? "
                "AND code_fp = ?",
                (user, step, code_fp),
            ).fetchone()
            if used is None or source is None:
                return TotpResult.REPLAY
            code_id, origin, owner = used
            if owner is None and origin == "enrolment":
                db.execute(
                    "UPDATE totp_codes SET source = ? WHERE id = ? AND source IS NULL",
                    (source, code_id),
                )
                return TotpResult.OK
            if owner is not None and hmac.compare_digest(bytes(owner), source):
                return TotpResult.OK
            return TotpResult.REPLAY

    # --- app passwords ----------------------------------------------------------------

    def create_app_password(
        self,
        user: str,
        label: str,
        scopes: Sequence[str] | None,
        expires: float | None,
        now: float,
    ) -> NewAppPassword:
        """Generate, hash (scrypt, slow) and store a new app password; return it once.

        Raises ValueError (bad label/expiry), InvalidScopeError, AppPasswordLabelExists
        or TooManyAppPasswords, each naming what to change.
        """
        label = label.strip()
        if not label or len(label) > LABEL_MAX or not label.isprintable():
            raise ValueError(f"label must be 1-{LABEL_MAX} printable characters")
        canon_scopes = validate_scopes(list(scopes) if scopes else None)
        if expires is not None and expires <= now:
            raise ValueError("expiry must be in the future")
        password = generate_app_password()
        encoded = hash_app_password(password)
        with self._conn() as db:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM app_passwords WHERE user = ?", (user,)
            ).fetchone()
            if count >= MAX_APP_PASSWORDS_PER_USER:
                raise TooManyAppPasswords(
                    f"user {user!r} already has {count} app passwords (the limit is "
                    f"{MAX_APP_PASSWORDS_PER_USER}); revoke unused ones with "
                    f"`imap-gateway app-password revoke {user} LABEL`"
                )
            try:
                cur = db.execute(
                    "INSERT INTO app_passwords (user, label, hash, scopes, created, expires) "
                    "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                    (user, label, encoded, json.dumps(list(canon_scopes)), now, expires),
                )
                (new_id,) = cur.fetchone()
            except self._integrity_error:
                raise AppPasswordLabelExists(
                    f"user {user!r} already has an app password labelled {label!r}: choose "
                    f"another label or revoke it first (imap-gateway app-password revoke {user} "
                    f"{label!r})"
                ) from None
        info = AppPasswordInfo(
            id=int(new_id),
            user=user,
            label=label,
            scopes=canon_scopes,
            created=now,
            expires=expires,
            last_used=None,
            last_ip=None,
        )
        return NewAppPassword(password=password, info=info)

    def verify_app_password(self, user: str, secret: str, now: float) -> AppPasswordCheck:
        """Does ``secret`` match one of the user's app passwords? Slow: run in a thread.

        Cost: 0 scrypts if the secret is not app-password shaped; otherwise up to
        one per app password of the user (at most MAX_APP_PASSWORDS_PER_USER),
        active ones first, most recently used first, stopping at the first match.
        There is no per-password lookup id on purpose: any public part of the
        password would cut its entropy. Expired ones are checked last only to tell
        ``expired`` apart from ``no_match`` (a clearer log for the admin); they
        never verify. Does not write: call record_app_password_use on success.
        """
        canon = normalize_app_password(secret)
        if canon is None:
            return AppPasswordCheck(AppPasswordStatus.NO_MATCH)
        with self._conn() as db:
            rows = db.execute(
                f"SELECT {_APP_COLS}, hash FROM app_passwords WHERE user = ? ORDER BY "
                "(expires IS NOT NULL AND expires <= ?), last_used IS NULL, last_used DESC, id",
                (user, now),
            ).fetchall()
        checked = 0
        for row in rows:
            checked += 1
            if verify_app_password_hash(canon, row[-1]):
                info = _app_info(row[:-1])
                status = AppPasswordStatus.EXPIRED if info.is_expired(now) else AppPasswordStatus.OK
                return AppPasswordCheck(status, info, shaped=True, hashes_checked=checked)
        return AppPasswordCheck(AppPasswordStatus.NO_MATCH, shaped=True, hashes_checked=checked)

    def record_app_password_use(
        self, app_password_id: int, ip: str, now: float, client_name: str | None = None
    ) -> None:
        """Note a successful use: when, from which address, by which client (IMAP ID name,
        bounded like a device's)."""
        with self._conn() as db:
            db.execute(
                "UPDATE app_passwords SET last_used = ?, last_ip = ?, last_client = ? WHERE id = ?",
                (now, ip, device_client_name(client_name), app_password_id),
            )

    def list_app_passwords(self, user: str) -> list[AppPasswordInfo]:
        with self._conn() as db:
            rows = db.execute(
                f"SELECT {_APP_COLS} FROM app_passwords WHERE user = ? ORDER BY created, id",
                (user,),
            ).fetchall()
        return [_app_info(r) for r in rows]

    def app_passwords_of(self, users: Sequence[str]) -> dict[str, list[AppPasswordInfo]]:
        """``list_app_passwords`` of many users in a few queries (the gateway's revocation
        watcher asks for every user with a live app-password session each second; one
        query per user would be one database round trip per user on a server database).
        Every user asked for is in the answer, with [] when they have none."""
        out: dict[str, list[AppPasswordInfo]] = {user: [] for user in users}
        names = list(out)
        for start in range(0, len(names), _USERS_PER_QUERY):
            chunk = names[start:start + _USERS_PER_QUERY]
            marks = ", ".join("?" * len(chunk))
            with self._conn() as db:
                rows = db.execute(
                    f"SELECT {_APP_COLS} FROM app_passwords WHERE user IN ({marks}) "
                    "ORDER BY created, id",
                    chunk,
                ).fetchall()
            for row in rows:
                info = _app_info(row)
                out[info.user].append(info)
        return out

    def revoke_app_password(self, user: str, label: str) -> None:
        """Delete the app password; it stops verifying immediately (the label becomes free)."""
        with self._conn() as db:
            cur = db.execute(
                "DELETE FROM app_passwords WHERE user = ? AND label = ?", (user, label)
            )
        if cur.rowcount == 0:
            raise AppPasswordNotFound(
                f"user {user!r} has no app password labelled {label!r}; see "
                f"`imap-gateway app-password list {user}`"
            )

    # --- remembered devices -----------------------------------------------------------

    def remember(
        self, user: str, ip: str, client_name: str | None, ttl: float, now: float
    ) -> DeviceInfo:
        """Trust (user, network of ``ip``, client name) for ``ttl`` seconds from ``now``.

        Call after a login that passed TOTP *and* the backend password. Remembering
        the same device again extends it and keeps its id. Expired rows of the user
        are pruned here, and past MAX_DEVICES_PER_USER the least recently seen go.
        """
        if ttl <= 0:
            raise ValueError("remember-device ttl must be positive (0 means: do not remember)")
        network = device_network(ip)
        name = device_client_name(client_name)
        with self._transaction() as db:
            db.execute("DELETE FROM devices WHERE user = ? AND expires <= ?", (user, now))
            row = db.execute(
                "INSERT INTO devices (user, network, client_name, created, expires, last_seen) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user, network, client_name) DO UPDATE "
                "SET expires = excluded.expires, last_seen = excluded.last_seen "
                f"RETURNING {_DEV_COLS}",
                (user, network, name, now, now + ttl, now),
            ).fetchone()
            db.execute(
                "DELETE FROM devices WHERE user = ? AND id NOT IN (SELECT id FROM devices "
                "WHERE user = ? ORDER BY last_seen DESC, id DESC LIMIT ?)",
                (user, user, MAX_DEVICES_PER_USER),
            )
        return _device_info(row)

    def is_remembered(self, user: str, ip: str, client_name: str | None, now: float) -> bool:
        """Is this device trusted at ``now``? Marks it seen (for `devices list`) if so."""
        try:
            network = device_network(ip)
        except ValueError:
            return False
        with self._conn() as db:
            cur = db.execute(
                "UPDATE devices SET last_seen = ? WHERE user = ? AND network = ? "
                "AND client_name = ? AND expires > ?",
                (now, user, network, device_client_name(client_name), now),
            )
        return cur.rowcount > 0

    def list_devices(self, user: str) -> list[DeviceInfo]:
        """All remembered devices of the user, expired ones included (see is_expired)."""
        with self._conn() as db:
            rows = db.execute(
                f"SELECT {_DEV_COLS} FROM devices WHERE user = ? ORDER BY created, id", (user,)
            ).fetchall()
        return [_device_info(r) for r in rows]

    def forget(self, user: str, device_id: int | Literal["all"]) -> int:
        """Forget one device by id, or ``"all"`` of the user's. Returns how many went.

        Raises DeviceNotFound for an id the user does not have (ids of other
        users' devices are not found either).
        """
        with self._conn() as db:
            if device_id == "all":
                return db.execute("DELETE FROM devices WHERE user = ?", (user,)).rowcount
            cur = db.execute(
                "DELETE FROM devices WHERE user = ? AND id = ?", (user, int(device_id))
            )
        if cur.rowcount == 0:
            raise DeviceNotFound(
                f"user {user!r} has no remembered device {device_id}; see "
                f"`imap-gateway devices list {user}`"
            )
        return cur.rowcount


class SqliteCredentialStore(SqlCredentialStore):
    """CredentialStore on SQLite. Open once per process; share it between threads.

    ``create_key=True`` (admin commands, first start) creates a missing key file,
    unless the database already holds seeds: a new key could not decrypt them,
    so that case is a StoreKeyError whatever ``create_key`` says. Opening also
    test-decrypts one stored seed, so a wrong key fails at start, not at the
    first TOTP login.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        key_file: str | os.PathLike[str],
        *,
        create_key: bool = False,
    ) -> None:
        self.path = str(path)
        self.key_file = str(key_file)
        self._lock = threading.Lock()
        self._fp_key = None
        _create_private_file(Path(self.path))
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open credential database {self.path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode = WAL")
            migrate(self._db, self.path)
            self._cipher = self._open_cipher(create_key)
        except BaseException:
            self._db.close()
            raise

    def __repr__(self) -> str:
        return f"SqliteCredentialStore(path={self.path!r}, key_file={self.key_file!r})"

    def _where(self) -> str:
        return self.path

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock (autocommit: each statement is its own
        transaction)."""
        with self._lock:
            yield self._db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The lock and one write transaction: COMMIT at the end, ROLLBACK on any error.

        BEGIN IMMEDIATE takes SQLite's write lock up front, so a read-decide-write
        inside it is atomic against other threads and other processes alike.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


def open_store(
    path: str | os.PathLike[str], key_file: str | os.PathLike[str], *, create_key: bool = False
) -> SqliteCredentialStore:
    """Open (creating and migrating as needed) the SQLite credential store."""
    return SqliteCredentialStore(path, key_file, create_key=create_key)


def _create_private_file(path: Path) -> None:
    """Create the database file 0600 if missing: it holds hashes and encrypted seeds."""
    try:
        create_secret_file(path, b"")
    except OSError as exc:
        raise StoreError(f"cannot create credential database {path}: {exc.strerror}") from exc


def _prune_totp_codes(db: sqlite3.Connection, user: str) -> None:
    """Keep the user's newest MAX_TOTP_CODES_PER_USER accepted steps (inside a transaction)."""
    db.execute(
        "DELETE FROM totp_codes WHERE user = ? AND id NOT IN (SELECT id FROM totp_codes "
        "WHERE user = ? ORDER BY step DESC, id DESC LIMIT ?)",
        (user, user, MAX_TOTP_CODES_PER_USER),
    )


def _app_info(row: Sequence[object]) -> AppPasswordInfo:
    id_, user, label, scopes, created, expires, last_used, last_ip, last_client = row
    return AppPasswordInfo(
        id=int(id_),  # type: ignore[call-overload]
        user=str(user),
        label=str(label),
        scopes=tuple(json.loads(str(scopes))),
        created=float(created),  # type: ignore[arg-type]
        expires=None if expires is None else float(expires),  # type: ignore[arg-type]
        last_used=None if last_used is None else float(last_used),  # type: ignore[arg-type]
        last_ip=None if last_ip is None else str(last_ip),
        last_client=None if last_client is None else str(last_client),
    )


def _device_info(row: Sequence[object]) -> DeviceInfo:
    id_, user, network, client_name, created, expires, last_seen = row
    return DeviceInfo(
        id=int(id_),  # type: ignore[call-overload]
        user=str(user),
        network=str(network),
        client_name=str(client_name),
        created=float(created),  # type: ignore[arg-type]
        expires=float(expires),  # type: ignore[arg-type]
        last_seen=float(last_seen),  # type: ignore[arg-type]
    )
