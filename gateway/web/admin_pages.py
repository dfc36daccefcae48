"""The portal's admin pages: live events, bans, sessions, users. Admins only, and only
after a second factor.

Who may use them, checked on every request (``_gate``) and on the feed's handshake:

1. ``signed_in`` names the portal user of the request and says whether the second
   factor was done in that web session. Without a second factor nothing here is shown.
2. That user is in ``[web] admins``: a login name (compared like policies compare names,
   ASCII case-insensitively) or ``@group``, a group of the policy in force.
3. Every state-changing request carries the session's CSRF token: ``CSRFMiddleware``
   refuses it before routing otherwise; the forms here put it in ``csrf_token``.
4. The feed's WebSocket (``/admin/events``) also needs ``Origin`` to be ``[web]
   public_url``'s origin. A browser sends the session cookie with a WebSocket handshake
   that another site's page starts, and no CSRF token can ride on a handshake, so the
   Origin header is what tells our page from someone else's (cross-site WebSocket
   hijacking). Without ``public_url`` the feed is refused: there is nothing to compare.

``signed_in`` is the single seam with portal sign-in: it reads the session cookie and
asks the store for that web session. Sign-in replaces that one function if it keeps
sessions otherwise; tests pass their own through ``admin_routes(..., who=...)``.

Routes (all under ``/admin``; POST bodies are forms)::

    GET  /admin                            "Live events" (static/admin-events.js opens the feed)
    WS   /admin/events                     the feed: ?kind=&user=&address= (gateway.web.feed)
    GET  /admin/bans                       active bans and the form to add one
    POST /admin/bans                       network, ttl (capped at [limits] ban_ttl_max), reason
    POST /admin/bans/remove                network
    GET  /admin/sessions                   live IMAP sessions
    POST /admin/sessions/kill              id            (the client gets BYE)
    GET  /admin/users[?user=U]             factor status of U
    POST /admin/users/reset-totp           user          (a lost authenticator)
    POST /admin/users/revoke-app-passwords user          (live sessions end within 2 s)
    POST /admin/users/invite               user          (shows the one-time link once)

What an administrator changes here is logged as by the admin API, with ``admin`` (the
portal user) and ``via="portal"`` bound to the lines.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import structlog
import trio
from starlette.requests import HTTPConnection, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.templating import Jinja2Templates
from starlette.websockets import WebSocket

from gateway.config import Config, DurationError, parse_duration
from gateway.limits.limiter import BanRefused
from gateway.limits.rules import InvalidAddress, normalize_network
from gateway.limits.state import StateUnavailable
from gateway.observability.events import KINDS, EventFeed, FilterError
from gateway.observability.logs import get_logger
from gateway.policy import PolicyReloader
from gateway.policy.model import UserPattern, fold
from gateway.store.base import CredentialStore
from gateway.store.errors import AppPasswordNotFound, StoreError
from gateway.web import admin
from gateway.web.admin import AdminServices, HttpError
from gateway.web.app import TEMPLATES_DIR, read_body
from gateway.web.csrf import MAX_FORM, SESSION_COOKIE, csrf_of
from gateway.web.feed import filter_of, refuse, stream

__all__ = [
    "INVITE_PATH",
    "INVITE_TTL",
    "AdminPortalServices",
    "SignedIn",
    "admin_routes",
    "expected_origin",
    "human_duration",
    "invite_link",
    "is_admin",
    "signed_in",
]

log = get_logger()

#: Where the portal redeems an invitation: ``<public_url>/invite/<token>``.
INVITE_PATH = "/invite/"
#: How long an invitation made on the users page stays usable.
INVITE_TTL = 72 * 3600.0
_MAX_FIELD = 320
#: As the admin API allows (gateway.web.admin): a ban's reason shows in lists and logs.
MAX_REASON_CHARS = 200
_REASON = "admin (portal)"


class AdminPortalServices(AdminServices, Protocol):
    """What the pages need from the running gateway (``GatewayContext``)."""

    @property
    def config(self) -> Config: ...
    @property
    def store(self) -> CredentialStore: ...
    @property
    def policy(self) -> PolicyReloader: ...
    @property
    def feed(self) -> EventFeed: ...


# ---------------------------------------------------------------------------
# Who is asking (the seam with portal sign-in) and may they


@dataclass(frozen=True)
class SignedIn:
    """The portal user of a request and whether this web session passed a second factor."""

    user: str
    mfa_done: bool


WhoIsSignedIn = Callable[[HTTPConnection, CredentialStore, float], Awaitable[SignedIn | None]]


async def signed_in(conn: HTTPConnection, store: CredentialStore, now: float
                    ) -> SignedIn | None:
    """Who is signed in on ``conn`` (a request or a WebSocket handshake), or None.

    The session cookie (``gateway.web.csrf.SESSION_COOKIE``) holds the web session id the
    store issued at sign-in (``create_web_session``, ``complete_web_session_mfa``); the
    store says whose session it is, whether it is still live and whether its second
    factor was done. Replace this function (only this one) if sign-in keeps sessions
    otherwise.
    """
    session_id = conn.cookies.get(SESSION_COOKIE)
    if not session_id:
        return None
    if conn.scope["type"] == "http" and csrf_of(conn).session_id != session_id:
        # The CSRF check read another session cookie than this (several Cookie headers):
        # the form's token would belong to another session than the one acting.
        return None
    session = await trio.to_thread.run_sync(store.get_web_session, session_id, now)
    return None if session is None else SignedIn(session.user, session.mfa_done)


def is_admin(user: str, admins: Sequence[str],
             groups: Mapping[str, tuple[UserPattern, ...]]) -> bool:
    """Whether ``user`` is named by ``[web] admins`` (names, or ``@group`` of ``groups``).

    An ``@group`` that the policy does not define (any more) names nobody: removing a
    group must not leave its members with admin rights.
    """
    folded = fold(user)
    for entry in admins:
        if entry.startswith("@"):
            if any(p.matches(user) for p in groups.get(entry[1:], ())):
                return True
        elif fold(entry) == folded:
            return True
    return False


def expected_origin(public_url: str) -> str | None:
    """The ``Origin`` a browser sends from pages of ``public_url`` (None if unset).

    Scheme and host in lower case, the port only when it is not 443 (browsers leave the
    default port out of Origin).
    """
    if not public_url:
        return None
    parts = urlsplit(public_url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    return f"https://{host}" + (f":{port}" if port not in (None, 443) else "")


def invite_link(public_url: str, token: str) -> str:
    """The one-time link that redeems an invitation."""
    return public_url.rstrip("/") + INVITE_PATH + token


class _Refused(Exception):
    """The request may not see the admin pages; ``status`` and ``reason`` say why."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


