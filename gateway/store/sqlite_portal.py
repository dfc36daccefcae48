"""The web portal's tables, mixed into ``SqlCredentialStore`` (SQLite and PostgreSQL).

Login history, recovery codes, invites, devices waiting for approval and web sessions:
data the login path does not decide with, kept in the same database file (one backup,
one set of file permissions) but in its own module so that ``sqlite.py`` stays about
logins.

Rules of this module:

1. Same as ``sqlite.py``: a connection is held only around SQL, never around scrypt;
   every check-and-consume (a recovery code, an invite) is one conditional UPDATE, so
   of two concurrent uses exactly one wins, across processes too.
2. Secrets in clear exist only in the values the create methods return. Recovery
   codes are scrypt-hashed (people type them: they must resist offline guessing);
   invite tokens and session ids are 256 random bits, stored as SHA-256 (a slow hash
   would add nothing and cost every page view).
3. Every table is bounded: history by the retention the gateway prunes with, recovery
   codes by RECOVERY_CODE_COUNT, pending devices per user, sessions and invites by
   their expiry (``prune_expired``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import secrets
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from gateway.auth.factors import (
    device_client_name,
    generate_recovery_codes,
    hash_recovery_codes,
    match_recovery_code,
    normalize_recovery_code,
)
from gateway.store.base import (
    DeviceApproval,
    InviteInfo,
    LoginProtocol,
    LoginRecord,
    LoginResult,
    NewInvite,
    NewRecoveryCodes,
    NewWebSession,
    PendingDevice,
    WebSession,
)
from gateway.store.errors import DeviceNotFound, StoreError

#: Bounds the rows one user's logins can add to pending_devices (least recently seen go).
MAX_PENDING_DEVICES_PER_USER = 50
#: History rows deleted per transaction while pruning: the lock is released in between,
#: so a large first prune does not stall logins.
PRUNE_BATCH = 5000
#: What recent_logins returns at most, whatever the caller asks.
MAX_HISTORY_LIST = 1000
#: Longer "tokens" are not ours: refused before hashing.
_TOKEN_MAX = 256
#: Bounds on history fields a client controls (user name, ID name) or the shell names.
_USER_MAX = 256
_LABEL_MAX = 64

_HISTORY_COLS = "id, time, user, address, client_name, factor, result, protocol, reason"
_INVITE_COLS = "id, user, created, expires, consumed"
_PENDING_COLS = "id, user, address, client_name, first_seen, last_seen, state, approved_until"
_SESSION_COLS = "id, user, created, expires, mfa_done, csrf_secret"


@functools.cache
def _dummy_recovery_hash() -> str:
    return hash_recovery_codes(generate_recovery_codes(1))[0]


def _token_hash(kind: bytes, token: str) -> bytes:
    # The kind keeps an invite token from ever matching a session id and vice versa.
    return hashlib.sha256(kind + b"\0" + token.encode("utf-8", "surrogateescape")).digest()


def _new_token() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


def _address(address: str) -> str:
    """An IP address in one canonical spelling (IPv4-mapped IPv6 as IPv4); else bounded text."""
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return address[:_LABEL_MAX]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


class SqlPortalTables:
    """The portal methods of ``CredentialStore``; ``SqlCredentialStore`` provides the
    connection (``_conn``: a statement or a few reads; ``_transaction``: atomic writes)."""

    # Provided by the backend's store class (annotations only: nothing here shadows them).
    _conn: Callable[[], contextlib.AbstractContextManager[Any]]
    _transaction: Callable[[], contextlib.AbstractContextManager[Any]]

    # --- login history ------------------------------------------------------------------

    def record_login(self, record: LoginRecord) -> None:
        """Append one attempt (see :meth:`record_logins`)."""
        self.record_logins([record])

    def record_logins(self, records: Sequence[LoginRecord]) -> None:
        """Append attempts, in one transaction (the gateway writes its sessions' attempts
        in batches: one commit, so one disk flush, a second rather than one a login).
        Fields are bounded, never refused: a history row must not fail a login. Unknown
        ``result``/``protocol`` values raise ValueError (a bug); database trouble (disk
        full, locked too long) raises StoreError, which the caller logs."""
        rows = [
            (
                record.time,
                record.user[:_USER_MAX],
                _address(record.address),
                device_client_name(record.client_name),
                record.factor[:_LABEL_MAX],
                LoginResult(record.result).value,
                LoginProtocol(record.protocol).value,
                record.reason[:_LABEL_MAX],
            )
            for record in records
        ]
        if not rows:
            return
        with _as_store_error("cannot record logins in the history"), \
                self._transaction() as db:
            db.executemany(
                "INSERT INTO login_history (time, user, address, client_name, factor, "
                "result, protocol, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def recent_logins(self, user: str, limit: int = 50) -> list[LoginRecord]:
        """The user's newest attempts first, at most ``limit`` (capped at MAX_HISTORY_LIST)."""
        limit = max(1, min(int(limit), MAX_HISTORY_LIST))
        with self._conn() as db:
            rows = db.execute(
                f"SELECT {_HISTORY_COLS} FROM login_history WHERE user = ? "
                "ORDER BY time DESC, id DESC LIMIT ?",
                (user, limit),
            ).fetchall()
        return [_login_record(r) for r in rows]

    def prune_login_history(self, now: float, retention: float) -> int:
        """Delete attempts older than ``retention`` seconds before ``now``; return how many.

        Meant to be called periodically by the gateway. Deletes in batches of
        PRUNE_BATCH, releasing the lock in between so logins keep being recorded.
        """
        if retention <= 0:
            raise ValueError("login history retention must be positive")
        cutoff = now - retention
        total = 0
        while True:
            with self._conn() as db:
                deleted = db.execute(
                    "DELETE FROM login_history WHERE id IN (SELECT id FROM login_history "
                    "WHERE time < ? LIMIT ?)",
                    (cutoff, PRUNE_BATCH),
                ).rowcount
            total += deleted
            if deleted < PRUNE_BATCH:
                return total

    # --- recovery codes -------------------------------------------------------------------

    def generate_recovery_codes(self, user: str, now: float) -> NewRecoveryCodes:
        """A new set of RECOVERY_CODE_COUNT codes; every earlier code of the user stops working.

        Costs one scrypt per code (about a third of a second for ten), outside the lock.
        """
        codes = generate_recovery_codes()
        hashes = hash_recovery_codes(codes)
        with self._transaction() as db:
            db.execute("DELETE FROM recovery_codes WHERE user = ?", (user,))
            db.executemany(
                "INSERT INTO recovery_codes (user, hash, created) VALUES (?, ?, ?)",
                [(user, h, now) for h in hashes],
            )
        return NewRecoveryCodes(user=user, codes=tuple(codes), created=now)

    def use_recovery_code(self, user: str, code: str, now: float) -> bool:
        """Consume one unused code of the user if ``code`` is one; True if it was.

        Cost: no scrypt for something not shaped like a code, else one (the set shares
        a salt). Each code works once, also when two requests race with it. The caller
        (the portal) must rate-limit attempts like logins.
        """
        canon = normalize_recovery_code(code)
        if canon is None:
            return False
        with self._conn() as db:
            rows = db.execute(
                "SELECT id, hash FROM recovery_codes WHERE user = ? AND used IS NULL ORDER BY id",
                (user,),
            ).fetchall()
        if not rows:
            # The same one scrypt as a user with codes: the time taken must not tell
            # whether this user has any left.
            match_recovery_code(canon, [_dummy_recovery_hash()])
            return False
        index = match_recovery_code(canon, [r[1] for r in rows])
        if index is None:
            return False
        with self._conn() as db:
            cur = db.execute(
                "UPDATE recovery_codes SET used = ? WHERE id = ? AND used IS NULL",
                (now, rows[index][0]),
            )
        return cur.rowcount == 1

    def recovery_codes_left(self, user: str) -> int:
        with self._conn() as db:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM recovery_codes WHERE user = ? AND used IS NULL", (user,)
            ).fetchone()
        return int(count)

    # --- invites ------------------------------------------------------------------------------

    def create_invite(self, user: str, ttl: float, now: float) -> NewInvite:
        """A one-time invitation token for ``user``, valid for ``ttl`` seconds; shown once."""
        if ttl <= 0:
            raise ValueError("invite lifetime must be positive")
        token = _new_token()
        with self._conn() as db:
            cur = db.execute(
                "INSERT INTO invites (token_hash, user, created, expires) VALUES (?, ?, ?, ?) "
                "RETURNING id",
                (_token_hash(b"invite", token), user, now, now + ttl),
            )
            (new_id,) = cur.fetchone()
        info = InviteInfo(
            id=int(new_id), user=user, created=now, expires=now + ttl, consumed=None
        )
        return NewInvite(token=token, info=info)

    def consume_invite(self, token: str, now: float) -> InviteInfo | None:
        """Use the invitation once: its facts, or None if unknown, expired or already used.

        One answer for all three on purpose: the portal shows the same page, so a
        token cannot be probed for which of them it is.
        """
        if not token or len(token) > _TOKEN_MAX:
            return None
        with self._conn() as db:
            row = db.execute(
                "UPDATE invites SET consumed = ? WHERE token_hash = ? AND consumed IS NULL "
                f"AND expires > ? RETURNING {_INVITE_COLS}",
                (now, _token_hash(b"invite", token), now),
            ).fetchone()
        return None if row is None else _invite_info(row)

    def list_invites(self, user: str) -> list[InviteInfo]:
        with self._conn() as db:
            rows = db.execute(
                f"SELECT {_INVITE_COLS} FROM invites WHERE user = ? ORDER BY created, id", (user,)
            ).fetchall()
        return [_invite_info(r) for r in rows]

    # --- devices waiting for approval --------------------------------------------------------

    def note_device(
        self, user: str, address: str, client_name: str | None, now: float
    ) -> PendingDevice:
        """Record that (user, exact address, client name) tried to log in; return its state.

        New devices start ``pending``; a known one only gets its last_seen updated, so
        an approval stays. Past MAX_PENDING_DEVICES_PER_USER the least recently seen
        pending rows go (approved ones are kept before pending ones).
        """
        addr = _address(address)
        name = device_client_name(client_name)
        with self._transaction() as db:
            row = db.execute(
                "INSERT INTO pending_devices (user, address, client_name, first_seen, last_seen, "
                "state) VALUES (?, ?, ?, ?, ?, 'pending') ON CONFLICT (user, address, client_name) "
                f"DO UPDATE SET last_seen = excluded.last_seen RETURNING {_PENDING_COLS}",
                (user, addr, name, now, now),
            ).fetchone()
            db.execute(
                "DELETE FROM pending_devices WHERE user = ? AND id NOT IN (SELECT id FROM "
                "pending_devices WHERE user = ? ORDER BY state = 'approved' DESC, last_seen DESC, "
                "id DESC LIMIT ?)",
                (user, user, MAX_PENDING_DEVICES_PER_USER),
            )
        return _pending_device(row)

    def approve_device(
        self, user: str, device_id: int, until: float | None, now: float
    ) -> PendingDevice:
        """Approve one of the user's devices until ``until`` (None: until removed).

        Raises DeviceNotFound for an id the user does not have, ValueError for an end
        that is not in the future.
        """
        if until is not None and until <= now:
            raise ValueError("an approval must end in the future (or give no end)")
        with self._conn() as db:
            row = db.execute(
                "UPDATE pending_devices SET state = 'approved', approved_until = ? "
                f"WHERE user = ? AND id = ? RETURNING {_PENDING_COLS}",
                (until, user, int(device_id)),
            ).fetchone()
        if row is None:
            raise DeviceNotFound(f"user {user!r} has no device {device_id} waiting for approval")
        return _pending_device(row)

    def list_pending_devices(self, user: str) -> list[PendingDevice]:
        """Every noted device of the user, pending and approved, oldest first."""
        with self._conn() as db:
            rows = db.execute(
                f"SELECT {_PENDING_COLS} FROM pending_devices WHERE user = ? "
                "ORDER BY first_seen, id",
                (user,),
            ).fetchall()
        return [_pending_device(r) for r in rows]

    def remove_pending_device(self, user: str, device_id: int | Literal["all"]) -> int:
        """Remove one noted device by id, or ``"all"`` of the user's; return how many went."""
        with self._conn() as db:
            if device_id == "all":
                return db.execute(
                    "DELETE FROM pending_devices WHERE user = ?", (user,)
                ).rowcount
            cur = db.execute(
                "DELETE FROM pending_devices WHERE user = ? AND id = ?", (user, int(device_id))
            )
        if cur.rowcount == 0:
            raise DeviceNotFound(f"user {user!r} has no device {device_id} waiting for approval")
        return cur.rowcount

    # --- web sessions ---------------------------------------------------------------------------

    def create_web_session(
        self, user: str, ttl: float, now: float, *, mfa_done: bool = False
    ) -> NewWebSession:
        """A new session with its own CSRF secret; the opaque id is returned once."""
        if ttl <= 0:
            raise ValueError("web session lifetime must be positive")
        session_id = _new_token()
        csrf = _new_token()
        with self._conn() as db:
            cur = db.execute(
                "INSERT INTO web_sessions (token_hash, user, created, expires, mfa_done, "
                "csrf_secret) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (_token_hash(b"web-session", session_id), user, now, now + ttl, int(mfa_done),
                 csrf),
            )
            (new_id,) = cur.fetchone()
        session = WebSession(
            id=int(new_id), user=user, created=now, expires=now + ttl,
            mfa_done=mfa_done, csrf_secret=csrf,
        )
        return NewWebSession(session_id=session_id, session=session)

    def get_web_session(self, session_id: str, now: float) -> WebSession | None:
        """The live session for a cookie value; None if unknown, ended or expired."""
        if not session_id or len(session_id) > _TOKEN_MAX:
            return None
        with self._conn() as db:
            row = db.execute(
                f"SELECT {_SESSION_COLS} FROM web_sessions WHERE token_hash = ? AND expires > ?",
                (_token_hash(b"web-session", session_id), now),
            ).fetchone()
        return None if row is None else _web_session(row)

    def complete_web_session_mfa(self, session_id: str, now: float) -> NewWebSession | None:
        """Mark the second factor done and give the session a new id (the old one stops).

        A new id at the privilege change: an id planted or seen before the second
        factor (session fixation) is worth nothing after it. None if the session is
        unknown or expired.
        """
        if not session_id or len(session_id) > _TOKEN_MAX:
            return None
        new_id = _new_token()
        with self._conn() as db:
            row = db.execute(
                "UPDATE web_sessions SET token_hash = ?, mfa_done = 1 WHERE token_hash = ? "
                f"AND expires > ? RETURNING {_SESSION_COLS}",
                (_token_hash(b"web-session", new_id), _token_hash(b"web-session", session_id),
                 now),
            ).fetchone()
        return None if row is None else NewWebSession(session_id=new_id, session=_web_session(row))

    def list_web_sessions(self, user: str, now: float) -> list[WebSession]:
        """The user's live sessions, oldest first (for "sign out other sessions")."""
        with self._conn() as db:
            rows = db.execute(
                f"SELECT {_SESSION_COLS} FROM web_sessions WHERE user = ? AND expires > ? "
                "ORDER BY created, id",
                (user, now),
            ).fetchall()
        return [_web_session(r) for r in rows]

    def end_web_session(self, session_id: str) -> bool:
        """Log out: forget the session of this cookie value. True if there was one."""
        if not session_id or len(session_id) > _TOKEN_MAX:
            return False
        with self._conn() as db:
            return db.execute(
                "DELETE FROM web_sessions WHERE token_hash = ?",
                (_token_hash(b"web-session", session_id),),
            ).rowcount > 0

    def revoke_web_session(self, user: str, web_session_id: int) -> bool:
        """End one of the user's sessions by its listed id. True if it existed."""
        with self._conn() as db:
            return db.execute(
                "DELETE FROM web_sessions WHERE user = ? AND id = ?", (user, int(web_session_id))
            ).rowcount > 0

    def revoke_web_sessions(self, user: str) -> int:
        """End every session of the user (password change, lost device); return how many."""
        with self._conn() as db:
            return db.execute("DELETE FROM web_sessions WHERE user = ?", (user,)).rowcount

    # --- housekeeping ----------------------------------------------------------------------------

    def prune_expired(self, now: float) -> int:
        """Delete expired web sessions and invites; return how many rows went."""
        with self._transaction() as db:
            sessions = db.execute("DELETE FROM web_sessions WHERE expires <= ?", (now,)).rowcount
            invites = db.execute("DELETE FROM invites WHERE expires <= ?", (now,)).rowcount
        return sessions + invites


