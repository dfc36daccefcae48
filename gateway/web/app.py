"""The ASGI apps, one per listener role, all Starlette: the admin API, the metrics and
health endpoints, the portal.

Rules of this module:

1. Each listener gets the app of its role and nothing else (``gateway.web.serve`` binds
   them): the metrics port never answers ``/bans``, the admin port never serves a page.
2. Admin API: the bearer token is checked by ``BearerAuth`` before routing, so a caller
   without it learns nothing, not even which paths exist; the token is never logged.
   A request body is at most ``MAX_BODY`` bytes and must arrive within
   ``REQUEST_DEADLINE`` (else 413, 408); a handler that takes longer than that is
   answered 503. Routes map onto the pure handlers of ``gateway.web.admin``.
3. Metrics: ``prometheus_client``'s own ASGI exposition (content negotiation, gzip) of
   the gateway's registry; ``/healthz`` and ``/readyz`` as load balancers expect.
4. Portal: the pages of ``gateway.web.portal``, HTML rendered by Jinja2 (autoescaped)
   from ``templates/``, plain files from ``static/``; ``SecurityHeaders`` and
   ``CSRFMiddleware`` (which also resolves the web session) wrap every request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import trio
from prometheus_client import make_asgi_app
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.observability import metrics
from gateway.observability.events import EventFeed
from gateway.observability.logs import get_logger
from gateway.observability.processes import Workers
from gateway.store.errors import StoreError
from gateway.web import admin
from gateway.web.admin import AdminServices, HttpError, Reply
from gateway.web.auth import PortalServices
from gateway.web.csrf import CSRFMiddleware
from gateway.web.feed import admin_events, not_a_websocket
from gateway.web.headers import SecurityHeaders
from gateway.web.portal import Portal
from gateway.web.token import is_authorized

__all__ = [
    "MAX_BODY",
    "REQUEST_DEADLINE",
    "STATIC_DIR",
    "TEMPLATES_DIR",
    "BearerAuth",
    "admin_app",
    "metrics_app",
    "portal_app",
    "read_body",
]

log = get_logger()

MAX_BODY = 64 * 1024
REQUEST_DEADLINE = 5.0
#: A body over the limit is still read (and dropped) up to this many bytes before the
#: 413 goes out: closing a socket with unread input makes the kernel send RST, and a
#: client still uploading would lose our answer.
_DRAIN_LIMIT = 4 * MAX_BODY

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"


# ---------------------------------------------------------------------------
# Shared pieces


def _json(reply: Reply) -> Response:
    data = (json.dumps(reply.body, separators=(",", ":"), default=str) + "\n").encode()
    headers = {"Cache-Control": "no-store", **dict(reply.headers)}
    return Response(data, reply.status, headers=headers, media_type="application/json")


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request body, at most ``limit`` bytes; ``HttpError(413)`` past that.

    A body announced (Content-Length) or found to be too large is read on and dropped up
    to ``_DRAIN_LIMIT`` bytes, so the client reads the 413 instead of a reset.
    """
    declared = request.headers.get("content-length", "")
    too_large = declared.isdigit() and int(declared) > limit
    body = bytearray()
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        too_large = too_large or seen > limit
        if too_large:
            if seen > _DRAIN_LIMIT:
                break
            continue
        body += chunk
    if too_large:
        raise HttpError(413, f"request larger than {limit} bytes")
    return bytes(body)


# ---------------------------------------------------------------------------
# Admin API


