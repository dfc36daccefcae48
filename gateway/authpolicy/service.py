"""The auth-policy server's decisions: Dovecot's requests against the gateway's limiter.

Theory of operation
-------------------
Dovecot asks before each authentication (``allow``) and reports after it (``report``),
for every protocol it serves: POP3, SMTP AUTH through Postfix, submission, ManageSieve,
IMAP. This turns them into the limiter calls the gateway's own IMAP logins make, so one
limiter sees every path:

- ``allow``: ``check_login(user, remote)`` (bans of the address or its network, and the
  smart lockout of a user under attack); refused -> status -1. Allowed, but the address
  recently earned a tarpit from a failure Dovecot reported -> delay that many seconds
  (Dovecot waits before it checks the password; it has no way to delay a failure's answer
  after the fact, so the delay lands on the next attempt).
- ``report``: a failure -> ``record_failure`` with a fingerprint of Dovecot's ``pwhash``
  (distinct passwords, as at the gateway), bans and anomalies logged and counted like the
  gateway's own, the anomalies carrying the protocol; a success -> ``record_success`` (the
  network becomes familiar for the smart lockout). A failure this server caused
  (``policy_reject``) is not counted again: the refused attempt never reached a password.
- The gateway's own relayed IMAP logins (``protocol.is_gateway_relay``) are answered
  "allow" and never counted: the gateway checked and will count them itself.

Never stop mail: every request is answered within ``[auth_policy] timeout``. A limiter
whose state is down (``StateUnavailable``) or slower than that gets "allow" (decision
``error``, logged and counted), the same fail-open choice as ``gateway.limits.outage``.
Dovecot's own ``auth_policy_reject_on_fail = no`` covers this server being down.

Nothing here logs ``pwhash`` or the token; metrics carry protocol, command and decision,
never a user or an address.
"""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import trio

from gateway.authpolicy import protocol as proto
from gateway.authpolicy.protocol import Answer, PolicyRequest
from gateway.limits.outage import fail_open
from gateway.observability import metrics
from gateway.observability.logs import get_logger

if TYPE_CHECKING:
    from gateway.anomaly.model import Anomaly
    from gateway.config import AuthPolicyConfig, LimitsConfig
    from gateway.limits.decisions import Ban
    from gateway.limits.limiter import Limiter

__all__ = ["TARPIT_MEMORY", "AuthPolicyService", "TarpitMemory"]

log = get_logger()

#: Addresses whose pending tarpit is remembered; past this the oldest is forgotten
#: (bounded memory whatever the number of attacking addresses).
TARPIT_MEMORY = 10000


class TarpitMemory:
    """The tarpit each address earned with its last counted failure, until it expires.

    In-process and bounded (``TARPIT_MEMORY`` addresses, least recently set forgotten
    first): a lost entry only means one attempt is not delayed; bans, which are what
    keeps an attacker out, live in the limiter's shared state.
    """

    def __init__(self, capacity: int = TARPIT_MEMORY) -> None:
        self.capacity = capacity
        self._entries: collections.OrderedDict[str, tuple[float, float]] = (
            collections.OrderedDict())

    def set(self, ip: str, seconds: float, until: float) -> None:
        self._entries.pop(ip, None)
        self._entries[ip] = (seconds, until)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, ip: str, now: float) -> float:
        entry = self._entries.get(ip)
        if entry is None:
            return 0.0
        seconds, until = entry
        if now >= until:
            del self._entries[ip]
            return 0.0
        return seconds

    def __len__(self) -> int:
        return len(self._entries)