async def _admin_of(conn: HTTPConnection, services: AdminPortalServices, who: WhoIsSignedIn,
                    now: float) -> str:
    """The admin's user name, or ``_Refused`` (rules 1 and 2 of the module doc)."""
    person = await who(conn, services.store, now)
    if person is None:
        raise _Refused(401, "not_signed_in", "Sign in first.")
    if not person.mfa_done:
        raise _Refused(403, "second_factor_missing",
                       "The admin pages need a sign-in with a second factor.")
    policy = services.policy.current
    groups = policy.groups if policy is not None else {}
    if not is_admin(person.user, services.config.web.admins, groups):
        raise _Refused(403, "not_admin", "This account is not an administrator "
                                         "([web] admins).")
    return person.user


# ---------------------------------------------------------------------------
# Form helpers


async def _form(request: Request) -> dict[str, str]:
    """The urlencoded form of a POST (what the pages' forms send), at most ``MAX_FORM``
    bytes; a field given twice counts as not given. Parsed here rather than with
    Starlette's ``request.form()``, which needs python-multipart for what parse_qs does."""
    try:
        body = await read_body(request, MAX_FORM)
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
    except (HttpError, UnicodeDecodeError, ValueError):
        return {}
    seen: dict[str, str] = {}
    twice: set[str] = set()
    for key, value in pairs:
        if key in seen:
            twice.add(key)
        seen[key] = value
    return {k: v for k, v in seen.items() if k not in twice}


