"""Admin commands for TOTP, app passwords, remembered devices and invites, as plain functions.

Each returns ``(exit_code, output)`` where output is text for a terminal or, with
``as_json=True``, a JSON-ready dict; ``gateway/cli.py`` wires them to argparse and
prints. Exit codes: 0 done, 1 the operation failed (unknown label, wrong code,
store/key trouble), 2 bad arguments (duration, scope, label). Errors with
``as_json`` are ``{"error": "..."}``.

Secrets appear in output exactly three times, on purpose: ``totp enroll`` (seed, URI,
QR code), ``app-password create`` (the password) and ``users invite`` (the one-time
link or token). Listings never show them.
``now`` defaults to the wall clock here, at the edge, and nowhere deeper.
"""

from __future__ import annotations

import io
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal

import qrcode

from gateway import durations
from gateway.auth.approval import DEFAULT_APPROVAL_VALIDITY, approval_until, describe_device
from gateway.auth.factors import TOTP_ISSUER, InvalidScopeError, TotpResult, totp_uri
from gateway.cliformat import rfc3339, table
from gateway.store.base import CredentialStore
from gateway.store.errors import (
    AppPasswordLabelExists,
    AppPasswordNotFound,
    DeviceNotFound,
    StoreError,
    TooManyAppPasswords,
)

Output = str | dict[str, Any]
Result = tuple[int, Output]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

def parse_duration(text: str) -> float:
    """``"90d"``, ``"12h"``, ``"2w"``, ``"1d12h"``, ``"45m"``, ``"30s"`` -> seconds.

    Raises ValueError with the accepted forms; a bare number is refused because
    "90" could mean days or seconds.
    """
    try:
        return durations.parse_duration(text.lower())
    except durations.DurationError:
        raise ValueError(
            f"bad duration {text!r}: use a number with a unit s/m/h/d/w, e.g. 90d, 12h, 1d12h"
        ) from None


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _fail(code: int, message: str, as_json: bool) -> Result:
    return code, ({"error": message} if as_json else message)


# --- totp ----------------------------------------------------------------------------


def qr_text(data: str) -> str:
    """A QR code of ``data`` drawn with block characters, for a terminal."""
    qr = qrcode.QRCode(border=2)
    qr.add_data(data)
    qr.make(fit=True)
    out = io.StringIO()
    qr.print_ascii(out=out, invert=True)
    return out.getvalue()


def totp_enroll(
    store: CredentialStore, user: str, *, as_json: bool = False, now: float | None = None,
    issuer: str = TOTP_ISSUER,
) -> Result:
    """`imap-gateway totp enroll USER [--json]`: new pending seed, shown once.

    ``issuer`` is ``[store] totp_issuer``, the name the authenticator app shows.
    """
    try:
        enrollment = store.enroll(user, _now(now))
    except StoreError as exc:
        return _fail(EXIT_FAILED, str(exc), as_json)
    enrollment = replace(enrollment, uri=totp_uri(enrollment.secret, user, issuer))
    if as_json:
        return EXIT_OK, {"user": user, "secret": enrollment.secret, "uri": enrollment.uri}
    text = (
        f"TOTP enrollment for {user} (pending until confirmed).\n"
        "Scan this QR code with an authenticator app:\n\n"
        f"{qr_text(enrollment.uri)}\n"
        f"otpauth URI: {enrollment.uri}\n"
        f"Secret for manual entry: {enrollment.secret}\n\n"
        f"Then confirm with a current code: imap-gateway totp verify {user} CODE\n"
        "Anyone who sees this secret can generate codes: clear the screen afterwards."
    )
    return EXIT_OK, text


def totp_verify(
    store: CredentialStore, user: str, code: str, *, as_json: bool = False, now: float | None = None
) -> Result:
    """`imap-gateway totp verify USER CODE`: activate the pending seed."""
    try:
        result = store.verify_enrollment(user, code.strip().replace(" ", ""), _now(now))
    except StoreError as exc:
        return _fail(EXIT_FAILED, str(exc), as_json)
    if result is TotpResult.OK:
        msg = f"TOTP is now active for {user}."
        return EXIT_OK, ({"user": user, "status": "active"} if as_json else msg)
    if result is TotpResult.NOT_ENROLLED:
        msg = f"{user} has no pending TOTP enrollment: run `imap-gateway totp enroll {user}` first."
    else:
        msg = (
            f"The code does not match {user}'s pending TOTP seed: check the phone's clock and "
            "enter the code currently shown (6 digits)."
        )
    return _fail(EXIT_FAILED, msg, as_json)


