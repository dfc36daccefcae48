"""The gateway process: listeners, signals, shared context. A thin trio shell.

One nursery holds every listener; each accepted connection runs in its own task
(trio.serve_listeners) as a ``ClientSession``. SIGHUP reloads the TLS certificate
(new handshakes only; live sessions are untouched); SIGTERM/SIGINT stop accepting and
close every session.
"""

from __future__ import annotations

import signal
from collections import Counter
from dataclasses import dataclass, field

import trio

from gateway.backend import BackendConnection, BackendUnavailable, ClientEndpoint
from gateway.config import Config
from gateway.observability import metrics
from gateway.observability.http import serve_metrics
from gateway.observability.logs import get_logger
from gateway.session import ClientSession, ForwardAuthenticator
from gateway.tls import TLSContextHolder, TLSSetupError, backend_context

log = get_logger()


class ConnectionCounter:
    """Concurrent connections per client IP and in total (in-process).

    ``admit`` returns the refusal reason or None; every admitted connection must be
    ``release``d exactly once (the caller does it in a ``finally``).
    """

    def __init__(self, per_ip: int, total: int) -> None:
        self.per_ip = per_ip
        self.total = total
        self.by_ip: Counter[str] = Counter()
        self.count = 0

    def admit(self, ip: str) -> str | None:
        if self.count >= self.total:
            return "global_limit"
        if self.by_ip[ip] >= self.per_ip:
            return "per_ip_limit"
        self.by_ip[ip] += 1
        self.count += 1
        return None

    def release(self, ip: str) -> None:
        self.count -= 1
        self.by_ip[ip] -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]


_REFUSALS = {
    "per_ip_limit": b"* BYE [UNAVAILABLE] Too many connections from your address.\r\n",
    "global_limit": b"* BYE [UNAVAILABLE] Server busy, try again later.\r\n",
}


@dataclass
class GatewayContext:
    config: Config
    tls: TLSContextHolder
    connections: ConnectionCounter
    sessions: dict[str, ClientSession] = field(default_factory=dict)
    ready: bool = False

    def __post_init__(self) -> None:
        b = self.config.backend
        self.backend_ssl = backend_context(b.ca_file) if b.tls != "none" else None
        self.backend_name = f"{b.host}:{b.port}"
        self.authenticator = ForwardAuthenticator(self)

    async def connect_backend(self, endpoint: ClientEndpoint) -> BackendConnection:
        """Open a backend connection for one client, with metrics for success and failure."""
        b = self.config.backend
        started = trio.current_time()
        try:
            conn = await BackendConnection.connect(
                host=b.host, port=b.port, tls=b.tls, ssl_context=self.backend_ssl,
                client_ip_mode=b.client_ip, endpoint=endpoint,
                connect_timeout=b.connect_timeout, login_timeout=b.login_timeout,
            )
        except BackendUnavailable as exc:
            metrics.backend_errors_total.labels(self.backend_name, exc.kind).inc()
            metrics.backend_up.labels(self.backend_name).set(0)
            raise
        metrics.backend_connect_seconds.labels(self.backend_name).observe(
            trio.current_time() - started)
        metrics.backend_up.labels(self.backend_name).set(1)
        return conn

    async def handle(self, listener, tcp: trio.SocketStream) -> None:
        """Run one client connection to completion (called by trio.serve_listeners)."""
        tls_mode = "implicit" if listener.mode == "implicit-tls" else "starttls"
        metrics.connections_total.labels(listener.address, tls_mode).inc()
        session = ClientSession(self, listener, tcp)
        refusal = self.connections.admit(session.client_ip)
        if refusal is not None:
            metrics.connections_rejected_total.labels(refusal).inc()
            session.log.warning("connection.refused", reason=refusal, listener=listener.address)
            await self._refuse(session, refusal)
            return
        active = metrics.connections_active.labels(listener.address)
        active.inc()
        self.sessions[session.session_id] = session
        try:
            await session.run()
        except Exception:
            # A bug in one session must never take the listener (and every other
            # session) down with it; the traceback goes to the log, not the client.
            session.log.exception("session.crashed")
        finally:
            del self.sessions[session.session_id]
            active.dec()
            self.connections.release(session.client_ip)

    async def _refuse(self, session: ClientSession, reason: str) -> None:
        """Say BYE (over TLS on an implicit-TLS listener, so the client can read it) and close."""
        with trio.move_on_after(self.config.limits.tls_handshake_timeout):
            try:
                if session.listener.mode == "implicit-tls":
                    await session._start_tls()
                await session.stream.send_all(_REFUSALS[reason])
            except Exception:  # noqa: BLE001 - a refused client gets no more of our time
                pass
        await trio.aclose_forcefully(session.stream)


async def _signals(ctx: GatewayContext, cancel: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                try:
                    ctx.tls.reload()
                    log.info("tls.reloaded", cert=str(ctx.config.tls.cert))
                except TLSSetupError as exc:
                    log.error("tls.reload_failed", error=str(exc))
            else:
                log.info("gateway.stopping", signal=signal.Signals(signum).name,
                         sessions=len(ctx.sessions))
                cancel.cancel()
                return


async def serve(config: Config) -> None:
    """Run the gateway until SIGTERM/SIGINT."""
    tls = TLSContextHolder(config.tls.cert, config.tls.key, config.tls.min_version)
    ctx = GatewayContext(
        config=config, tls=tls,
        connections=ConnectionCounter(config.limits.max_connections_per_ip,
                                      config.limits.max_connections),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_signals, ctx, nursery.cancel_scope)
        if config.metrics.address:
            await nursery.start(serve_metrics, config.metrics.host, config.metrics.port,
                                lambda: ctx.ready)
        for listener in config.listeners:
            sockets = await trio.open_tcp_listeners(listener.port, host=listener.host,
                                                    backlog=1024)
            nursery.start_soon(trio.serve_listeners, _bind(ctx, listener), sockets)
        ctx.ready = True
        log.info("gateway.listening", listeners=[lst.address for lst in config.listeners],
                 backend=ctx.backend_name, metrics=config.metrics.address or None)


def _bind(ctx: GatewayContext, listener):
    async def handler(tcp: trio.SocketStream) -> None:
        await ctx.handle(listener, tcp)
    return handler
