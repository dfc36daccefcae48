"""The local admin API: list and kill sessions, list/add/remove bans.

Rules of this module:

1. Every request must carry ``Authorization: Bearer <token>``; the token is compared
   with ``hmac.compare_digest`` *before* the path is looked at, so a caller without the
   token learns nothing, not even which paths exist. The token is never logged, put in
   an exception or a repr.
2. The API listens on loopback unless the administrator chose a token file explicitly
   (``[admin] token_file``): an auto-generated token on a public port would be a secret
   nobody knows is exposed.
3. HTTP is deliberately tiny (like ``gateway.observability.http``): one request per
   connection, JSON in and out, a request is at most ``MAX_REQUEST`` bytes (head and
   body together) and must be read, handled and answered within ``REQUEST_DEADLINE``.
   ``RequestReader`` is sans-IO (bytes in, a ``Request`` out) so tests can drive it byte
   by byte; its buffer is bounded by ``MAX_REQUEST`` and it scans each byte once.
4. Handlers decide, the shell acts: ``handle_request`` takes the clock ``now`` (wall-clock
   seconds, the limiter's clock for bans) and returns a ``Response``.

Endpoints::

    GET    /sessions          -> 200 {"sessions": [...]}
    DELETE /sessions/<id>     -> 200 {"killed": <id>, ...} | 404
    GET    /bans              -> 200 {"bans": [...]}
    POST   /bans              -> 201 <ban>   body {"network", "ttl"?, "reason"?}
    DELETE /bans/<network>    -> 200 {"removed": <network>} | 404   (network URL-encoded)

Errors are ``{"error": "..."}`` with 400, 401, 404, 405, 408, 409 (kill before login),
413, 500 or 503.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

import trio

from gateway.config import Config, DurationError, ListenerConfig, parse_duration
from gateway.netaddr import plain_ip
from gateway.observability.logs import get_logger
from gateway.secretfile import SecretFileError, create_secret_file, read_secret_file

if TYPE_CHECKING:
    # Only for the annotation: the admin CLI imports this module, and the limiter
    # (with the metrics behind it) is loaded when a ban request first needs it.
    from gateway.limits.limiter import Limiter

__all__ = [
    "KILL_MESSAGE",
    "MAX_REQUEST",
    "REQUEST_DEADLINE",
    "AdminAddressRefused",
    "AdminGateway",
    "AdminSession",
    "AdminTokenError",
    "HttpError",
    "Request",
    "RequestReader",
    "Response",
    "admin_token_path",
    "check_admin_address",
    "handle_request",
    "is_authorized",
    "load_admin_token",
    "serve_admin",
    "session_view",
]

log = get_logger()

MAX_REQUEST = 64 * 1024
REQUEST_DEADLINE = 5.0
#: What the client of a killed session reads after ``* BYE``.
KILL_MESSAGE = "Session terminated by administrator."
TOKEN_FILE_NAME = "admin.token"
_MIN_TOKEN_CHARS = 16
_MAX_REASON_CHARS = 200


# ---------------------------------------------------------------------------
# Errors


class AdminTokenError(Exception):
    """The admin token file is missing, unreadable, too open or too short; the message
    names the file and what to do."""


class AdminAddressRefused(ValueError):
    """``[admin] address`` is not loopback and no token file was chosen explicitly."""


class HttpError(Exception):
    """A request we answer with an error status; ``message`` goes to the client as JSON."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


# ---------------------------------------------------------------------------
# What the API needs from the running gateway (``gateway.proxy.server.GatewayContext``
# and its ``ClientSession``s); read-only, so the API cannot rebind what it inspects.


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
    @property
    def cancel_scope(self) -> trio.CancelScope | None: ...  # set while relayed

    def kill(self, reason: str, message: str) -> None: ...


class AdminGateway(Protocol):
    """The running gateway as the admin API sees it."""

    @property
    def config(self) -> Config: ...
    @property
    def sessions(self) -> Mapping[str, AdminSession]: ...
    @property
    def limiter(self) -> Limiter: ...


# ---------------------------------------------------------------------------
# Token and bind address (both sides: the gateway creates, the CLI reads)


def admin_token_path(config: Config) -> Path:
    """``[admin] token_file``, or ``admin.token`` next to ``[store] path`` when unset."""
    explicit = config.admin.token_file
    return Path(explicit) if explicit is not None else config.store.path.parent / TOKEN_FILE_NAME


