"""The self-service portal's pages: sign-in, second factor, authenticator, app passwords,
devices, recent activity, invitations, sign-out.

Rules of this module:

1. Who may do what is ``gateway.web.auth``'s ``Stage``; every handler names the stages
   it serves (``_page``) and sends any other session to the page of its own stage. A
   page that needs a signed-in session never runs without one.
2. Every state change is a POST (the CSRF check runs before routing,
   ``gateway.web.csrf``); a GET changes nothing, so a link scanner that follows an
   invitation link does not use it up. After a change the browser is redirected (303)
   to a page that shows the result, except where the result is a secret shown once
   (a new app password, a new authenticator key, recovery codes): those are the POST's
   own answer, marked ``no-store`` like every page.
3. Secrets never reach a log line or a URL: passwords, codes, app passwords, keys and
   session ids exist only in the response that shows them. An invitation token is in
   its URL by design (one use, from the administrator); the log says only that an
   invitation was used, by whom.
4. Store calls run in a worker thread (``in_thread``): some hash (scrypt), all may
   wait for SQLite's lock.

Routes::

    GET  /                       sign-in page, or the page of the session's stage
    POST /signin                 Username + Password
    GET  /verify   POST /verify  the second factor: Code (TOTP or recovery code)
    GET  /invite/<token>         sign-in form for an invitation (uses nothing)
    POST /invite/<token>         password, then the invitation (once), then the set-up
    GET  /authenticator          state of the authenticator (TOTP)
    POST /authenticator/setup    a new key: QR code + key as text + Code ("Turn on")
    POST /authenticator/enable   confirm with a Code; 10 recovery codes, shown once
    POST /authenticator/disable  turn off with a current Code
    GET  /app-passwords          list + create form
    POST /app-passwords          create (shown once, with the mail client settings)
    POST /app-passwords/revoke   revoke by label
    GET  /devices                remembered devices and pending devices
    POST /devices/forget         forget a remembered device
    POST /devices/approve        approve a pending device (``remember_device`` of its rule)
    GET  /activity               recent activity (login history, IMAP and web)
    GET  /oauth/start            "Sign in with <provider>": off to the provider (OIDC + PKCE)
    GET  /oauth/callback         back from the provider (gateway.web.oidc)
    POST /signout                end this session
    POST /signout/everywhere     end every web session of the user
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from gateway.auth.factors import InvalidScopeError, TotpResult, totp_uri
from gateway.config import WebConfig
from gateway.netaddr import plain_ip
from gateway.observability import metrics
from gateway.observability.logs import get_logger
from gateway.proxy.oauth import ProviderError, TokenVerifier
from gateway.store.base import (
    AppPasswordInfo,
    CredentialStore,
    DeviceApproval,
    NewWebSession,
    TotpStatus,
    WebSession,
)
from gateway.store.errors import (
    AppPasswordLabelExists,
    AppPasswordNotFound,
    DeviceNotFound,
    StoreError,
    StoreUnavailable,
    TooManyAppPasswords,
)
from gateway.web import oidc
from gateway.web.auth import (
    Browser,
    PortalServices,
    Stage,
    Verdict,
    check_code,
    check_id_token,
    check_password,
    in_thread,
    may_start_enrolment,
    record_code_failure,
    signed_in,
    stage_of,
)
from gateway.web.csrf import clear_session_cookie, csrf_of, session_cookie, session_token
from gateway.web.qr import qr_svg

__all__ = ["EXPIRY_CHOICES", "FACTOR_NAMES", "FAILURE_REASONS", "Portal", "browser_name"]

log = get_logger()

#: Where each stage's session belongs (a page it may not see sends it there).
_HOME = {Stage.SIGNED_OUT: "/", Stage.SECOND_FACTOR: "/verify", Stage.ENROL: "/authenticator",
         Stage.NEEDS_INVITE: "/", Stage.FULL: "/"}
#: The "Expires" choices of a new app password: form value -> (seconds or None, text).
EXPIRY_CHOICES: dict[str, tuple[float | None, str]] = {
    "never": (None, "Never"),
    "7d": (7 * 86400.0, "In 7 days"),
    "30d": (30 * 86400.0, "In 30 days"),
    "90d": (90 * 86400.0, "In 90 days"),
    "365d": (365 * 86400.0, "In 1 year"),
}
ACCESS_CHOICES = {"full": "Full access", "read-only": "Read only"}
#: Rows of login history the activity page shows.
ACTIVITY_ROWS = 50
_MAX_FIELDS = 50
_FAILED_SIGN_IN = "Sign-in failed. Check your user name and password and try again."
_FAILED_CODE = ("That code did not work. Enter the current code from your authenticator app, "
                "or one of your unused recovery codes.")
_UNAVAILABLE = "The mail server cannot be reached right now. Please try again in a few minutes."
#: How the activity page names factors and the reasons of failures (by label, the part of a
#: reason before ":"); anything else is shown as just "Failed".
FACTOR_NAMES = {"none": "Password", "totp": "Authenticator code", "app-password": "App password",
                "remembered-device": "Remembered device", "recovery-code": "Recovery code",
                "invite": "Invitation", "oauth": "OAuth token",
                "oauth-mfa": "OAuth token with MFA"}
FAILURE_REASONS = {
    "backend_rejected": "wrong password", "password_known_bad": "wrong password",
    "totp_invalid": "wrong code", "totp_replay": "code used already",
    "totp_stale": "old code", "totp_required": "no code given",
    "totp_not_enrolled": "no authenticator set up", "recovery_code_invalid": "wrong code",
    "app_password_invalid": "unknown app password",
    "app_password_expired": "expired app password",
    "app_password_required": "needs an app password", "banned": "address blocked",
    "user_lockout": "too many failures", "user_ip_failures": "too many failures",
    "user_networks": "too many failures", "sprayed_password": "password under attack",
    "policy_denied": "not allowed from there", "no_rule_matched": "not allowed from there",
    "plaintext": "without encryption", "backend_unavailable": "server unavailable",
}
_BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"),
             ("Chrome/", "Chrome"), ("Safari/", "Safari"))

Handler = Callable[[Request, WebSession, Stage], Awaitable[Response]]


def browser_name(user_agent: str) -> str:
    """A short, bounded browser name from a User-Agent (for the login history)."""
    for token, name in _BROWSERS:
        if token in user_agent:
            return name
    return "browser"


def _when(t: float | None) -> str:
    if t is None:
        return "never"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _group(text: str, size: int = 4) -> str:
    return " ".join(text[i:i + size] for i in range(0, len(text), size))


async def _form(request: Request) -> dict[str, str]:
    """The urlencoded form of a POST (the CSRF middleware bounded its size): one value per
    field, the first if a field is repeated."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != \
            "application/x-www-form-urlencoded":
        return {}
    body = await request.body()
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True,
                          max_num_fields=_MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in parsed.items()}


