"""Client side of the admin API: ``imap-gateway sessions ...`` and ``bans ...``.

Synchronous on purpose (the CLI is a short-lived command, stdlib ``http.client`` is
enough). ``AdminClient`` speaks to the admin API (``gateway.web.admin``); the ``*_command`` functions
turn its answers into the CLI's ``(exit code, text or dict)`` pair for ``cli._emit``.
Every error message says what to do: start the gateway, fix ``[admin]``, list first.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from gateway.cliformat import json_times, table
from gateway.web.token import AdminTokenError, admin_token_path, load_admin_token

__all__ = [
    "AdminClient",
    "AdminDisabled",
    "AdminRequestError",
    "AdminUnreachable",
    "bans_add_command",
    "bans_list_command",
    "bans_remove_command",
    "client_from_config",
    "sessions_kill_command",
    "sessions_list_command",
]

DEFAULT_TIMEOUT = 10.0


class AdminDisabled(Exception):
    """``[admin] address = ""``: the running gateway has no admin API to talk to."""


class AdminUnreachable(Exception):
    """No admin API answered at the configured address (gateway stopped, wrong port)."""


class AdminRequestError(Exception):
    """The admin API answered with an error status; ``message`` is its explanation."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class AdminClient:
    """One request per call, each on a new connection (a CLI command makes one or two).

    ``where`` is the human description of the address ("... ([admin] address in FILE)")
    used in ``AdminUnreachable``; ``token_source`` names the token file for 401 hints.
    """

    host: str
    port: int
    token: str = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT
    where: str = ""
    token_source: str = ""

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request and return the decoded JSON body of a 2xx answer.

        Raises ``AdminUnreachable`` when nothing listens or answers, ``AdminRequestError``
        for an error status (with the server's message).
        """
        where = self.where or f"{self.host}:{self.port}"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except ConnectionRefusedError:
            raise AdminUnreachable(
                f"connection refused: is the gateway running? admin API at {where}") from None
        except TimeoutError:
            raise AdminUnreachable(
                f"no answer within {self.timeout:g}s: is the gateway running? admin API at "
                f"{where}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise AdminUnreachable(
                f"{exc.__class__.__name__}: {exc}: is the gateway running? admin API at "
                f"{where}") from None
        finally:
            conn.close()
        try:
            payload = json.loads(raw)
        except ValueError:
            raise AdminRequestError(
                resp.status, f"not an admin API answer (HTTP {resp.status}) from {where}; is "
                "[admin] address the gateway's admin port?") from None
        if 200 <= resp.status < 300:
            return payload
        message = payload.get("error") if isinstance(payload, dict) else None
        message = str(message or f"HTTP {resp.status}")
        if resp.status == 401 and self.token_source:
            message += (f"; the token read from {self.token_source} is not the running "
                        "gateway's (was it started with another config?)")
        raise AdminRequestError(resp.status, message)

    def list_sessions(self) -> list[dict[str, Any]]:
        return self.request("GET", "/sessions")["sessions"]

    def kill_session(self, session_id: str) -> dict[str, Any]:
        return self.request("DELETE", "/sessions/" + quote(session_id, safe=""))

    def list_bans(self) -> list[dict[str, Any]]:
        return self.request("GET", "/bans")["bans"]

    def add_ban(self, network: str, ttl: str | None = None,
                reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"network": network}
        if ttl is not None:
            body["ttl"] = ttl
        if reason is not None:
            body["reason"] = reason
        return self.request("POST", "/bans", body)

    def remove_ban(self, network: str) -> dict[str, Any]:
        return self.request("DELETE", "/bans/" + quote(network, safe=""))


def client_from_config(config: Any, timeout: float = DEFAULT_TIMEOUT) -> AdminClient:
    """An ``AdminClient`` for the gateway that runs with ``config``.

    Raises ``AdminDisabled`` when ``[admin] address`` is empty and ``AdminTokenError``
    when the token file cannot be read (the CLI never creates it).
    """
    if not config.admin.address:
        raise AdminDisabled(
            f"the admin API is turned off ([admin] address = \"\" in {config.source_path}); "
            "set it, e.g. address = \"127.0.0.1:9144\", and restart the gateway")
    token = load_admin_token(config, create=False)
    return AdminClient(
        host=config.admin.host, port=config.admin.port, token=token, timeout=timeout,
        where=f"{config.admin.address} ([admin] address in {config.source_path})",
        token_source=str(admin_token_path(config)),
    )


# ---------------------------------------------------------------------------
# CLI commands: (exit code, payload) for cli._emit


def _failure(exc: Exception, as_json: bool) -> tuple[int, Any]:
    message = exc.message if isinstance(exc, AdminRequestError) else str(exc)
    return 1, ({"error": message} if as_json else f"imap-gateway: {message}")


_ERRORS = (AdminUnreachable, AdminRequestError, AdminDisabled, AdminTokenError)


def _age(seconds: float) -> str:
    """Compact duration for tables: 45s, 12m, 3h, 2d."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def format_sessions(sessions: list[dict[str, Any]], now: float) -> str:
    if not sessions:
        return "no sessions"
    rows = []
    for s in sessions:
        factor = s.get("factor") or "-"
        if s.get("app_password"):
            factor = f"app-password:{s['app_password']}"
        started = s.get("started")
        rows.append([
            s["id"], s.get("user") or "-", f"{s['client_ip']}:{s['client_port']}",
            s.get("listener") or "-", _age(now - started) if started else "-", factor,
            str(s.get("bytes_in", 0)), str(s.get("bytes_out", 0)), s.get("state") or "-",
        ])
    return table(["ID", "USER", "CLIENT", "LISTENER", "AGE", "FACTOR", "IN", "OUT", "STATE"],
                  rows)


def format_bans(bans: list[dict[str, Any]], now: float) -> str:
    if not bans:
        return "no active bans"
    rows = [[b["network"], b["scope"], b["reason"], b["source"],
             _age(now - b["created"]) + " ago", "in " + _age(b["expires"] - now)] for b in bans]
    return table(["NETWORK", "SCOPE", "REASON", "SOURCE", "CREATED", "EXPIRES"], rows)


def _ban_line(verb: str, ban: dict[str, Any], now: float) -> str:
    return (f"{verb} {ban['network']} ({ban['scope']}, reason {ban['reason']!r}) for "
            f"{_age(ban['expires'] - now)}")


def sessions_list_command(client: AdminClient, as_json: bool,
                          now: float | None = None) -> tuple[int, Any]:
    try:
        sessions = client.list_sessions()
    except _ERRORS as exc:
        return _failure(exc, as_json)
    if as_json:
        return 0, {"sessions": json_times(sessions)}
    return 0, format_sessions(sessions, time.time() if now is None else now)


def sessions_kill_command(client: AdminClient, session_id: str,
                          as_json: bool) -> tuple[int, Any]:
    try:
        result = client.kill_session(session_id)
    except _ERRORS as exc:
        return _failure(exc, as_json)
    if as_json:
        return 0, result
    who = f" of {result['user']}" if result.get("user") else ""
    return 0, f"killed session {session_id}{who}"


def bans_list_command(client: AdminClient, as_json: bool,
                      now: float | None = None) -> tuple[int, Any]:
    try:
        bans = client.list_bans()
    except _ERRORS as exc:
        return _failure(exc, as_json)
    if as_json:
        return 0, {"bans": json_times(bans)}
    return 0, format_bans(bans, time.time() if now is None else now)


def bans_add_command(client: AdminClient, network: str, ttl: str | None, reason: str | None,
                     as_json: bool, now: float | None = None) -> tuple[int, Any]:
    try:
        ban = client.add_ban(network, ttl=ttl, reason=reason)
    except _ERRORS as exc:
        return _failure(exc, as_json)
    if as_json:
        return 0, json_times(ban)
    line = _ban_line("banned", ban, time.time() if now is None else now)
    if ban.get("ttl_capped"):
        line += f" (--ttl capped at {_age(ban['ttl_max'])}, [limits] ban_ttl_max)"
    return 0, line


def bans_remove_command(client: AdminClient, network: str, as_json: bool) -> tuple[int, Any]:
    try:
        result = client.remove_ban(network)
    except _ERRORS as exc:
        return _failure(exc, as_json)
    if as_json:
        return 0, result
    return 0, f"removed the ban of {result['removed']}"
