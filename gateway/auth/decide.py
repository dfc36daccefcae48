"""What to do with one login: the factor decision the shell acts on.

Rules of this module:

1. ``decide`` reads no clock and does no network I/O; it asks the credential
   store (which may write: a consumed TOTP step, an app password's last use, a
   device's last-seen time). It is a plain sync call and may run scrypt, so the
   trio shell runs it with ``trio.to_thread.run_sync``.
2. It returns a plan, never raises for a bad credential: every refusal is a
   ``Deny`` with a machine-readable reason for logs and metrics. The reason never
   reaches the client (all failures look the same there). Store trouble
   (StoreError, e.g. a wrong key file) does raise: the shell must deny and log it.
3. Plans carry the password only in a ``repr=False`` field.

Order (from the issue):
  a. The secret matches an active app password of the user -> UseAppPassword
     (whatever the policy asks: an app password is itself a strong factor), unless
     no master user is configured, since the backend login needs it.
     Matches an expired one -> Deny("app_password_expired").
  b. Policy ``none`` -> ForwardPassword with the whole secret; ``app-password`` -> Deny.
  c. Policy ``totp``/``strong``: a good ``$123456`` suffix -> ForwardPassword with the
     suffix stripped (and remember the device if the policy says so). "Good" is the
     store's rule (``check_totp``): a fresh code, or the same code again from the
     client that used it (same address and IMAP ID name) while it is valid, or the
     code that confirmed enrolment at the first client's login. Else a remembered
     device -> ForwardPassword with the suffix stripped if it is a code of the user
     that is spent (``stale``: logged in with before; ``replay``: valid but used),
     since that is a mail client's saved ``password$123456``; with the *whole*
     secret otherwise (the digits may be part of the password). Else a code that was
     given -> Deny(totp_*); an app-password-shaped secret -> Deny.
  d. Still ``totp``/``strong``, device approval (``gateway.auth.approval``; only when
     the caller turns it on and the rule qualifies): a device the user approved ->
     ForwardPassword as a remembered device, which the shell remembers on success
     (``approval_id``); any other device -> NeedsApproval (the shell checks the
     password, notes the device only if it is right, and refuses with the approval
     ALERT either way). Else Deny(totp_required / totp_not_enrolled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.auth.approval import approved_device, qualifies
from gateway.auth.factors import TOTP_SUFFIX_SEPARATOR, TotpResult, split_totp_suffix
from gateway.store.base import AppPasswordStatus, CredentialStore, TotpStatus

MFA_NONE = "none"
MFA_TOTP = "totp"
MFA_APP_PASSWORD = "app-password"
MFA_STRONG = "strong"

# Factor names as the policy engine's LoginContext.factor spells them.
FACTOR_NONE = "none"
FACTOR_TOTP = "totp"
FACTOR_APP_PASSWORD = "app-password"
FACTOR_REMEMBERED_DEVICE = "remembered-device"

DENY_APP_PASSWORD_INVALID = "app_password_invalid"
DENY_APP_PASSWORD_EXPIRED = "app_password_expired"
DENY_APP_PASSWORD_REQUIRED = "app_password_required"
DENY_TOTP_INVALID = "totp_invalid"
DENY_TOTP_REPLAY = "totp_replay"
DENY_TOTP_STALE = "totp_stale"
DENY_TOTP_NOT_ENROLLED = "totp_not_enrolled"
DENY_TOTP_REQUIRED = "totp_required"
DENY_MASTER_USER_MISSING = "master_user_missing"
DENY_MFA_UNKNOWN = "mfa_requirement_unknown"

_TOTP_DENY = {
    TotpResult.INVALID: DENY_TOTP_INVALID,
    TotpResult.REPLAY: DENY_TOTP_REPLAY,
    TotpResult.STALE: DENY_TOTP_STALE,
    TotpResult.NOT_ENROLLED: DENY_TOTP_NOT_ENROLLED,
}


class AuthRequirement(Protocol):
    """What the policy asks of this login; ``gateway.policy``'s Decision fits."""

    @property
    def required_mfa(self) -> str: ...  # "none" | "totp" | "app-password" | "strong"
    @property
    def remember_device(self) -> float: ...  # seconds; 0 = do not remember
    @property
    def totp_suffix(self) -> str: ...  # "separator" | "plain"


@dataclass(frozen=True)
class Requirement:
    """A plain AuthRequirement (tests, admin tools, callers without a policy object)."""

    required_mfa: str = MFA_STRONG
    remember_device: float = 0.0
    totp_suffix: str = TOTP_SUFFIX_SEPARATOR


@dataclass(frozen=True)
class UseAppPassword:
    """Verified app password: log in to the backend as ``user`` via the master user."""

    user: str
    app_password_id: int
    scopes: tuple[str, ...]
    label: str = ""

    @property
    def factor(self) -> str:
        return FACTOR_APP_PASSWORD