def totp_disable(store: CredentialStore, user: str, *, as_json: bool = False) -> Result:
    """`imap-gateway totp disable USER`: remove active and pending seeds."""
    try:
        removed = store.disable(user)
    except StoreError as exc:
        return _fail(EXIT_FAILED, str(exc), as_json)
    if not removed:
        return _fail(EXIT_FAILED, f"{user} has no TOTP enrollment.", as_json)
    msg = f"TOTP disabled for {user}."
    return EXIT_OK, ({"user": user, "status": "disabled"} if as_json else msg)


# --- app passwords ---------------------------------------------------------------------


def app_password_create(
    store: CredentialStore,
    user: str,
    label: str,
    *,
    scopes: list[str] | None = None,
    mailboxes: str | list[str] | None = None,
    expires: str | None = None,
    as_json: bool = False,
    now: float | None = None,
) -> Result:
    """`imap-gateway app-password create USER --label L [--scope read-only]
    [--mailboxes INBOX,Archive/*] [--expires 90d] [--json]`.

    ``mailboxes`` (a comma list or a list of names) becomes one ``mailboxes=`` scope.
    """
    t = _now(now)
    all_scopes = list(scopes or [])
    if mailboxes:
        names = mailboxes if isinstance(mailboxes, list) else [mailboxes]
        all_scopes.append("mailboxes=" + ",".join(names))
    try:
        expires_at = None if not expires else t + parse_duration(expires)
        created = store.create_app_password(user, label, all_scopes, expires_at, t)
    except (InvalidScopeError, ValueError) as exc:
        return _fail(EXIT_USAGE, str(exc), as_json)
    except (AppPasswordLabelExists, TooManyAppPasswords, StoreError) as exc:
        return _fail(EXIT_FAILED, str(exc), as_json)
    info = created.info
    if as_json:
        return EXIT_OK, {
            "user": user,
            "password": created.password,
            "label": info.label,
            "scopes": list(info.scopes),
            "expires": rfc3339(info.expires),
        }
    text = (
        f"App password for {user} ({info.label!r}, scopes: {', '.join(info.scopes)}, "
        f"expires: {_fmt_time(info.expires) if info.expires else 'never'}):\n\n"
        f"    {created.password}\n\n"
        "It is shown only this once: enter it in the mail client now (dashes optional)."
    )
    return EXIT_OK, text


def app_password_list(
    store: CredentialStore, user: str, *, as_json: bool = False, now: float | None = None
) -> Result:
    """`imap-gateway app-password list USER [--json]`: metadata only, never secrets."""
    t = _now(now)
    try:
        items = store.list_app_passwords(user)
    except StoreError as exc:
        return _fail(EXIT_FAILED, str(exc), as_json)
    if as_json:
        return EXIT_OK, {
            "user": user,
            "app_passwords": [
                {
                    "label": i.label,
                    "scopes": list(i.scopes),
                    "created": rfc3339(i.created),
                    "last_used": rfc3339(i.last_used),
                    "last_ip": i.last_ip,
                    "last_client": i.last_client,
                    "expires": rfc3339(i.expires),
                    "expired": i.is_expired(t),
                }
                for i in items
            ],
        }
    if not items:
        return EXIT_OK, f"{user} has no app passwords."
    rows = []
    for i in items:
        exp = "never" if i.expires is None else _fmt_time(i.expires)
        if i.is_expired(t):
            exp += " (expired)"
        rows.append([i.label, ",".join(i.scopes), _fmt_time(i.created), _fmt_time(i.last_used),
                     i.last_ip or "-", exp])
    return EXIT_OK, table(["LABEL", "SCOPES", "CREATED", "LAST USED", "LAST IP", "EXPIRES"], rows)


