"""The admin API's handlers: list and kill sessions, list/add/remove bans.

Rules of this module:

1. Handlers decide, the shell acts: each is a function of the gateway's services (its
   live sessions and its limiter), the request's decoded parts and the clock ``now``
   (wall-clock seconds, the limiter's clock for bans); it returns a ``Reply`` or raises
   ``HttpError``. No HTTP parsing, no sockets, no framework: ``gateway.web.app`` maps
   routes onto these functions, and tests call them directly.
2. No view ever carries a credential (``session_view`` lists exactly what it shows).
3. The bearer token is checked before any of this runs (``gateway.web.app``).

Endpoints::

    GET    /sessions          -> 200 {"sessions": [...]}
    DELETE /sessions/<id>     -> 200 {"killed": <id>, ...} | 404 | 409 (before login)
    GET    /bans              -> 200 {"bans": [...]}
    POST   /bans              -> 201 <ban>   body {"network", "ttl"?, "reason"?}
    DELETE /bans/<network>    -> 200 {"removed": <network>} | 404   (network URL-encoded)
    GET    /events            -> WebSocket: the live event feed (gateway.web.feed)

Errors are ``{"error": "..."}`` with 400, 401, 404, 405, 408, 409, 413, 500 or 503.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from gateway.config import DurationError, ListenerConfig, parse_duration
from gateway.limits.limiter import BanRefused, Limiter
from gateway.limits.rules import InvalidAddress, normalize_network
from gateway.limits.state import StateUnavailable
from gateway.observability.logs import get_logger

__all__ = [
    "ALLOWED",
    "ENDPOINTS",
    "KILL_MESSAGE",
    "AdminServices",
    "BanRequest",
    "HttpError",
    "Reply",
    "add_ban",
    "kill_session",
    "list_bans",
    "list_sessions",
    "no_such_endpoint",
    "not_allowed",
    "parse_ban_request",
    "remove_ban",
    "session_state",
    "session_view",
]

log = get_logger()

#: What the client of a killed session reads after ``* BYE``.
KILL_MESSAGE = "Session terminated by administrator."
_MAX_REASON_CHARS = 200

#: The methods each route answers, in the order the ``Allow`` header lists them.
ALLOWED = {"/sessions": "GET", "/sessions/{id}": "DELETE",
           "/bans": "GET, POST", "/bans/{network}": "DELETE"}
ENDPOINTS = "/sessions, /bans, /events (WebSocket)"


class AdminSession(Protocol):
    """A live client session as the admin API lists and kills it."""

    @property
    def session_id(self) -> str: ...
    @property
    def user(self) -> str | None: ...  # None until login
    @property
    def client_ip(self) -> str: ...
    @property
    def client_port(self) -> int: ...
    @property
    def listener(self) -> ListenerConfig: ...
    @property
    def started_at(self) -> float: ...
    @property
    def factor(self) -> str: ...
    @property
    def app_password_label(self) -> str | None: ...
    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...
    @property
    def kill_reason(self) -> str | None: ...

    def kill(self, reason: str, message: str) -> None: ...


class AdminServices(Protocol):
    """What the handlers need from the running gateway (``GatewayContext``)."""

    @property
    def sessions(self) -> Mapping[str, AdminSession]: ...
    @property
    def limiter(self) -> Limiter: ...


class HttpError(Exception):
    """A request we answer with an error status; ``message`` goes to the client as JSON."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass(frozen=True)
class Reply:
    """A handler's answer: status, a JSON-ready body, extra headers."""

    status: int
    body: Any
    headers: tuple[tuple[str, str], ...] = ()


def no_such_endpoint(path: str) -> HttpError:
    return HttpError(404, f"no such endpoint {path!r}; endpoints: {ENDPOINTS}")


def not_allowed(method: str, path: str, allowed: str) -> HttpError:
    return HttpError(405, f"{method} is not allowed on {path}; use {allowed}",
                     (("Allow", allowed),))


# ---------------------------------------------------------------------------
# Views and request decoding (pure)


def session_state(session: AdminSession) -> str:
    """``preauth`` before login, ``authenticated`` while relayed, ``closing`` once killed."""
    if session.kill_reason:
        return "closing"
    return "preauth" if session.user is None else "authenticated"


def session_view(session: AdminSession) -> dict[str, Any]:
    """One ClientSession as the API shows it; no credential, ever."""
    logged_in = session.user is not None
    return {
        "id": session.session_id,
        "user": session.user,
        "client_ip": session.client_ip,
        "client_port": session.client_port,
        "listener": session.listener.address,
        "started": session.started_at,
        "factor": session.factor if logged_in else None,
        "app_password": session.app_password_label if logged_in else None,
        "bytes_in": session.bytes_in,
        "bytes_out": session.bytes_out,
        "state": session_state(session),
    }


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise HttpError(400, 'body must be a JSON object, e.g. {"network": "192.0.2.7"}')
    return data


