"""CSRF protection for the portal: a token tied to the browser's web session, checked on
every state-changing request before any handler runs.

Theory of operation:

1. Two cookies, both ``__Host-`` prefixed (Secure, Path=/, no Domain, so a sibling host
   cannot plant one), HttpOnly and SameSite=Strict:

   - ``SESSION_COOKIE`` holds a signed-in web session's opaque id (the credential store
     keeps only its hash). Sign-in sets it and the second factor rotates it
     (``gateway.web.auth``); this module only reads it, through ``sessions`` (the
     store's ``get_web_session``), and clears it once the store no longer knows it
     (expired, signed out, revoked elsewhere).
   - ``PRESESSION_COOKIE`` is a random id for a browser that is not signed in: the
     sign-in form's token is bound to it (login CSRF). A request without a well-formed
     one gets a fresh id, set on the response. It is a separate cookie so that a
     cross-site navigation, which SameSite=Strict sends without cookies, can never
     overwrite the session cookie of a signed-in browser.

2. The token is an HMAC, URL-safe base64, never stored: the server recomputes it. For
   a live web session it is keyed by the session's own ``csrf_secret`` (from the store,
   so every gateway process sharing the store agrees) over the session cookie's value:
   the token changes when the session id rotates and dies with the session. Without
   one it is keyed by ``secret`` (random per process) over the pre-session id. A page
   puts it in its forms (``csrf_token`` field) or a script sends it as ``X-CSRF-Token``.

3. ``CSRFMiddleware`` refuses (403) a POST/PUT/PATCH/DELETE whose token does not match,
   before routing. Forms must be ``application/x-www-form-urlencoded`` (the HTML
   default) or send the header; the body is read (at most ``MAX_FORM`` bytes) and
   replayed to the handler unchanged.

A cross-site page can make the browser send a request but cannot read the cookies or
the page, so it cannot compute the token (and SameSite=Strict keeps the cookies off
cross-site requests in the first place).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.store.base import WebSession

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "MAX_FORM",
    "PRESESSION_COOKIE",
    "SESSION_COOKIE",
    "CSRFMiddleware",
    "CSRFState",
    "SessionLookup",
    "check_token",
    "clear_session_cookie",
    "csrf_of",
    "make_token",
    "new_session_id",
    "session_cookie",
    "session_token",
]

SESSION_COOKIE = "__Host-session"
PRESESSION_COOKIE = "__Host-presession"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
MAX_FORM = 64 * 1024
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SCOPE_KEY = "gateway.csrf"
_TOKEN_ID = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
_ATTRIBUTES = "Path=/; Secure; HttpOnly; SameSite=Strict"

#: ``(session cookie value, now) -> the live WebSession or None`` (the store's lookup).
SessionLookup = Callable[[str, float], WebSession | None]


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


def session_token(session: WebSession, session_id: str) -> str:
    """The CSRF token of a signed-in session whose cookie value is ``session_id``."""
    return make_token(session.csrf_secret.encode(), session_id)


def session_cookie(session_id: str) -> str:
    """The ``Set-Cookie`` value that gives the browser a (new) web session id."""
    return f"{SESSION_COOKIE}={session_id}; {_ATTRIBUTES}"


def clear_session_cookie() -> str:
    """The ``Set-Cookie`` value that makes the browser forget its web session id."""
    return f"{SESSION_COOKIE}=; Max-Age=0; {_ATTRIBUTES}"


@dataclass(frozen=True)
class CSRFState:
    """What a handler may use: the token for its forms and the browser's web session."""

    token: str
    #: The live web session of the session cookie; None when not signed in.
    session: WebSession | None = None
    #: That cookie's value (to rotate or end the session); secret, so not in a repr.
    session_id: str | None = field(default=None, repr=False)
    #: The request carried no (valid) pre-session cookie; the response sets one.
    new: bool = False
    #: The token of the pre-session: for a page that ends the web session it renders.
    signed_out_token: str = ""


def csrf_of(conn: HTTPConnection) -> CSRFState:
    """The ``CSRFState`` of a request that passed ``CSRFMiddleware``."""
    state: CSRFState = conn.scope[_SCOPE_KEY]
    return state


def _cookie(headers: Headers, name: str) -> str | None:
    for value in headers.getlist("cookie"):
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(value)
        except Exception:  # noqa: BLE001 - a malformed cookie header is no session
            continue
        morsel = jar.get(name)
        if morsel is not None and _TOKEN_ID.fullmatch(morsel.value):
            return morsel.value
    return None


class _FormTooLarge(Exception):
    pass


class CSRFMiddleware:
    """ASGI middleware: resolve the session cookie, set the pre-session cookie, check the
    token on unsafe methods.

    ``sessions`` looks a session cookie up (None: no signed-in sessions, only the
    pre-session); ``clock`` gives the wall-clock seconds it is asked with.
    """

    def __init__(self, app: ASGIApp, secret: bytes, max_form: int = MAX_FORM,
                 sessions: SessionLookup | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.secret = secret
        self.max_form = max_form
        self.sessions = sessions
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        session_id = _cookie(headers, SESSION_COOKIE)
        session = None
        if session_id is not None and self.sessions is not None:
            session = self.sessions(session_id, self.clock())
        # A session cookie the store does not know (any more) is cleared, unless the
        # handler sets a new one in the same response (a sign-in).
        stale = session is None and any(
            c.strip().startswith(SESSION_COOKIE + "=")
            for v in headers.getlist("cookie") for c in v.split(";"))
        presession = _cookie(headers, PRESESSION_COOKIE)
        new = presession is None
        if presession is None:
            presession = new_session_id()
        signed_out_token = make_token(self.secret, presession)
        token = signed_out_token
        if session is not None and session_id is not None:
            token = session_token(session, session_id)
        scope[_SCOPE_KEY] = CSRFState(token, session, session_id if session else None, new,
                                      signed_out_token)

        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = []
                if new:
                    extra.append((b"set-cookie",
                                  f"{PRESESSION_COOKIE}={presession}; {_ATTRIBUTES}".encode()))
                if stale and not _sets_session_cookie(message):
                    extra.append((b"set-cookie", clear_session_cookie().encode()))
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        if scope["method"] not in SAFE_METHODS:
            given = headers.get(CSRF_HEADER)
            if given is None and _is_form(headers):
                try:
                    body = await self._read_body(receive)
                except _FormTooLarge:
                    await PlainTextResponse("form too large\n", 413)(scope, receive,
                                                                      send_with_cookies)
                    return
                receive = _replay(body, receive)
                given = _form_field(body, CSRF_FIELD)
            # Without a cookie there is no session the token could belong to: refused
            # even if some token came along (it was made for another browser).
            if (session is None and new) or not hmac.compare_digest(
                    (given or "").encode("utf-8", "replace"), token.encode("ascii")):
                response = PlainTextResponse(
                    "CSRF check failed: reload the page and submit the form again\n", 403)
                await response(scope, receive, send_with_cookies)
                return
        await self.app(scope, receive, send_with_cookies)

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


def _sets_session_cookie(message: Message) -> bool:
    prefix = SESSION_COOKIE.lower().encode() + b"="
    return any(k.lower() == b"set-cookie" and v.lower().startswith(prefix)
               for k, v in message.get("headers", ()))


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
