"""The second factors as pure functions: TOTP maths, app-password format and hashing,
remembered-device keys, and splitting ``password$123456`` into its parts.

Rules of this module:

1. No I/O, no trio, no clock reads: every time-dependent function takes ``now``
   (epoch seconds). The store (``gateway/store``) persists what these functions
   compute; a later server-database store reuses them unchanged.
2. Secrets never reach a repr: every value object that carries a password, code
   or seed declares that field ``repr=False``.
3. Cost is explicit: the only slow function is :func:`verify_app_password_hash`
   (one scrypt, n=2**14, r=8, p=1, ~16 MiB, tens of ms). Everything else is
   microseconds. Callers decide how many scrypts one login may cost.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass, field

import pyotp

from gateway.netaddr import unmap_ipv4

# --- TOTP ---------------------------------------------------------------------

TOTP_ISSUER = "imap-gateway"
TOTP_STEP_SECONDS = 30
TOTP_DIGITS = 6
# ±1 step: tolerates 30 s of clock skew or a code typed just before it rolled over.
# Wider windows multiply the chance of guessing a code (3 codes in 10**6 per try).
TOTP_VALID_WINDOW = 1

_CODE_RE = re.compile(r"[0-9]{6}")


class TotpResult(enum.StrEnum):
    """Outcome of checking a TOTP code; the value is what logs and Deny reasons use."""

    OK = "ok"
    INVALID = "invalid"
    #: Valid now, but its step is spent: an older step than the last accepted one, or the
    #: same step used by another client (see :func:`totp_source_fingerprint`).
    REPLAY = "replay"
    #: Not valid now, but this user logged in (or confirmed enrolment) with these digits
    #: before: typically a mail client that saved ``password$123456`` and reconnects.
    STALE = "stale"
    NOT_ENROLLED = "not_enrolled"


def new_totp_secret() -> str:
    """A fresh base32 TOTP seed (160 bits, what authenticator apps expect)."""
    return pyotp.random_base32(length=32)


def totp_uri(secret: str, user: str, issuer: str = TOTP_ISSUER) -> str:
    """The ``otpauth://`` URI an authenticator app scans. It contains the seed: never log it.

    ``issuer`` is ``[store] totp_issuer``: the name the app shows above the account.
    """
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_SECONDS).provisioning_uri(
        name=user, issuer_name=issuer
    )


def totp_step(now: float) -> int:
    """The RFC 6238 time-step counter for ``now``."""
    return int(now // TOTP_STEP_SECONDS)


def totp_code_at_step(secret: str, step: int) -> str:
    """The code an authenticator shows during ``step`` (tests and admin tooling use it)."""
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_SECONDS).generate_otp(step)


def totp_matching_step(secret: str, code: str, now: float) -> int | None:
    """Return the time step ``code`` is valid for (within ±1 step of ``now``), else None.

    The step, not a bool, is what replay protection needs: the store remembers the
    last accepted step and refuses any code whose step is not newer. All window
    positions are compared (constant-time each) so the timing does not tell which
    one matched; if the same digits are valid for two steps the newest wins, which
    is never a replay of an older one.
    """
    if not isinstance(code, str) or not _CODE_RE.fullmatch(code):
        return None
    otp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_SECONDS)
    current = totp_step(now)
    matched: int | None = None
    for step in range(max(0, current - TOTP_VALID_WINDOW), current + TOTP_VALID_WINDOW + 1):
        if hmac.compare_digest(otp.generate_otp(step).encode(), code.encode()):
            matched = step
    return matched


# --- TOTP use fingerprints -----------------------------------------------------
#
# The store remembers, per accepted time step, *who* used the code (so the same client
# may open parallel connections with it) and *which* code it was (so a saved, stale
# "password$123456" can be recognised on a remembered device). Both are kept as
# HMAC-SHA256 fingerprints under a key derived from the store's key file, never in
# clear: the database alone tells neither the addresses nor the codes (six digits
# would be trivial to enumerate from an unkeyed hash).

_FINGERPRINT_KEY_LABEL = b"imap-gateway/totp-use-fingerprint/v1"


def fingerprint_key(store_key: bytes) -> bytes:
    """The HMAC key for TOTP use fingerprints, derived from the store's 32-byte key.

    A separate derived key, so a fingerprint can never be confused with (or help
    attack) the AES-GCM encryption of the seeds under the same key file.
    """
    return hmac.new(store_key, _FINGERPRINT_KEY_LABEL, hashlib.sha256).digest()


def _fingerprint(key: bytes, kind: str, *parts: str) -> bytes:
    # Each part length-prefixed: no choice of user name or client name can make two
    # different (user, address, name) triples hash the same message.
    mac = hmac.new(key, kind.encode(), hashlib.sha256)
    for part in parts:
        data = part.encode("utf-8", "surrogateescape")
        mac.update(len(data).to_bytes(4, "big") + data)
    return mac.digest()


def totp_source_fingerprint(key: bytes, user: str, ip: str, client_name: str | None) -> bytes:
    """Who used a code: the exact client address and its IMAP ID name, bound to the user.

    The exact address, not the /24 of remembered devices: this decides whether a
    code may be used *again*, and two machines behind one NAT with the same mail
    program are then one client (the accepted risk of letting parallel connections
    share a code). IPv4-mapped IPv6 counts as the IPv4 address; the name is bounded
    like a device's (a client that sends no ID has the name ``""``).
    """
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        text = ip
    else:
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        text = str(addr)
    return _fingerprint(key, "source", user, text, device_client_name(client_name))


def totp_code_fingerprint(key: bytes, user: str, code: str) -> bytes:
    """Which six digits were accepted for ``user`` (independent of the step and seed)."""
    return _fingerprint(key, "code", user, code)


# --- password$code splitting ----------------------------------------------------

TOTP_SUFFIX_SEPARATOR = "separator"  # only "password$123456"
TOTP_SUFFIX_PLAIN = "plain"  # also "password123456"
TOTP_SUFFIX_MODES = (TOTP_SUFFIX_SEPARATOR, TOTP_SUFFIX_PLAIN)

_SEPARATED_RE = re.compile(r"(.+)\$([0-9]{6})", re.DOTALL)
_PLAIN_RE = re.compile(r"(.+?)([0-9]{6})", re.DOTALL)


@dataclass(frozen=True)
class SplitSecret:
    """A login secret split into the password and an optional TOTP code."""

    password: str = field(repr=False)
    code: str | None = field(repr=False)


def split_totp_suffix(secret: str, mode: str = TOTP_SUFFIX_SEPARATOR) -> SplitSecret:
    """Split ``"password$123456"`` (any mode) or ``"password123456"`` (mode ``"plain"``).

    IMAP LOGIN has one secret field, so the code rides on the password. The split
    is a guess: a password may itself end in ``$`` + 6 digits, so the caller must
    fall back to the whole secret when the code does not check out (decide() does,
    for remembered devices). The password part must be non-empty: ``"$123456"``
    alone is not split. ``mode`` is the policy's ``totp_suffix``; an unknown value
    raises ValueError naming the valid ones, because silently not splitting would
    lock every TOTP user out.
    """
    if mode not in TOTP_SUFFIX_MODES:
        raise ValueError(f"totp_suffix must be one of {', '.join(TOTP_SUFFIX_MODES)}; got {mode!r}")
    m = _SEPARATED_RE.fullmatch(secret)
    if m is None and mode == TOTP_SUFFIX_PLAIN:
        m = _PLAIN_RE.fullmatch(secret)
    if m is None:
        return SplitSecret(password=secret, code=None)
    return SplitSecret(password=m.group(1), code=m.group(2))


# --- app passwords --------------------------------------------------------------

# 32 symbols = 5 bits each; 0/o and 1/l are left out because people misread them.
APP_PASSWORD_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
APP_PASSWORD_GROUPS = 4
APP_PASSWORD_GROUP_LEN = 5  # 4 groups x 5 characters x 5 bits each: 100 random bits

assert len(set(APP_PASSWORD_ALPHABET)) == 32

_APP_PASSWORD_CHARS = frozenset(APP_PASSWORD_ALPHABET)
_APP_PASSWORD_LEN = APP_PASSWORD_GROUPS * APP_PASSWORD_GROUP_LEN

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_DKLEN = 32
_SCRYPT_SALT_LEN = 16
_SCRYPT_MAXMEM = 64 * 1024 * 1024


def generate_app_password() -> str:
    """A new app password like ``"k7wq2-fmx9a-..."``: 100 bits from ``secrets``, typeable."""
    groups = (
        "".join(secrets.choice(APP_PASSWORD_ALPHABET) for _ in range(APP_PASSWORD_GROUP_LEN))
        for _ in range(APP_PASSWORD_GROUPS)
    )
    return "-".join(groups)


def normalize_app_password(secret: str) -> str | None:
    """The canonical 20-character form of something shaped like an app password, else None.

    Users type app passwords with or without dashes/spaces and sometimes in upper
    case; all of these verify. A secret that cannot be an app password returns None
    so the caller can skip scrypt entirely: an ordinary password login then costs
    no hashing at all.
    """
    canon = secret.replace("-", "").replace(" ", "").lower()
    if len(canon) != _APP_PASSWORD_LEN or not _APP_PASSWORD_CHARS.issuperset(canon):
        return None
    return canon


def hash_app_password(password: str) -> str:
    """Salted scrypt hash of an app password, self-describing so parameters can change later.

    Format: ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``. Raises ValueError if the
    password is not app-password shaped (we only ever hash what we generated).
    """
    canon = normalize_app_password(password)
    if canon is None:
        raise ValueError("not an app password (expected 4 groups of 5 characters)")
    return _encode_scrypt(canon, secrets.token_bytes(_SCRYPT_SALT_LEN))


def _encode_scrypt(canon: str, salt: bytes) -> str:
    digest = _scrypt(canon, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(
        [
            "scrypt",
            str(SCRYPT_N),
            str(SCRYPT_R),
            str(SCRYPT_P),
            base64.b64encode(salt).decode(),
            base64.b64encode(digest).decode(),
        ]
    )


def verify_app_password_hash(canonical: str, encoded: str) -> bool:
    """One scrypt: does ``canonical`` (from normalize_app_password) match ``encoded``?

    Slow on purpose (~tens of ms, 16 MiB); call it from a worker thread. A malformed
    ``encoded`` value returns False rather than raising: a corrupt row must not
    turn a login into a crash, and it can never verify.
    """
    try:
        scheme, n, r, p, salt_b64, digest_b64 = encoded.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(digest_b64, validate=True)
        actual = _scrypt(canonical, salt, int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def _scrypt(canon: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        canon.encode(), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=_SCRYPT_DKLEN
    )


# --- recovery codes --------------------------------------------------------------
#
# Ten one-time codes a user keeps on paper, for when the phone with the authenticator
# is gone. Same alphabet and hash scheme as app passwords. One salt per set of ten
# (not per code): checking a typed code then costs one scrypt, not ten, so a guess
# cannot make the web portal burn ten scrypts; against an offline attacker the shared
# salt saves a factor of ten at most on codes of 50 bits each.

RECOVERY_CODE_COUNT = 10
RECOVERY_CODE_GROUPS = 2
_RECOVERY_CODE_LEN = RECOVERY_CODE_GROUPS * APP_PASSWORD_GROUP_LEN  # 10 chars, 50 bits


def generate_recovery_codes(count: int = RECOVERY_CODE_COUNT) -> list[str]:
    """``count`` new codes like ``"k7wq2-fmx9a"`` (50 bits each, from ``secrets``)."""
    return [
        "-".join(
            "".join(secrets.choice(APP_PASSWORD_ALPHABET) for _ in range(APP_PASSWORD_GROUP_LEN))
            for _ in range(RECOVERY_CODE_GROUPS)
        )
        for _ in range(count)
    ]


def normalize_recovery_code(code: str) -> str | None:
    """The canonical 10-character form of a typed recovery code, else None (no scrypt)."""
    canon = code.replace("-", "").replace(" ", "").lower()
    if len(canon) != _RECOVERY_CODE_LEN or not _APP_PASSWORD_CHARS.issuperset(canon):
        return None
    return canon


def hash_recovery_codes(codes: list[str]) -> list[str]:
    """Scrypt hashes (app-password format) of a set of codes, all under one new salt."""
    salt = secrets.token_bytes(_SCRYPT_SALT_LEN)
    out = []
    for code in codes:
        canon = normalize_recovery_code(code)
        if canon is None:
            raise ValueError("not a recovery code (expected 2 groups of 5 characters)")
        out.append(_encode_scrypt(canon, salt))
    return out


def match_recovery_code(canonical: str, encoded: list[str]) -> int | None:
    """The index in ``encoded`` that ``canonical`` matches, else None.

    One scrypt per distinct salt and parameters among ``encoded`` (one for a set made
    by hash_recovery_codes); every entry is compared, in constant time each.
    Malformed entries never match.
    """
    digests: dict[str, bytes | None] = {}
    found: int | None = None
    for i, entry in enumerate(encoded):
        head, _, digest_b64 = entry.rpartition("$")
        if head not in digests:
            try:
                scheme, n, r, p, salt_b64 = head.split("$")
                if scheme != "scrypt":
                    raise ValueError(scheme)
                salt = base64.b64decode(salt_b64, validate=True)
                digests[head] = _scrypt(canonical, salt, int(n), int(r), int(p))
            except ValueError:
                digests[head] = None
        actual = digests[head]
        try:
            expected = base64.b64decode(digest_b64, validate=True)
        except ValueError:
            continue
        if actual is not None and hmac.compare_digest(actual, expected) and found is None:
            found = i
    return found


# --- scopes ---------------------------------------------------------------------

SCOPE_FULL = "full"
SCOPE_READ_ONLY = "read-only"
SCOPE_MAILBOXES_PREFIX = "mailboxes="


class InvalidScopeError(ValueError):
    """An app-password scope list is not valid; the message says which entry and why."""


def validate_scopes(scopes: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Check and canonicalise an app password's scopes.

    Shape: exactly one access level, ``"full"`` (default) or ``"read-only"``, plus
    at most one ``"mailboxes=INBOX,Archive/*"`` restriction (mailbox names or
    ``*`` patterns, comma separated). The relay enforces them: read-only refuses
    commands that change mail; mailboxes= limits SELECT/EXAMINE/APPEND/... targets.
    An empty list means ``("full",)``. Returns a tuple with the access level first.
    """
    access: str | None = None
    mailboxes: str | None = None
    for raw in scopes or ():
        scope = raw.strip()
        if scope in (SCOPE_FULL, SCOPE_READ_ONLY):
            if access is not None and access != scope:
                raise InvalidScopeError(
                    f"scope {scope!r} conflicts with {access!r}: pick one of full, read-only"
                )
            access = scope
        elif scope.startswith(SCOPE_MAILBOXES_PREFIX):
            names = [n.strip() for n in scope[len(SCOPE_MAILBOXES_PREFIX) :].split(",")]
            if not names or any(not n for n in names):
                raise InvalidScopeError(
                    f"scope {scope!r}: give mailbox names separated by commas, e.g. mailboxes=INBOX,Archive/*"
                )
            if mailboxes is not None:
                raise InvalidScopeError("give mailboxes= only once (list all names in it)")
            mailboxes = SCOPE_MAILBOXES_PREFIX + ",".join(names)
        else:
            raise InvalidScopeError(
                f"unknown scope {scope!r}: use full, read-only or mailboxes=NAME[,NAME...]"
            )
    result = [access or SCOPE_FULL]
    if mailboxes is not None:
        result.append(mailboxes)
    return tuple(result)


# --- remembered devices -----------------------------------------------------------

DEVICE_V4_PREFIX = 24
DEVICE_V6_PREFIX = 64
DEVICE_CLIENT_NAME_MAX = 64


def device_network(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The network a device is remembered for: the /24 of an IPv4 or the /64 of an IPv6 address.

    Not the exact address: phones and home routers change addresses within their
    network often, and re-asking for TOTP each time would teach users to ignore it.
    IPv4-mapped IPv6 (``::ffff:192.0.2.7``) counts as the IPv4 address, so a
    dual-stack listener does not forget devices. Raises ValueError for a non-IP.
    """
    addr = unmap_ipv4(ipaddress.ip_address(ip) if isinstance(ip, str) else ip)
    prefix = DEVICE_V4_PREFIX if addr.version == 4 else DEVICE_V6_PREFIX
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def device_client_name(name: str | None) -> str:
    """The client's IMAP ID ``name`` as part of a device key: stripped and bounded.

    Clients send any string here; bounding it keeps a hostile client from growing
    the database. It is not a secret and not trusted: it only narrows the key.
    """
    return (name or "").strip()[:DEVICE_CLIENT_NAME_MAX]
