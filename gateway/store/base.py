"""The credential store interface (``CredentialStore``) and the records it returns.

Rules of this module:

1. The interface speaks in decisions the login path needs (check this TOTP code,
   does this secret match an app password, is this device remembered), not in
   rows, so a server-database store can implement it with its own transactions.
   The maths lives in ``gateway.auth.factors`` and is shared by every backend.
2. Every method is a plain synchronous call, safe to run from several threads at
   once (the trio shell calls the slow ones through ``trio.to_thread.run_sync``).
3. Every time-dependent method takes ``now`` (epoch seconds); none reads a clock.
4. Records never hold a secret in their repr; app password hashes never leave the
   store at all.
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


@runtime_checkable
class CredentialStore(Protocol):
    """Where TOTP seeds, app passwords and remembered devices live.

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
    def record_app_password_use(self, app_password_id: int, ip: str, now: float) -> None: ...
    def list_app_passwords(self, user: str) -> list[AppPasswordInfo]: ...
    def revoke_app_password(self, user: str, label: str) -> None: ...

    # remembered devices
    def remember(
        self, user: str, ip: str, client_name: str | None, ttl: float, now: float
    ) -> DeviceInfo: ...
    def is_remembered(self, user: str, ip: str, client_name: str | None, now: float) -> bool: ...
    def list_devices(self, user: str) -> list[DeviceInfo]: ...
    def forget(self, user: str, device_id: int | Literal["all"]) -> int: ...

    def close(self) -> None: ...