class BearerAuth:
    """ASGI middleware: 401 unless ``Authorization: Bearer <token>`` matches, before routing.

    Two Authorization headers are a malformed request (400): which one would count is
    a question an attacker could exploit if a proxy and we disagreed on it.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token

    def __repr__(self) -> str:
        return f"{type(self).__name__}(app={self.app!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        headers = Headers(scope=scope)
        if len(headers.getlist("authorization")) > 1:
            reply = Reply(400, {"error": "duplicate Authorization header"})
        elif is_authorized(headers, self._token):
            await self.app(scope, receive, send)
            return
        else:
            client = scope.get("client")
            log.warning("admin.unauthorized", client_ip=client[0] if client else None,
                        path=scope.get("path"))
            reply = Reply(401, {"error": "missing or wrong bearer token (see [admin] token_file)"},
                          (("WWW-Authenticate", 'Bearer realm="imap-gateway"'),))
        if (scope["type"] == "websocket"
                and "websocket.http.response" not in scope.get("extensions", {})):
            await send({"type": "websocket.close", "code": 1008})  # no way to say why
            return
        await _json(reply)(scope, receive, send)  # on a WebSocket: an HTTP denial response


Handler = Callable[[Request, bytes], Awaitable[Reply]]


class _AdminEndpoint:
    """One admin route: method check (exact ``Allow``), deadlines, errors as JSON.

    An ASGI app rather than a function, so Starlette passes every method through and
    the 405 (message and ``Allow``) is ours.
    """

    def __init__(self, route: str, handler: Handler) -> None:
        self.route = route
        self.allowed = admin.ALLOWED[route]
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        await _json(await self.answer(request))(scope, receive, send)

    async def answer(self, request: Request) -> Reply:
        try:
            if "" in request.path_params.values():  # "/bans/" names no ban
                raise admin.no_such_endpoint(request.url.path)
            if request.method not in self.allowed.split(", "):
                raise admin.not_allowed(request.method, request.url.path, self.allowed)
            body = b""
            if request.method == "POST":
                with trio.move_on_after(REQUEST_DEADLINE) as receiving:
                    body = await read_body(request)
                if receiving.cancelled_caught:
                    raise HttpError(408, f"request not received within {REQUEST_DEADLINE:g}s")
            with trio.move_on_after(REQUEST_DEADLINE):
                return await self.handler(request, body)
            raise HttpError(503, f"not answered within {REQUEST_DEADLINE:g}s")
        except HttpError as exc:
            return Reply(exc.status, {"error": exc.message}, exc.headers)
        except Exception:
            # A bug here must never take the listener (and the gateway) down.
            log.exception("admin.request_crashed", path=request.url.path)
            return Reply(500, {"error": "internal error; see the gateway log"})


def admin_app(services: AdminServices, token: str, *,
              clock: Callable[[], float] = time.time, feed: EventFeed | None = None) -> ASGIApp:
    """The admin API over ``services`` (the running ``GatewayContext``).

    ``clock`` gives wall-clock seconds (bans are stored on that clock); ``feed`` is served
    as the WebSocket ``/events`` (``gateway.web.feed``).
    """

    async def sessions(request: Request, body: bytes) -> Reply:
        return admin.list_sessions(services)

    async def session(request: Request, body: bytes) -> Reply:
        return admin.kill_session(services, request.path_params["session_id"])

    async def bans(request: Request, body: bytes) -> Reply:
        if request.method == "GET":
            return await admin.list_bans(services, clock())
        return await admin.add_ban(services, body, clock())

    async def ban(request: Request, body: bytes) -> Reply:
        return await admin.remove_ban(services, request.path_params["network"], clock())

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json(Reply(404, {"error": admin.no_such_endpoint(request.url.path).message}))

    routes: list[BaseRoute] = [
        Route("/sessions", _AdminEndpoint("/sessions", sessions)),
        Route("/sessions/{session_id:path}", _AdminEndpoint("/sessions/{id}", session)),
        Route("/bans", _AdminEndpoint("/bans", bans)),
        Route("/bans/{network:path}", _AdminEndpoint("/bans/{network}", ban)),
    ]
    if feed is not None:
        routes += [WebSocketRoute("/events", admin_events(feed)),
                   Route("/events", not_a_websocket)]
    app = Starlette(routes=routes, exception_handlers={404: not_found})
    app.router.redirect_slashes = False
    return BearerAuth(app, token)


# ---------------------------------------------------------------------------
# Metrics and health


class _Exposition:
    """``prometheus_client``'s ASGI app as a route (an object: Starlette mounts it as is)."""

    def __init__(self, workers: Workers | None) -> None:
        registry = (metrics.exposition_registry() if workers is None
                    else metrics.exposition_registry(workers))
        self.app = make_asgi_app(registry=registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def metrics_app(ready: Callable[[], bool], workers: Workers | None = None) -> ASGIApp:
    """``/metrics`` (the gateway's registry), ``/healthz`` (200 while the process serves)
    and ``/readyz`` (200 once ``ready()``: every listener is bound; else 503).

    ``workers``: under a supervisor, (index, pid) of each live worker, for the process
    series (``metrics.exposition_registry``)."""

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        if ready():
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready\n", 503)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            return PlainTextResponse("GET only\n", 405, headers=exc.headers)
        return PlainTextResponse("not found\n", exc.status_code)

    routes = [
        Route("/metrics", _Exposition(workers), methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.router.redirect_slashes = False
    return app


# ---------------------------------------------------------------------------
# Portal


def portal_app(services: PortalServices, *, secret: bytes,
               clock: Callable[[], float] = time.time,
               routes: Sequence[BaseRoute] = ()) -> ASGIApp:
    """The self-service portal on ``[web] address`` over ``services`` (the running
    ``GatewayContext``): pages of ``gateway.web.portal``, plain files from ``static/``.

    ``secret`` keys the CSRF tokens of browsers not signed in (``gateway.web.csrf``);
    signed-in sessions are looked up in the credential store. ``clock`` gives wall-clock
    seconds (sessions and history are stored on that clock). ``routes``: more pages (the
    admin pages, ``gateway.web.admin_pages``).
    """
    templates = Jinja2Templates(directory=TEMPLATES_DIR)
    portal = Portal(services, templates, clock=clock)
    pages: list[BaseRoute] = [
        *portal.routes(),
        *routes,
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(routes=pages, middleware=[
        Middleware(CSRFMiddleware, secret=secret, sessions=services.store.get_web_session,
                   clock=clock)], exception_handlers={StoreError: portal.store_unavailable})
    app.router.redirect_slashes = False
    # Outside Starlette's error handling, so a 500 carries the headers too.
    return SecurityHeaders(app)
