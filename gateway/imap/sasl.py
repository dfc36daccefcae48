"""SASL PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login) message codecs.

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
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "LOGIN_PASSWORD_PROMPT",
    "LOGIN_USERNAME_PROMPT",
    "PlainCredentials",
    "SaslError",
    "decode_b64",
    "decode_login_response",
    "decode_plain",
    "encode_login_response",
    "encode_plain",
]

#: Continuation-request texts of AUTHENTICATE LOGIN: base64 of "Username:" / "Password:".
LOGIN_USERNAME_PROMPT: Final = b"VXNlcm5hbWU6"
LOGIN_PASSWORD_PROMPT: Final = b"UGFzc3dvcmQ6"


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