@contextlib.contextmanager
def _as_store_error(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        # (PostgreSQL's connection raises StoreError itself.)
        raise StoreError(f"{what}: {exc}") from exc


def _login_record(row: Sequence[object]) -> LoginRecord:
    id_, time_, user, address, client_name, factor, result, protocol, reason = row
    return LoginRecord(
        id=int(id_),  # type: ignore[call-overload]
        time=float(time_),  # type: ignore[arg-type]
        user=str(user),
        address=str(address),
        client_name=str(client_name),
        factor=str(factor),
        result=LoginResult(str(result)),
        protocol=LoginProtocol(str(protocol)),
        reason=str(reason),
    )


def _invite_info(row: Sequence[object]) -> InviteInfo:
    id_, user, created, expires, consumed = row
    return InviteInfo(
        id=int(id_),  # type: ignore[call-overload]
        user=str(user),
        created=float(created),  # type: ignore[arg-type]
        expires=float(expires),  # type: ignore[arg-type]
        consumed=None if consumed is None else float(consumed),  # type: ignore[arg-type]
    )


def _pending_device(row: Sequence[object]) -> PendingDevice:
    id_, user, address, client_name, first_seen, last_seen, state, approved_until = row
    return PendingDevice(
        id=int(id_),  # type: ignore[call-overload]
        user=str(user),
        address=str(address),
        client_name=str(client_name),
        first_seen=float(first_seen),  # type: ignore[arg-type]
        last_seen=float(last_seen),  # type: ignore[arg-type]
        state=DeviceApproval(str(state)),
        approved_until=None if approved_until is None else float(approved_until),  # type: ignore[arg-type]
    )


def _web_session(row: Sequence[object]) -> WebSession:
    id_, user, created, expires, mfa_done, csrf_secret = row
    return WebSession(
        id=int(id_),  # type: ignore[call-overload]
        user=str(user),
        created=float(created),  # type: ignore[arg-type]
        expires=float(expires),  # type: ignore[arg-type]
        mfa_done=bool(mfa_done),
        csrf_secret=str(csrf_secret),
    )
