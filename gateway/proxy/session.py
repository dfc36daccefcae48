"""One client connection, from accept to close: TLS, the pre-auth dialogue, login, relay.

This is the trio shell around the sans-IO core: bytes go from the socket into
``PreauthConnection`` and the events it returns are acted upon here. The shell makes
no protocol decisions of its own; it owns the deadlines, the sockets and the backend.

Deadlines (each a named config value):
- ``limits.tls_handshake_timeout`` for every client TLS handshake (implicit and STARTTLS);
- ``limits.preauth_timeout`` from accept to a completed login (a client that dawdles
  is sent ``* BYE`` and closed);
- ``backend.connect_timeout`` / ``backend.login_timeout`` inside ``gateway.proxy.backend``;
- ``limits.idle_timeout`` after login, reset by traffic in either direction.
Cancellation closes both sockets: every stream is closed in a ``finally``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from gateway.auth.oauth import unverified_user
from gateway.auth.scopes import build_filter, mailbox_matcher, parse_mailbox_patterns
from gateway.config import Config, ListenerConfig
from gateway.imap import preauth as pa
from gateway.imap.capabilities import client_capabilities, commands_for_capabilities
from gateway.imap.commands import CommandFilter
from gateway.imap.listfilter import ListResponseFilter
from gateway.imap.responses import capability_from_ok, rewrite_login_ok
from gateway.imap.sasl import OAUTH_MECHANISMS
from gateway.limits.outage import fail_open
from gateway.netaddr import plain_ip
from gateway.observability import metrics
from gateway.observability.logs import get_logger
from gateway.proxy.oauth import INTROSPECTION_UNAVAILABLE, KEYS_UNAVAILABLE, error_challenge
from gateway.proxy.relay import SHUTDOWN_TEXT, relay
from gateway.proxy.tlsstream import TLSStream
from gateway.proxy.values import (
    BackendLink,
    CapabilityView,
    ClientEndpoint,
    LoginClient,
    LoginOutcome,
    SessionServices,
)
from gateway.store.base import LoginProtocol, LoginRecord, LoginResult

if TYPE_CHECKING:
    from gateway.anomaly.model import Anomaly
    from gateway.limits.decisions import Ban

RECEIVE_SIZE = 65536


#: Extensions that reach into other mailboxes through URLs (RFC 4469, 5092, 4467):
#: hidden from, and refused for, credentials limited to some mailboxes.
_URL_CAPABILITIES = ("CATENATE", "URL-PARTIAL", "URLAUTH")


@functools.lru_cache(maxsize=32)
def capability_view(raw: tuple[str, ...], mailbox_scoped: bool = False) -> CapabilityView:
    """Cached: every session of one backend shares one view instead of its own copies
    (about 6 KiB per idle session otherwise)."""
    caps = client_capabilities(raw)
    if mailbox_scoped:
        caps = [c for c in caps if not c.upper().startswith(_URL_CAPABILITIES)]
    return CapabilityView(
        line=" ".join(caps).encode("ascii"),
        known_commands=commands_for_capabilities(raw),
    )


@functools.lru_cache(maxsize=32)
def _login_ok(ok_tail: bytes) -> tuple[tuple[str, ...] | None, bytes]:
    """The backend's tagged login OK without its tag (`` OK [CAPABILITY ...] Logged in``):
    its capability list, and the line as the client gets it after its own tag
    (:func:`rewrite_login_ok`). Neither depends on the tag, and a backend answers every
    login with the same line: parsed and rewritten once, not once per login."""
    line = b"t" + ok_tail
    caps = capability_from_ok(line)
    return (tuple(caps) if caps is not None else None), rewrite_login_ok(line)[1:]


#: ``plain_ip`` remembered for recent addresses (a pure function; parsing an address
#: with ``ipaddress`` costs more than the dict lookup, twice per connection).
_plain_ip = functools.lru_cache(maxsize=1024)(plain_ip)


#: Failures that say nothing about the client's credentials: not counted by the limiter.
_NOT_THE_CLIENTS_FAULT = frozenset(
    {"backend_unavailable", "store_error", "master_user_missing", "master_login_failed",
     KEYS_UNAVAILABLE, INTROSPECTION_UNAVAILABLE})


@dataclass(frozen=True, slots=True)
class _PreauthSettings:
    """What every pre-auth dialogue under one configuration shares."""

    privacy_text: str
    limits: pa.PreauthLimits
    oauth_challenge: bytes | None


#: The settings of the configuration in force: (config object, its settings). A reload
#: installs a new config object, so an identity check is enough to notice it.
_preauth_cache: tuple[object, _PreauthSettings] | None = None


def _preauth_settings(config: Config) -> _PreauthSettings:
    """The pre-auth settings of ``config``, built once per configuration instead of once
    per connection."""
    global _preauth_cache
    cached = _preauth_cache
    if cached is not None and cached[0] is config:
        return cached[1]
    limits = config.limits
    settings = _PreauthSettings(
        privacy_text=pa.privacy_text(lst.port for lst in config.listeners
                                     if lst.mode == "implicit-tls" and lst.port is not None),
        limits=pa.PreauthLimits(
            max_line=limits.max_line,
            max_literal=limits.max_preauth_literal,
            max_bad_commands=limits.max_bad_commands,
        ),
        oauth_challenge=error_challenge(config.oauth) if config.oauth.enabled else None,
    )
    _preauth_cache = (config, settings)
    return settings


async def close_stream(stream: trio.abc.Stream) -> None:
    """Close a client stream now, without waiting (cancel-safe, raises nothing).

    The gateway's own streams close synchronously: no cancel scope and no checkpoint
    as ``trio.aclose_forcefully`` would spend on every session end; any other stream
    goes through ``aclose_forcefully``.
    """
    if isinstance(stream, TLSStream):
        stream.close()
    elif isinstance(stream, trio.SocketStream):
        stream.socket.close()
    else:
        await trio.aclose_forcefully(stream)


def new_session_id() -> str:
    """16 hex characters: unguessable, and safe as Dovecot's x-session-id."""
    return secrets.token_hex(8)