def load_admin_token(config: Config, create: bool) -> str:
    """The admin API token, read from ``admin_token_path(config)``.

    With ``create`` (the gateway at start) a missing default file is made: 32 random
    bytes as hex, mode 0600, its directory 0700. An explicit ``[admin] token_file`` is
    never created: the administrator chose it, so a missing one is a mistake to report.
    The file must give group and others no access (``gateway.secretfile``, as for the
    master password file). Raises ``AdminTokenError`` naming the file and the fix.
    """
    path = admin_token_path(config)
    where = f"{path} ([admin] token_file in {config.source_path})"
    if create and config.admin.token_file is None:
        try:
            # False when made earlier (or by a concurrent start): read it below.
            create_secret_file(path, (secrets.token_hex(32) + "\n").encode("ascii"))
        except OSError as exc:
            raise AdminTokenError(f"cannot create admin token file {where}: {exc.strerror}") from None
    try:
        data = read_secret_file(path)
    except FileNotFoundError:
        hint = ("start the gateway once (it creates it)" if config.admin.token_file is None
                else "create it with a random secret, e.g. `openssl rand -hex 32 > FILE; "
                     "chmod 600 FILE`")
        raise AdminTokenError(f"admin token file {where} does not exist; {hint}") from None
    except SecretFileError as exc:
        raise AdminTokenError(f"admin token file {where} {exc.problem}") from None
    token = data.decode("utf-8", errors="replace").strip()
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


def check_admin_address(config: Config) -> None:
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


def is_authorized(headers: dict[str, str], token: str) -> bool:
    """True when ``Authorization: Bearer <token>`` matches (constant-time comparison)."""
    value = headers.get("authorization", "")
    scheme, _, given = value.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


# ---------------------------------------------------------------------------
# HTTP, sans-IO


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str] = field(repr=False)  # holds the bearer token
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass(frozen=True)
class Response:
    status: int
    body: Any  # JSON-ready
    headers: tuple[tuple[str, str], ...] = ()

    def to_bytes(self) -> bytes:
        data = (json.dumps(self.body, separators=(",", ":"), default=str) + "\n").encode()
        reason = _REASONS.get(self.status, "Unknown")
        head = (f"HTTP/1.1 {self.status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nCache-Control: no-store\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in self.headers)
                + "Connection: close\r\n\r\n")
        return head.encode("ascii") + data


_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
            413: "Content Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


class RequestReader:
    """Incremental HTTP/1.1 request parser: ``feed(data)`` until it returns a ``Request``.

    States: ``head`` (until CRLF CRLF) -> ``body`` (Content-Length bytes) -> ``done``.
    Raises ``HttpError`` (400, 413) on the first byte that makes the request invalid or
    too large; the buffer never holds more than ``MAX_REQUEST`` bytes. Each fed byte is
    searched once (the header-end search resumes where it stopped).
    """

    def __init__(self, max_size: int = MAX_REQUEST) -> None:
        self.max_size = max_size
        self.state = "head"
        self._buf = bytearray()
        self._scan_from = 0
        self._head: tuple[str, str, dict[str, str]] | None = None
        self._body_start = 0
        self._length = 0

    def feed(self, data: bytes) -> Request | None:
        if self.state == "done":
            raise HttpError(400, "one request per connection")
        self._buf += data
        if len(self._buf) > self.max_size:
            raise HttpError(413, f"request larger than {self.max_size} bytes")
        if self.state == "head":
            end = self._buf.find(b"\r\n\r\n", self._scan_from)
            if end < 0:
                self._scan_from = max(0, len(self._buf) - 3)
                return None
            self._head = _parse_head(bytes(self._buf[:end]))
            self._body_start = end + 4
            self._length = _content_length(self._head[2])
            if self._body_start + self._length > self.max_size:
                raise HttpError(413, f"request larger than {self.max_size} bytes")
            self.state = "body"
        if len(self._buf) - self._body_start < self._length:
            return None
        self.state = "done"
        assert self._head is not None
        method, target, headers = self._head
        body = bytes(self._buf[self._body_start:self._body_start + self._length])
        return Request(method, target, headers, body)

    def eof(self) -> None:
        """The client closed before the request was complete."""
        if self.state != "done":
            raise HttpError(400, "incomplete request")


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "request head must be ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise HttpError(400, "malformed request line; expected e.g. 'GET /bans HTTP/1.1'")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        key = name.lower()
        if key in headers and key in ("content-length", "authorization"):
            raise HttpError(400, f"duplicate {name} header")
        headers[key] = value.strip()
    if "transfer-encoding" in headers:
        raise HttpError(400, "Transfer-Encoding is not supported; send Content-Length")
    return parts[0], parts[1], headers


