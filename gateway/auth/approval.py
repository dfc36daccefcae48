"""Device approval: a password-only login from a device the policy does not accept yet.

Rules of this module:

1. Pure functions and constants: no I/O, no trio, no clock reads (``now`` is passed in).
   ``decide`` uses them to choose the plan, the trio shell (``gateway.proxy.login``) to
   bound the password check, the admin CLI and the web portal to show and approve.
2. What the client is told depends only on the configuration and on what the client
   itself sent (the user name, the shape of the secret, its address): never on whether
   the password, a code or an app password was right. So a right and a wrong password
   get the same bytes after the same delay, and both count as a failure for the limiter
   (a right one that did not would answer sooner once the tarpit grows).

Which logins qualify (:func:`qualifies`, checked by ``decide`` after the TOTP code and
the remembered devices had their say):

- device approval is on: ``[web] address`` is set, since the portal is where a user
  approves (``imap-gateway devices approve`` works too). Off, nothing here changes a
  login: the refusal stays the plain ``NO [AUTHENTICATIONFAILED]``;
- the first matching policy rule allows the login with ``mfa = "totp"`` or ``"strong"``
  *and* ``remember_device`` > 0: an approval becomes a remembered device for that long,
  and a rule without ``remember_device`` has nothing to turn it into. ``"none"`` needs
  no approval; ``"app-password"`` wants an app password on every device, so an approved
  device must not stand in for one. Deny rules refuse before any of this;
- the secret carries no TOTP code (split by the rule's ``totp_suffix``) and is not shaped
  like an app password: those logins are answered as before, whatever the code's or the
  app password's fate (the answer must not tell whether it was right);
- the device (network and IMAP ID name, as for remembered devices) is not remembered.

Unknown users, users without TOTP and users with it all get the same answer, so the
ALERT does not tell who exists or who enrolled. It does tell a client that (user,
address) falls under a qualifying rule: with one catch-all rule (``users = ["*"]``) that
is true of every name; a qualifying rule that names some users only lets a client learn
that a name is one of them. Put such rules after a catch-all that does not qualify, or
leave ``remember_device`` off there, if that matters.

What the shell does with a qualifying login (``NeedsApproval``):

1. The backend checks the password, and must answer by :func:`check_deadline` (inside
   the uniform failure delay): a backend that delays its refusals (Dovecot's own
   ``auth_failure_delay``, 2 s by default) would otherwise answer a wrong password later
   than a right one. An unfinished check counts as "not known to be right".
2. Only a right password records the device (``store.note_device``: user, exact address,
   IMAP ID name, first and last seen); a wrong one records nothing, so guessers cannot
   fill the user's list.
3. Either way the client gets ``NO [ALERT]`` + :func:`alert_text` after the uniform delay.

Once approved (``store.approve_device``, from the portal or the CLI; the approval may
carry an end, see :func:`approval_until`), the device's next password-only login that
matches it (:func:`approved_device`: same network as remembered devices use, same IMAP ID
name) is forwarded as a remembered device; when the backend accepts the password the
shell remembers the device for the matching rule's ``remember_device`` and removes the
approval, which is thereby used once. When the remembered device expires, the next login
asks for approval again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from gateway.auth.factors import device_client_name, device_network
from gateway.store.base import PendingDevice

MFA_NEEDING_APPROVAL = frozenset({"totp", "strong"})

#: The ALERT text (RFC 3501 §7.1: the client must show it to the user). Both variants
#: are the same whatever the password was; only [web] public_url picks one.
ALERT_TEXT = "New device: approve it at {url} after signing in with your second factor"
ALERT_TEXT_NO_URL = (
    "New device: approve it in the web portal after signing in with your second factor"
)

#: How long an approval given with ``imap-gateway devices approve`` waits for the
#: device's next login (the portal may pass its own end). A mail client retries within
#: minutes to hours; an approval nobody used should not stay open for good.
DEFAULT_APPROVAL_VALIDITY = 24 * 3600.0

#: The most of the uniform failure delay kept free after the password check, for what
#: every outcome does next (a login history row, the limiter) before the answer is due.
CHECK_MARGIN = 0.05


class Requirement(Protocol):
    """What the first matching rule asks (``gateway.auth.decide.AuthRequirement`` fits)."""

    @property
    def required_mfa(self) -> str: ...
    @property
    def remember_device(self) -> float: ...


def qualifies(requirement: Requirement, enabled: bool) -> bool:
    """Can the rule behind ``requirement`` lead to a device approval (module docstring)?

    The secret's shape and the remembered devices are ``decide``'s part of the check.
    """
    return (
        enabled
        and requirement.required_mfa in MFA_NEEDING_APPROVAL
        and requirement.remember_device > 0
    )


def alert_text(public_url: str) -> str:
    """The text after ``NO [ALERT]`` for a login that needs an approval.

    ``public_url`` is ``[web] public_url`` ("" when unset: the portal is then named, not
    linked). It goes into an IMAP response line, so it must be printable ASCII without
    spaces; the config validates that, and a bad one here is a ValueError, never a
    malformed response.
    """
    if not public_url:
        return ALERT_TEXT_NO_URL
    if not public_url.isascii() or not all(c.isprintable() and not c.isspace()
                                           for c in public_url):
        raise ValueError(f"public_url must be printable ASCII without spaces: {public_url!r}")
    return ALERT_TEXT.format(url=public_url)


def approved_device(
    devices: Iterable[PendingDevice], ip: str, client_name: str | None, now: float
) -> PendingDevice | None:
    """The approval (still valid at ``now``) that the device at ``ip`` named ``client_name``
    may use, else None.

    A noted device keeps its exact address, but it is matched by network (the /24 or /64
    of ``gateway.auth.factors.device_network``) like a remembered device: a phone's
    address often changes within its network between the login that asked and the one
    after the approval. The IMAP ID name must be equal. Of several, the most recently
    seen wins.
    """
    try:
        network = device_network(ip)
    except ValueError:
        return None
    name = device_client_name(client_name)
    best: PendingDevice | None = None
    for device in devices:
        if not device.is_approved(now) or device.client_name != name:
            continue
        try:
            if device_network(device.address) != network:
                continue
        except ValueError:
            continue
        if best is None or device.last_seen > best.last_seen:
            best = device
    return best


def approval_until(now: float, validity: float = DEFAULT_APPROVAL_VALIDITY) -> float:
    """The end to give ``store.approve_device``: the approval waits this long to be used."""
    if validity <= 0:
        raise ValueError("an approval must stay valid for some time (validity > 0)")
    return now + validity


def check_deadline(started: float, failure_delay: float, login_timeout: float) -> float:
    """When the backend's password check for an approval must have answered.

    ``started`` is when the login began to be decided (the uniform delay counts from
    it), on the caller's clock. The check ends a little before the delay does (at most
    CHECK_MARGIN, a tenth of the delay if that is less), so what follows it takes the
    same time whether it finished or was cut short. With ``failure_delay`` 0 the operator
    asked for no uniform timing: the backend's own ``login_timeout`` bounds the check.
    """
    if failure_delay <= 0:
        return started + login_timeout
    return started + failure_delay - min(CHECK_MARGIN, failure_delay / 10)


def ago(seconds: float) -> str:
    """``"just now"``, ``"2 min ago"``, ``"3 h ago"``, ``"1 day ago"``, ``"5 days ago"``."""
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    days = int(seconds // 86400)
    return f"{days} day ago" if days == 1 else f"{days} days ago"


def describe_device(device: PendingDevice, now: float) -> str:
    """``"iPhone Mail from 203.0.113.9, 2 min ago"`` (last seen), for lists and pages.

    The client name is what the client sent in IMAP ID: shown, never trusted.
    """
    name = device.client_name or "Unnamed mail client"
    return f"{name} from {device.address}, {ago(max(0.0, now - device.last_seen))}"