class AuthPolicyService:
    """Answers Dovecot's policy requests (``handle``) from the limiter's state.

    ``key`` keys the attempt fingerprints (random per process when omitted); ``clock``
    gives wall-clock seconds (the limiter's clock).
    """

    def __init__(self, limiter: Limiter, config: AuthPolicyConfig, limits: LimitsConfig, *,
                 key: bytes | None = None, clock: Callable[[], float] = time.time) -> None:
        self.limiter = limiter
        self.config = config
        self.limits = limits
        self._key = key if key is not None else secrets.token_bytes(32)
        self.clock = clock
        self.tarpits = TarpitMemory()

    async def handle(self, request: PolicyRequest) -> Answer:
        """The answer to one request, within ``[auth_policy] timeout``; counted and logged."""
        started = trio.current_time()
        label = proto.protocol_label(request.protocol)
        answer: Answer | None = None
        with trio.move_on_after(self.config.timeout):
            answer = await self._decide(request)
        if answer is None:
            log.warning("auth_policy.timeout", command=request.command,
                        protocol=request.protocol, timeout=self.config.timeout)
            answer = proto.error("timeout")
        metrics.auth_policy_requests_total.labels(label, request.command, answer.decision).inc()
        metrics.auth_policy_request_seconds.labels(request.command).observe(
            trio.current_time() - started)
        return answer

    async def _decide(self, request: PolicyRequest) -> Answer:
        if proto.is_gateway_relay(request, self.config.gateway_networks):
            if request.command == "report":
                metrics.auth_policy_reports_total.labels("imap", "gateway_relay").inc()
            return proto.allow("gateway_relay")
        if request.remote is None:
            # No client address (e.g. a login over a Unix socket): nothing to limit by.
            return proto.allow("no_remote")
        if request.command == "allow":
            return await self._allow(request)
        return await self._report(request)

    async def _allow(self, request: PolicyRequest) -> Answer:
        assert request.remote is not None
        now = self.clock()
        if request.login:
            # The attempt is counted before Dovecot checks the password (a repeat of the
            # same pwhash, like Dovecot's second "allow" after a success, counts once).
            fp = (proto.fingerprint(self._key, request.login, request.pwhash)
                  if request.pwhash else None)
            gate = await fail_open("check_login", self.limiter.check_login(
                request.login, request.remote, now, fingerprint=fp,
                protocol=request.protocol), log)
            allowed, reason = (None, "") if gate is None else (gate.allowed, gate.reason)
        else:
            connect = await fail_open("check_connect", self.limiter.check_connect(
                request.remote, now), log)
            allowed, reason = (None, "") if connect is None else (connect.allowed, connect.reason)
        if allowed is None:
            return proto.error("state_unavailable")
        if not allowed:
            log.info("auth_policy.refused", user=request.login, client_ip=request.remote,
                     protocol=request.protocol, session_id=request.session_id, reason=reason)
            return proto.reject(reason)
        pending = self.tarpits.get(request.remote, now)
        if pending > 0:
            log.info("auth_policy.delayed", user=request.login, client_ip=request.remote,
                     protocol=request.protocol, session_id=request.session_id,
                     seconds=pending)
            return proto.delay(pending, "tarpit")
        return proto.allow(reason)

    async def _report(self, request: PolicyRequest) -> Answer:
        assert request.remote is not None
        now = self.clock()
        label = proto.protocol_label(request.protocol)
        fields = dict(user=request.login, client_ip=request.remote, protocol=request.protocol,
                      session_id=request.session_id, device_id=request.device_id or None)
        if request.success:
            metrics.auth_policy_reports_total.labels(label, "success").inc()
            log.info("auth_policy.login", **fields)
            success = await fail_open("record_success", self.limiter.record_success(
                request.login, request.remote, now, protocol=request.protocol), log)
            if success is None:
                return proto.error("state_unavailable")
            _report(request, success.anomalies)
            return proto.allow("success")
        if request.policy_reject:
            metrics.auth_policy_reports_total.labels(label, "policy_reject").inc()
            log.info("auth_policy.login_failed", **fields, reason="policy_reject")
            return proto.allow("policy_reject")
        metrics.auth_policy_reports_total.labels(label, "failure").inc()
        log.info("auth_policy.login_failed", **fields, reason="backend_rejected")
        fp = proto.fingerprint(self._key, request.login, request.pwhash)
        failure = await fail_open("record_failure", self.limiter.record_failure(
            request.login, request.remote, fp, now, protocol=request.protocol), log)
        if failure is None:
            return proto.error("state_unavailable")
        if failure.tarpit_seconds > 0:
            self.tarpits.set(request.remote, failure.tarpit_seconds,
                             now + self.limits.fail_window)
        _report(request, failure.anomalies, failure.new_bans)
        return proto.allow("failure_counted")


def _report(request: PolicyRequest, anomalies: Iterable[Anomaly],
            bans: Iterable[Ban] = ()) -> None:
    """Log and count what the limiter and detectors raised (as an IMAP session does)."""
    for ban in bans:
        metrics.bans_created_total.labels(ban.scope, ban.reason).inc()
        log.warning("ban.created", scope=ban.scope, network=ban.network,
                    ban_reason=ban.reason, expires=ban.expires, client_ip=request.remote,
                    protocol=request.protocol, via="auth_policy")
    for anomaly in anomalies:
        metrics.anomalies_total.labels(anomaly.kind).inc()
        log.warning("anomaly", **anomaly.as_event(), via="auth_policy")
