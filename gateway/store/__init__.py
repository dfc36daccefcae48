"""State: the credential store (TOTP seeds, app passwords, remembered devices) and the
web portal's data (login history, recovery codes, invites, pending devices, web sessions).

``CredentialStore`` is the interface; ``SqliteCredentialStore`` / ``open_store`` the
embedded default (``[store] path`` and ``[store] key_file``).
"""

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
    "SqliteCredentialStore",
    "StoreError",
    "StoreKeyError",
    "StoreSchemaError",
    "TooManyAppPasswords",
    "TotpEnrollment",
    "TotpStatus",
    "WebSession",
    "open_store",
]
