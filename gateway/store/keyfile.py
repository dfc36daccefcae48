"""The TOTP seed key file and AES-GCM encryption of seeds.

Rules of this module:

1. The key lives outside the database (``[store] key_file``): a stolen or
   backed-up ``gateway.db`` alone reveals no seed.
2. A key file is created only when the caller says so (``create=True``: admin
   commands and first start). Creating one silently when the database already
   holds seeds would make every enrolled user's TOTP fail with no hint why.
3. The ciphertext is bound to the user name (AES-GCM associated data), so
   copying one user's seed row onto another user's does not verify.

Blob layout (one column): ``version(1) || nonce(12) || ciphertext+tag``.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.secretfile import SecretFileError, create_secret_file, read_secret_file
from gateway.store.errors import StoreKeyError

KEY_LEN = 32
_BLOB_VERSION = b"\x01"
_NONCE_LEN = 12
_AD_PREFIX = b"imap-gateway/totp-seed/v1\x00"


def load_key(key_file: str | os.PathLike[str], *, create: bool = False) -> bytes | None:
    """Read the 32-byte key; create it (mode 0600, random) only if ``create`` is true.

    Returns None when the file does not exist and ``create`` is false: the store
    then works for everything but TOTP, and says so when TOTP is used.
    Raises StoreKeyError for a file of the wrong size, unreadable, or open to group or
    others (``gateway.secretfile``).
    """
    path = Path(key_file)
    try:
        data = read_secret_file(path)
    except FileNotFoundError:
        if not create:
            return None
        return _create_key(path)
    except SecretFileError as exc:
        raise StoreKeyError(f"TOTP key file {exc}", key_file=str(path)) from None
    if len(data) != KEY_LEN:
        raise StoreKeyError(
            f"TOTP key file {path} holds {len(data)} bytes, expected {KEY_LEN}; restore it from "
            "backup (a new key cannot decrypt existing seeds)",
            key_file=str(path),
        )
    return data


def _create_key(path: Path) -> bytes:
    key = os.urandom(KEY_LEN)
    # Never replaces a file: two processes starting at once must not write two
    # different keys; the one that loses reads the winner's.
    if not create_secret_file(path, key):
        return load_key(path, create=False)  # type: ignore[return-value]
    return key


class SeedCipher:
    """AES-256-GCM for TOTP seeds, bound to the user name. Cheap; thread-safe."""

    def __init__(self, key: bytes, key_file: str) -> None:
        if len(key) != KEY_LEN:
            raise StoreKeyError(f"TOTP key must be {KEY_LEN} bytes", key_file=key_file)
        self._aead = AESGCM(key)
        self._key_file = key_file

    def __repr__(self) -> str:
        return f"SeedCipher(key_file={self._key_file!r})"

    def encrypt(self, user: str, seed: str) -> bytes:
        nonce = os.urandom(_NONCE_LEN)
        return _BLOB_VERSION + nonce + self._aead.encrypt(nonce, seed.encode(), _ad(user))

    def decrypt(self, user: str, blob: bytes) -> str:
        """Return the seed; StoreKeyError if the key is wrong or the row was tampered with."""
        if len(blob) < 1 + _NONCE_LEN + 16 or blob[:1] != _BLOB_VERSION:
            raise StoreKeyError(
                f"TOTP seed for user {user!r} is not in a format this gateway knows; "
                f"re-enroll the user (imap-gateway totp enroll {user})",
                key_file=self._key_file,
            )
        nonce, ct = blob[1 : 1 + _NONCE_LEN], blob[1 + _NONCE_LEN :]
        try:
            return self._aead.decrypt(nonce, ct, _ad(user)).decode()
        except InvalidTag:
            raise StoreKeyError(
                f"cannot decrypt the TOTP seed of user {user!r} with key file {self._key_file}: "
                "the key file is not the one the seeds were encrypted with (restore the right "
                "key file), or the row was altered (re-enroll the user)",
                key_file=self._key_file,
            ) from None


def _ad(user: str) -> bytes:
    return _AD_PREFIX + user.encode()