class SessionClosed(Exception):
    """The client went away or must be dropped; the reason is a log/metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class ClientSession:
    """One client connection. Slots, not a ``__dict__``: every idle logged-in session holds
    one, and an instance dict with this many keys is not key-shared (about 1.5 KiB each).
    Every attribute is therefore declared here; one set elsewhere raises AttributeError."""

    ctx: SessionServices
    listener: ListenerConfig
    tcp: trio.SocketStream
    session_id: str = field(default_factory=new_session_id)
    client_ip: str = field(init=False)
    client_port: int = field(init=False)
    local_ip: str = field(init=False)
    local_port: int = field(init=False)
    stream: trio.abc.Stream = field(init=False)
    tls_version: str | None = field(init=False, default=None)
    bytes_in: int = field(init=False, default=0)
    bytes_out: int = field(init=False, default=0)
    user: str | None = field(init=False, default=None)
    started_at: float = field(init=False)
    #: The factor the login presented ("none", "totp", "remembered-device",
    #: "app-password"): policy reloads re-check live sessions with it.
    factor: str = field(init=False, default="none")
    app_password_id: int | None = field(init=False, default=None)
    app_password_label: str | None = field(init=False, default=None)
    client_id: dict[str, str] = field(init=False, default_factory=dict)
    end_reason: str = field(init=False, default="unknown")
    log: Any = field(init=False)
    #: Set while a session is being relayed; cancelling it ends the session (admin kill,
    #: policy reload, app password revocation).
    cancel_scope: trio.CancelScope | None = field(init=False, default=None)
    kill_reason: str | None = field(init=False, default=None)
    kill_message: str = field(init=False, default="")
    #: What the backend offers after login and what the client is shown (shared, cached).
    capabilities: CapabilityView | None = field(init=False, default=None)
    #: Per-command decision hook for the relay (scopes); None = forward everything.
    command_filter: CommandFilter | None = field(init=False, default=None)
    #: Backend→client filter (mailbox scopes: LIST answers); None = pass through.
    response_filter: ListResponseFilter | None = field(init=False, default=None)
    #: The credential may open only some mailboxes (``mailboxes=`` scope).
    mailbox_scoped: bool = field(init=False, default=False)
    #: Called once after a successful login (the connection caps stop counting it), then
    #: dropped.
    on_login: Callable[[], None] | None = field(init=False, default=None)
    #: The gateway is shutting down (drain): end at the next response boundary.
    draining: bool = field(init=False, default=False)
    #: Set by the relay while it runs: starts its drain.
    on_drain: Callable[[], None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        peer = self.tcp.socket.getpeername()
        local = self.tcp.socket.getsockname()
        self.client_ip, self.client_port = _plain_ip(peer[0]), peer[1]
        self.local_ip, self.local_port = _plain_ip(local[0]), local[1]
        self.stream = self.tcp
        self.started_at = time.time()
        self.log = get_logger(
            session_id=self.session_id, client_ip=self.client_ip, client_port=self.client_port,
        )

    def kill(self, reason: str, message: str) -> None:
        """End a relayed session from outside (admin, policy reload): the client gets BYE."""
        self.kill_reason = reason
        self.kill_message = message
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    def drain(self) -> None:
        """The gateway is shutting down: BYE now before login; after login, BYE once the
        response in flight is complete (the relay decides when). Idempotent."""
        self.draining = True
        if self.on_drain is not None:
            self.on_drain()
        else:
            self.kill("shutdown", SHUTDOWN_TEXT)

    async def on_expunged(self, count: int) -> None:
        """The backend reported ``count`` messages expunged in this session (mass delete)."""
        assert self.user is not None  # the relay, which calls this, runs only after a login
        await self._observe(self.ctx.limiter.anomalies.observe_expunge(
            self.user, count, time.time(), ip=self.client_ip))

    async def on_bytes(self, count: int) -> None:
        """``count`` more bytes went from the backend to this client (high-volume fetch)."""
        assert self.user is not None  # the relay, which calls this, runs only after a login
        await self._observe(self.ctx.limiter.anomalies.observe_bytes(
            self.session_id, self.user, count, time.time(), ip=self.client_ip))

    async def _observe(self, detection: Awaitable[list[Anomaly]]) -> None:
        """Await one detector call; a shared-state outage is logged, never fatal here."""
        found = await fail_open("anomaly", detection, self.log)
        if found is not None:
            self._report(found)

    def _report(self, anomalies: Iterable[Anomaly], bans: Iterable[Ban] = ()) -> None:
        """Log and count what the limiter and detectors raised."""
        for ban in bans:
            metrics.bans_created_total.labels(ban.scope, ban.reason).inc()
            self.log.warning("ban.created", scope=ban.scope, network=ban.network,
                             ban_reason=ban.reason, expires=ban.expires)
        for anomaly in anomalies:
            metrics.anomalies_total.labels(anomaly.kind).inc()
            self.log.warning("anomaly", **anomaly.as_event())

    # -- stream helpers ----------------------------------------------------------------------

    async def _receive(self) -> bytes:
        try:
            # bytes(): see gateway.proxy.relay (the core keeps views of what it is fed).
            data = bytes(await self.stream.receive_some(RECEIVE_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        self.bytes_in += len(data)
        return data

    async def _send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise SessionClosed("client_gone") from None
        self.bytes_out += len(data)

    async def _start_tls(self) -> None:
        """Wrap the TCP stream in TLS and handshake within the configured deadline (the
        STARTTLS command, and the refusal of a client that may not connect)."""
        with trio.move_on_after(self.ctx.config.limits.tls_handshake_timeout) as deadline:
            await self._handshake()
        if deadline.cancelled_caught:
            self._handshake_failed("timeout")

    async def _handshake(self) -> None:
        """The TLS handshake on the TCP stream, under the caller's deadline; a failed one
        ends the session (SessionClosed). On success the session's stream is TLS."""
        tls_stream = TLSStream(self.tcp, self.ctx.tls.context)
        try:
            await tls_stream.do_handshake()
        except trio.BrokenResourceError as exc:
            tls_stream.close()
            cause = exc.__cause__
            self._handshake_failed("protocol" if isinstance(cause, ssl.SSLError) else "eof")
        except BaseException:
            tls_stream.close()  # the deadline: the caller says why
            raise
        self.stream = tls_stream
        self.tls_version = tls_stream.version()

    def _handshake_failed(self, reason: str) -> NoReturn:
        metrics.tls_handshake_failures_total.labels(self.listener.address, reason).inc()
        self.log.info("tls.handshake_failed", reason=reason)
        raise SessionClosed(f"tls_{reason}")

    # -- the whole session ---------------------------------------------------------------------

    async def run(self) -> None:
        started = trio.current_time()
        implicit = self.listener.mode == "implicit-tls"
        limits = self.ctx.config.limits
        self.log.info("session.start", listener=self.listener.address,
                      tls="implicit" if implicit else "starttls")
        backend: BackendLink | None = None
        conn = self._preauth_connection(implicit)
        try:
            # One cancel scope from accept to login (entering and leaving a scope costs
            # a login more than the deadline logic): the handshake's deadline, then the
            # pre-auth deadline; once TLS is up it is also the scope kill() cancels.
            with trio.CancelScope(deadline=started + limits.tls_handshake_timeout) as scope:
                if implicit:
                    await self._handshake()
                scope.deadline = trio.current_time() + limits.preauth_timeout
                self.cancel_scope = scope
                if self.kill_reason is not None:  # killed (drained) during the handshake
                    scope.cancel()
                backend, leftover = await self._preauth(conn)
            if scope.cancelled_caught:
                await self._preauth_cancelled(conn, implicit)
            del conn  # not needed while the session is relayed
            if backend is not None:
                self.on_login = None  # called by the login; its closure need not live on
                metrics.sessions_active.inc()
                try:
                    self.end_reason = await relay(self, backend, leftover)
                finally:
                    metrics.sessions_active.dec()
        except SessionClosed as exc:
            self.end_reason = exc.reason
        finally:
            if backend is not None:
                await backend.aclose()
            await close_stream(self.stream)
            duration = trio.current_time() - started
            metrics.session_duration_seconds.observe(duration)
            self.log.info(
                "session.end", user=self.user, reason=self.end_reason,
                bytes_in=self.bytes_in, bytes_out=self.bytes_out, duration_s=round(duration, 3),
            )

    async def _preauth_cancelled(self, conn: pa.PreauthConnection, implicit: bool) -> NoReturn:
        """The scope from accept to login was cancelled: the handshake's deadline, the
        pre-auth deadline or kill(). Says BYE where the client can read it and ends."""
        if implicit and self.stream is self.tcp:
            self._handshake_failed("timeout")  # only the deadline reaches into a handshake
        if self.kill_reason is not None:
            with trio.move_on_after(1):
                await self._send(b"* BYE " + self.kill_message.encode() + b"\r\n")
            raise SessionClosed(self.kill_reason)
        metrics.preauth_disconnects_total.labels("timeout").inc()
        with trio.move_on_after(1):
            for event in conn.timed_out():
                if isinstance(event, pa.SendData):
                    await self._send(event.data)
        raise SessionClosed("preauth_timeout")

    def _preauth_connection(self, implicit: bool) -> pa.PreauthConnection:
        settings = _preauth_settings(self.ctx.config)
        return pa.PreauthConnection(
            tls_active=implicit,
            starttls_allowed=not implicit,
            privacy_text=settings.privacy_text,
            limits=settings.limits,
            oauth_challenge=settings.oauth_challenge,
        )

    async def _preauth(self, conn: pa.PreauthConnection) -> tuple[BackendLink | None, bytes]:
        """Run the pre-auth dialogue (the caller holds its deadline); return the logged-in
        backend and the client's leftover bytes."""
        pending = collections.deque(conn.initial_events())
        while True:
            while pending:
                event = pending.popleft()
                if isinstance(event, pa.SendData):
                    await self._send(event.data)
                elif isinstance(event, pa.StartTLS):
                    if event.discarded:
                        self.log.warning("starttls.injection_discarded", bytes=event.discarded)
                    await self._start_tls()
                    pending.extend(conn.tls_started())
                elif isinstance(event, pa.LoginRequest):
                    backend, more = await self._login(conn, event)
                    if backend is not None:
                        for ev in more:
                            if isinstance(ev, pa.Authenticated):
                                return backend, ev.leftover
                    pending.extend(more)
                elif isinstance(event, pa.PlaintextLoginRefused):
                    await self._plaintext_refused(event.mechanism, event.username)
                elif isinstance(event, pa.ClientIdentified):
                    self.client_id = dict(event.fields)
                    self.log.info("client.id", client_id=self.client_id)
                elif isinstance(event, pa.CommandRejected):
                    self.log.info("command.rejected", reason=event.reason)
                elif isinstance(event, pa.CloseConnection):
                    if event.reason not in ("logout", "eof"):
                        metrics.preauth_disconnects_total.labels(event.reason).inc()
                    raise SessionClosed(event.reason)
            data = await self._receive()
            pending.extend(conn.receive_data(data))

    async def _plaintext_refused(self, mechanism: str, username: str | None) -> None:
        metrics.plaintext_logins_blocked_total.labels(self.listener.address).inc()
        metrics.auth_attempts_total.labels("failure", "plaintext", mechanism.lower()).inc()
        self.log.warning("login.plaintext_blocked", mechanism=mechanism, user=username)
        if username:
            self._record_attempt(username, LoginOutcome(reason="plaintext"))
        await self._observe(self.ctx.limiter.anomalies.observe_plaintext_attempt(
            self.client_ip, time.time(), user=username,
            subnet=self.ctx.limiter.subnet(self.client_ip)))

    async def _login(
        self, conn: pa.PreauthConnection, req: pa.LoginRequest
    ) -> tuple[BackendLink | None, list[pa.Event]]:
        """Decide a login; on success return the backend and the machine's events."""
        started = trio.current_time()
        if req.mechanism in OAUTH_MECHANISMS and not req.username:
            # OAUTHBEARER without a=: the limiter and the logs use the name the token
            # claims (checked later by the login step, which refuses a mismatch).
            req = dataclasses.replace(req, username=unverified_user(
                req.password, self.ctx.config.oauth.username_claim))
        mechanism = req.mechanism.lower()
        limiter = self.ctx.limiter
        fingerprint = self.ctx.attempt_fingerprint(req.username, req.password)
        spray_key = self.ctx.spray_fingerprint(req.password)
        gate = await fail_open("check_login", limiter.check_login(
            req.username, self.client_ip, time.time(), fingerprint=fingerprint,
            spray_key=spray_key), self.log)
        if gate is not None and gate.anomalies:
            self._report(gate.anomalies)
        if gate is not None and not gate.allowed and not gate.second_factor_passes:
            outcome = LoginOutcome(reason=gate.reason)
            if gate.reason.startswith("banned:"):
                # Already banned: counting this again would only escalate to the
                # neighbours' subnet and inflate ban metrics.
                outcome.counted = False
        else:
            # A lockout that a second factor passes: the login step refuses a
            # password-only login itself, before the backend sees the password.
            lockout = gate.reason if gate is not None and not gate.allowed else None
            outcome = await self.ctx.authenticator.login(
                LoginClient(self.endpoint(), self.client_id.get("name"), self.log,
                            started=started, lockout=lockout), req)
        metrics.auth_decision_seconds.observe(trio.current_time() - started)
        self._record_attempt(req.username, outcome)
        if outcome.backend is not None:
            return await self._logged_in(conn, req, outcome), conn.login_succeeded()

        reason_label = outcome.reason.split(":")[0]
        metrics.auth_attempts_total.labels("failure", reason_label, mechanism).inc()
        self.log.info("login.denied", user=req.username, mechanism=req.mechanism,
                      reason=outcome.reason,
                      **({"alert": "device_approval"} if outcome.alert else {}))
        if outcome.unavailable:
            return None, conn.login_unavailable()
        tarpit = 0.0
        if outcome.counted and reason_label not in _NOT_THE_CLIENTS_FAULT:
            failure = await fail_open("record_failure", limiter.record_failure(
                req.username, self.client_ip, fingerprint, time.time(), spray_key=spray_key),
                self.log)
            if failure is not None:
                tarpit = failure.tarpit_seconds
                if tarpit:
                    metrics.tarpit_delay_seconds.observe(tarpit)
                self._report(failure.anomalies, failure.new_bans)
        # Every failure looks the same and takes at least the same time (no user
        # enumeration), plus the limiter's tarpit for repeat offenders. A device waiting
        # for approval gets its ALERT instead, also whatever failed (gateway.auth.approval).
        await trio.sleep_until(started + self.ctx.config.limits.auth_failure_delay + tarpit)
        return None, conn.login_failed(alert=outcome.alert)

    def _record_attempt(self, user: str, outcome: LoginOutcome) -> None:
        """One row of the user's login history (the portal shows it), queued: the gateway
        writes them in batches. ``reason`` is the internal label, never a secret."""
        record = LoginRecord(
            time=time.time(), user=user, address=self.client_ip,
            client_name=self.client_id.get("name") or "", factor=outcome.factor,
            result=LoginResult.SUCCESS if outcome.backend is not None else LoginResult.FAILURE,
            protocol=LoginProtocol.IMAP, reason=outcome.reason or "ok",
        )
        self.ctx.record_login(record)

    async def _logged_in(
        self, conn: pa.PreauthConnection, req: pa.LoginRequest, outcome: LoginOutcome
    ) -> BackendLink:
        """Bookkeeping and the client's tagged OK for a successful login."""
        backend, user = outcome.backend, outcome.user
        assert backend is not None and user is not None  # a success sets both
        self.user = user
        if self.on_login is not None:
            self.on_login()
        self.factor = outcome.factor
        self.app_password_id = outcome.app_password_id
        self.app_password_label = outcome.app_password_label
        self.command_filter = build_filter(outcome.scopes)
        patterns = parse_mailbox_patterns(outcome.scopes)
        self.mailbox_scoped = patterns is not None
        if patterns is not None:
            self.response_filter = ListResponseFilter(mailbox_matcher(patterns))
        metrics.auth_attempts_total.labels("success", "ok", req.mechanism.lower()).inc()
        self.log.info("login.ok", user=user, mechanism=req.mechanism,
                      factor=outcome.factor, app_password_label=outcome.app_password_label,
                      scopes=list(outcome.scopes), tls_version=self.tls_version)
        success = await fail_open("record_success", self.ctx.limiter.record_success(
            user, self.client_ip, time.time()), self.log)
        if success is not None:
            self._report(success.anomalies)
        ok_tail = outcome.ok_line[outcome.ok_line.index(b" "):]
        raw_caps, client_tail = _login_ok(ok_tail)
        if raw_caps is None:
            raw_caps = tuple(await backend.fetch_capabilities())
        self.capabilities = capability_view(raw_caps, self.mailbox_scoped)
        backend.capabilities = []  # pre-login list: not needed any more
        await self._send(req.tag + client_tail)
        return backend

    def endpoint(self) -> ClientEndpoint:
        return ClientEndpoint(
            ip=self.client_ip, port=self.client_port, local_ip=self.local_ip,
            local_port=self.local_port, session_id=self.session_id, tls_version=self.tls_version,
        )
