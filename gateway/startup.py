"""Everything the gateway loads before it accepts a connection, checked up front.

``prepare`` runs before the event loop starts, so a broken policy file, a missing or
wrong store key, or an unreadable master password stops ``imap-gateway serve`` with
one line that names the file and what to do, and nothing is listening yet.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import Config
from gateway.policy import Policy, PolicyError, PolicyReloader, load_policy
from gateway.secretfile import SecretFileError, read_secret_file
from gateway.store import open_store
from gateway.store.base import CredentialStore
from gateway.store.errors import StoreError
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
    warnings: list[str] = field(default_factory=list)


def _read_master_password(config: Config) -> str | None:
    path = config.backend.master_password_file
    if not config.backend.master_user or path is None:
        return None
    where = f"{config.source_path}: backend.master_password_file"
    try:
        data = read_secret_file(path)
    except SecretFileError as exc:
        raise StartupError(f"{where}: {exc}") from None
    except OSError as exc:
        raise StartupError(f"{where}: cannot read {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise StartupError(f"{where}: {path} is not UTF-8 text") from None


def prepare(config: Config) -> Runtime:
    """Load policy, credential store, master password and admin token; StartupError if any fails."""
    try:
        policy: Policy = load_policy(Path(config.policy.dir))
    except PolicyError as exc:
        raise StartupError(f"{config.source_path}: policy.dir: {exc}") from None
    reloader = PolicyReloader(Path(config.policy.dir), current=policy)

    store_path = Path(config.store.path)
    try:
        store_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        store = open_store(store_path, Path(config.store.key_file), create_key=True)
    except (StoreError, OSError) as exc:
        raise StartupError(f"{config.source_path}: store: {exc}") from None

    runtime = Runtime(policy=reloader, store=store, master_password=_read_master_password(config))
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