def _content_length(headers: dict[str, str]) -> int:
    value = headers.get("content-length", "0")
    if not value.isdigit() or not value.isascii():
        raise HttpError(400, f"invalid Content-Length {value!r}")
    return int(value)


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


def _json_object(req: Request) -> dict[str, Any]:
    try:
        data = json.loads(req.body or b"null")
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


def parse_ban_request(req: Request) -> BanRequest:
    """Decode ``POST /bans``; unknown keys are refused so a typo ("ttl_s") is not ignored."""
    data = _json_object(req)
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
# Routing


def _route(path: str) -> tuple[str, str | None]:
    """``("sessions"|"bans", item or None)``; HttpError 404 for anything else."""
    for name in ("sessions", "bans"):
        if path == f"/{name}":
            return name, None
        prefix = f"/{name}/"
        if path.startswith(prefix) and len(path) > len(prefix):
            return name, unquote(path[len(prefix):])
    raise HttpError(404, f"no such endpoint {path!r}; endpoints: /sessions, /bans")


_ALLOWED = {("sessions", False): "GET", ("sessions", True): "DELETE",
            ("bans", False): "GET, POST", ("bans", True): "DELETE"}


async def handle_request(ctx: AdminGateway, req: Request, token: str, now: float) -> Response:
    """Authorize, route and execute one request against the running gateway ``ctx``.

    ``now`` is wall-clock seconds (bans are stored on that clock). Never raises
    ``HttpError``: it becomes the response.
    """
    try:
        if not is_authorized(req.headers, token):
            raise HttpError(401, "missing or wrong bearer token (see [admin] token_file)",
                            (("WWW-Authenticate", 'Bearer realm="imap-gateway"'),))
        resource, item = _route(req.path)
        allowed = _ALLOWED[(resource, item is not None)]
        if req.method not in allowed.split(", "):
            raise HttpError(405, f"{req.method} is not allowed on {req.path}; use {allowed}",
                            (("Allow", allowed),))
        if resource == "sessions":
            return _sessions(ctx) if item is None else _kill(ctx, item)
        return await _bans(ctx, req, item, now)
    except HttpError as exc:
        return Response(exc.status, {"error": exc.message}, exc.headers)


def _sessions(ctx: AdminGateway) -> Response:
    views = [session_view(s) for s in list(ctx.sessions.values())]
    views.sort(key=lambda v: (v["started"] is None, v["started"] or 0, v["id"]))
    return Response(200, {"sessions": views})


def _kill(ctx: AdminGateway, session_id: str) -> Response:
    session = ctx.sessions.get(session_id)
    if session is None:
        raise HttpError(404, f"no session {session_id!r} (imap-gateway sessions list shows them)")
    if session.cancel_scope is None:
        # ClientSession.kill only reaches a session whose relay is running; saying "killed"
        # for one that goes on would be a lie to the administrator.
        raise HttpError(409, f"session {session_id!r} has not logged in yet and cannot be "
                             "killed before login; ban its address instead "
                             "(imap-gateway bans add IP)")
    session.kill("admin_kill", KILL_MESSAGE)
    log.info("admin.session_killed", session_id=session_id, user=session.user,
             client_ip=session.client_ip)
    return Response(200, {"killed": session_id, "user": session.user,
                          "state": session_state(session)})


