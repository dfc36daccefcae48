"""Errors the credential store raises. Each message says what is wrong and what to do.

No message ever contains a secret (seed, key, password, hash): they name users,
labels, files and commands only.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class: the credential store could not do what was asked."""


class StoreKeyError(StoreError):
    """The TOTP seed encryption key is missing, malformed, unsafe or wrong.

    ``key_file`` is the path involved so the shell can log it as a field.
    The gateway must not start (or must refuse TOTP logins) until it is fixed:
    guessing would either lock every TOTP user out or silently mint a new key.
    """

    def __init__(self, message: str, *, key_file: str) -> None:
        super().__init__(message)
        self.key_file = key_file


class StoreSchemaError(StoreError):
    """The database schema is newer than this gateway knows, or a migration failed."""


class AppPasswordLabelExists(StoreError):
    """The user already has an app password with this label (labels are unique per user)."""


class AppPasswordNotFound(StoreError):
    """No app password with this label for this user."""


class TooManyAppPasswords(StoreError):
    """The per-user app password limit is reached (it bounds the scrypt cost of one login)."""


class DeviceNotFound(StoreError):
    """No remembered device with this id for this user."""


class StoreUnavailable(StoreError):
    """The database server could not be reached, or the connection broke mid-call.

    Only a server database (PostgreSQL) raises it. Callers fail closed for what needs
    the store (a login is refused like any failure) and log and count it
    (``store.unavailable``, ``imap_gateway_store_unavailable_total``); the store
    reconnects by itself once the server is back.
    """