def app_password_revoke(
    store: CredentialStore, user: str, label: str, *, as_json: bool = False
) -> Result:
    """`imap-gateway app-password revoke USER LABEL`: stops working immediately."""
    try:
        store.revoke_app_password(user, label)
    except AppPasswordNotFound as exc:
        return _fail(EXIT_FAILED, str(exc), as_json)
    except StoreError as exc:
        return _fail(EXIT_FAILED, str(exc), as_json)
    msg = f"Revoked app password {label!r} of {user}."
    return EXIT_OK, ({"user": user, "revoked": label} if as_json else msg)


# --- remembered devices --------------------------------------------------------------------


def devices_list(
    store: CredentialStore, user: str, *, as_json: bool = False, now: float | None = None
) -> Result:
    """`imap-gateway devices list USER [--json]`."""
    t = _now(now)
    try:
        devices = store.list_devices(user)
    except StoreError as exc:
        return _fail(EXIT_FAILED, str(exc), as_json)
    if as_json:
        return EXIT_OK, {
            "user": user,
            "devices": [
                {
                    "id": d.id,
                    "network": d.network,
                    "client_name": d.client_name,
                    "created": rfc3339(d.created),
                    "last_seen": rfc3339(d.last_seen),
                    "expires": rfc3339(d.expires),
                    "expired": d.is_expired(t),
                }
                for d in devices
            ],
        }
    if not devices:
        return EXIT_OK, f"{user} has no remembered devices."
    rows = [[str(d.id), d.network, d.client_name or "-", _fmt_time(d.last_seen),
             _fmt_time(d.expires) + (" (expired)" if d.is_expired(t) else "")]
            for d in devices]
    return EXIT_OK, table(["ID", "NETWORK", "CLIENT", "LAST SEEN", "EXPIRES"], rows, right=[0])


def devices_forget(
    store: CredentialStore,
    user: str,
    device_id: int | str | None = None,
    *,
    all_devices: bool = False,
    as_json: bool = False,
) -> Result:
    """`imap-gateway devices forget USER [ID|--all]`: the next login needs TOTP again."""
    target: int | Literal["all"]
    if all_devices or device_id == "all":
        if device_id not in (None, "all"):
            return _fail(EXIT_USAGE, "give either a device ID or --all, not both", as_json)
        target = "all"
    elif device_id is None:
        return _fail(
            EXIT_USAGE,
            f"give a device ID (see `imap-gateway devices list {user}`) or --all",
            as_json,
        )
    else:
        try:
            target = int(device_id)
        except ValueError:
            return _fail(EXIT_USAGE, f"device ID must be a number, got {device_id!r}", as_json)
    try:
        count = store.forget(user, target)
    except DeviceNotFound as exc:
        return _fail(EXIT_FAILED, str(exc), as_json)
    except StoreError as exc:
        return _fail(EXIT_FAILED, str(exc), as_json)
    msg = f"Forgot {count} remembered device(s) of {user}."
    return EXIT_OK, ({"user": user, "forgotten": count} if as_json else msg)


# --- devices waiting for approval ------------------------------------------------------------


def devices_pending(
    store: CredentialStore, user: str, *, as_json: bool = False, now: float | None = None
) -> Result:
    """`imap-gateway devices pending USER [--json]`: devices that asked for approval.

    Pending ones and approved ones not used yet (an approved device that logs in
    becomes a remembered device and leaves this list).
    """
    t = _now(now)
    try:
        devices = store.list_pending_devices(user)
    except StoreError as exc:
        return _fail(EXIT_FAILED, str(exc), as_json)
    if as_json:
        return EXIT_OK, {
            "user": user,
            "devices": [
                {
                    "id": d.id,
                    "address": d.address,
                    "client_name": d.client_name,
                    "first_seen": rfc3339(d.first_seen),
                    "last_seen": rfc3339(d.last_seen),
                    "state": d.state.value,
                    "approved_until": rfc3339(d.approved_until),
                    "approved": d.is_approved(t),
                    "description": describe_device(d, t),
                }
                for d in devices
            ],
        }
    if not devices:
        return EXIT_OK, f"{user} has no devices waiting for approval."
    rows = []
    for d in devices:
        state = d.state.value
        if d.state.value == "approved" and not d.is_approved(t):
            state = "ended"
        rows.append([str(d.id), state, _fmt_time(d.first_seen), describe_device(d, t)])
    listing = table(["ID", "STATE", "FIRST SEEN", "DEVICE (LAST SEEN)"], rows, right=[0])
    return EXIT_OK, f"{listing}\nApprove one with: imap-gateway devices approve {user} ID"


