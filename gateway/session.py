"""One client connection, from accept to close: TLS, the pre-auth dialogue, login, relay.

This is the trio shell around the sans-IO core: bytes go from the socket into
``PreauthConnection`` and the events it returns are acted upon here. The shell makes
no protocol decisions of its own; it owns the deadlines, the sockets and the backend.

Deadlines (each a named config value):
- ``limits.tls_handshake_timeout`` for every client TLS handshake (implicit and STARTTLS);
- ``limits.preauth_timeout`` from accept to a completed login (a client that dawdles
  is sent ``* BYE`` and closed);
- ``backend.connect_timeout`` / ``backend.login_timeout`` inside ``gateway.backend``;
- ``limits.idle_timeout`` after login, reset by traffic in either direction.
Cancellation closes both sockets: every stream is closed in a ``finally``.
"""

from __future__ import annotations

import collections
import secrets
import ssl
from dataclasses import dataclass, field
from typing import Any

import trio

from gateway.backend import BackendConnection, BackendUnavailable, ClientEndpoint
from gateway.imap import preauth as pa
from gateway.imap.responses import capability_from_ok, rewrite_capabilities, rewrite_login_ok
from gateway.observability import metrics
from gateway.observability.logs import get_logger

RECEIVE_SIZE = 65536


def new_session_id() -> str:
    """16 hex characters: unguessable, and safe as Dovecot's x-session-id."""
    return secrets.token_hex(8)


def _plain_ip(ip: str) -> str:
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


class SessionClosed(Exception):
    """The client went away or must be dropped; the reason is a log/metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ClientSession:
    ctx: Any  # gateway.server.GatewayContext (not imported: server imports us)
    listener: Any  # gateway.config listener entry
    tcp: trio.SocketStream
    session_id: str = field(default_factory=new_session_id)

    def __post_init__(self) -> None:
        peer = self.tcp.socket.getpeername()
        local = self.tcp.socket.getsockname()
        self.client_ip, self.client_port = _plain_ip(peer[0]), peer[1]
        self.local_ip, self.local_port = _plain_ip(local[0]), local[1]
        self.stream: trio.abc.Stream = self.tcp
        self.tls_version: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.user: str | None = None
        self.client_id: dict[str, str] = {}
        self.end_reason = "unknown"
        self.log = get_logger(
            session_id=self.session_id, client_ip=self.client_ip, client_port=self.client_port,
        )
        #: Set while a session is being relayed; cancelling it ends the session (admin kill,
        #: policy reload, app password revocation).
        self.cancel_scope: trio.CancelScope | None = None
        self.kill_reason: str | None = None
        self.kill_message = ""
        #: The capability list the client sees after login (backend's, rewritten).
        self.capability_line = ""
        self.backend_capabilities: list[str] = []
        #: Per-command decision hook for the relay (scopes); None = forward everything.
        self.command_filter = None

    def kill(self, reason: str, message: str) -> None:
        """End a relayed session from outside (admin, policy reload): the client gets BYE."""
        self.kill_reason = reason
        self.kill_message = message
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    def on_command(self, info: Any) -> None:
        """Hook for per-command observers (anomaly detection); nothing by default."""

    def on_expunged(self, count: int) -> None:
        """Hook for expunge observers (mass-delete detection); nothing by default."""

    # -- stream helpers ----------------------------------------------------------------------

    async def _receive(self) -> bytes:
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
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
        """Wrap the TCP stream in TLS and handshake within the configured deadline."""
        limits = self.ctx.config.limits
        tls_stream = trio.SSLStream(
            self.tcp, self.ctx.tls.context, server_side=True, https_compatible=True
        )
        reason = None
        try:
            with trio.fail_after(limits.tls_handshake_timeout):
                await tls_stream.do_handshake()
        except trio.TooSlowError:
            reason = "timeout"
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            reason = "protocol" if isinstance(cause, ssl.SSLError) else "eof"
        if reason is not None:
            metrics.tls_handshake_failures_total.labels(self.listener.address, reason).inc()
            self.log.info("tls.handshake_failed", reason=reason)
            raise SessionClosed(f"tls_{reason}")
        self.stream = tls_stream
        self.tls_version = tls_stream.version()

    # -- the whole session ---------------------------------------------------------------------

    async def run(self) -> None:
        started = trio.current_time()
        implicit = self.listener.mode == "implicit-tls"
        self.log.info("session.start", listener=self.listener.address,
                      tls="implicit" if implicit else "starttls")
        backend: BackendConnection | None = None
        try:
            if implicit:
                await self._start_tls()
            backend, leftover = await self._preauth(implicit)
            if backend is not None:
                from gateway.relay import relay  # local import keeps module graph one-way

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
            await trio.aclose_forcefully(self.stream)
            duration = trio.current_time() - started
            metrics.session_duration_seconds.observe(duration)
            self.log.info(
                "session.end", user=self.user, reason=self.end_reason,
                bytes_in=self.bytes_in, bytes_out=self.bytes_out, duration_s=round(duration, 3),
            )

    async def _preauth(self, implicit: bool) -> tuple[BackendConnection | None, bytes]:
        """Run the pre-auth dialogue; return the logged-in backend and the client's leftover bytes."""
        limits = self.ctx.config.limits
        conn = pa.PreauthConnection(
            tls_active=implicit,
            starttls_allowed=not implicit,
            limits=pa.PreauthLimits(
                max_line=limits.max_line,
                max_literal=limits.max_preauth_literal,
                max_bad_commands=limits.max_bad_commands,
            ),
        )
        pending = collections.deque(conn.initial_events())
        with trio.move_on_after(limits.preauth_timeout) as timer:
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
                        metrics.plaintext_logins_blocked_total.labels(self.listener.address).inc()
                        metrics.auth_attempts_total.labels(
                            "failure", "plaintext", event.mechanism.lower()).inc()
                        self.log.warning("login.plaintext_blocked", mechanism=event.mechanism)
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
        # Only reached when the pre-auth deadline passed.
        assert timer.cancelled_caught
        metrics.preauth_disconnects_total.labels("timeout").inc()
        with trio.move_on_after(1):
            for event in conn.timed_out():
                if isinstance(event, pa.SendData):
                    await self._send(event.data)
        raise SessionClosed("preauth_timeout")

    async def _login(
        self, conn: pa.PreauthConnection, req: pa.LoginRequest
    ) -> tuple[BackendConnection | None, list]:
        """Decide a login; on success return the backend and the machine's events."""
        started = trio.current_time()
        mechanism = req.mechanism.lower()
        outcome = await self.ctx.authenticator.login(self, req)
        elapsed = trio.current_time() - started
        metrics.auth_decision_seconds.observe(elapsed)
        if outcome.backend is not None:
            self.user = outcome.user
            metrics.auth_attempts_total.labels("success", "ok", mechanism).inc()
            self.log.info("login.ok", user=outcome.user, mechanism=req.mechanism,
                          factor=outcome.factor, tls_version=self.tls_version)
            events = conn.login_succeeded()
            backend = outcome.backend
            raw_caps = capability_from_ok(outcome.ok_line)
            if raw_caps is None:
                raw_caps = await backend.fetch_capabilities()
            self.backend_capabilities = raw_caps
            self.capability_line = " ".join(rewrite_capabilities(raw_caps))
            await self._send(rewrite_login_ok(req.tag + outcome.ok_line[outcome.ok_line.index(b" "):]))
            if backend.buffer:
                await self._send(bytes(backend.buffer))
                backend.buffer.clear()
            return outcome.backend, events
        metrics.auth_attempts_total.labels("failure", outcome.reason.split(":")[0], mechanism).inc()
        self.log.info("login.denied", user=req.username, mechanism=req.mechanism,
                      reason=outcome.reason)
        # Every failure looks the same and takes at least the same time (no user enumeration).
        floor = self.ctx.config.limits.auth_failure_delay
        if outcome.unavailable:
            return None, conn.login_unavailable()
        await trio.sleep_until(started + floor + outcome.tarpit)
        return None, conn.login_failed()

    def endpoint(self) -> ClientEndpoint:
        return ClientEndpoint(
            ip=self.client_ip, port=self.client_port, local_ip=self.local_ip,
            local_port=self.local_port, session_id=self.session_id, tls_version=self.tls_version,
        )