@dataclass(frozen=True)
class ForwardPassword:
    """Send ``password`` to the backend as the user's own password.

    On backend success and ``remember`` the shell calls
    ``store.remember(user, ip, client_name, requirement.remember_device, now)``, and
    with ``approval_id`` set then removes that approved device (the approval is used).
    """

    user: str
    password: str = field(repr=False)
    totp_ok: bool
    remember: bool
    remembered_device: bool = False
    #: The user's approval (``store.list_pending_devices`` id) this login uses.
    approval_id: int | None = None

    @property
    def factor(self) -> str:
        if self.totp_ok:
            return FACTOR_TOTP
        return FACTOR_REMEMBERED_DEVICE if self.remembered_device else FACTOR_NONE


@dataclass(frozen=True)
class NeedsApproval:
    """A device that needs the user's approval: refuse with the approval ALERT.

    Before refusing, the shell has the backend check ``password`` (within
    ``gateway.auth.approval.check_deadline``) and, only if it is right, notes the device
    (``store.note_device``) for the user to approve. The answer is the same either way.
    """

    user: str
    password: str = field(repr=False)

    @property
    def factor(self) -> str:
        return FACTOR_NONE


@dataclass(frozen=True)
class Deny:
    """Refuse the login; ``reason`` is for logs and metrics only, never the client."""

    reason: str


AuthPlan = UseAppPassword | ForwardPassword | NeedsApproval | Deny


def decide(
    username: str,
    secret: str,
    client_ip: str,
    client_name: str | None,
    requirement: AuthRequirement,
    store: CredentialStore,
    now: float,
    master_user_configured: bool,
    *,
    device_approval: bool = False,
    second_factor_only: bool = False,
) -> AuthPlan:
    """Decide how this login proceeds (see the module docstring for the order).

    Cost: up to MAX_APP_PASSWORDS_PER_USER scrypts when ``secret`` is shaped like
    an app password, otherwise a few store queries. Side effects on the store: an
    accepted TOTP code's step is consumed (before the backend checks the password;
    a stolen code is then spent even if the password was wrong, which is the safe
    side) and recorded with this client (``client_ip`` + ``client_name``) so that
    client may reuse it while it is valid, an accepted app password's last use/IP is
    recorded, and a remembered device's last-seen time is updated. ``device_approval``
    turns step d on (the shell does when the web portal is; see gateway.auth.approval).

    ``second_factor_only``: the limiter locked the user out of this network for
    password-only logins (``LoginGate.second_factor_passes``). A policy of ``none`` is
    then decided as ``totp`` (a TOTP code or a remembered device still passes), and the
    shell refuses whatever plan has no factor beyond the password.
    """
    check = store.verify_app_password(username, secret, now)
    if check.status is AppPasswordStatus.OK and check.info is not None:
        if not master_user_configured:
            return Deny(DENY_MASTER_USER_MISSING)
        store.record_app_password_use(check.info.id, client_ip, now, client_name)
        return UseAppPassword(
            user=username,
            app_password_id=check.info.id,
            scopes=check.info.scopes,
            label=check.info.label,
        )
    if check.status is AppPasswordStatus.EXPIRED:
        return Deny(DENY_APP_PASSWORD_EXPIRED)

    mfa = requirement.required_mfa
    if mfa == MFA_NONE and second_factor_only:
        mfa = MFA_TOTP
    if mfa == MFA_NONE:
        return ForwardPassword(user=username, password=secret, totp_ok=False, remember=False)
    if mfa == MFA_APP_PASSWORD:
        return Deny(DENY_APP_PASSWORD_INVALID if check.shaped else DENY_APP_PASSWORD_REQUIRED)
    if mfa not in (MFA_TOTP, MFA_STRONG):
        return Deny(DENY_MFA_UNKNOWN)  # fail closed on a requirement we do not know

    split = split_totp_suffix(secret, requirement.totp_suffix)
    totp: TotpResult | None = None
    if split.code is not None:
        totp = store.check_totp(
            username, split.code, now, ip=client_ip, client_name=client_name
        )
        if totp is TotpResult.OK:
            return ForwardPassword(
                user=username,
                password=split.password,
                totp_ok=True,
                remember=requirement.remember_device > 0,
            )
    if store.is_remembered(username, client_ip, client_name, now):
        # The device is the second factor here; the suffix only decides which string
        # is the password. A spent code of this user is a saved "password$code" (the
        # backend would refuse it whole); unknown digits may be the password's own.
        spent = totp in (TotpResult.STALE, TotpResult.REPLAY)
        return ForwardPassword(
            user=username,
            password=split.password if spent else secret,
            totp_ok=False,
            remember=False,
            remembered_device=True,
        )
    if totp is not None:
        return Deny(_TOTP_DENY[totp])
    if check.shaped:
        return Deny(DENY_APP_PASSWORD_INVALID)  # looked like an app password, matched none
    if qualifies(requirement, device_approval):
        # No code, no app password, not remembered: only the user's approval can let this
        # device in. Whether the user exists or enrolled TOTP does not matter here, so the
        # answer does not tell.
        approval = approved_device(
            store.list_pending_devices(username), client_ip, client_name, now
        )
        if approval is None:
            return NeedsApproval(user=username, password=secret)
        return ForwardPassword(
            user=username,
            password=secret,
            totp_ok=False,
            remember=True,
            remembered_device=True,
            approval_id=approval.id,
        )
    if store.totp_status(username) is not TotpStatus.ACTIVE:
        return Deny(DENY_TOTP_NOT_ENROLLED)
    return Deny(DENY_TOTP_REQUIRED)