class Portal:
    """The portal's handlers over the gateway's services (``PortalServices``)."""

    def __init__(self, services: PortalServices, templates: Jinja2Templates, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.services = services
        self.templates = templates
        self.clock = clock
        templates.env.filters["when"] = _when
        oauth = services.config.oauth
        #: "Sign in with <provider>" (its own key cache: the portal may run without IMAP).
        self.oidc: TokenVerifier | None = (
            TokenVerifier(oauth) if oauth.portal_sign_in and self.web.public_url else None)
        self.provider_name = oauth.provider_name or (urlsplit(oauth.issuer).hostname or "")

    @property
    def store(self) -> CredentialStore:
        return self.services.store

    @property
    def web(self) -> WebConfig:
        return self.services.config.web

    # -- plumbing ----------------------------------------------------------------------

    def routes(self) -> list[Route]:
        page = self._page
        full = {Stage.FULL}
        enrol = {Stage.FULL, Stage.ENROL}
        return [
            Route("/", self.home, methods=["GET"]),
            Route("/signin", self.signin, methods=["POST"]),
            Route("/verify", page(self.verify, {Stage.SECOND_FACTOR}), methods=["GET", "POST"]),
            Route("/invite/{token}", self.invite, methods=["GET", "POST"]),
            Route("/authenticator", page(self.authenticator, enrol), methods=["GET"]),
            Route("/authenticator/setup", page(self.totp_setup, enrol), methods=["POST"]),
            Route("/authenticator/enable", page(self.totp_enable, enrol), methods=["POST"]),
            Route("/authenticator/disable", page(self.totp_disable, full), methods=["POST"]),
            Route("/app-passwords", page(self.app_passwords, full), methods=["GET", "POST"]),
            Route("/app-passwords/revoke", page(self.app_password_revoke, full),
                  methods=["POST"]),
            Route("/devices", page(self.devices, full), methods=["GET"]),
            Route("/devices/forget", page(self.device_forget, full), methods=["POST"]),
            Route("/devices/approve", page(self.device_approve, full), methods=["POST"]),
            Route("/activity", page(self.activity, full), methods=["GET"]),
            Route("/oauth/start", self.oauth_start, methods=["GET"]),
            Route("/oauth/callback", self.oauth_callback, methods=["GET"]),
            Route("/signout", self.signout, methods=["POST"]),
            Route("/signout/everywhere", page(self.signout_everywhere, full),
                  methods=["POST"]),
        ]

    def _browser(self, request: Request) -> Browser:
        client = request.scope.get("client") or ("", 0)
        server = request.scope.get("server") or ("", 0)
        return Browser(ip=_ip(client[0]), port=int(client[1] or 0), local_ip=_ip(server[0]),
                       local_port=int(server[1] or 0),
                       name=browser_name(request.headers.get("user-agent", "")))

    async def _stage(self, request: Request) -> tuple[WebSession | None, Stage]:
        state = csrf_of(request)
        session = state.session
        stage = await in_thread(stage_of, session, self.store, self.web.enrollment, self.clock())
        if session is not None and stage is Stage.SIGNED_OUT and state.session_id is not None:
            # Signed in with the password long ago and never finished: over.
            await in_thread(self.store.end_web_session, state.session_id)
            return None, stage
        return session, stage

    def _page(self, handler: Handler, stages: set[Stage]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session, stage = await self._stage(request)
            if session is None or stage not in stages:
                return _see_other(_HOME[stage])
            return await handler(request, session, stage)
        return endpoint

    def render(self, request: Request, name: str, status: int = 200, *,
               new_session: NewWebSession | None = None, signed_out: bool = False,
               **context: Any) -> Response:
        """Render ``portal/<name>``.

        The page's forms carry the token the next request will be checked with: with
        ``new_session`` (opened or rotated by this very request) that session's, and its
        cookie is set; with ``signed_out`` (this request ended the session) the
        pre-session's, and the session cookie is cleared; else the request's own.
        """
        state = csrf_of(request)
        token = state.token
        cookie = None
        session = context.pop("session", state.session)
        if new_session is not None:
            session = new_session.session
            token = session_token(session, new_session.session_id)
            cookie = session_cookie(new_session.session_id)
        elif signed_out:
            session, token, cookie = None, state.signed_out_token, clear_session_cookie()
        context.setdefault("stage", Stage.FULL if session and session.mfa_done else None)
        response = self.templates.TemplateResponse(
            request, f"portal/{name}",
            {"csrf_token": token, "session": session,
             "user": session.user if session else None,
             "oidc_provider": self.provider_name if self.oidc is not None else None,
             **context},
            status_code=status, headers={"Cache-Control": "no-store"})
        if cookie is not None:
            response.headers.append("set-cookie", cookie)
        return response

    # -- sign-in -------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        session, stage = await self._stage(request)
        if stage is Stage.SIGNED_OUT or session is None:
            return self.render(request, "signin.html", session=None)
        if stage is Stage.NEEDS_INVITE:
            return self.render(request, "needs_invite.html", stage=stage)
        if stage is not Stage.FULL:
            return _see_other(_HOME[stage])
        user = session.user
        now = self.clock()

        def overview() -> dict[str, Any]:
            store = self.store
            return {
                "totp": store.totp_status(user),
                "recovery_left": store.recovery_codes_left(user),
                "app_passwords": [i for i in store.list_app_passwords(user)
                                  if not i.is_expired(now)],
                "devices": [d for d in store.list_devices(user) if not d.is_expired(now)],
                "pending": [d for d in store.list_pending_devices(user)
                            if d.state is DeviceApproval.PENDING],
                "sessions": store.list_web_sessions(user, now),
            }

        return self.render(request, "account.html", **await in_thread(overview))

    async def signin(self, request: Request) -> Response:
        form = await _form(request)
        user = form.get("username", "").strip()
        browser = self._browser(request)
        verdict = await check_password(self.services, browser, user, form.get("password", ""),
                                       clock=self.clock)
        if not verdict.ok:
            return self._signin_failed(request, verdict, user)
        new, stage = await self._open_session(request, user)
        if stage is not Stage.SECOND_FACTOR:
            await signed_in(self.services, browser, user, "none", clock=self.clock)
        return _see_other(_HOME[stage], cookie=session_cookie(new.session_id))

    def _signin_failed(self, request: Request, verdict: Verdict, user: str,
                       template: str = "signin.html", **context: Any) -> Response:
        if verdict.unavailable:
            return self.render(request, template, 503, session=None, error=_UNAVAILABLE,
                               username=user, **context)
        return self.render(request, template, 200, session=None, error=_FAILED_SIGN_IN,
                           username=user, **context)

    async def _open_session(self, request: Request, user: str) -> tuple[NewWebSession, Stage]:
        """A new web session for ``user``; the one this browser had, if any, ends."""
        old = csrf_of(request).session_id
        if old is not None:
            await in_thread(self.store.end_web_session, old)
        now = self.clock()
        new = await in_thread(self.store.create_web_session, user, self.web.session_ttl, now)
        stage = await in_thread(stage_of, new.session, self.store, self.web.enrollment, now)
        return new, stage

    # -- sign-in with the identity provider (gateway.web.oidc) ------------------------------

    @property
    def _redirect_uri(self) -> str:
        return self.web.public_url.rstrip("/") + "/oauth/callback"

    async def oauth_start(self, request: Request) -> Response:
        if self.oidc is None:
            return Response("Not Found", 404)
        try:
            endpoint = await self.oidc.endpoint("authorization_endpoint")
        except ProviderError as exc:
            log.warning("web.oidc_unavailable", error=str(exc))
            return self.render(request, "signin.html", 503, session=None, error=_UNAVAILABLE)
        flow = oidc.new_flow(self.clock())
        url = oidc.authorization_url(endpoint, self.services.config.oauth.client_id,
                                     self._redirect_uri, flow)
        response = RedirectResponse(url, status_code=303)
        response.headers["Cache-Control"] = "no-store"
        response.headers.append("set-cookie", oidc.flow_cookie(flow))
        return response

    async def oauth_callback(self, request: Request) -> Response:
        if self.oidc is None:
            return Response("Not Found", 404)
        flow = oidc.read_flow(request.headers.get("cookie", ""), self.clock())
        params = request.query_params
        code, state = params.get("code", ""), params.get("state", "")
        browser = self._browser(request)
        if flow is None or not oidc.state_matches(flow, state):
            # Not the flow this browser started (or it is too old): nothing to check.
            log.info("web.signin_failed", client_ip=browser.ip, step="oauth",
                     reason="oauth_state_mismatch")
            return self._oidc_failed(request, 400)
        if not code:
            log.info("web.signin_failed", client_ip=browser.ip, step="oauth",
                     reason="oauth_provider_refused", error=params.get("error", "")[:64])
            return self._oidc_failed(request, 200)
        try:
            id_token = await self.oidc.exchange_code(code, flow.verifier, self._redirect_uri)
        except ProviderError as exc:
            log.warning("web.oidc_unavailable", error=str(exc))
            return self._oidc_failed(request, 503, _UNAVAILABLE)
        verdict, user = await check_id_token(self.services, self.oidc, browser, id_token,
                                             flow.nonce, clock=self.clock)
        if not verdict.ok:
            return self._oidc_failed(request, 503 if verdict.unavailable else 200,
                                     _UNAVAILABLE if verdict.unavailable else None)
        old = csrf_of(request).session_id
        if old is not None:
            await in_thread(self.store.end_web_session, old)
        now = self.clock()
        # The provider did the second factor when its amr says so; else the portal's own.
        new = await in_thread(self.store.create_web_session, user, self.web.session_ttl, now,
                              mfa_done=verdict.factor == "oauth-mfa")
        stage = await in_thread(stage_of, new.session, self.store, self.web.enrollment, now)
        if stage is not Stage.SECOND_FACTOR:
            await signed_in(self.services, browser, user, verdict.factor, clock=self.clock)
        # A page, not a redirect: after the provider's cross-site redirect, a browser would
        # leave the SameSite=Strict session cookie off a redirected request; the page's own
        # same-site navigation carries it.
        response = self.render(request, "oidc_done.html", new_session=new,
                               next=_HOME[stage])
        response.headers.append("set-cookie", oidc.clear_flow_cookie())
        return response

    def _oidc_failed(self, request: Request, status: int, error: str | None = None) -> Response:
        text = error or f"Sign-in with {self.provider_name} failed. Try again."
        response = self.render(request, "signin.html", status, session=None, error=text)
        response.headers.append("set-cookie", oidc.clear_flow_cookie())
        return response

    async def verify(self, request: Request, session: WebSession, stage: Stage) -> Response:
        if request.method == "GET":
            return self.render(request, "verify.html")
        form = await _form(request)
        browser = self._browser(request)
        verdict = await check_code(self.services, browser, session.user, form.get("code", ""),
                                   clock=self.clock)
        state = csrf_of(request)
        assert state.session_id is not None  # _page let a session through
        if not verdict.ok:
            if verdict.end_session:
                await in_thread(self.store.end_web_session, state.session_id)
                return self.render(request, "signin.html", signed_out=True,
                                   error="Too many wrong codes. Sign in again.")
            return self.render(request, "verify.html", error=_FAILED_CODE)
        rotated = await in_thread(self.store.complete_web_session_mfa, state.session_id,
                                  self.clock())
        if rotated is None:  # expired between the check and now
            return _see_other("/", cookie=clear_session_cookie())
        await signed_in(self.services, browser, session.user, verdict.factor, clock=self.clock)
        return _see_other("/", cookie=session_cookie(rotated.session_id))

    async def invite(self, request: Request) -> Response:
        token = request.path_params["token"]
        action = request.url.path
        if request.method == "GET":
            return self.render(request, "signin.html", session=None, invite_action=action)
        form = await _form(request)
        user = form.get("username", "").strip()
        browser = self._browser(request)
        verdict = await check_password(self.services, browser, user, form.get("password", ""),
                                       clock=self.clock)
        if not verdict.ok:
            return self._signin_failed(request, verdict, user, invite_action=action)
        invite = await in_thread(self.store.consume_invite, token, self.clock())
        if invite is None or invite.user != user:
            # Unknown, expired, used, or another user's: one answer for all of them.
            log.warning("web.invite_refused", user=user, client_ip=browser.ip,
                        reason="unusable" if invite is None else "other_user")
            return self.render(request, "message.html", 410, session=None,
                               title="Invitation not valid",
                               message="This invitation link cannot be used: it was used "
                                       "already, has expired, or is not for this account. "
                                       "Ask your administrator for a new one.")
        log.info("web.invite_used", user=user, client_ip=browser.ip, invite_id=invite.id)
        new, stage = await self._open_session(request, user)
        if stage is Stage.SECOND_FACTOR:  # already has an authenticator: nothing to set up
            return _see_other("/verify", cookie=session_cookie(new.session_id))
        await signed_in(self.services, browser, user, "invite", clock=self.clock)
        return await self._setup_page(request, new.session, new_session=new)

    # -- authenticator ---------------------------------------------------------------------

    async def authenticator(self, request: Request, session: WebSession,
                            stage: Stage) -> Response:
        return await self._authenticator_page(request, session, stage)

    async def _authenticator_page(self, request: Request, session: WebSession, stage: Stage,
                                  status: int = 200, **context: Any) -> Response:
        totp = await in_thread(self.store.totp_status, session.user)
        left = await in_thread(self.store.recovery_codes_left, session.user)
        return self.render(request, "authenticator.html", status, session=session,
                           stage=stage, totp=totp, recovery_left=left,
                           may_setup=may_start_enrolment(stage, self.web.enrollment),
                           invite_only=self.web.enrollment == "invite", **context)

    async def totp_setup(self, request: Request, session: WebSession, stage: Stage) -> Response:
        if not may_start_enrolment(stage, self.web.enrollment):
            return _see_other("/authenticator")
        return await self._setup_page(request, session)

    async def _setup_page(self, request: Request, session: WebSession,
                          new_session: NewWebSession | None = None) -> Response:
        try:
            enrollment = await in_thread(self.store.enroll, session.user, self.clock())
        except StoreError as exc:
            log.error("store.error", error=str(exc), via="web")
            return self.render(request, "message.html", 503, session=session,
                               title="Not available",
                               message="The authenticator cannot be set up right now. "
                                       "Please tell your administrator.")
        stage = Stage.FULL if session.mfa_done else Stage.ENROL
        log.info("web.totp_setup", user=session.user)
        return self.render(
            request, "authenticator.html", session=session, stage=stage,
            new_session=new_session, totp=TotpStatus.PENDING, may_setup=False,
            setup={"qr": qr_svg(totp_uri(enrollment.secret, session.user,
                                         self.services.config.store.totp_issuer),
                                label="QR code for your authenticator app"),
                   "key": _group(enrollment.secret), "user": session.user})

    async def totp_enable(self, request: Request, session: WebSession, stage: Stage) -> Response:
        started = trio.current_time()
        form = await _form(request)
        code = form.get("code", "").strip().replace(" ", "")
        now = self.clock()
        result = await in_thread(self.store.verify_enrollment, session.user, code, now)
        if result is not TotpResult.OK:
            reason = f"totp_{result}"
            verdict = await record_code_failure(
                self.services, self._browser(request), session.user, code,
                Verdict(False, reason, "totp"), started, clock=self.clock)
            if verdict.end_session and not session.mfa_done:
                state = csrf_of(request)
                if state.session_id is not None:
                    await in_thread(self.store.end_web_session, state.session_id)
                return _see_other("/", cookie=clear_session_cookie())
            return await self._authenticator_page(
                request, session, stage, 400, confirm_again=result is not TotpResult.NOT_ENROLLED,
                error="That code does not match the new key. Check the code in your "
                      "authenticator app and try again, or start over.")
        codes = await in_thread(self.store.generate_recovery_codes, session.user, now)
        log.info("web.totp_enabled", user=session.user)
        rotated = None
        state = csrf_of(request)
        if not session.mfa_done and state.session_id is not None:
            # Enrolment confirmed with a code: the second factor is done in this session.
            rotated = await in_thread(self.store.complete_web_session_mfa, state.session_id,
                                      self.clock())
            if rotated is None:
                return _see_other("/", cookie=clear_session_cookie())
        return self.render(request, "recovery_codes.html", session=session,
                           new_session=rotated, stage=Stage.FULL, codes=codes.codes)

    async def totp_disable(self, request: Request, session: WebSession, stage: Stage) -> Response:
        form = await _form(request)
        browser = self._browser(request)
        verdict = await check_code(self.services, browser, session.user, form.get("code", ""),
                                   recovery=False, clock=self.clock)
        if not verdict.ok:
            return await self._authenticator_page(
                request, session, stage, 400,
                off_error="That is not the current code of your authenticator app.")
        await in_thread(self.store.disable, session.user)
        log.info("web.totp_disabled", user=session.user)
        return _see_other("/authenticator")

    # -- app passwords -----------------------------------------------------------------------

    async def app_passwords(self, request: Request, session: WebSession,
                            stage: Stage) -> Response:
        if request.method == "GET":
            return await self._app_passwords_page(request, session)
        form = await _form(request)
        label = form.get("label", "").strip()
        access = form.get("access", "full")
        mailboxes = form.get("mailboxes", "").strip()
        expires = form.get("expires", "never")
        values = {"label": label, "access": access, "mailboxes": mailboxes, "expires": expires}
        if access not in ACCESS_CHOICES or expires not in EXPIRY_CHOICES:
            return await self._app_passwords_page(request, session, 400, values=values,
                                                   error="Choose an access and an expiry "
                                                         "from the lists.")
        scopes = [access]
        if mailboxes:
            names = [n.strip() for n in mailboxes.split(",") if n.strip()]
            scopes.append("mailboxes=" + ",".join(names))
        now = self.clock()
        ttl = EXPIRY_CHOICES[expires][0]
        try:
            new = await in_thread(self.store.create_app_password, session.user, label, scopes,
                                  None if ttl is None else now + ttl, now)
        except AppPasswordLabelExists:
            error = f"You already have an app password labelled “{label}”: choose another label."
        except TooManyAppPasswords:
            error = "You have too many app passwords: revoke one you no longer use first."
        except (InvalidScopeError, ValueError) as exc:
            error = _scope_message(exc)
        else:
            log.info("web.app_password_created", user=session.user,
                     app_password_label=new.info.label, scopes=list(new.info.scopes))
            return self.render(request, "app_password_created.html", session=session,
                               password=new.password, info=new.info,
                               settings=self._mail_settings(request, session.user))
        return await self._app_passwords_page(request, session, 400, values=values, error=error)

    async def _app_passwords_page(self, request: Request, session: WebSession,
                                  status: int = 200, **context: Any) -> Response:
        items = await in_thread(self.store.list_app_passwords, session.user)
        now = self.clock()
        return self.render(request, "app_passwords.html", status, session=session,
                           items=[_app_view(i, now) for i in items],
                           access_choices=ACCESS_CHOICES,
                           expiry_choices={k: v[1] for k, v in EXPIRY_CHOICES.items()},
                           values=context.pop("values", {"access": "full", "expires": "never"}),
                           **context)

    def _mail_settings(self, request: Request, user: str) -> dict[str, Any]:
        """What a mail client needs: server name, ports from the listeners, user name."""
        host = urlsplit(self.web.public_url).hostname if self.web.public_url else None
        ports: dict[str, list[int]] = {"implicit-tls": [], "starttls": []}
        for listener in self.services.config.listeners:
            if listener.port is not None:
                ports[listener.mode].append(listener.port)
        return {"server": host or request.url.hostname, "user": user,
                "tls_ports": ports["implicit-tls"], "starttls_ports": ports["starttls"]}

    async def app_password_revoke(self, request: Request, session: WebSession,
                                  stage: Stage) -> Response:
        label = (await _form(request)).get("label", "")
        try:
            await in_thread(self.store.revoke_app_password, session.user, label)
        except AppPasswordNotFound:
            return _see_other("/app-passwords")
        log.info("web.app_password_revoked", user=session.user, app_password_label=label)
        return _see_other("/app-passwords")

    # -- devices -----------------------------------------------------------------------------

    async def devices(self, request: Request, session: WebSession, stage: Stage,
                      status: int = 200, **context: Any) -> Response:
        user = session.user
        remembered = await in_thread(self.store.list_devices, user)
        pending = await in_thread(self.store.list_pending_devices, user)
        now = self.clock()
        return self.render(request, "devices.html", status, session=session,
                           remembered=[d for d in remembered if not d.is_expired(now)],
                           pending=pending, now=now, **context)

    async def device_forget(self, request: Request, session: WebSession,
                            stage: Stage) -> Response:
        device_id = _int((await _form(request)).get("id"))
        if device_id is not None:
            try:
                await in_thread(self.store.forget, session.user, device_id)
                log.info("web.device_forgotten", user=session.user, device_id=device_id)
            except DeviceNotFound:
                pass
        return _see_other("/devices")

    async def device_approve(self, request: Request, session: WebSession,
                             stage: Stage) -> Response:
        device_id = _int((await _form(request)).get("id"))
        user = session.user
        pending = await in_thread(self.store.list_pending_devices, user)
        device = next((d for d in pending if d.id == device_id), None)
        if device is None:
            return _see_other("/devices")
        ttl = self._approval_ttl(user, device.address)
        if ttl is None:
            return await self.devices(
                request, session, stage, 400,
                error="This device cannot be approved: the login rule for its address does "
                      "not let devices be remembered. Ask your administrator.")
        now = self.clock()
        await in_thread(self.store.approve_device, user, device.id, now + ttl, now)
        log.info("web.device_approved", user=user, device_id=device.id,
                 address=device.address, client_name=device.client_name, until=now + ttl)
        return _see_other("/devices")

    def _approval_ttl(self, user: str, address: str) -> float | None:
        """How long an approval of a device at ``address`` lasts: the ``remember_device``
        of the login rule that applies there; None when it is off (or no rule allows)."""
        policy = self.services.policy.current
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        if policy is None:
            return None
        requirement = policy.requirement_for(user, ip)
        if not requirement.allowed or requirement.remember_device <= 0:
            return None
        return requirement.remember_device

    async def store_unavailable(self, request: Request, exc: Exception) -> Response:
        """Any page whose store call failed (disk full, database locked too long, the
        database server down)."""
        path = request.url.path if not request.url.path.startswith("/invite/") else "/invite/..."
        if isinstance(exc, StoreUnavailable):
            metrics.store_unavailable_total.labels("web").inc()
            log.error("store.unavailable", operation="web", error=str(exc), path=path)
        else:
            log.error("store.error", error=str(exc), via="web", path=path)
        return self.render(request, "message.html", 503, session=None,
                           title="Not available",
                           message="This page cannot be shown right now. Please try again "
                                   "in a few minutes.")

    # -- activity and sign-out ---------------------------------------------------------------

    async def activity(self, request: Request, session: WebSession, stage: Stage) -> Response:
        rows = await in_thread(self.store.recent_logins, session.user, ACTIVITY_ROWS)
        reasons = {r.reason: FAILURE_REASONS.get(r.reason.split(":")[0], "") for r in rows}
        return self.render(request, "activity.html", session=session, rows=rows,
                           factor_names=FACTOR_NAMES, failure_reasons=reasons)

    async def signout(self, request: Request) -> Response:
        state = csrf_of(request)
        if state.session is not None and state.session_id is not None:
            await in_thread(self.store.end_web_session, state.session_id)
            log.info("web.signout", user=state.session.user)
        return _see_other("/", cookie=clear_session_cookie())

    async def signout_everywhere(self, request: Request, session: WebSession,
                                 stage: Stage) -> Response:
        count = await in_thread(self.store.revoke_web_sessions, session.user)
        log.info("web.signout_everywhere", user=session.user, sessions=count)
        return _see_other("/", cookie=clear_session_cookie())


def _see_other(path: str, cookie: str | None = None) -> Response:
    response = RedirectResponse(path, status_code=303, headers={"Cache-Control": "no-store"})
    if cookie is not None:
        response.headers.append("set-cookie", cookie)
    return response


def _ip(text: str | None) -> str:
    """An address of the connection in its canonical spelling; 0.0.0.0 when the ASGI
    server gave none that is an IP (a unix socket, an in-process test transport)."""
    try:
        return plain_ip(text or "")
    except ValueError:
        return "0.0.0.0"


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _scope_message(exc: Exception) -> str:
    text = str(exc)
    if "label" in text:
        return "Give the app password a label of 1 to 64 characters, e.g. “Phone”."
    return "Mailboxes: give mailbox names separated by commas, e.g. INBOX, Archive/*."


def _app_view(info: AppPasswordInfo, now: float) -> dict[str, Any]:
    mailboxes = next((s.split("=", 1)[1] for s in info.scopes if s.startswith("mailboxes=")), "")
    return {
        "label": info.label,
        "access": ACCESS_CHOICES.get(info.scopes[0], info.scopes[0]),
        "mailboxes": mailboxes.replace(",", ", ") or "All",
        "created": info.created,
        "last_used": info.last_used,
        "last_ip": info.last_ip or "",
        "last_client": info.last_client or "",
        "expires": info.expires,
        "expired": info.is_expired(now),
    }

