"""Signing in to the portal: the password (checked by Dovecot), the second factor, and
what a web session may do at each stage.

Theory of operation:

1. The password is checked the way an IMAP login checks it: a login to the backend over
   the gateway's own backend connection code (``connect_backend`` + AUTHENTICATE PLAIN,
   with the browser's address forwarded), then the connection is closed. Before it, the
   same limiter gate as IMAP (``check_login``) and the login policy (a rule that denies
   the user from this address denies the portal too); after a failure, the same
   ``record_failure`` (portal failures count against the source like IMAP ones), the
   same uniform answer, and the same minimum time (``[limits] auth_failure_delay`` plus
   the limiter's tarpit). The reason goes to the log, the metrics and the user's login
   history, never to the page.

2. A good password opens a web session (``create_web_session``, a new id: nothing a
   browser held before sign-in survives it). What the session may do is its ``Stage``:

   - ``SECOND_FACTOR``: the user has an active authenticator, so the session can do
     nothing but enter a TOTP code or a one-time recovery code (``check_code``, which is
     counted like a password). Success rotates the session id again
     (``complete_web_session_mfa``) and the session is ``FULL``.
   - ``ENROL``: no authenticator yet, and enrolment is open to this session: with
     ``[web] enrollment = "password"`` the password alone may set one up; with
     ``"invite"`` an invitation link (used after the password, once) started a set-up
     that is waiting for its first code. Confirming the code ("Turn on") completes the
     second factor and the session is ``FULL``.
   - ``NEEDS_INVITE``: no authenticator, ``"invite"`` enrolment, no invitation used:
     the session can only show how to get one, and sign out.
   - ``FULL``: everything. Approving a device requires this stage.

   A session that has not completed its second factor within ``SIGN_IN_WINDOW`` is
   over (the user signs in again), whatever ``[web] session_ttl`` says.

3. Every sign-in, successful or not, is one row of the user's login history with
   protocol ``web``; a success also goes through ``record_success`` (the user's network
   becomes familiar, as after an IMAP login), but only once the sign-in is complete.

Nothing here logs or stores a password, a code or a session id; log events are
``web.signin`` and ``web.signin_failed`` (with ``reason`` and ``step``).
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from gateway.auth.oauth import TokenAccepted, TokenRejected, unverified_user
from gateway.limits.outage import fail_open
from gateway.observability import metrics
from gateway.observability.logs import get_logger
from gateway.proxy.backend import BackendUnavailable
from gateway.proxy.oauth import KEYS_UNAVAILABLE, TokenVerifier
from gateway.proxy.values import BackendLink, ClientEndpoint
from gateway.store.base import (
    CredentialStore,
    LoginProtocol,
    LoginRecord,
    LoginResult,
    TotpStatus,
    WebSession,
)
from gateway.store.errors import StoreError, StoreUnavailable

if TYPE_CHECKING:
    from gateway.anomaly.model import Anomaly
    from gateway.config import Config
    from gateway.limits.decisions import Ban
    from gateway.limits.limiter import Limiter
    from gateway.policy import PolicyReloader

__all__ = [
    "SIGN_IN_WINDOW",
    "Browser",
    "PortalServices",
    "Stage",
    "Verdict",
    "check_code",
    "check_id_token",
    "check_password",
    "in_thread",
    "may_start_enrolment",
    "record_code_failure",
    "signed_in",
    "stage_of",
]

log = get_logger()

#: Seconds a signed-in-with-password session has to complete its second factor (or
#: its first enrolment) before it is over.
SIGN_IN_WINDOW = 15 * 60.0
#: Bounds on what a sign-in form may carry; longer is a failure like any other.
MAX_USER = 256
MAX_PASSWORD = 1024
#: The mechanism label of portal sign-ins in ``imap_gateway_auth_attempts_total``.
MECHANISM = "web"
#: Failures that say nothing about the credentials (as for IMAP): not counted.
_NOT_THE_CLIENTS_FAULT = frozenset({"backend_unavailable", "store_error"})
_TOTP_CODE = re.compile(r"[0-9]{6}")

T = TypeVar("T")


class PortalServices(Protocol):
    """What the portal needs from the running gateway (``GatewayContext`` has it all)."""

    @property
    def config(self) -> Config: ...
    @property
    def store(self) -> CredentialStore: ...
    @property
    def policy(self) -> PolicyReloader: ...
    @property
    def limiter(self) -> Limiter: ...

    def attempt_fingerprint(self, user: str, password: str) -> bytes: ...

    async def connect_backend(self, endpoint: ClientEndpoint) -> BackendLink: ...


@dataclass(frozen=True)
class Browser:
    """Who is signing in, on the network: what the limiter, the backend (as the client
    address) and the login history are told."""

    ip: str
    port: int
    local_ip: str
    local_port: int
    #: A short name of the browser (from User-Agent), for the login history.
    name: str = ""


@dataclass(frozen=True)
class Verdict:
    """The outcome of one sign-in step. ``reason`` is for logs only; ``unavailable``:
    the mail server could not be asked (the page says so: it is not the user's fault);
    ``end_session``: too many wrong codes, the half-signed-in session is over."""

    ok: bool
    reason: str = "ok"
    factor: str = "none"
    unavailable: bool = False
    end_session: bool = False


class Stage(enum.Enum):
    SIGNED_OUT = "signed-out"
    SECOND_FACTOR = "second-factor"
    ENROL = "enrol"
    NEEDS_INVITE = "needs-invite"
    FULL = "full"


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a (sync, maybe slow: scrypt, SQLite) store call off the event loop."""
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


def stage_of(session: WebSession | None, store: CredentialStore, enrollment: str,
             now: float) -> Stage:
    """What ``session`` may do now (see the module docstring). Reads the store."""
    if session is None:
        return Stage.SIGNED_OUT
    if session.mfa_done:
        return Stage.FULL
    if now - session.created > SIGN_IN_WINDOW:
        return Stage.SIGNED_OUT
    status = store.totp_status(session.user)
    if status is TotpStatus.ACTIVE:
        return Stage.SECOND_FACTOR
    if enrollment == "password" or status is TotpStatus.PENDING:
        return Stage.ENROL
    return Stage.NEEDS_INVITE


def may_start_enrolment(stage: Stage, enrollment: str) -> bool:
    """May this session create a new authenticator key ("Set up authenticator")?

    A signed-in session may (a new phone); before the second factor only where the
    password alone may enrol. With invitations, the invitation itself starts the set-up.
    """
    return stage is Stage.FULL or (stage is Stage.ENROL and enrollment == "password")


# ---------------------------------------------------------------------------
# The password


async def check_password(services: PortalServices, browser: Browser, user: str,
                         password: str, *, clock: Callable[[], float] = time.time) -> Verdict:
    """Check ``user``'s mail password by a login to the backend, through the limiter.

    A failure has been counted, logged and recorded in the history, and has taken its
    minimum time, when this returns; a success has done none of that (the caller calls
    ``signed_in`` once the whole sign-in is complete).
    """
    started = trio.current_time()
    limiter = services.limiter
    # No fingerprint for the gate: a right password here is only half a sign-in (no
    # record_success until the second factor), so counting it now would cost the user
    # one of the wrong codes the (user, address) pair tolerates.
    gate = await fail_open("check_login", limiter.check_login(
        user, browser.ip, clock(), protocol="web"), log)
    counted = True
    if gate is not None and not gate.allowed:
        verdict = Verdict(False, gate.reason)
        counted = not gate.reason.startswith("banned:")  # as for IMAP: no escalation
    else:
        verdict = await _backend_login(services, browser, user, password)
    if verdict.ok:
        return verdict
    fingerprint = services.attempt_fingerprint(user, password)
    return await _failed(services, browser, user, verdict, "password", fingerprint, counted,
                         started, clock)


def _refuse_early(services: PortalServices, browser: Browser, user: str,
                  password: str) -> str | None:
    """The reason to refuse before asking the backend, or None."""
    if not user or len(user) > MAX_USER or not user.isprintable():
        return "malformed_user"
    if not password or len(password) > MAX_PASSWORD or "\0" in password:
        return "malformed_password"
    backend = services.config.backend
    if backend.master_user and backend.master_separator and backend.master_separator in user:
        return "master_separator_in_user"
    policy = services.policy.current
    if policy is not None:
        requirement = policy.requirement_for(user, ipaddress.ip_address(browser.ip))
        if not requirement.allowed:
            metrics.policy_denials_total.labels(requirement.rule or "no_rule_matched").inc()
            return requirement.reason
    return None


async def _backend_login(services: PortalServices, browser: Browser, user: str,
                         password: str) -> Verdict:
    refused = _refuse_early(services, browser, user, password)
    if refused is not None:
        return Verdict(False, refused)
    endpoint = ClientEndpoint(ip=browser.ip, port=browser.port, local_ip=browser.local_ip,
                              local_port=browser.local_port, session_id=secrets.token_hex(8),
                              tls_version=None)
    config = services.config.backend
    try:
        backend = await services.connect_backend(endpoint)
    except BackendUnavailable as exc:
        log.warning("backend.error", kind=exc.kind, detail=exc.detail, via="web")
        return Verdict(False, "backend_unavailable", unavailable=True)
    try:
        result = await backend.login_plain(authzid="", authcid=user, password=password,
                                           timeout=config.login_timeout)
    except BackendUnavailable as exc:
        metrics.backend_errors_total.labels(backend.name, exc.kind).inc()
        log.warning("backend.error", kind=exc.kind, detail=exc.detail, via="web")
        return Verdict(False, "backend_unavailable", unavailable=True)
    finally:
        # Only the answer was wanted: the backend session ends here, whatever happened
        # (cancellation included).
        await backend.aclose()
    if result.ok:
        return Verdict(True)
    if result.code in ("UNAVAILABLE", "PRIVACYREQUIRED"):
        if result.code == "PRIVACYREQUIRED":
            log.error("backend.misconfigured", via="web",
                      detail="the backend refused plaintext auth from the gateway: add the "
                      "gateway to Dovecot's login_trusted_networks, or use client_ip = "
                      "\"proxy-v2\"")
        return Verdict(False, "backend_unavailable", unavailable=True)
    return Verdict(False, "backend_rejected")


# ---------------------------------------------------------------------------
# The second factor


async def check_code(services: PortalServices, browser: Browser, user: str, code: str, *,
                     recovery: bool = True,
                     clock: Callable[[], float] = time.time) -> Verdict:
    """Check a TOTP code (six digits) or, with ``recovery``, a one-time recovery code of
    ``user``.

    A TOTP code is single-use here (no client may use its step again); a recovery code
    is consumed. Counted by the limiter like a password, failures take the same minimum
    time; ``Verdict.end_session`` is set once the (user, address) pair has as many
    failures as the limiter tolerates before it blocks the pair.
    """
    started = trio.current_time()
    code = code.strip().replace(" ", "")
    factor = "totp" if _TOTP_CODE.fullmatch(code) else "recovery-code"
    gate = await fail_open("check_login", services.limiter.check_login(user, browser.ip, clock()),
                           log)
    counted = True
    if gate is not None and not gate.allowed:
        verdict = Verdict(False, gate.reason, factor)
        counted = not gate.reason.startswith("banned:")
    elif factor == "recovery-code" and not recovery:
        verdict = Verdict(False, "totp_invalid", "totp")
    else:
        verdict = await _check_code(services.store, user, code, factor, clock())
    if verdict.ok:
        return verdict
    return await record_code_failure(services, browser, user, code, verdict, started,
                                     counted=counted, clock=clock)


async def _check_code(store: CredentialStore, user: str, code: str, factor: str,
                      now: float) -> Verdict:
    try:
        if factor == "totp":
            result = await in_thread(store.check_totp, user, code, now)
            return Verdict(result == "ok", "ok" if result == "ok" else f"totp_{result}", factor)
        used = await in_thread(store.use_recovery_code, user, code, now)
        return Verdict(used, "ok" if used else "recovery_code_invalid", factor)
    except StoreUnavailable as exc:
        metrics.store_unavailable_total.labels("web").inc()
        log.error("store.unavailable", operation="web", error=str(exc))
        return Verdict(False, "store_error", factor)
    except StoreError as exc:
        log.error("store.error", error=str(exc), via="web")
        return Verdict(False, "store_error", factor)


async def record_code_failure(services: PortalServices, browser: Browser, user: str, code: str,
                              verdict: Verdict, started: float, *, counted: bool = True,
                              clock: Callable[[], float] = time.time) -> Verdict:
    """Count, log and record a wrong code (also one typed to confirm a new authenticator
    or to turn it off), and hold the answer for the uniform minimum time."""
    # Distinct from any password's fingerprint: a code is not a password attempt.
    fingerprint = services.attempt_fingerprint(user, "\0code\0" + code)
    return await _failed(services, browser, user, verdict, "code", fingerprint, counted,
                         started, clock)


# ---------------------------------------------------------------------------
# Outcomes


async def _failed(services: PortalServices, browser: Browser, user: str, verdict: Verdict,
                  step: str, fingerprint: bytes, counted: bool, started: float,
                  clock: Callable[[], float]) -> Verdict:
    reason_label = verdict.reason.split(":")[0]
    metrics.auth_attempts_total.labels("failure", reason_label, MECHANISM).inc()
    log.info("web.signin_failed", user=user[:MAX_USER], client_ip=browser.ip, step=step,
             reason=verdict.reason)
    await _history(services.store, browser, user, verdict.factor, LoginResult.FAILURE,
                   verdict.reason, clock())
    if verdict.unavailable:
        return verdict
    tarpit = 0.0
    end_session = False
    if counted and reason_label not in _NOT_THE_CLIENTS_FAULT:
        failure = await fail_open("record_failure", services.limiter.record_failure(
            user, browser.ip, fingerprint, clock(), protocol="web"), log)
        if failure is not None:
            tarpit = failure.tarpit_seconds
            if tarpit:
                metrics.tarpit_delay_seconds.observe(tarpit)
            _report(failure.anomalies, failure.new_bans)
            limit = services.config.limits.user_ip_fail_threshold
            end_session = failure.counts.get("user_ip", 0) >= limit
    # Every failure looks the same and takes at least the same time, as for IMAP.
    await trio.sleep_until(started + services.config.limits.auth_failure_delay + tarpit)
    if end_session:
        return Verdict(False, verdict.reason, verdict.factor, end_session=True)
    return verdict


# ---------------------------------------------------------------------------
# The identity provider ("Sign in with <provider>", gateway.web.oidc)


async def check_id_token(services: PortalServices, verifier: TokenVerifier, browser: Browser,
                         id_token: str, nonce: str, *,
                         clock: Callable[[], float] = time.time) -> tuple[Verdict, str]:
    """Check an OpenID Connect ID token from the code flow; (verdict, user).

    The same gates as a password: the limiter's ``check_login``, the policy (a rule that
    denies the user from here denies this too), and on failure the same counting, log,
    history and minimum time. A good token's factor is ``oauth-mfa`` when its ``amr``
    holds one of ``[oauth] mfa_claims``, else ``oauth``.
    """
    started = trio.current_time()
    checked = await verifier.verify_id_token(id_token, clock())
    user = checked.user if isinstance(checked, TokenAccepted) else unverified_user(
        id_token, services.config.oauth.username_claim)
    counted = True
    if isinstance(checked, TokenRejected):
        verdict = Verdict(False, checked.reason,
                          unavailable=checked.reason == KEYS_UNAVAILABLE)
    elif not hmac.compare_digest(checked.nonce.encode(), nonce.encode()):
        verdict = Verdict(False, "oauth_nonce_mismatch")
    else:
        factor = "oauth-mfa" if checked.mfa else "oauth"
        gate = await fail_open("check_login", services.limiter.check_login(
            user, browser.ip, clock()), log)
        reason = None
        if gate is not None and not gate.allowed:
            reason = gate.reason
            counted = not gate.reason.startswith("banned:")
        else:
            backend = services.config.backend
            if backend.master_separator and backend.master_separator in user:
                reason = "master_separator_in_user"
            policy = services.policy.current
            if reason is None and policy is not None:
                requirement = policy.requirement_for(user, ipaddress.ip_address(browser.ip))
                if not requirement.allowed:
                    metrics.policy_denials_total.labels(
                        requirement.rule or "no_rule_matched").inc()
                    reason = requirement.reason
        if reason is None:
            return Verdict(True, factor=factor), user
        verdict = Verdict(False, reason, factor=factor)
    fingerprint = services.attempt_fingerprint(user, id_token)
    return await _failed(services, browser, user, verdict, "oauth", fingerprint, counted,
                         started, clock), user


async def signed_in(services: PortalServices, browser: Browser, user: str, factor: str, *,
                    clock: Callable[[], float] = time.time) -> None:
    """Book a completed sign-in: the limiter's success, the history row, log and metric."""
    success = await fail_open("record_success", services.limiter.record_success(
        user, browser.ip, clock(), protocol="web"), log)
    if success is not None:
        _report(success.anomalies)
    metrics.auth_attempts_total.labels("success", "ok", MECHANISM).inc()
    log.info("web.signin", user=user, client_ip=browser.ip, factor=factor)
    await _history(services.store, browser, user, factor, LoginResult.SUCCESS, "ok", clock())


async def _history(store: CredentialStore, browser: Browser, user: str, factor: str,
                   result: LoginResult, reason: str, now: float) -> None:
    record = LoginRecord(time=now, user=user, address=browser.ip, client_name=browser.name,
                         factor=factor, result=result, protocol=LoginProtocol.WEB,
                         reason=reason)
    try:
        await in_thread(store.record_login, record)
    except StoreError as exc:
        log.error("store.error", error=str(exc), via="web")


def _report(anomalies: Iterable[Anomaly], bans: Iterable[Ban] = ()) -> None:
    """Log and count what the limiter and detectors raised (as an IMAP session does)."""
    for ban in bans:
        metrics.bans_created_total.labels(ban.scope, ban.reason).inc()
        log.warning("ban.created", scope=ban.scope, network=ban.network,
                    ban_reason=ban.reason, expires=ban.expires, via="web")
    for anomaly in anomalies:
        metrics.anomalies_total.labels(anomaly.kind).inc()
        log.warning("anomaly", **anomaly.as_event(), via="web")