@dataclass
class LoginOutcome:
    """What the authenticator decided; exactly one of ``backend`` / ``reason`` is set."""

    backend: BackendConnection | None = None
    user: str | None = None
    ok_line: bytes = b""
    factor: str = "password"
    reason: str = ""
    unavailable: bool = False
    tarpit: float = 0.0


class ForwardAuthenticator:
    """Issue-2 login: the backend verifies the client's own credentials.

    The gateway opens a backend connection, forwards the client's address, and sends
    the credentials as AUTHENTICATE PLAIN. The client's SASL authorization identity
    must be empty or equal to the user: the gateway does not let a client act as a
    Dovecot master user on someone else's behalf.
    """

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    async def login(self, session: ClientSession, req: pa.LoginRequest) -> LoginOutcome:
        if req.authzid and req.authzid != req.username:
            return LoginOutcome(reason="authzid_not_allowed")
        backend_cfg = self.ctx.config.backend
        try:
            backend = await self.ctx.connect_backend(session.endpoint())
        except BackendUnavailable as exc:
            session.log.warning("backend.error", kind=exc.kind, detail=exc.detail)
            return LoginOutcome(reason="backend_unavailable", unavailable=True)
        try:
            result = await backend.login_plain(
                authzid="", authcid=req.username, password=req.password,
                timeout=backend_cfg.login_timeout,
            )
        except BackendUnavailable as exc:
            await backend.aclose()
            metrics.backend_errors_total.labels(backend.name, exc.kind).inc()
            session.log.warning("backend.error", kind=exc.kind, detail=exc.detail)
            return LoginOutcome(reason="backend_unavailable", unavailable=True)
        if result.ok:
            return LoginOutcome(backend=backend, user=req.username, ok_line=result.line)
        await backend.aclose()
        if result.code == "UNAVAILABLE":
            return LoginOutcome(reason="backend_unavailable", unavailable=True)
        if result.code == "PRIVACYREQUIRED":
            session.log.error(
                "backend.misconfigured",
                detail="backend refused plaintext auth from the gateway: add the gateway to "
                "Dovecot's login_trusted_networks, or use client_ip = \"proxy-v2\"",
            )
            return LoginOutcome(reason="backend_unavailable", unavailable=True)
        return LoginOutcome(reason="backend_rejected")