def devices_approve(
    store: CredentialStore,
    user: str,
    device_id: int | str,
    *,
    expires: str | None = None,
    as_json: bool = False,
    now: float | None = None,
) -> Result:
    """`imap-gateway devices approve USER ID [--expires 24h] [--json]`.

    The device's next login with the password (within ``expires``, default 24h) is let
    in and remembers it for the policy rule's ``remember_device``.
    """
    t = _now(now)
    try:
        target = int(device_id)
    except ValueError:
        return _fail(EXIT_USAGE, f"device ID must be a number, got {device_id!r}", as_json)
    try:
        validity = DEFAULT_APPROVAL_VALIDITY if not expires else parse_duration(expires)
        until = approval_until(t, validity)
    except ValueError as exc:
        return _fail(EXIT_USAGE, str(exc), as_json)
    try:
        device = store.approve_device(user, target, until, t)
    except DeviceNotFound as exc:
        return _fail(EXIT_FAILED, f"{exc}; see `imap-gateway devices pending {user}`", as_json)
    except StoreError as exc:
        return _fail(EXIT_FAILED, str(exc), as_json)
    if as_json:
        return EXIT_OK, {"user": user, "approved": device.id, "approved_until": rfc3339(until),
                         "description": describe_device(device, t)}
    return EXIT_OK, (
        f"Approved device {device.id} of {user}: {describe_device(device, t)}.\n"
        f"Its next login with the password until {_fmt_time(until)} gets in, and the device "
        "is then remembered for as long as the policy's remember_device says."
    )


# --- invites ---------------------------------------------------------------------------------

DEFAULT_INVITE_TTL = "72h"


def invite_url(public_url: str, token: str) -> str:
    """The portal link of an invitation: ``<[web] public_url>/invite/<token>``."""
    return public_url.rstrip("/") + "/invite/" + token


def users_invite(
    store: CredentialStore,
    user: str,
    *,
    expires: str | None = None,
    public_url: str = "",
    as_json: bool = False,
    now: float | None = None,
) -> Result:
    """`imap-gateway users invite USER [--expires 72h] [--json]`: a one-time invitation.

    Prints the link (``public_url``, the ``[web] public_url``, + ``/invite/<token>``)
    once; the store keeps only the token's hash. The user opens the link and signs in
    with the mail password there to set up the authenticator. Without a public URL the
    token alone is printed, with what to configure.
    """
    t = _now(now)
    try:
        ttl = parse_duration(expires or DEFAULT_INVITE_TTL)
        if ttl <= 0:
            raise ValueError("--expires must be longer than 0s")
        new = store.create_invite(user, ttl, t)
    except ValueError as exc:
        return _fail(EXIT_USAGE, str(exc), as_json)
    except StoreError as exc:
        return _fail(EXIT_FAILED, str(exc), as_json)
    url = invite_url(public_url, new.token) if public_url else None
    if as_json:
        return EXIT_OK, {"user": user, "token": new.token, "url": url,
                         "expires": rfc3339(new.info.expires)}
    if url is not None:
        return EXIT_OK, (
            f"Invitation for {user} (one use, expires {_fmt_time(new.info.expires)}):\n\n"
            f"    {url}\n\n"
            "It is shown only this once: send the link to the user over a channel you trust.\n"
            "They open it and sign in with their mail password to set up the authenticator."
        )
    return EXIT_OK, (
        f"Invitation for {user} (one use, expires {_fmt_time(new.info.expires)}):\n\n"
        f"    {new.token}\n\n"
        "It is shown only this once: hand it to the user over a channel you trust.\n"
        "Set [web] public_url to print it as a link; the link is <portal URL>/invite/<token>."
    )
