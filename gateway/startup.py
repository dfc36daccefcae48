"""Everything the gateway loads before it accepts a connection, checked up front.

``prepare`` runs before the event loop starts, so a broken policy file, a missing or
wrong store key, or an unreadable master password stops ``imap-gateway serve`` with
one line that names the file and what to do, and nothing is listening yet.
"""

from __future__ import annotations

import gc
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import Config
from gateway.limits.rules import spray_secret
from gateway.policy import Policy, PolicyError, PolicyReloader, load_policy
from gateway.secretfile import SecretTextError, read_secret_text
from gateway.store import open_configured_store
from gateway.store.base import CredentialStore
from gateway.store.errors import StoreError, StoreKeyError
from gateway.store.keyfile import load_key
from gateway.web.token import (
    AdminAddressRefused,
    AdminTokenError,
    check_admin_address,
    load_admin_token,
)


class StartupError(Exception):
    """The gateway cannot start; the message names the file/key and the fix."""


@dataclass
class Runtime:
    policy: PolicyReloader
    store: CredentialStore
    master_password: str | None = field(repr=False, default=None)
    admin_token: str | None = field(repr=False, default=None)
    # [auth_policy] token_file's content: the X-API-Key Dovecot must send.
    auth_policy_token: str | None = field(repr=False, default=None)
    warnings: list[str] = field(default_factory=list)
    #: Key of the limiter's password-spray fingerprints (``gateway.limits.rules``):
    #: derived from the store key file, so every instance computes the same ones.
    spray_secret: bytes = field(repr=False, default_factory=lambda: secrets.token_bytes(32))


def read_master_password(config: Config) -> str | None:
    """The master password from ``[backend] master_password_file``; None without a master user."""
    path = config.backend.master_password_file
    if not config.backend.master_user or path is None:
        return None
    try:
        return read_secret_text(path, f"{config.source_path}: backend.master_password_file")
    except SecretTextError as exc:
        raise StartupError(str(exc)) from None


#: Shortest auth-policy token accepted (as for the admin API's).
MIN_POLICY_TOKEN_CHARS = 16


def _read_auth_policy_token(config: Config) -> str | None:
    path = config.auth_policy.token_file
    if not config.auth_policy.address or path is None:
        return None
    where = f"{config.source_path}: auth_policy.token_file"
    try:
        token = read_secret_text(path, where).strip()
    except SecretTextError as exc:
        raise StartupError(str(exc)) from None
    if (len(token) < MIN_POLICY_TOKEN_CHARS or not token.isascii()
            or any(c.isspace() or not c.isprintable() for c in token)):
        raise StartupError(
            f"{where}: {path} must hold one token of at least {MIN_POLICY_TOKEN_CHARS} "
            "printable ASCII characters without spaces, e.g. from `openssl rand -hex 32`")
    return token


def prepare(config: Config) -> Runtime:
    """Load policy, credential store, master password, admin and auth-policy tokens;
    StartupError if any fails."""
    try:
        policy: Policy = load_policy(Path(config.policy.dir))
    except PolicyError as exc:
        raise StartupError(f"{config.source_path}: policy.dir: {exc}") from None
    reloader = PolicyReloader(Path(config.policy.dir), current=policy)

    try:
        store = open_configured_store(config.store, create_key=True)
    except (StoreError, OSError) as exc:
        raise StartupError(f"{config.source_path}: store: {exc}") from None

    runtime = Runtime(policy=reloader, store=store, master_password=read_master_password(config),
                      auth_policy_token=_read_auth_policy_token(config))
    try:
        key = load_key(Path(config.store.key_file))
    except StoreKeyError as exc:
        raise StartupError(f"{config.source_path}: store.key_file: {exc}") from None
    if key is not None:
        runtime.spray_secret = spray_secret(key)
    else:
        runtime.warnings.append(
            f"{config.source_path}: store.key_file {config.store.key_file} does not exist: "
            "password-spray fingerprints use a key of this process only, so instances that "
            "share [state] redis do not see each other's attempts of the same password")
    if runtime.master_password is None:
        runtime.warnings.append(
            "no [backend] master_user configured: app passwords will be refused "
            "(log reason master_user_missing)")
    if config.admin.address:
        try:
            check_admin_address(config)
            runtime.admin_token = load_admin_token(config, create=True)
        except (AdminAddressRefused, AdminTokenError) as exc:
            raise StartupError(str(exc)) from None
    settle_heap()
    return runtime


def settle_heap() -> None:
    """Move everything loaded so far (modules, config, policy: a few hundred thousand
    objects that live as long as the process) out of the cyclic garbage collector's
    reach. Otherwise each of its full collections walks them all again, and those came
    often enough under load to take several per cent of the gateway's CPU per login.
    Objects created later (sessions) are collected as usual."""
    gc.collect()
    gc.freeze()
