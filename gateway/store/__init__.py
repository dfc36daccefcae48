"""State: the credential store (TOTP seeds, app passwords, remembered devices) and the
web portal's data (login history, recovery codes, invites, pending devices, web sessions).

``CredentialStore`` is the interface; ``SqliteCredentialStore`` / ``open_store`` the
embedded default (``[store] path`` and ``[store] key_file``);
``gateway.store.postgres.PostgresCredentialStore`` the database several instances share
(``[store] url``, ``password_file``). ``open_configured_store`` picks one from the config.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from gateway.store.base import (
    AppPasswordCheck,
    AppPasswordInfo,
    AppPasswordStatus,
    CredentialStore,
    DeviceApproval,
    DeviceInfo,
    InviteInfo,
    LoginProtocol,
    LoginRecord,
    LoginResult,
    NewAppPassword,
    NewInvite,
    NewRecoveryCodes,
    NewWebSession,
    PendingDevice,
    TotpEnrollment,
    TotpStatus,
    WebSession,
)
from gateway.store.errors import (
    AppPasswordLabelExists,
    AppPasswordNotFound,
    DeviceNotFound,
    StoreError,
    StoreKeyError,
    StoreSchemaError,
    StoreUnavailable,
    TooManyAppPasswords,
)
from gateway.store.sqlite import SqlCredentialStore, SqliteCredentialStore, open_store

if TYPE_CHECKING:
    from gateway.config import StoreConfig


def open_configured_store(config: StoreConfig, *, create_key: bool = False) -> SqlCredentialStore:
    """The store ``[store]`` names: PostgreSQL when ``url`` is set, else the SQLite file
    at ``path`` (its directory created 0700). Raises StoreError (or OSError) saying why."""
    if create_key:
        os.makedirs(config.key_file.parent, mode=0o700, exist_ok=True)
    if config.url:
        # Imported only here: an SQLite deployment never loads libpq.
        from gateway.store.postgres import PostgresCredentialStore

        return PostgresCredentialStore(config.url, config.key_file,
                                       password_file=config.password_file,
                                       create_key=create_key)
    os.makedirs(config.path.parent, mode=0o700, exist_ok=True)
    return open_store(config.path, config.key_file, create_key=create_key)

__all__ = [
    "AppPasswordCheck",
    "AppPasswordInfo",
    "AppPasswordLabelExists",
    "AppPasswordNotFound",
    "AppPasswordStatus",
    "CredentialStore",
    "DeviceApproval",
    "DeviceInfo",
    "DeviceNotFound",
    "InviteInfo",
    "LoginProtocol",
    "LoginRecord",
    "LoginResult",
    "NewAppPassword",
    "NewInvite",
    "NewRecoveryCodes",
    "NewWebSession",
    "PendingDevice",
    "SqlCredentialStore",
    "SqliteCredentialStore",
    "StoreError",
    "StoreKeyError",
    "StoreSchemaError",
    "StoreUnavailable",
    "TooManyAppPasswords",
    "TotpEnrollment",
    "TotpStatus",
    "WebSession",
    "open_configured_store",
    "open_store",
]