async def _bans(ctx: AdminGateway, req: Request, item: str | None, now: float) -> Response:
    from gateway.limits.limiter import BanRefused
    from gateway.limits.outage import state_unavailable
    from gateway.limits.rules import InvalidAddress, normalize_network
    from gateway.limits.state import StateUnavailable

    limiter = ctx.limiter
    try:
        if req.method == "GET":
            bans = await limiter.list_bans(now)
            return Response(200, {"bans": [asdict(b) for b in bans]})
        if req.method == "POST":
            ask = parse_ban_request(req)
            ban = await limiter.add_ban(ask.network, now, ttl=ask.ttl, reason=ask.reason)
            log.info("admin.ban_added", network=ban.network, scope=ban.scope,
                     reason=ban.reason, expires=ban.expires)
            return Response(201, asdict(ban))
        assert item is not None
        network = str(normalize_network(item))
        if not await limiter.remove_ban(network, now):
            raise HttpError(404, f"no ban of exactly {network} (imap-gateway bans list shows "
                                 "them; a ban of a larger network is removed by its own name)")
        log.info("admin.ban_removed", network=network)
        return Response(200, {"removed": network})
    except (BanRefused, InvalidAddress) as exc:
        raise HttpError(400, str(exc)) from None
    except StateUnavailable as exc:
        state_unavailable("admin_bans", exc, log)
        raise HttpError(503, f"ban state unavailable: {exc}") from None


# ---------------------------------------------------------------------------
# The trio shell


async def serve_admin(ctx: AdminGateway, host: str, port: int, token: str, *,
                      listeners: list[trio.SocketListener] | None = None,
                      task_status: trio.TaskStatus[list[trio.SocketListener]]
                      = trio.TASK_STATUS_IGNORED,
                      clock: Callable[[], float] = time.time) -> None:
    """Serve the admin API on ``host:port`` until cancelled.

    ``ctx`` is the running gateway (``gateway.proxy.server.GatewayContext``). Checks ``[admin]`` first
    (``check_admin_address``: raises ``AdminAddressRefused`` before binding) and refuses
    an empty token. ``listeners``: sockets already bound to ``host:port`` (the gateway
    binds every address before it serves any); None binds here. ``task_status.started``
    receives the listeners (port 0 -> read the bound port from them). Each connection gets
    ``REQUEST_DEADLINE`` in total.
    """
    check_admin_address(ctx.config)
    if len(token) < _MIN_TOKEN_CHARS:
        raise AdminTokenError("the admin API needs a token; see load_admin_token")
    if listeners is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners)
    log.info("admin.listening", address=f"{host}:{listeners[0].socket.getsockname()[1]}")
    await trio.serve_listeners(partial(_serve_one, ctx, token, clock), listeners)


async def _serve_one(ctx: AdminGateway, token: str, clock: Callable[[], float],
                     stream: trio.SocketStream) -> None:
    async with stream:
        reader = RequestReader()
        req: Request | None = None
        response: Response | None = None
        with trio.move_on_after(REQUEST_DEADLINE):
            try:
                while req is None:
                    data = await stream.receive_some(8192)
                    if not data:
                        reader.eof()
                    req = reader.feed(data)
                response = await handle_request(ctx, req, token, clock())
            except HttpError as exc:
                response = Response(exc.status, {"error": exc.message})
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            except Exception:
                # A bug here must never take the listener (and the gateway) down.
                log.exception("admin.request_crashed", path=req.path if req else None)
                response = Response(500, {"error": "internal error; see the gateway log"})
        if response is None:
            response = (
                Response(408, {"error": f"request not received within {REQUEST_DEADLINE:g}s"})
                if req is None else
                Response(503, {"error": f"not answered within {REQUEST_DEADLINE:g}s"}))
        if response.status == 401:
            log.warning("admin.unauthorized", client_ip=_peer_ip(stream),
                        path=req.path if req else None)
        with trio.move_on_after(1):
            try:
                await stream.send_all(response.to_bytes())
                if reader.state != "done":
                    await _drain(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


async def _drain(stream: trio.SocketStream, limit: int = 4 * MAX_REQUEST) -> None:
    """Read and drop what the client is still sending before we close.

    Closing a socket with unread input makes the kernel send RST, and a client still
    uploading a too-large body would then lose our 413 before reading it. Bounded by
    ``limit`` bytes and by the caller's deadline.
    """
    await stream.send_eof()
    seen = 0
    while seen < limit:
        data = await stream.receive_some(16384)
        if not data:
            return
        seen += len(data)


def _peer_ip(stream: trio.SocketStream) -> str | None:
    try:
        return plain_ip(stream.socket.getpeername()[0])
    except OSError:
        return None