@dataclass(frozen=True)
class BanRequest:
    network: str
    ttl: float | None
    reason: str


def parse_ban_request(body: bytes) -> BanRequest:
    """Decode ``POST /bans``; unknown keys are refused so a typo ("ttl_s") is not ignored."""
    data = _json_object(body)
    unknown = sorted(set(data) - {"network", "ttl", "reason"})
    if unknown:
        raise HttpError(400, f"unknown key(s) {', '.join(unknown)}; known: network, ttl, reason")
    network = data.get("network")
    if not isinstance(network, str) or not network:
        raise HttpError(400, "'network' is required: an address or CIDR, e.g. 192.0.2.0/24")
    ttl_text = data.get("ttl")
    ttl: float | None = None
    if ttl_text is not None:
        try:
            ttl = parse_duration(ttl_text)
        except DurationError as exc:
            raise HttpError(400, f"ttl: {exc}") from None
        if ttl <= 0:
            raise HttpError(400, "ttl must be longer than 0s")
    reason = data.get("reason", "admin")
    if (not isinstance(reason, str) or not reason or len(reason) > _MAX_REASON_CHARS
            or not reason.isprintable()):
        raise HttpError(
            400, f"'reason' must be printable text of 1 to {_MAX_REASON_CHARS} characters")
    return BanRequest(network, ttl, reason)


# ---------------------------------------------------------------------------
# Handlers


def list_sessions(services: AdminServices) -> Reply:
    views = [session_view(s) for s in list(services.sessions.values())]
    views.sort(key=lambda v: (v["started"] is None, v["started"] or 0, v["id"]))
    return Reply(200, {"sessions": views})


def kill_session(services: AdminServices, session_id: str) -> Reply:
    session = services.sessions.get(session_id)
    if session is None:
        raise HttpError(404, f"no session {session_id!r} (imap-gateway sessions list shows them)")
    if getattr(session, "cancel_scope", None) is None:
        # ClientSession.kill only reaches a session whose relay is running; saying "killed"
        # for one that goes on would be a lie to the administrator.
        raise HttpError(409, f"session {session_id!r} has not logged in yet and cannot be "
                             "killed before login; ban its address instead "
                             "(imap-gateway bans add IP)")
    session.kill("admin_kill", KILL_MESSAGE)
    log.info("admin.session_killed", session_id=session_id, user=session.user,
             client_ip=session.client_ip)
    return Reply(200, {"killed": session_id, "user": session.user,
                       "state": session_state(session)})


def _limiter(services: AdminServices) -> Limiter:
    return services.limiter


@contextmanager
def _ban_errors() -> Iterator[None]:
    """The limiter's refusals become 400, an unreachable ban store 503."""
    try:
        yield
    except (BanRefused, InvalidAddress) as exc:
        raise HttpError(400, str(exc)) from None
    except StateUnavailable as exc:
        raise HttpError(503, f"ban state unavailable: {exc}") from None


async def list_bans(services: AdminServices, now: float) -> Reply:
    limiter = _limiter(services)
    with _ban_errors():
        bans = await limiter.list_bans(now)
    return Reply(200, {"bans": [asdict(b) for b in bans]})


async def add_ban(services: AdminServices, body: bytes, now: float) -> Reply:
    limiter = _limiter(services)
    ask = parse_ban_request(body)
    with _ban_errors():
        ban = await limiter.add_ban(ask.network, now, ttl=ask.ttl, reason=ask.reason)
    # The limiter cuts a ttl past [limits] ban_ttl_max; the answer says so, so the CLI
    # can tell the administrator the ban is shorter than asked.
    _, capped = limiter.ban_ttl_for(ask.ttl)
    log.info("admin.ban_added", network=ban.network, scope=ban.scope,
             reason=ban.reason, expires=ban.expires, ttl_capped=capped)
    return Reply(201, {**asdict(ban), "ttl_capped": capped,
                       "ttl_max": limiter.limits.ban_ttl_max})


async def remove_ban(services: AdminServices, item: str, now: float) -> Reply:
    limiter = _limiter(services)
    with _ban_errors():
        network = str(normalize_network(item))
        removed = await limiter.remove_ban(network, now)
    if not removed:
        raise HttpError(404, f"no ban of exactly {network} (imap-gateway bans list shows "
                             "them; a ban of a larger network is removed by its own name)")
    log.info("admin.ban_removed", network=network)
    return Reply(200, {"removed": network})
