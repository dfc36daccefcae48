"""The credential store interface (``CredentialStore``) and the records it returns.

Two kinds of data: what the login path decides with (TOTP, app passwords, remembered
devices), and what the self-service web portal needs (login history, recovery codes,
invites, devices waiting for approval, web sessions).

Rules of this module:

1. The interface speaks in decisions the login path needs (check this TOTP code,
   does this secret match an app password, is this device remembered), not in
   rows, so a server-database store can implement it with its own transactions.
   The maths lives in ``gateway.auth.factors`` and is shared by every backend.
2. Every method is a plain synchronous call, safe to run from several threads at
   once (the trio shell calls the slow ones through ``trio.to_thread.run_sync``).
3. Every time-dependent method takes ``now`` (epoch seconds); none reads a clock.
4. Records never hold a secret in their repr; app password hashes never leave the
   store at all. One-time secrets (app passwords, recovery codes, invite tokens, web
   session ids) exist in clear only in the value that creates them; the store keeps a
   hash (slow for what a person types, SHA-256 for random 256-bit tokens).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from gateway.auth.factors import TotpResult


class TotpStatus(enum.StrEnum):
    NONE = "none"  # never enrolled, or disabled
    PENDING = "pending"  # enroll() ran, verify_enrollment() not yet
    ACTIVE = "active"  # logins may use it (a pending re-enrollment may exist too)


@dataclass(frozen=True)
class TotpEnrollment:
    """What ``enroll`` returns once: the seed and its otpauth URI (both secret).

    Unpacks like the ``(secret, uri)`` tuple the issue describes.
    """

    user: str
    secret: str = field(repr=False)
    uri: str = field(repr=False)

    def __iter__(self) -> Iterator[str]:
        return iter((self.secret, self.uri))


@dataclass(frozen=True)
class AppPasswordInfo:
    """An app password's public facts (never the secret or its hash)."""

    id: int
    user: str
    label: str
    scopes: tuple[str, ...]
    created: float
    expires: float | None
    last_used: float | None
    last_ip: str | None
    #: The IMAP ID name the client sent at its last use ("" when it sent none).
    last_client: str | None = None

    def is_expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


@dataclass(frozen=True)
class NewAppPassword:
    """What ``create_app_password`` returns: the only time the password exists in clear."""

    password: str = field(repr=False)
    info: AppPasswordInfo


class AppPasswordStatus(enum.StrEnum):
    OK = "ok"  # matches an active app password
    EXPIRED = "expired"  # matches one that has expired: deny, with this reason
    NO_MATCH = "no_match"  # not one of the user's app passwords (maybe their real password)


@dataclass(frozen=True)
class AppPasswordCheck:
    status: AppPasswordStatus
    info: AppPasswordInfo | None = None
    shaped: bool = False  # the secret looked like an app password (4x5 chars)
    hashes_checked: int = 0  # scrypt calls this check cost (for metrics/tests)


@dataclass(frozen=True)
class DeviceInfo:
    """A remembered device: (user, network, client name) and how long it is trusted."""

    id: int
    user: str
    network: str
    client_name: str
    created: float
    expires: float
    last_seen: float

    def is_expired(self, now: float) -> bool:
        return now >= self.expires


# --- portal records ---------------------------------------------------------------

#: How long login history is kept unless configured otherwise (the gateway prunes it).
DEFAULT_LOGIN_HISTORY_RETENTION = 90 * 86400.0


