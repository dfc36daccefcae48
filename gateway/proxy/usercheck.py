"""Does the backend know this user? Asked the way the gateway itself logs in: over IMAP.

The gateway reaches Dovecot only over IMAP (no ``doveadm``, no auth socket), so the
question is put as a master-user login *as* the user, exactly the login an app password
will make later (same ``[backend]`` address, TLS, client-address forwarding, master
user and ``master_login`` style). Dovecot's answers tell the cases apart:

- ``OK``: the master user may act as the user, so the user exists (we LOGOUT at once);
- ``NO [AUTHORIZATIONFAILED]``: the master credentials were accepted but there is no
  such user (Dovecot's passdb/userdb lookup of the target failed);
- ``NO [AUTHENTICATIONFAILED]`` (or another NO): the master login itself was refused
  (wrong master password, ``allow_nets`` not matching this host): the user is unknown
  *to us*, not known to be missing;
- no answer: the backend is unreachable.

It needs ``[backend] master_user`` and its password file; without them nothing can be
asked (the gateway refuses app passwords then anyway). The client address sent to
Dovecot (ID or PROXY v2) is this host's own address towards the backend.
"""

from __future__ import annotations

import enum
import secrets
import socket
from dataclasses import dataclass

import trio

from gateway.config import Config, parse_address
from gateway.proxy.backend import BackendConnection, BackendUnavailable
from gateway.proxy.tls import backend_context
from gateway.proxy.values import ClientEndpoint

__all__ = ["UserCheck", "UserCheckResult", "check_backend_user"]


class UserCheck(enum.Enum):
    EXISTS = "exists"
    UNKNOWN_USER = "unknown_user"
    MASTER_REFUSED = "master_refused"
    UNAVAILABLE = "unavailable"
    NOT_CONFIGURED = "not_configured"


@dataclass(frozen=True)
class UserCheckResult:
    outcome: UserCheck
    #: What happened, for the administrator (never contains a password).
    detail: str


def _local_address(host: str, port: int) -> str:
    """The address this host uses towards ``host`` (a UDP connect sends nothing)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


async def check_backend_user(config: Config, master_password: str | None,
                             user: str) -> UserCheckResult:
    """Log in to the backend as ``user`` through the master user; see the module docstring."""
    b = config.backend
    where = f"[backend] in {config.source_path}"
    if not b.master_user or master_password is None:
        return UserCheckResult(
            UserCheck.NOT_CONFIGURED,
            f"no [backend] master_user in {config.source_path}: the gateway cannot ask "
            "Dovecot about users (and refuses app passwords without one)")
    host, port = parse_address(b.address)
    local_ip = _local_address(host, port)
    endpoint = ClientEndpoint(ip=local_ip, port=0, local_ip=local_ip, local_port=0,
                              session_id="cli-" + secrets.token_hex(6), tls_version=None)
    ssl_context = backend_context(b.ca_file) if b.tls != "none" else None
    try:
        conn = await BackendConnection.connect(
            host=host, port=port, tls=b.tls, ssl_context=ssl_context,
            client_ip_mode=b.client_ip, endpoint=endpoint, connect_timeout=b.connect_timeout)
    except BackendUnavailable as exc:
        return UserCheckResult(UserCheck.UNAVAILABLE, f"{exc} ({where})")
    try:
        if b.master_login == "separator":
            authzid, authcid = "", f"{user}{b.master_separator}{b.master_user}"
        else:
            authzid, authcid = user, b.master_user
        result = await conn.login_plain(authzid=authzid, authcid=authcid,
                                        password=master_password, timeout=b.login_timeout)
        if result.ok:
            with trio.move_on_after(b.login_timeout):
                await conn.stream.send_all(b"z LOGOUT\r\n")
    except BackendUnavailable as exc:
        return UserCheckResult(UserCheck.UNAVAILABLE, f"{exc} ({where})")
    finally:
        await conn.aclose()
    answer = result.line.decode("utf-8", "replace").strip()
    if result.ok:
        return UserCheckResult(UserCheck.EXISTS, f"Dovecot let master user {b.master_user} "
                               f"log in as {user}")
    if result.code == "AUTHORIZATIONFAILED":
        return UserCheckResult(UserCheck.UNKNOWN_USER, f"Dovecot does not know the user {user} "
                               f"(a master login as {user} answered {answer!r})")
    if result.code in ("UNAVAILABLE", "PRIVACYREQUIRED"):
        return UserCheckResult(UserCheck.UNAVAILABLE, f"Dovecot answered {answer!r} ({where})")
    return UserCheckResult(
        UserCheck.MASTER_REFUSED,
        f"Dovecot refused the master login of {b.master_user} ({answer!r}): check "
        f"master_user, master_password_file and the master user's allow_nets ({where})")
