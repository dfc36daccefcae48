"""Decision values the limiter hands to the shell, and the ``Ban`` record.

Every decision carries a ``reason`` (a short stable token for logs, metrics and
``imap-gateway policy explain``); the client never sees it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from gateway.anomaly.model import Anomaly

BanScope = Literal["ip", "subnet"]
BanSource = Literal["auto", "admin"]


class BanFormatError(ValueError):
    """A stored ban record could not be read (corrupt or written by an incompatible version)."""


@dataclass(frozen=True)
class Ban:
    """A ban of one IP (``scope="ip"``, network is a /32 or /128) or of a subnet.

    ``created`` and ``expires`` are on the clock the limiter was given (wall-clock seconds
    in production: instances sharing Redis must agree on it).
    """

    scope: BanScope
    network: str
    reason: str
    created: float
    expires: float
    source: BanSource = "auto"

    def active(self, now: float) -> bool:
        return now < self.expires

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Ban:
        try:
            d = json.loads(text)
            return cls(
                scope=d["scope"], network=d["network"], reason=d["reason"],
                created=float(d["created"]), expires=float(d["expires"]), source=d["source"],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BanFormatError(f"unreadable ban record ({exc.__class__.__name__}: {exc})") from None


@dataclass(frozen=True)
class ConnectionTicket:
    """Proof that a connection was admitted by ``ConnectionTracker``; give it back on close."""

    ip: str
    serial: int
    exempt: bool = False


@dataclass(frozen=True)
class ConnectDecision:
    """May this client connect? ``ban`` is the ban that refused it, if any.

    ``ticket`` is set only by ``ConnectionTracker.try_open`` when it admits a connection.
    """

    allowed: bool
    reason: str
    ban: Ban | None = None
    ticket: ConnectionTicket | None = None


@dataclass(frozen=True)
class LoginGate:
    """May this user try to log in from this IP (asked before verifying credentials)?

    ``second_factor_passes``: a refusal that a login with more than a password still
    passes (an app password, a TOTP code, a remembered or approved device): the lockouts
    of a user from unfamiliar networks. The shell then decides the factor and refuses only
    a password-only login, without asking the backend. A ban is never such a refusal.
    ``anomalies``: what this question raised (a spray or brute force seen at the gate).
    """

    allowed: bool
    reason: str
    second_factor_passes: bool = False
    anomalies: tuple[Anomaly, ...] = ()


@dataclass(frozen=True)
class FailureOutcome:
    """What to do after a failed login.

    ``tarpit_seconds``: delay the NO by this long (0 = answer now). ``duplicate`` is True when
    the same wrong password was already counted for this user in the window (a phone
    retrying an old password): it did not count again.
    """

    tarpit_seconds: float
    new_bans: tuple[Ban, ...] = ()
    anomalies: tuple[Anomaly, ...] = ()
    duplicate: bool = False
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SuccessOutcome:
    """After a successful login: anomalies raised (e.g. ``new_network_for_user``)."""

    anomalies: tuple[Anomaly, ...] = ()
    new_network: bool = False
