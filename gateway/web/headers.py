"""Security headers on every portal response, set where no handler can forget them.

``SecurityHeaders`` wraps the whole portal app (outside Starlette's own error handling),
so 404s, CSRF refusals and 500s carry the same headers as pages. A header of the same
name set by a handler is replaced: the policy is this module's, not each page's.

The Content-Security-Policy allows scripts and styles from our own origin only: no
inline script, no ``eval``, no third-party host. Pages therefore keep their JavaScript
in ``gateway/web/static/*.js`` and bind events there, never in ``onclick=`` attributes.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "SecurityHeaders"]

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",   # data: for QR codes rendered as data URLs
    "connect-src 'self'",     # the live feed's WebSocket is same-origin
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    # One year; no includeSubDomains: the gateway does not own its parent domain.
    ("strict-transport-security", "max-age=31536000"),
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    # frame-ancestors supersedes it; kept for browsers that predate CSP 2.
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
)
_NAMES = frozenset(name.encode() for name, _ in SECURITY_HEADERS)
_ENCODED = [(name.encode(), value.encode()) for name, value in SECURITY_HEADERS]


class SecurityHeaders:
    """ASGI middleware: add ``SECURITY_HEADERS`` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in _NAMES]
                message = {**message, "headers": kept + _ENCODED}
            await send(message)

        await self.app(scope, receive, send_with_headers)
