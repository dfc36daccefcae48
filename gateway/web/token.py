"""The admin API's bearer token and bind-address rule: shared by the gateway (which
creates the token and serves the API) and the CLI (which reads it and calls the API).

Rules of this module:

1. The token is compared with ``hmac.compare_digest`` (``is_authorized``); it is never
   logged, put in an exception message or a repr.
2. The admin API listens on loopback unless the administrator chose a token file
   explicitly (``[admin] token_file``): an auto-generated token on a public port would be
   a secret nobody knows is exposed (``check_admin_address``).
3. Nothing here imports the web stack: ``imap-gateway bans list`` needs the token, not
   Starlette.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "MIN_TOKEN_CHARS",
    "TOKEN_FILE_NAME",
    "AdminAddressRefused",
    "AdminTokenError",
    "admin_token_path",
    "check_admin_address",
    "is_authorized",
    "load_admin_token",
]

TOKEN_FILE_NAME = "admin.token"
MIN_TOKEN_CHARS = 16
_MIN_TOKEN_CHARS = MIN_TOKEN_CHARS


class AdminTokenError(Exception):
    """The admin token file is missing, unreadable, too open or too short; the message
    names the file and what to do."""


class AdminAddressRefused(ValueError):
    """``[admin] address`` is not loopback and no token file was chosen explicitly."""


# ---------------------------------------------------------------------------
# Token and bind address (both sides: the gateway creates, the CLI reads)


def admin_token_path(config: Any) -> Path:
    """``[admin] token_file``, or ``admin.token`` next to ``[store] path`` when unset."""
    explicit = config.admin.token_file
    return Path(explicit) if explicit is not None else config.store.path.parent / TOKEN_FILE_NAME


def load_admin_token(config: Any, create: bool) -> str:
    """The admin API token, read from ``admin_token_path(config)``.

    With ``create`` (the gateway at start) a missing default file is made: 32 random
    bytes as hex, mode 0600, its directory 0700. An explicit ``[admin] token_file`` is
    never created: the administrator chose it, so a missing one is a mistake to report.
    The file must not be readable by group or others (as for the master password file).
    Raises ``AdminTokenError`` naming the file and the fix.
    """
    path = admin_token_path(config)
    where = f"{path} ([admin] token_file in {config.source_path})"
    if create and config.admin.token_file is None:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # made earlier (or by a concurrent start): read it below
        except OSError as exc:
            raise AdminTokenError(f"cannot create admin token file {where}: {exc.strerror}") from None
        else:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(32) + "\n")
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        hint = ("start the gateway once (it creates it)" if config.admin.token_file is None
                else "create it with a random secret, e.g. `openssl rand -hex 32 > FILE; "
                     "chmod 600 FILE`")
        raise AdminTokenError(f"admin token file {where} does not exist; {hint}") from None
    except OSError as exc:
        raise AdminTokenError(f"cannot read admin token file {where}: {exc.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise AdminTokenError(
            f"admin token file {where} is readable by group or others; run chmod 600 on it")
    token = text.strip()
    if len(token) < _MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise AdminTokenError(
            f"admin token file {where} must hold one token of at least {_MIN_TOKEN_CHARS} "
            "characters without spaces, e.g. from `openssl rand -hex 32`")
    return token


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_admin_address(config: Any) -> None:
    """Refuse a non-loopback ``[admin] address`` unless ``[admin] token_file`` is set.

    Raises ``AdminAddressRefused`` whose message names ``admin.address`` and the file.
    """
    host = config.admin.host
    if host is None or _is_loopback(host) or config.admin.token_file is not None:
        return
    raise AdminAddressRefused(
        f"{config.source_path}: admin.address = {config.admin.address!r} is not a loopback "
        "address; the admin API may listen beyond this host only with an explicit "
        "[admin] token_file (or use 127.0.0.1)")


def is_authorized(headers: Mapping[str, str], token: str) -> bool:
    """True when ``Authorization: Bearer <token>`` matches (constant-time comparison).

    ``headers`` maps lower-case names to values (a dict, or Starlette's ``Headers``).
    """
    value = headers.get("authorization", "")
    scheme, _, given = value.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
