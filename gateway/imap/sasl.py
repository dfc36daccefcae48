"""SASL PLAIN (RFC 4616), LOGIN (draft-murchison-sasl-login), OAUTHBEARER (RFC 7628) and
XOAUTH2 (Google's pre-standard form of the same) message codecs.

Rules of this module:

1. It knows the wire format of SASL messages as IMAP carries them (base64, RFC 4959 ``=``
   for an empty initial response). It does not know about sessions or state.
2. Decoding errors are values (:class:`SaslError`), never exceptions; the message says what
   was wrong with the *format* and never contains the payload (it holds a password).
3. Decoded secrets live only in fields with ``repr=False``.

Cost: base64 decoding is linear in the input; the caller bounds the input by its line limit.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "LOGIN_PASSWORD_PROMPT",
    "LOGIN_USERNAME_PROMPT",
    "OAUTH_MECHANISMS",
    "BearerCredentials",
    "PlainCredentials",
    "SaslError",
    "decode_b64",
    "decode_login_response",
    "decode_oauthbearer",
    "decode_xoauth2",
    "decode_plain",
    "encode_login_response",
    "encode_plain",
]

#: Continuation-request texts of AUTHENTICATE LOGIN: base64 of "Username:" / "Password:".
LOGIN_USERNAME_PROMPT: Final = b"VXNlcm5hbWU6"
LOGIN_PASSWORD_PROMPT: Final = b"UGFzc3dvcmQ6"

#: Mechanisms that carry an OAuth 2.0 bearer token instead of a password.
OAUTH_MECHANISMS: Final = frozenset({"OAUTHBEARER", "XOAUTH2"})

#: RFC 6750 b64token: the characters a bearer token may have.
_B64TOKEN: Final = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")


@dataclass(frozen=True, slots=True)
class SaslError:
    """A SASL message could not be decoded; ``message`` is safe for a ``BAD`` reply."""

    message: str


@dataclass(frozen=True, slots=True)
class PlainCredentials:
    """A decoded PLAIN message. Unpacks like the tuple ``(authzid, authcid, password)``
    but, unlike a tuple, never shows the password in its repr."""

    authzid: str
    authcid: str
    password: str = field(repr=False)

    def __iter__(self) -> Iterator[str]:
        return iter((self.authzid, self.authcid, self.password))


def decode_b64(data: bytes) -> bytes | SaslError:
    """Strict base64 (no whitespace, correct padding); ``=`` alone is the empty message."""
    data = bytes(data)
    if data == b"=":
        return b""
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return SaslError("Invalid base64 data.")
    # b64decode ignores "=" after a complete block ("QUJD=" decodes): only the canonical
    # encoding of what was decoded is accepted.
    if base64.b64encode(decoded) != data:
        return SaslError("Invalid base64 data.")
    return decoded


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="surrogateescape")


def decode_plain(b64: bytes) -> PlainCredentials | SaslError:
    """Decode a base64 PLAIN message ``authzid NUL authcid NUL passwd`` (authzid may be empty)."""
    raw = decode_b64(b64)
    if isinstance(raw, SaslError):
        return raw
    parts = raw.split(b"\x00")
    if len(parts) != 3:
        return SaslError("Invalid SASL PLAIN message (expected authzid NUL authcid NUL password).")
    authzid, authcid, password = parts
    if not authcid:
        return SaslError("Invalid SASL PLAIN message (empty user name).")
    return PlainCredentials(_text(authzid), _text(authcid), _text(password))


def encode_plain(authzid: str, authcid: str, password: str) -> bytes:
    """Base64 PLAIN message, e.g. for the gateway's own login to the backend.

    Strings are encoded UTF-8 with ``surrogateescape`` so that names decoded by
    :func:`decode_plain` round-trip byte for byte.
    """
    fields = [s.encode("utf-8", errors="surrogateescape") for s in (authzid, authcid, password)]
    if any(b"\x00" in f for f in fields):
        raise ValueError("SASL PLAIN fields must not contain NUL")
    return base64.b64encode(b"\x00".join(fields))


def decode_login_response(b64: bytes) -> str | SaslError:
    """Decode one client response of AUTHENTICATE LOGIN (user name or password)."""
    raw = decode_b64(b64)
    if isinstance(raw, SaslError):
        return raw
    if b"\x00" in raw:
        return SaslError("Invalid SASL LOGIN response (NUL).")
    return _text(raw)


def encode_login_response(value: str) -> bytes:
    """Base64 of one AUTHENTICATE LOGIN response."""
    return base64.b64encode(value.encode("utf-8", errors="surrogateescape"))


@dataclass(frozen=True, slots=True)
class BearerCredentials:
    """A decoded OAUTHBEARER/XOAUTH2 message: the user the client named ("" when an
    OAUTHBEARER client named none: the token's claim decides) and the bearer token."""

    user: str
    token: str = field(repr=False)


def _bearer(value: bytes) -> str | SaslError:
    scheme, _, token = value.partition(b" ")
    if scheme.lower() != b"bearer" or not _B64TOKEN.fullmatch(token):
        return SaslError("Invalid SASL message (expected auth=Bearer <token>).")
    return token.decode("ascii")


def _kvpairs(raw: bytes) -> dict[bytes, bytes] | SaslError:
    """``key=value^A ... ^A``: the pairs, or an error (the message must end in ^A^A)."""
    if not raw.endswith(b"\x01\x01"):
        return SaslError("Invalid SASL message (must end with two ^A).")
    pairs: dict[bytes, bytes] = {}
    for item in raw[:-2].split(b"\x01"):
        key, sep, value = item.partition(b"=")
        if not sep or not key:
            return SaslError("Invalid SASL message (key=value expected).")
        if key in pairs:
            return SaslError("Invalid SASL message (a key given twice).")
        pairs[key] = value
    return pairs


def _saslname(raw: bytes) -> str | SaslError:
    """RFC 5801 saslname: ``,`` is written ``=2C`` and ``=`` is ``=3D``."""
    if re.search(rb"=(?!2C|3D)", raw) or re.search(rb"[\x00\r\n]", raw):
        return SaslError("Invalid SASL message (bad authorization identity).")
    return _text(raw.replace(b"=2C", b",").replace(b"=3D", b"="))


def decode_oauthbearer(b64: bytes) -> BearerCredentials | SaslError:
    """Decode an RFC 7628 client response ``n,a=user,^Ahost=..^Aauth=Bearer tok^A^A``.

    Channel binding (``p=``) is refused: the gateway offers none. ``host``/``port`` are
    accepted and ignored.
    """
    raw = decode_b64(b64)
    if isinstance(raw, SaslError):
        return raw
    head, sep, rest = raw.partition(b"\x01")
    if not sep:
        return SaslError("Invalid SASL OAUTHBEARER message (no GS2 header).")
    fields = head.split(b",")
    if len(fields) != 3 or fields[0] not in (b"n", b"y") or fields[2] != b"":
        return SaslError("Invalid SASL OAUTHBEARER message (bad GS2 header).")
    user = ""
    if fields[1]:
        if not fields[1].startswith(b"a="):
            return SaslError("Invalid SASL OAUTHBEARER message (bad GS2 header).")
        name = _saslname(fields[1][2:])
        if isinstance(name, SaslError):
            return name
        user = name
    pairs = _kvpairs(rest)
    if isinstance(pairs, SaslError):
        return pairs
    if b"auth" not in pairs:
        return SaslError("Invalid SASL OAUTHBEARER message (no auth=).")
    token = _bearer(pairs[b"auth"])
    if isinstance(token, SaslError):
        return token
    return BearerCredentials(user, token)


def decode_xoauth2(b64: bytes) -> BearerCredentials | SaslError:
    """Decode an XOAUTH2 client response ``user=<user>^Aauth=Bearer <token>^A^A``."""
    raw = decode_b64(b64)
    if isinstance(raw, SaslError):
        return raw
    pairs = _kvpairs(raw)
    if isinstance(pairs, SaslError):
        return pairs
    user = pairs.get(b"user", b"")
    if set(pairs) != {b"user", b"auth"} or not user or re.search(rb"[\x00\r\n]", user):
        return SaslError("Invalid SASL XOAUTH2 message (expected user= and auth=).")
    token = _bearer(pairs[b"auth"])
    if isinstance(token, SaslError):
        return token
    return BearerCredentials(_text(user), token)
