"""Login decisions in the shell: policy → factor plan → backend login.

The order matters and each step can only narrow:

1. The client's SASL authorization identity must be empty or the user itself, and a
   user name may not contain the Dovecot master separator: a client never gets to act
   as a master user.
2. The policy's first matching rule for (user, client IP): deny → refused here,
   without touching the store or the backend.
3. ``gateway.auth.decide`` (in a worker thread: it may run scrypt) turns the secret
   into a plan: an app password (log in to Dovecot as the user via the master user),
   a password to forward (after a good TOTP code, or from a remembered or approved
   device), a device that needs the user's approval, or a refusal with a reason.
   When the limiter locked the user out of this network in a way a second factor
   passes (``LoginClient.lockout``), a plan without one (a password alone, or a device
   asking for approval) is refused here with the limiter's reason.
4. The policy is asked again with the factor actually presented, so a rule can never
   be satisfied by a weaker factor than it names.
5. The backend verifies the password (forwarded plans) or the master login.

OAUTHBEARER/XOAUTH2 logins take their own branch (``_login_oauth``): the token is checked
(``gateway.proxy.oauth``), its username claim is the user (a user the client named must
match it), the policy is asked with the factor ``oauth-mfa`` or ``oauth``, and the backend
login goes through the master user, since the user has no Dovecot password to send.

Whatever fails, the session answers with the same ``NO [AUTHENTICATIONFAILED]`` after
the same minimum delay (a credential store whose database is down too: fail closed,
logged as ``store.unavailable`` and counted); ``LoginOutcome.reason`` goes to logs and
metrics only. The one other answer is for a device that needs approval
(``gateway.auth.approval``, only with the web portal on): ``NO [ALERT]`` naming the portal,
the same text after the same delay whether the password was right (then the device is
noted for the user to approve) or not.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from typing import TYPE_CHECKING

import trio

from gateway.auth.approval import alert_text, check_deadline
from gateway.auth.cache import RecentSecrets
from gateway.auth.decide import (
    DENY_TOTP_NOT_ENROLLED,
    DENY_TOTP_REQUIRED,
    FACTOR_NONE,
    Deny,
    ForwardPassword,
    NeedsApproval,
    UseAppPassword,
    decide,
)
from gateway.auth.factors import normalize_app_password
from gateway.auth.oauth import TokenRejected
from gateway.imap.sasl import OAUTH_MECHANISMS
from gateway.observability import metrics
from gateway.policy import LoginContext
from gateway.proxy.backend import BackendUnavailable
from gateway.proxy.oauth import TokenVerifier
from gateway.proxy.values import (
    BackendLink,
    BackendLoginResult,
    LoginClient,
    LoginOutcome,
    LoginServices,
)
from gateway.store.errors import DeviceNotFound, StoreError, StoreUnavailable

if TYPE_CHECKING:
    from gateway.imap.preauth import LoginRequest


#: Parsed client addresses remembered for recent clients (addresses are immutable
#: values; parsing one with ``ipaddress`` costs more than the dict lookup).
_ip_address = functools.lru_cache(maxsize=1024)(ipaddress.ip_address)

#: Refusals that only say "a password alone is not enough here".
_NO_SECOND_FACTOR = frozenset({DENY_TOTP_REQUIRED, DENY_TOTP_NOT_ENROLLED})


class Authenticator:
    """Decides logins for one gateway process (see the module docstring for the order)."""

    def __init__(self, ctx: LoginServices) -> None:
        self.ctx = ctx
        self.verified = RecentSecrets(ttl=600.0)
        #: Passwords the backend rejected recently (5 min): answered here, not re-asked.
        self.rejected = RecentSecrets(ttl=300.0)
        oauth = ctx.config.oauth
        self.oauth: TokenVerifier | None = TokenVerifier(oauth) if oauth.enabled else None

    def _still_valid(
        self, user: str, app_password_id: int | None, ip: str, client_name: str | None,
        now: float,
    ) -> UseAppPassword | None:
        """A plan for an app password verified within the cache TTL that is still valid."""
        if not self.master_configured or app_password_id is None:
            return None
        store = self.ctx.store
        info = next((i for i in store.list_app_passwords(user) if i.id == app_password_id), None)
        if info is None or info.is_expired(now):
            return None  # revoked or expired since: decide() gives the reason
        store.record_app_password_use(info.id, ip, now, client_name)
        return UseAppPassword(user=user, app_password_id=info.id, scopes=info.scopes,
                              label=info.label)

    @property
    def master_configured(self) -> bool:
        return bool(self.ctx.config.backend.master_user) and self.ctx.master_password is not None

    @property
    def device_approval(self) -> bool:
        """Devices may ask for approval: the web portal, where users approve, is on."""
        return bool(self.ctx.config.web.address)

    async def login(self, client: LoginClient, req: LoginRequest) -> LoginOutcome:
        if req.mechanism in OAUTH_MECHANISMS:
            return await self._login_oauth(client, req)
        started = trio.current_time() if client.started is None else client.started
        user = req.username
        if req.authzid and req.authzid != user:
            return LoginOutcome(reason="authzid_not_allowed")
        separator = self.ctx.config.backend.master_separator
        if self.ctx.config.backend.master_user and separator and separator in user:
            return LoginOutcome(reason="master_separator_in_user")

        policy = self.ctx.policy.current
        assert policy is not None  # startup loads a policy before any listener opens
        client_ip = _ip_address(client.endpoint.ip)
        requirement = policy.requirement_for(user, client_ip)
        if not requirement.allowed:
            metrics.policy_denials_total.labels(requirement.rule or "no_rule_matched").inc()
            return LoginOutcome(reason=requirement.reason)

        now = time.time()
        run_decide = functools.partial(
            decide, user, req.password, client.endpoint.ip, client.client_name, requirement,
            self.ctx.store, now, self.master_configured, device_approval=self.device_approval,
            second_factor_only=client.lockout is not None)
        canonical = normalize_app_password(req.password)
        # A server database answers over the network: never wait for it on the event loop.
        remote = getattr(self.ctx.store, "remote", False)
        plan: UseAppPassword | ForwardPassword | NeedsApproval | Deny | None
        try:
            if canonical is None:
                # Not shaped like an app password: no scrypt, only a few small SQLite
                # queries, cheaper inline than a thread hop (not so on a server database).
                plan = await trio.to_thread.run_sync(run_decide) if remote else run_decide()
            else:
                still_valid = functools.partial(
                    self._still_valid, user, self.verified.get(user, canonical, now),
                    client.endpoint.ip, client.client_name, now)
                plan = await trio.to_thread.run_sync(still_valid) if remote else still_valid()
                if plan is None:
                    plan = await trio.to_thread.run_sync(run_decide)
                    if isinstance(plan, UseAppPassword):
                        self.verified.put(user, canonical, plan.app_password_id, now)
        except StoreUnavailable as exc:
            store_unavailable(client, exc)
            return LoginOutcome(reason="store_error")
        except StoreError as exc:
            client.log.error("store.error", error=str(exc))
            return LoginOutcome(reason="store_error")
        if isinstance(plan, Deny):
            if client.lockout is not None and plan.reason in _NO_SECOND_FACTOR:
                return LoginOutcome(reason=client.lockout)  # the lockout is why
            return LoginOutcome(reason=plan.reason)
        if client.lockout is not None and plan.factor == FACTOR_NONE:
            # Locked out of this network for password-only logins (an approval request
            # too: its password check would reach the backend): refused here, so the
            # attacker's guesses never reach the backend.
            return LoginOutcome(reason=client.lockout)
        if isinstance(plan, NeedsApproval):
            # Refused whatever the password: the policy's second look has nothing to add.
            return await self._ask_for_approval(client, plan, started, now)

        final = policy.decide(LoginContext(user=user, ip=client_ip, factor=plan.factor))
        if not final.allowed:
            metrics.policy_denials_total.labels(final.rule or "no_rule_matched").inc()
            return LoginOutcome(reason=final.reason)

        if isinstance(plan, ForwardPassword) and self.rejected.get(user, plan.password, now):
            return LoginOutcome(reason="password_known_bad")

        if isinstance(plan, UseAppPassword):
            # decide() chose an app password only with a master user configured.
            logged_in = await self._master_login(client, user)
        else:
            logged_in = await self._backend_login(client, "", plan.user, plan.password)
        if isinstance(logged_in, LoginOutcome):
            return logged_in
        backend, result = logged_in

        if not result.ok:
            assert isinstance(plan, ForwardPassword)  # _master_login returns only an OK
            await backend.aclose()
            if _not_a_verdict(client, result):
                return LoginOutcome(reason="backend_unavailable", unavailable=True)
            self.rejected.put(user, plan.password, 1, now)
            return LoginOutcome(reason="backend_rejected")

        outcome = LoginOutcome(backend=backend, user=user, ok_line=result.line, factor=plan.factor)
        if isinstance(plan, UseAppPassword):
            outcome.scopes = tuple(plan.scopes)
            outcome.app_password_id = plan.app_password_id
            outcome.app_password_label = plan.label
        elif isinstance(plan, ForwardPassword) and plan.remember:
            try:
                await trio.to_thread.run_sync(
                    self.ctx.store.remember, user, client.endpoint.ip,
                    client.client_name, requirement.remember_device, now,
                )
                if plan.approval_id is not None:
                    await self._use_approval(client, user, plan.approval_id)
            except StoreError as exc:
                client.log.error("store.error", error=str(exc))
        return outcome

    def _master_identity(self, user: str) -> tuple[str, str]:
        """``(authzid, authcid)`` of a master-user login as ``user`` (``[backend] master_login``)."""
        cfg = self.ctx.config.backend
        if cfg.master_login == "separator":
            return "", f"{user}{cfg.master_separator}{cfg.master_user}"
        return user, cfg.master_user

    async def _master_login(
        self, client: LoginClient, user: str
    ) -> tuple[BackendLink, BackendLoginResult] | LoginOutcome:
        """Log in to the backend as ``user`` through the master user (the gateway checked
        the credential itself: an app password, an OAuth token). Only a backend that said
        OK is returned; any refusal is the gateway's fault or the backend's, never the
        client's: ``backend_unavailable`` or ``master_login_failed`` (Dovecot refuses a
        master login for a user it does not know, too)."""
        master_password = self.ctx.master_password
        assert master_password is not None  # the callers checked master_configured
        authzid, authcid = self._master_identity(user)
        logged_in = await self._backend_login(client, authzid, authcid, master_password)
        if isinstance(logged_in, LoginOutcome):
            return logged_in
        backend, result = logged_in
        if not result.ok:
            await backend.aclose()
            if _not_a_verdict(client, result):
                return LoginOutcome(reason="backend_unavailable", unavailable=True)
            client.log.error("backend.master_login_failed", backend_code=result.code)
            return LoginOutcome(reason="master_login_failed")
        return logged_in

    async def _backend_login(
        self, client: LoginClient, authzid: str, authcid: str, password: str
    ) -> tuple[BackendLink, BackendLoginResult] | LoginOutcome:
        """Connect to the backend and send the login; an unreachable or failing backend
        becomes the ``backend_unavailable`` outcome (counted and logged here)."""
        try:
            backend = await self.ctx.connect_backend(client.endpoint)
        except BackendUnavailable as exc:
            client.log.warning("backend.error", kind=exc.kind, detail=exc.detail)
            return LoginOutcome(reason="backend_unavailable", unavailable=True)
        try:
            result = await backend.login_plain(
                authzid=authzid, authcid=authcid, password=password,
                timeout=self.ctx.config.backend.login_timeout,
            )
        except BaseException as exc:
            # Includes cancellation (admin kill, shutdown): never leave the backend open.
            await backend.aclose()
            if not isinstance(exc, BackendUnavailable):
                raise
            metrics.backend_errors_total.labels(backend.name, exc.kind).inc()
            client.log.warning("backend.error", kind=exc.kind, detail=exc.detail)
            return LoginOutcome(reason="backend_unavailable", unavailable=True)
        return backend, result

    async def _login_oauth(self, client: LoginClient, req: LoginRequest) -> LoginOutcome:
        """An OAuth bearer token: check it, ask the policy, log in via the master user."""
        if self.oauth is None:
            return LoginOutcome(reason="oauth_disabled")  # the preauth core did not offer it
        checked = await self.oauth.verify(req.password, time.time())
        if isinstance(checked, TokenRejected):
            client.log.info("oauth.token_rejected", reason=checked.reason, detail=checked.detail)
            return LoginOutcome(reason=checked.reason)
        user = checked.user
        if req.username and req.username != user:
            # The token is someone else's: the client may not pick the mailbox.
            return LoginOutcome(reason="oauth_user_mismatch")
        backend_cfg = self.ctx.config.backend
        separator = backend_cfg.master_separator
        if separator and separator in user:
            return LoginOutcome(reason="master_separator_in_user")
        if not self.master_configured:
            return LoginOutcome(reason="master_user_missing")

        policy = self.ctx.policy.current
        assert policy is not None  # startup loads a policy before any listener opens
        factor = "oauth-mfa" if checked.mfa else "oauth"
        final = policy.decide(LoginContext(
            user=user, ip=_ip_address(client.endpoint.ip), factor=factor))
        if not final.allowed:
            metrics.policy_denials_total.labels(final.rule or "no_rule_matched").inc()
            return LoginOutcome(reason=final.reason)

        logged_in = await self._master_login(client, user)
        if isinstance(logged_in, LoginOutcome):
            return logged_in
        backend, result = logged_in
        client.log.info("oauth.token_accepted", user=user, amr=list(checked.amr),
                        subject=checked.subject)
        return LoginOutcome(backend=backend, user=user, ok_line=result.line, factor=factor)

    async def _use_approval(self, client: LoginClient, user: str, approval_id: int) -> None:
        """The approved device is remembered now: its approval is used up."""
        try:
            await trio.to_thread.run_sync(
                self.ctx.store.remove_pending_device, user, approval_id)
        except DeviceNotFound:
            pass  # a parallel login of the same device used it first
        client.log.info("device.approval_used", user=user, device_id=approval_id,
                        client_name=client.client_name)

    async def _ask_for_approval(
        self, client: LoginClient, plan: NeedsApproval, started: float, now: float
    ) -> LoginOutcome:
        """Refuse a device that needs approval; note it for the user only if the backend
        accepts the password (see ``gateway.auth.approval``).

        The answer is the ALERT whatever happens here, except a backend that cannot be
        reached (``[UNAVAILABLE]``, which says nothing about the password either). The
        check must end by ``check_deadline``: a backend that delays its refusals would
        otherwise make a wrong password answer later than a right one; a check cut short
        notes nothing (the client retries; a slow backend is logged).
        """
        outcome = LoginOutcome(reason="device_not_approved",
                               alert=alert_text(self.ctx.config.web.public_url))
        if self.rejected.get(plan.user, plan.password, now):
            outcome.reason = "password_known_bad"
            return outcome
        cfg = self.ctx.config
        deadline = check_deadline(started, cfg.limits.auth_failure_delay,
                                  cfg.backend.login_timeout)
        result: BackendLoginResult | None = None
        with trio.move_on_at(deadline):
            logged_in = await self._backend_login(client, "", plan.user, plan.password)
            if isinstance(logged_in, LoginOutcome):
                return logged_in
            backend, result = logged_in
            # Also a session the backend opened: this login is refused all the same.
            await backend.aclose()
        if result is None:
            # Expected for a wrong password when the backend delays refusals longer than
            # the gateway's delay (Dovecot's default is 2 s); a right one is retried.
            client.log.info("device.approval_check_unfinished",
                            detail="the backend had not answered the password check when the "
                            "answer was due; nothing was noted")
            outcome.reason = "approval_check_unfinished"
            return outcome
        if not result.ok:
            if _not_a_verdict(client, result):
                return LoginOutcome(reason="backend_unavailable", unavailable=True)
            self.rejected.put(plan.user, plan.password, 1, now)
            outcome.reason = "backend_rejected"
            return outcome
        try:
            device = await trio.to_thread.run_sync(
                self.ctx.store.note_device, plan.user, client.endpoint.ip,
                client.client_name, now)
        except StoreError as exc:
            client.log.error("store.error", error=str(exc))
        else:
            client.log.info("device.approval_requested", user=plan.user, device_id=device.id,
                            client_name=device.client_name, state=device.state.value)
        return outcome


def store_unavailable(client: LoginClient, exc: StoreUnavailable) -> None:
    """Log and count a login that found the store's database down (it is refused)."""
    client.log.error("store.unavailable", operation="login", error=str(exc))
    metrics.store_unavailable_total.labels("login").inc()


def _not_a_verdict(client: LoginClient, result: BackendLoginResult) -> bool:
    """A backend refusal that says nothing about the password (the client gets
    ``[UNAVAILABLE]``); a misconfigured backend is logged."""
    if result.code == "PRIVACYREQUIRED":
        client.log.error(
            "backend.misconfigured",
            detail="the backend refused plaintext auth from the gateway: add the "
            "gateway to Dovecot's login_trusted_networks, or use client_ip = \"proxy-v2\"",
        )
        return True
    return result.code == "UNAVAILABLE"
