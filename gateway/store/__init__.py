"""State: the credential store (TOTP seeds, app passwords, remembered devices).

``CredentialStore`` is the interface; ``SqliteCredentialStore`` / ``open_store`` the
embedded default (``[store] path`` and ``[store] key_file``).
"""

from gateway.store.base import (
    AppPasswordCheck,
    AppPasswordInfo,
    AppPasswordStatus,
    CredentialStore,
    DeviceInfo,
    NewAppPassword,
    TotpEnrollment,
    TotpStatus,
)
from gateway.store.errors import (
    AppPasswordLabelExists,
    AppPasswordNotFound,
    DeviceNotFound,
    StoreError,
    StoreKeyError,
    StoreSchemaError,
    TooManyAppPasswords,
)
from gateway.store.sqlite import SqliteCredentialStore, open_store

__all__ = [
    "AppPasswordCheck",
    "AppPasswordInfo",
    "AppPasswordLabelExists",
    "AppPasswordNotFound",
    "AppPasswordStatus",
    "CredentialStore",
    "DeviceInfo",
    "DeviceNotFound",
    "NewAppPassword",
    "SqliteCredentialStore",
    "StoreError",
    "StoreKeyError",
    "StoreSchemaError",
    "TooManyAppPasswords",
    "TotpEnrollment",
    "TotpStatus",
    "open_store",
]
