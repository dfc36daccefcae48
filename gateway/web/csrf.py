"""CSRF protection for the portal: a token tied to the session cookie, checked on every
state-changing request before any handler runs.

Theory of operation:

1. Every browser gets a session cookie (``SESSION_COOKIE``, ``__Host-`` prefixed:
   Secure, Path=/, no Domain, so a sibling host cannot plant one). A request without a
   well-formed one gets a fresh random id, set on the response.
2. The CSRF token is ``HMAC-SHA256(secret, session id)``, URL-safe base64. It is not
   stored anywhere: the server recomputes it from the cookie. A page puts it in its
   forms (``csrf_token`` field) or a script sends it as ``X-CSRF-Token``.
3. ``CSRFMiddleware`` refuses (403) a POST/PUT/PATCH/DELETE whose token does not match
   its cookie, or that came without the cookie at all, before routing. Forms must be
   ``application/x-www-form-urlencoded`` (the HTML default) or send the header; the body
   is read (at most ``MAX_FORM`` bytes) and replayed to the handler unchanged.

A cross-site page can make the browser send the cookie but cannot read it or the page,
so it cannot compute the token. ``secret`` is random per process unless the caller keeps
one: a restart then invalidates open forms (the user reloads the page), nothing more.
When sign-in lands, it must issue a new session id (``new_session_id``) so a session
fixed before login cannot be carried across it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "MAX_FORM",
    "SESSION_COOKIE",
    "CSRFMiddleware",
    "CSRFState",
    "check_token",
    "csrf_of",
    "make_token",
    "new_session_id",
]

SESSION_COOKIE = "__Host-session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
MAX_FORM = 64 * 1024
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SCOPE_KEY = "gateway.csrf"
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def make_token(secret: bytes, session_id: str) -> str:
    """The CSRF token for ``session_id``: an HMAC, so it cannot be made without ``secret``."""
    mac = hmac.new(secret, b"csrf\0" + session_id.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def check_token(secret: bytes, session_id: str, token: str | None) -> bool:
    """True when ``token`` is ``session_id``'s (constant-time comparison)."""
    if not token:
        return False
    return hmac.compare_digest(token.encode("utf-8", "replace"),
                               make_token(secret, session_id).encode("ascii"))


@dataclass(frozen=True)
class CSRFState:
    """What a handler may use: the browser's session id and the token for its forms."""

    session_id: str
    token: str
    new: bool  # the request carried no (valid) cookie; the response sets one


def csrf_of(conn: HTTPConnection) -> CSRFState:
    """The ``CSRFState`` of a request that passed ``CSRFMiddleware``."""
    return conn.scope[_SCOPE_KEY]


def _cookie_session_id(headers: Headers) -> str | None:
    for value in headers.getlist("cookie"):
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(value)
        except Exception:  # noqa: BLE001 - a malformed cookie header is no session
            continue
        morsel = jar.get(SESSION_COOKIE)
        if morsel is not None and _SESSION_ID.fullmatch(morsel.value):
            return morsel.value
    return None


def _set_cookie_header(session_id: str) -> tuple[bytes, bytes]:
    return (b"set-cookie",
            f"{SESSION_COOKIE}={session_id}; Path=/; Secure; HttpOnly; SameSite=Lax".encode())


class _FormTooLarge(Exception):
    pass


class CSRFMiddleware:
    """ASGI middleware: session cookie on every response, token check on unsafe methods."""

    def __init__(self, app: ASGIApp, secret: bytes, max_form: int = MAX_FORM) -> None:
        self.app = app
        self.secret = secret
        self.max_form = max_form

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        session_id = _cookie_session_id(headers)
        new = session_id is None
        if session_id is None:
            session_id = new_session_id()
        scope[_SCOPE_KEY] = CSRFState(session_id, make_token(self.secret, session_id), new)

        async def send_with_cookie(message: Message) -> None:
            if new and message["type"] == "http.response.start":
                message = {**message,
                           "headers": [*message.get("headers", ()), _set_cookie_header(session_id)]}
            await send(message)

        if scope["method"] not in SAFE_METHODS:
            token = headers.get(CSRF_HEADER)
            if token is None and _is_form(headers):
                try:
                    body = await self._read_body(receive)
                except _FormTooLarge:
                    await PlainTextResponse("form too large\n", 413)(scope, receive,
                                                                      send_with_cookie)
                    return
                receive = _replay(body, receive)
                token = _form_field(body, CSRF_FIELD)
            # No cookie means no session the token could belong to: refused even if some
            # token came along (it was made for another browser's session).
            if new or not check_token(self.secret, session_id, token):
                response = PlainTextResponse(
                    "CSRF check failed: reload the page and submit the form again\n", 403)
                await response(scope, receive, send_with_cookie)
                return
        await self.app(scope, receive, send_with_cookie)

    async def _read_body(self, receive: Receive) -> bytes:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            body += message.get("body", b"")
            if len(body) > self.max_form:
                raise _FormTooLarge
            if not message.get("more_body", False):
                break
        return bytes(body)


def _is_form(headers: Headers) -> bool:
    kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return kind == "application/x-www-form-urlencoded"


def _form_field(body: bytes, name: str) -> str | None:
    try:
        values = parse_qs(body.decode("ascii"), keep_blank_values=True,
                          max_num_fields=1000).get(name)
    except (UnicodeDecodeError, ValueError):
        return None
    return values[0] if values and len(values) == 1 else None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the already-read body once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