def _field(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    if not isinstance(value, str):
        return ""
    return value.strip()[:_MAX_FIELD]


def human_duration(seconds: float) -> str:
    """1d 2h, 3h 20m, 45m, 30s: for lifetimes on a page."""
    s = max(0, int(round(seconds)))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size or (unit == "s" and not parts):
            parts.append(f"{s // size}{unit}")
            s %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def _clock_text(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


# ---------------------------------------------------------------------------
# Routes


def admin_routes(services: AdminPortalServices, *, who: WhoIsSignedIn = signed_in,
                 clock: Callable[[], float] = time.time) -> list[BaseRoute]:
    """The admin pages over the running gateway, for ``portal_app(routes=...)``.

    ``who`` tells who is signed in (``signed_in`` unless a test stands in for sign-in);
    ``clock`` gives wall-clock seconds (bans and store records use that clock).
    """
    templates = Jinja2Templates(directory=TEMPLATES_DIR)
    templates.env.filters["duration"] = human_duration
    templates.env.filters["clock"] = _clock_text

    def render(request: Request, name: str, context: dict[str, Any], status: int = 200,
               ) -> Response:
        base = {"csrf_token": csrf_of(request).token, "kinds": KINDS}
        return templates.TemplateResponse(request, name, {**base, **context}, status_code=status,
                                          headers={"Cache-Control": "no-store"})

    def refused(request: Request, exc: _Refused) -> Response:
        if exc.status == 401 and request.method == "GET":
            return RedirectResponse("/", 303, headers={"Cache-Control": "no-store"})
        return render(request, "admin/refused.html", {"message": exc.message}, exc.status)

    async def gate(request: Request) -> str:
        try:
            return await _admin_of(request, services, who, clock())
        except _Refused as exc:
            log.warning("admin.page_refused", path=request.url.path, reason=exc.reason,
                        client_ip=request.client.host if request.client else None)
            raise

    Page = Callable[[Request, str], Awaitable[Response]]

    def page(handler: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                user = await gate(request)
            except _Refused as exc:
                return refused(request, exc)
            with structlog.contextvars.bound_contextvars(admin=user, via="portal"):
                return await handler(request, user)
        return endpoint

    # -- live events ---------------------------------------------------------------------

    async def events_page(request: Request, user: str) -> Response:
        return render(request, "admin/events.html", {"admin": user, "section": "events",
                                                     "origin_ok": bool(
                                                         services.config.web.public_url)})

    async def events_socket(websocket: WebSocket) -> None:
        wanted = expected_origin(services.config.web.public_url)
        origin = websocket.headers.get("origin")
        client = websocket.client.host if websocket.client else None
        if wanted is None or origin is None or origin.lower() != wanted:
            log.warning("admin.feed_refused", reason="origin", origin=(origin or "")[:200],
                        expected=wanted, client_ip=client)
            why = ("[web] public_url is not set" if wanted is None
                   else "the Origin is not this portal's ([web] public_url)")
            await refuse(websocket, 403, f"refused: {why}")
            return
        try:
            user = await _admin_of(websocket, services, who, clock())
        except _Refused as exc:
            log.warning("admin.feed_refused", reason=exc.reason, client_ip=client)
            await refuse(websocket, exc.status, exc.message)
            return
        try:
            flt = filter_of(websocket)
        except FilterError as exc:
            await refuse(websocket, 400, str(exc))
            return

        async def still_admin() -> bool:
            try:
                return await _admin_of(websocket, services, who, clock()) == user
            except _Refused:
                return False

        await stream(websocket, services.feed, flt, door="portal", admin=user,
                     recheck=still_admin)

    # -- bans ----------------------------------------------------------------------------

    async def bans_view(request: Request, user: str, *, message: str = "", error: str = "",
                        status: int = 200, form: Mapping[str, str] | None = None) -> Response:
        bans: list[dict[str, Any]] = []
        try:
            bans = [asdict(b) for b in await services.limiter.list_bans(clock())]
        except StateUnavailable as exc:
            error = error or f"Ban state unavailable: {exc}"
            status = 503 if status == 200 else status
        limits = services.config.limits
        return render(request, "admin/bans.html", {
            "admin": user, "section": "bans", "bans": bans, "now": clock(),
            "ttl_max": human_duration(limits.ban_ttl_max), "message": message, "error": error,
            "form": form or {}}, status)

    async def bans_page(request: Request, user: str) -> Response:
        return await bans_view(request, user)

    async def ban_add(request: Request, user: str) -> Response:
        form = await _form(request)
        network, ttl_text = _field(form, "network"), _field(form, "ttl")
        reason = _field(form, "reason") or _REASON
        kept = {"network": network, "ttl": ttl_text, "reason": _field(form, "reason")}
        ttl_max = services.config.limits.ban_ttl_max
        ttl = ttl_max
        note = ""
        if ttl_text:
            try:
                ttl = parse_duration(ttl_text)
            except DurationError as exc:
                return await bans_view(request, user, error=f"TTL: {exc}", status=400, form=kept)
            if ttl <= 0:
                return await bans_view(request, user, error="TTL must be longer than 0s.",
                                       status=400, form=kept)
            if ttl > ttl_max:
                ttl = ttl_max
                note = f" (TTL capped at {human_duration(ttl_max)}, [limits] ban_ttl_max)"
        if not network:
            return await bans_view(request, user, error="Give an address or a CIDR network.",
                                   status=400, form=kept)
        if not reason.isprintable() or len(reason) > MAX_REASON_CHARS:
            return await bans_view(
                request, user, status=400, form=kept,
                error=f"The reason must be printable text of at most {MAX_REASON_CHARS} "
                      "characters.")
        now = clock()
        try:
            ban = await services.limiter.add_ban(network, now, ttl=ttl, reason=reason)
        except (BanRefused, InvalidAddress) as exc:
            return await bans_view(request, user, error=str(exc), status=400, form=kept)
        except StateUnavailable as exc:
            return await bans_view(request, user, error=f"Ban state unavailable: {exc}",
                                   status=503, form=kept)
        log.info("admin.ban_added", network=ban.network, scope=ban.scope, reason=ban.reason,
                 expires=ban.expires)
        return await bans_view(
            request, user,
            message=f"Banned {ban.network} for {human_duration(ban.expires - now)}{note}.")

    async def ban_remove(request: Request, user: str) -> Response:
        form = await _form(request)
        try:
            network = str(normalize_network(_field(form, "network")))
            removed = await services.limiter.remove_ban(network, clock())
        except InvalidAddress as exc:
            return await bans_view(request, user, error=str(exc), status=400)
        except StateUnavailable as exc:
            return await bans_view(request, user, error=f"Ban state unavailable: {exc}",
                                   status=503)
        if not removed:
            return await bans_view(request, user, error=f"No ban of exactly {network}.",
                                   status=404)
        log.info("admin.ban_removed", network=network)
        return await bans_view(request, user, message=f"Removed the ban of {network}.")

    # -- sessions ------------------------------------------------------------------------

    async def sessions_view(request: Request, user: str, *, message: str = "",
                            error: str = "", status: int = 200) -> Response:
        sessions = admin.list_sessions(services).body["sessions"]
        return render(request, "admin/sessions.html", {
            "admin": user, "section": "sessions", "sessions": sessions, "now": clock(),
            "message": message, "error": error}, status)

    async def sessions_page(request: Request, user: str) -> Response:
        return await sessions_view(request, user)

    async def session_kill(request: Request, user: str) -> Response:
        form = await _form(request)
        session_id = _field(form, "id")
        try:
            result = admin.kill_session(services, session_id)
        except HttpError as exc:
            return await sessions_view(request, user, error=exc.message, status=exc.status)
        who_was = f" of {result.body['user']}" if result.body.get("user") else ""
        return await sessions_view(request, user,
                                   message=f"Signed out session {session_id}{who_was}.")

    # -- users ---------------------------------------------------------------------------

    def user_status(name: str, now: float) -> dict[str, Any]:
        store = services.store
        return {
            "totp": store.totp_status(name).value,
            "recovery_codes_left": store.recovery_codes_left(name),
            "app_passwords": store.list_app_passwords(name),
            "devices": len(store.list_devices(name)),
            "invites": [i for i in store.list_invites(name) if i.is_usable(now)],
            "web_sessions": len(store.list_web_sessions(name, now)),
        }

    async def users_view(request: Request, admin_user: str, name: str, *, message: str = "",
                         error: str = "", status: int = 200, link: str = "") -> Response:
        now = clock()
        status_of: dict[str, Any] | None = None
        if name:
            try:
                status_of = await trio.to_thread.run_sync(user_status, name, now)
            except StoreError as exc:
                error, status = f"Store error: {exc}", 503
        live = sorted({s.user for s in list(services.sessions.values()) if s.user})
        return render(request, "admin/users.html", {
            "admin": admin_user, "section": "users", "name": name, "status": status_of,
            "live_users": live, "now": now, "message": message, "error": error, "link": link,
            "public_url": services.config.web.public_url}, status)

    async def users_page(request: Request, user: str) -> Response:
        return await users_view(request, user, request.query_params.get("user", "").strip()
                                [:_MAX_FIELD])

    async def user_action(request: Request, admin_user: str,
                          act: Callable[[str, float], str]) -> Response:
        form = await _form(request)
        name = _field(form, "user")
        if not name:
            return await users_view(request, admin_user, "", error="Give a user name.",
                                    status=400)
        try:
            message = await trio.to_thread.run_sync(act, name, clock())
        except (StoreError, ValueError) as exc:
            return await users_view(request, admin_user, name, error=str(exc), status=400)
        return await users_view(request, admin_user, name, message=message)

    async def reset_totp(request: Request, user: str) -> Response:
        def act(name: str, now: float) -> str:
            removed = services.store.disable(name)
            log.info("admin.totp_reset", user=name, removed=removed)
            if not removed:
                return f"{name} had no authenticator enrolled."
            return (f"Removed {name}'s authenticator: they enroll a new one "
                    "(imap-gateway totp enroll).")
        return await user_action(request, user, act)

    async def revoke_app_passwords(request: Request, user: str) -> Response:
        def act(name: str, now: float) -> str:
            labels = [i.label for i in services.store.list_app_passwords(name)]
            revoked = 0
            for label in labels:
                try:
                    services.store.revoke_app_password(name, label)
                    revoked += 1
                except AppPasswordNotFound:
                    pass  # revoked meanwhile (the CLI writes the same store)
            log.info("admin.app_passwords_revoked", user=name, count=revoked)
            return (f"Revoked {revoked} app password(s) of {name}; sessions using them end "
                    "within 2 seconds.")
        return await user_action(request, user, act)

    async def invite(request: Request, user: str) -> Response:
        form = await _form(request)
        name = _field(form, "user")
        if not name:
            return await users_view(request, user, "", error="Give a user name.", status=400)
        try:
            new = await trio.to_thread.run_sync(services.store.create_invite, name,
                                                INVITE_TTL, clock())
        except (StoreError, ValueError) as exc:
            return await users_view(request, user, name, error=str(exc), status=400)
        log.info("admin.invited", user=name, expires=new.info.expires)
        public_url = services.config.web.public_url
        link = invite_link(public_url, new.token) if public_url else new.token
        return await users_view(
            request, user, name, link=link,
            message=f"Invitation for {name}, valid for {human_duration(INVITE_TTL)} and one "
                    "use. It is shown only this once.")

    return [
        Route("/admin", page(events_page), methods=["GET"]),
        WebSocketRoute("/admin/events", events_socket),
        Route("/admin/bans", page(bans_page), methods=["GET"]),
        Route("/admin/bans", page(ban_add), methods=["POST"]),
        Route("/admin/bans/remove", page(ban_remove), methods=["POST"]),
        Route("/admin/sessions", page(sessions_page), methods=["GET"]),
        Route("/admin/sessions/kill", page(session_kill), methods=["POST"]),
        Route("/admin/users", page(users_page), methods=["GET"]),
        Route("/admin/users/reset-totp", page(reset_totp), methods=["POST"]),
        Route("/admin/users/revoke-app-passwords", page(revoke_app_passwords),
              methods=["POST"]),
        Route("/admin/users/invite", page(invite), methods=["POST"]),
    ]
