"""The anomaly event: what a detector found, about whom, with which evidence.

This module knows nothing about counting or state; it is the value the shell logs
(event ``anomaly``) and counts (metric label = ``kind`` only: user and IP go to logs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

AnomalyKind = Literal[
    "password_spray",
    "credential_stuffing",
    "distributed_brute_force",
    "new_network_for_user",
    "plaintext_login_attempt",
    "high_volume_fetch",
    "mass_delete",
]
ANOMALY_KINDS: tuple[str, ...] = AnomalyKind.__args__  # type: ignore[attr-defined]

AnomalyAction = Literal["logged", "tarpitted", "banned", "refused"]


@dataclass(frozen=True)
class Anomaly:
    """One detected anomaly, raised once per kind and subject per ``[anomaly] window``.

    ``evidence`` holds counts (and, for ``new_network_for_user``, the previously known
    networks); never a password, fingerprint or other secret. Distinct counts saturate at
    the state backend's per-key member cap, so read them as "at least".
    ``action`` says what the gateway did about it: only logged, tarpitted the failing
    login, banned the source, or refused the login before the backend saw the password
    (a sprayed password, an account tried from too many networks).
    """

    kind: AnomalyKind
    user: str | None = None
    ip: str | None = None
    subnet: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    action: AnomalyAction = "logged"
    #: The login path it was seen on ("imap", "web", or what Dovecot's auth policy
    #: reports: "pop3", "smtp"...), when it comes from logins; None for the rest.
    protocol: str | None = None

    def as_event(self) -> dict[str, Any]:
        """Fields for the structured ``anomaly`` log event."""
        return {
            "kind": self.kind,
            "user": self.user,
            "ip": self.ip,
            "subnet": self.subnet,
            "action": self.action,
            "protocol": self.protocol,
            **{f"evidence_{k}": v for k, v in self.evidence.items()},
        }
