"""Login decisions in the shell: policy → factor plan → backend login.

The order matters and each step can only narrow:

1. The client's SASL authorization identity must be empty or the user itself, and a
   user name may not contain the Dovecot master separator: a client never gets to act
   as a master user.
2. The policy's first matching rule for (user, client IP): deny → refused here,
   without touching the store or the backend.
3. ``gateway.auth.decide`` (in a worker thread: it may run scrypt) turns the secret
   into a plan: an app password (log in to Dovecot as the user via the master user),
   a password to forward (after a good TOTP code, or from a remembered device), or a
   refusal with a reason.
4. The policy is asked again with the factor actually presented, so a rule can never
   be satisfied by a weaker factor than it names.
5. The backend verifies the password (forwarded plans) or the master login.

Whatever fails, the session answers with the same ``NO [AUTHENTICATIONFAILED]`` after
the same minimum delay; ``LoginOutcome.reason`` goes to logs and metrics only.
"""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING

import trio

from gateway.auth.cache import RecentSecrets
from gateway.auth.decide import Deny, ForwardPassword, UseAppPassword, decide
from gateway.auth.factors import normalize_app_password
from gateway.observability import metrics
from gateway.policy import LoginContext
from gateway.proxy.backend import BackendUnavailable
from gateway.proxy.values import LoginClient, LoginOutcome, LoginServices
from gateway.store.errors import StoreError

if TYPE_CHECKING:
    from gateway.imap.preauth import LoginRequest


class Authenticator:
    """Decides logins for one gateway process (see the module docstring for the order)."""

    def __init__(self, ctx: LoginServices) -> None:
        self.ctx = ctx
        self.verified = RecentSecrets(ttl=600.0)
        #: Passwords the backend rejected recently (5 min): answered here, not re-asked.
        self.rejected = RecentSecrets(ttl=300.0)

    def _recently_verified(
        self, user: str, canonical: str, ip: str, client_name: str | None, now: float
    ) -> UseAppPassword | None:
        """A plan for an app password verified within the cache TTL that is still valid."""
        if not self.master_configured:
            return None
        app_password_id = self.verified.get(user, canonical, now)
        if app_password_id is None:
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

    async def login(self, client: LoginClient, req: LoginRequest) -> LoginOutcome:
        user = req.username
        if req.authzid and req.authzid != user:
            return LoginOutcome(reason="authzid_not_allowed")
        separator = self.ctx.config.backend.master_separator
        if self.ctx.config.backend.master_user and separator and separator in user:
            return LoginOutcome(reason="master_separator_in_user")

        policy = self.ctx.policy.current
        assert policy is not None  # startup loads a policy before any listener opens
        client_ip = ipaddress.ip_address(client.endpoint.ip)
        requirement = policy.requirement_for(user, client_ip)
        if not requirement.allowed:
            metrics.policy_denials_total.labels(requirement.rule or "no_rule_matched").inc()
            return LoginOutcome(reason=requirement.reason)

        now = time.time()
        args = (user, req.password, client.endpoint.ip, client.client_name,
                requirement, self.ctx.store, now, self.master_configured)
        canonical = normalize_app_password(req.password)
        plan: UseAppPassword | ForwardPassword | Deny | None
        try:
            if canonical is None:
                # Not shaped like an app password: no scrypt, only a few small SQLite
                # queries, cheaper inline than a thread hop.
                plan = decide(*args)
            else:
                plan = self._recently_verified(user, canonical, client.endpoint.ip,
                                                client.client_name, now)
                if plan is None:
                    plan = await trio.to_thread.run_sync(decide, *args)
                    if isinstance(plan, UseAppPassword):
                        self.verified.put(user, canonical, plan.app_password_id, now)
        except StoreError as exc:
            client.log.error("store.error", error=str(exc))
            return LoginOutcome(reason="store_error")
        if isinstance(plan, Deny):
            return LoginOutcome(reason=plan.reason)

        final = policy.decide(LoginContext(user=user, ip=client_ip, factor=plan.factor))
        if not final.allowed:
            metrics.policy_denials_total.labels(final.rule or "no_rule_matched").inc()
            return LoginOutcome(reason=final.reason)

        if isinstance(plan, ForwardPassword) and self.rejected.get(user, plan.password, now):
            return LoginOutcome(reason="password_known_bad")

        backend_cfg = self.ctx.config.backend
        try:
            backend = await self.ctx.connect_backend(client.endpoint)
        except BackendUnavailable as exc:
            client.log.warning("backend.error", kind=exc.kind, detail=exc.detail)
            return LoginOutcome(reason="backend_unavailable", unavailable=True)
        try:
            if isinstance(plan, UseAppPassword):
                master_password = self.ctx.master_password
                assert master_password is not None  # decide() checked master_configured
                if backend_cfg.master_login == "separator":
                    authzid, authcid = "", f"{user}{separator}{backend_cfg.master_user}"
                else:
                    authzid, authcid = user, backend_cfg.master_user
                result = await backend.login_plain(
                    authzid=authzid, authcid=authcid, password=master_password,
                    timeout=backend_cfg.login_timeout,
                )
            else:
                result = await backend.login_plain(
                    authzid="", authcid=plan.user, password=plan.password,
                    timeout=backend_cfg.login_timeout,
                )
        except BaseException as exc:
            # Includes cancellation (admin kill, shutdown): never leave the backend open.
            await backend.aclose()
            if not isinstance(exc, BackendUnavailable):
                raise
            metrics.backend_errors_total.labels(backend.name, exc.kind).inc()
            client.log.warning("backend.error", kind=exc.kind, detail=exc.detail)
            return LoginOutcome(reason="backend_unavailable", unavailable=True)

        if not result.ok:
            await backend.aclose()
            if result.code == "UNAVAILABLE":
                return LoginOutcome(reason="backend_unavailable", unavailable=True)
            if result.code == "PRIVACYREQUIRED":
                client.log.error(
                    "backend.misconfigured",
                    detail="the backend refused plaintext auth from the gateway: add the "
                    "gateway to Dovecot's login_trusted_networks, or use client_ip = \"proxy-v2\"",
                )
                return LoginOutcome(reason="backend_unavailable", unavailable=True)
            if isinstance(plan, UseAppPassword):
                client.log.error("backend.master_login_failed", code=result.code)
                return LoginOutcome(reason="master_login_failed")
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
            except StoreError as exc:
                client.log.error("store.error", error=str(exc))
        return outcome