class LoginResult(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


class LoginProtocol(enum.StrEnum):
    IMAP = "imap"
    WEB = "web"


@dataclass(frozen=True)
class LoginRecord:
    """One login attempt in the history a user sees in the portal.

    ``reason`` is the internal reason label (``ok``, ``totp_replay``, ...), never a
    secret; ``factor`` the factor the login presented (``none`` when it failed before
    one was established). ``id`` is 0 until the store has recorded it.
    """

    time: float
    user: str
    address: str
    client_name: str
    factor: str
    result: LoginResult
    protocol: LoginProtocol
    reason: str
    id: int = 0


@dataclass(frozen=True)
class NewRecoveryCodes:
    """What ``generate_recovery_codes`` returns: the only time the codes exist in clear."""

    user: str
    codes: tuple[str, ...] = field(repr=False)
    created: float


@dataclass(frozen=True)
class InviteInfo:
    """An invitation's public facts (never the token or its hash)."""

    id: int
    user: str
    created: float
    expires: float
    consumed: float | None

    def is_usable(self, now: float) -> bool:
        return self.consumed is None and now < self.expires


@dataclass(frozen=True)
class NewInvite:
    """What ``create_invite`` returns: the one-time token, shown once."""

    token: str = field(repr=False)
    info: InviteInfo


class DeviceApproval(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"


@dataclass(frozen=True)
class PendingDevice:
    """A (user, address, client name) seen logging in, for "approve this device"."""

    id: int
    user: str
    address: str
    client_name: str
    first_seen: float
    last_seen: float
    state: DeviceApproval
    #: Approved until then; None while pending, or approved with no end.
    approved_until: float | None

    def is_approved(self, now: float) -> bool:
        return self.state is DeviceApproval.APPROVED and (
            self.approved_until is None or now < self.approved_until
        )


@dataclass(frozen=True)
class WebSession:
    """A portal session. ``id`` is the row id (to list and revoke), not the cookie value."""

    id: int
    user: str
    created: float
    expires: float
    #: The second factor was checked in this session (not only the password).
    mfa_done: bool
    #: Keys the session's CSRF tokens; secret, so never in a repr.
    csrf_secret: str = field(repr=False)

    def is_expired(self, now: float) -> bool:
        return now >= self.expires


@dataclass(frozen=True)
class NewWebSession:
    """The opaque session id for the cookie, shown once; the store keeps its hash."""

    session_id: str = field(repr=False)
    session: WebSession


@runtime_checkable
class CredentialStore(Protocol):
    """Where TOTP seeds, app passwords, remembered devices and the portal's data live.

    ``SqliteCredentialStore`` is the embedded default; a server-database store for
    clusters implements the same methods. User names are compared exactly: the
    shell must pass the same canonical form it sends to the backend.
    """

    # TOTP
    def enroll(self, user: str, now: float) -> TotpEnrollment: ...
    def verify_enrollment(self, user: str, code: str, now: float) -> TotpResult: ...
    def disable(self, user: str) -> bool: ...
    def totp_status(self, user: str) -> TotpStatus: ...
    def check_totp(
        self,
        user: str,
        code: str,
        now: float,
        *,
        ip: str | None = None,
        client_name: str | None = None,
    ) -> TotpResult: ...

    # app passwords
    def create_app_password(
        self,
        user: str,
        label: str,
        scopes: Sequence[str] | None,
        expires: float | None,
        now: float,
    ) -> NewAppPassword: ...
    def verify_app_password(self, user: str, secret: str, now: float) -> AppPasswordCheck: ...
    def record_app_password_use(
        self, app_password_id: int, ip: str, now: float, client_name: str | None = None
    ) -> None: ...
    def list_app_passwords(self, user: str) -> list[AppPasswordInfo]: ...
    def app_passwords_of(self, users: Sequence[str]) -> dict[str, list[AppPasswordInfo]]: ...
    def revoke_app_password(self, user: str, label: str) -> None: ...

    # remembered devices
    def remember(
        self, user: str, ip: str, client_name: str | None, ttl: float, now: float
    ) -> DeviceInfo: ...
    def is_remembered(self, user: str, ip: str, client_name: str | None, now: float) -> bool: ...
    def list_devices(self, user: str) -> list[DeviceInfo]: ...
    def forget(self, user: str, device_id: int | Literal["all"]) -> int: ...

    # login history (portal: "recent logins"; the gateway prunes it periodically)
    def record_login(self, record: LoginRecord) -> None: ...
    def record_logins(self, records: Sequence[LoginRecord]) -> None: ...
    def recent_logins(self, user: str, limit: int = 50) -> list[LoginRecord]: ...
    def prune_login_history(self, now: float, retention: float) -> int: ...

    # recovery codes
    def generate_recovery_codes(self, user: str, now: float) -> NewRecoveryCodes: ...
    def use_recovery_code(self, user: str, code: str, now: float) -> bool: ...
    def recovery_codes_left(self, user: str) -> int: ...

    # invites
    def create_invite(self, user: str, ttl: float, now: float) -> NewInvite: ...
    def consume_invite(self, token: str, now: float) -> InviteInfo | None: ...
    def list_invites(self, user: str) -> list[InviteInfo]: ...

    # devices waiting for approval
    def note_device(
        self, user: str, address: str, client_name: str | None, now: float
    ) -> PendingDevice: ...
    def approve_device(
        self, user: str, device_id: int, until: float | None, now: float
    ) -> PendingDevice: ...
    def list_pending_devices(self, user: str) -> list[PendingDevice]: ...
    def remove_pending_device(self, user: str, device_id: int | Literal["all"]) -> int: ...

    # web sessions
    def create_web_session(
        self, user: str, ttl: float, now: float, *, mfa_done: bool = False
    ) -> NewWebSession: ...
    def get_web_session(self, session_id: str, now: float) -> WebSession | None: ...
    def complete_web_session_mfa(self, session_id: str, now: float) -> NewWebSession | None: ...
    def list_web_sessions(self, user: str, now: float) -> list[WebSession]: ...
    def end_web_session(self, session_id: str) -> bool: ...
    def revoke_web_session(self, user: str, web_session_id: int) -> bool: ...
    def revoke_web_sessions(self, user: str) -> int: ...

    # housekeeping: expired web sessions and invites (the gateway calls it periodically)
    def prune_expired(self, now: float) -> int: ...

    def close(self) -> None: ...
