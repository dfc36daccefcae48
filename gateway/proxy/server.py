"""The gateway process: listeners, signals, shared context. A thin trio shell.

One nursery holds every listener and background task; each accepted connection runs in
its own task (``_serve_listener``) as a ``ClientSession``. Background tasks:

- policy watcher: reloads ``[policy] dir`` when a file changes (every 2 s) and on SIGHUP;
  a broken file keeps the last good policy, and live sessions the new policy denies are
  closed with BYE;
- credential watcher: every second, ends live sessions whose app password was revoked
  or has expired (the admin CLI writes the same store);
- store pruning: every hour, login history past ``[web] activity_retention``, expired
  web sessions and invites;
- bans gauge;
- the HTTP listeners (admin API, metrics, portal, Dovecot's auth-policy server):
  ``gateway.web.serve``;
- the live event feed's Redis relay, with ``[state] redis``
  (``gateway.observability.events_relay``); without it, a worker other than 0 sends
  its feed events to worker 0 over the worker link (``gateway.proxy.feedlink``).

SIGHUP also reloads the TLS certificate (new handshakes only; live sessions keep theirs).

SIGTERM/SIGINT drain (``drain``): stop accepting, BYE to every session (a session before
login at once; a logged-in one right after the response in flight, so a FETCH is never
cut), one ``session.end`` line each, and exit. Sessions still open after
``[server] drain_timeout`` get a BYE and are closed. A second signal ends at once.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hmac
import ipaddress
import os
import secrets
import signal
import socket
import time
from collections import ChainMap, Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import trio

from gateway.config import Config, ListenerConfig, parse_address
from gateway.limits.connections import ConnectionTracker
from gateway.limits.decisions import ConnectDecision
from gateway.limits.limiter import Limiter
from gateway.limits.outage import fail_open
from gateway.limits.redis_state import open_state
from gateway.limits.rules import spray_fingerprint
from gateway.limits.state import StateBackend
from gateway.observability import metrics
from gateway.observability.events import EventFeed
from gateway.observability.events_relay import open_feed
from gateway.observability.logs import get_logger
from gateway.policy import LoginContext, PolicyReloader, snapshot
from gateway.proxy.backend import BackendConnection, BackendUnavailable
from gateway.proxy.bind import BindRequest, bind_all, close_all
from gateway.proxy.feedlink import FeedSender, WorkerZeroFeed
from gateway.proxy.login import Authenticator
from gateway.proxy.relay import SHUTDOWN_TEXT
from gateway.proxy.session import ClientSession
from gateway.proxy.tls import TLSContextHolder, TLSSetupError, backend_context
from gateway.proxy.values import ClientEndpoint
from gateway.proxy.workerlink import (
    RemoteSession,
    RemoteState,
    RemoteTracker,
    WorkerLink,
    WorkerSpec,
    open_link,
    session_record,
)
from gateway.startup import Runtime
from gateway.store.base import (
    AppPasswordInfo,
    CredentialStore,
    LoginRecord,
)
from gateway.store.errors import StoreError, StoreUnavailable
from gateway.web.serve import Gateway, HttpSockets, serve_web

log = get_logger()

POLICY_POLL_SECONDS = 2.0
CREDENTIAL_POLL_SECONDS = 1.0
BANS_GAUGE_SECONDS = 5.0
STORE_PRUNE_SECONDS = 3600.0
HISTORY_FLUSH_SECONDS = 1.0
#: Login attempts waiting to be written; past this (the store is down or far too slow)
#: the oldest are dropped and counted rather than held without bound.
HISTORY_BACKLOG = 10000

_REFUSALS = {
    "per_ip_limit": b"* BYE [UNAVAILABLE] Too many connections from your address.\r\n",
    "rate_limit": b"* BYE [UNAVAILABLE] Too many connections from your address.\r\n",
    "global_limit": b"* BYE [UNAVAILABLE] Server busy, try again later.\r\n",
    "banned": b"* BYE [UNAVAILABLE] Service not available from your address.\r\n",
}
_TRACKER_REASONS = {
    "max_connections": "global_limit",
    "max_connections_per_ip": "per_ip_limit",
    "max_connection_rate_per_ip": "rate_limit",
}


@dataclass
class GatewayContext:
    config: Config
    tls: TLSContextHolder
    runtime: Runtime
    limiter: Limiter
    #: The host's connection caps: here, or the supervisor's (``[server] workers > 1``).
    tracker: ConnectionTracker | RemoteTracker
    sessions: dict[str, ClientSession] = field(default_factory=dict)
    ready: bool = False
    # [web] cert/key when set; None: the portal shares ``tls``. SIGHUP reloads both.
    web_tls: TLSContextHolder | None = None
    # The live event feed (admin API /events, the portal's admin pages).
    feed: EventFeed = field(default_factory=EventFeed)
    #: SIGTERM received: a connection accepted from now on is drained at once.
    draining: bool = False

    def __post_init__(self) -> None:
        b = self.config.backend
        self.backend_ssl = backend_context(b.ca_file) if b.tls != "none" else None
        # [backend] address is required: parsed once here rather than read from the
        # optional .host/.port that sections whose address may be "" share.
        self.backend_host, self.backend_port = parse_address(b.address)
        self.backend_name = f"{self.backend_host}:{self.backend_port}"
        self.authenticator = Authenticator(self)
        # Keys the limiter's attempt fingerprints: per process, never stored, so a
        # fingerprint cannot be brute-forced back into a password offline.
        self._fingerprint_key = secrets.token_bytes(32)
        self._history: collections.deque[LoginRecord] = collections.deque(maxlen=HISTORY_BACKLOG)
        metrics.init_series([lst.address for lst in self.config.listeners], self.backend_name)
        # Series every connection or login updates, looked up once (labels() takes a lock
        # and a dict lookup per call); the listeners and the backend never change at runtime.
        self._backend_connect_seconds = metrics.backend_connect_seconds.labels(self.backend_name)
        self._backend_up = metrics.backend_up.labels(self.backend_name)
        self._listener_series = {
            lst.address: (
                metrics.connections_total.labels(
                    lst.address, "implicit" if lst.mode == "implicit-tls" else "starttls"),
                metrics.connections_active.labels(lst.address),
            )
            for lst in self.config.listeners
        }
        # The gateway only starts with a policy that loads (gateway.startup.prepare).
        metrics.policy_last_reload_successful.set(1)

    def record_login(self, record: LoginRecord) -> None:
        """Queue one login attempt for the history; written in batches by flush_history."""
        if len(self._history) == HISTORY_BACKLOG:
            metrics.login_history_dropped_total.inc()
        self._history.append(record)

    async def flush_history(self) -> None:
        """Write the queued attempts in one transaction (one disk flush a second, not one a
        login); trouble is logged and the batch dropped: a history row never fails a login."""
        if not self._history:
            return
        batch = list(self._history)
        self._history.clear()
        try:
            await trio.to_thread.run_sync(self.store.record_logins, batch)
        except StoreUnavailable as exc:
            metrics.login_history_dropped_total.inc(len(batch))
            metrics.store_unavailable_total.labels("login_history").inc()
            log.error("store.unavailable", operation="login_history", error=str(exc),
                      dropped=len(batch))
        except StoreError as exc:
            metrics.login_history_dropped_total.inc(len(batch))
            log.error("store.error", error=str(exc), dropped=len(batch))

    @property
    def policy(self) -> PolicyReloader:
        return self.runtime.policy

    @property
    def store(self) -> CredentialStore:
        return self.runtime.store

    @property
    def master_password(self) -> str | None:
        return self.runtime.master_password

    def attempt_fingerprint(self, user: str, password: str) -> bytes:
        """Keyed, truncated hash of one attempt: counts distinct wrong passwords, reveals none."""
        msg = (user.casefold() + "\0" + password).encode("utf-8", "surrogateescape")
        # hmac.digest: the same HMAC in one C call (hmac.new builds Python objects).
        return hmac.digest(self._fingerprint_key, msg, "sha256")[:8]

    def spray_fingerprint(self, password: str) -> bytes:
        """User-independent keyed hash of a password (``gateway.limits.rules``): the same
        password tried against many accounts, from any source, is one fingerprint."""
        return spray_fingerprint(self.runtime.spray_secret, password)

    async def connect_backend(self, endpoint: ClientEndpoint) -> BackendConnection:
        """Open a backend connection for one client, with metrics for success and failure."""
        b = self.config.backend
        started = trio.current_time()
        try:
            conn = await BackendConnection.connect(
                host=self.backend_host, port=self.backend_port, tls=b.tls,
                ssl_context=self.backend_ssl, client_ip_mode=b.client_ip, endpoint=endpoint,
                connect_timeout=b.connect_timeout,
            )
        except BackendUnavailable as exc:
            metrics.backend_errors_total.labels(self.backend_name, exc.kind).inc()
            metrics.backend_up.labels(self.backend_name).set(0)
            raise
        self._backend_connect_seconds.observe(trio.current_time() - started)
        self._backend_up.set(1)
        return conn

    async def handle(self, listener: ListenerConfig, tcp: trio.SocketStream) -> None:
        """Run one client connection to completion (called by ``_serve_listener``)."""
        try:
            series = self._listener_series.get(listener.address)
            if series is None:  # a listener this context was not built with
                series = self._listener_series[listener.address] = (
                    metrics.connections_total.labels(
                        listener.address,
                        "implicit" if listener.mode == "implicit-tls" else "starttls"),
                    metrics.connections_active.labels(listener.address))
            connections_total, active = series
            connections_total.inc()
            session = ClientSession(self, listener, tcp)
            now = time.time()
            banned: ConnectDecision | None = None
            if isinstance(self.tracker, RemoteTracker):
                if isinstance(self.limiter.state, RemoteState):
                    # Caps and bans both live in the supervisor: one round trip for both.
                    admitted, bans = await self.tracker.admit(
                        session.client_ip, now, self.limiter.connect_ban_keys(session.client_ip))
                    banned = self.limiter.connect_decision(session.client_ip, bans or [])
                else:
                    admitted = await self.tracker.try_open(session.client_ip, now)
            else:
                admitted = self.tracker.try_open(session.client_ip, now)
            if not admitted.allowed:
                await self._refuse(session, _TRACKER_REASONS.get(admitted.reason, "global_limit"),
                                   admitted.reason)
                return
            ticket = admitted.ticket
            assert ticket is not None  # try_open sets it on every admitted connection
            try:
                if banned is None:
                    banned = await fail_open("check_connect", self.limiter.check_connect(
                        session.client_ip, now), session.log)
                if banned is not None and not banned.allowed:
                    await self._refuse(session, "banned", banned.reason)
                    return
                active.inc()
                session.on_login = lambda: self.tracker.authenticated(ticket)
                self.sessions[session.session_id] = session
                if self.draining:
                    session.drain()
                try:
                    await session.run()
                except Exception:
                    # A bug in one session must never take the listener (and every other
                    # session) down with it; the traceback goes to the log, not the client.
                    session.log.exception("session.crashed")
                finally:
                    del self.sessions[session.session_id]
                    active.dec()
            finally:
                self.tracker.close(ticket)
        finally:
            # The session closes its own streams; this catches every early exit (a
            # client gone before getpeername, a refusal, a tracker error). Closing twice is
            # harmless, and a socket the TLS stream took over is detached.
            tcp.socket.close()

    async def _refuse(self, session: ClientSession, label: str, reason: str) -> None:
        """Say BYE (over TLS on an implicit-TLS listener, so the client can read it) and close."""
        metrics.connections_rejected_total.labels(label).inc()
        session.log.warning("connection.refused", reason=reason,
                            listener=session.listener.address)
        with trio.move_on_after(self.config.limits.tls_handshake_timeout):
            try:
                if session.listener.mode == "implicit-tls":
                    await session._start_tls()
                await session.stream.send_all(_REFUSALS[label])
            except Exception:  # noqa: BLE001 - a refused client gets no more of our time
                pass
        await trio.aclose_forcefully(session.stream)

    # -- policy and credential changes ---------------------------------------------------------

    async def reload_policy(self, *, force: bool) -> None:
        reloader = self.policy
        stamp = await trio.to_thread.run_sync(snapshot, reloader.dir)
        new, error = await trio.to_thread.run_sync(lambda: reloader.check(stamp, force=force))
        metrics.policy_last_reload_successful.set(0 if reloader.last_error else 1)
        if error is not None:
            metrics.policy_reload_failures_total.inc()
            log.error("policy.reload_failed", error=str(error),
                      kept=reloader.current.fingerprint if reloader.current else None)
            return
        if new is None:
            return
        log.info("policy.reloaded", fingerprint=new.fingerprint, rules=len(new.rules))
        for session in list(self.sessions.values()):
            if session.user is None:
                continue
            decision = new.decide(LoginContext(user=session.user,
                                               ip=ipaddress.ip_address(session.client_ip),
                                               factor=session.factor))
            if not decision.allowed:
                session.log.warning("session.revoked", reason=decision.reason)
                session.kill("policy_revoked", "Access revoked by policy.")

    async def check_credentials(self) -> None:
        """End sessions whose app password was revoked or expired since they logged in."""
        by_user: dict[str, list[tuple[ClientSession, int]]] = {}
        for session in self.sessions.values():
            if session.app_password_id is not None and session.user is not None:
                by_user.setdefault(session.user, []).append((session, session.app_password_id))
        if not by_user:
            return
        now = time.time()

        def live_ids() -> dict[str, dict[int, AppPasswordInfo]]:
            return {user: {i.id: i for i in infos}
                    for user, infos in self.store.app_passwords_of(list(by_user)).items()}

        try:
            current = await trio.to_thread.run_sync(live_ids)
        except StoreUnavailable as exc:
            # Sessions carry on: the next look (1 s) ends those revoked meanwhile.
            metrics.store_unavailable_total.labels("credential_check").inc()
            log.error("store.unavailable", operation="credential_check", error=str(exc))
            return
        for user, sessions in by_user.items():
            for session, app_password_id in sessions:
                info = current[user].get(app_password_id)
                if info is None or info.is_expired(now):
                    session.log.warning("session.revoked", reason="app_password_revoked",
                                        app_password_label=session.app_password_label)
                    session.kill("app_password_revoked", "App password revoked.")


DRAIN_POLL_SECONDS = 0.05
#: After ``drain_timeout``: how long the sessions still open get to receive their BYE.
DRAIN_GRACE_SECONDS = 2.0


async def drain(ctx: GatewayContext, accepting: trio.CancelScope) -> None:
    """Stop accepting and end every session with a BYE, within ``[server] drain_timeout``.

    Sessions before login are told BYE at once; logged-in ones after the response in
    flight (the relay waits for it). Whatever is still open after the timeout is killed
    (BYE, bounded by ``DRAIN_GRACE_SECONDS``). Each session logs its ``session.end``.
    """
    ctx.draining = True
    accepting.cancel()  # closes this process's listening sockets
    started = trio.current_time()
    for session in list(ctx.sessions.values()):
        session.drain()
    with trio.move_on_after(ctx.config.server.drain_timeout):
        while ctx.sessions:
            await trio.sleep(DRAIN_POLL_SECONDS)
    left = len(ctx.sessions)
    if left:
        for session in list(ctx.sessions.values()):
            session.kill("shutdown", SHUTDOWN_TEXT)
        with trio.move_on_after(DRAIN_GRACE_SECONDS):
            while ctx.sessions:
                await trio.sleep(DRAIN_POLL_SECONDS)
    with trio.move_on_after(DRAIN_GRACE_SECONDS):
        await ctx.flush_history()
    log.info("gateway.drained", forced=left, seconds=round(trio.current_time() - started, 3))


async def _signals(ctx: GatewayContext, cancel: trio.CancelScope,
                   accepting: trio.CancelScope | None = None) -> None:
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await _reload(ctx)
                elif ctx.draining or accepting is None:
                    log.info("gateway.stopping", signal=signal.Signals(signum).name,
                             sessions=len(ctx.sessions), drain=False)
                    cancel.cancel()
                    return
                else:
                    log.info("gateway.stopping", signal=signal.Signals(signum).name,
                             sessions=len(ctx.sessions), drain=True,
                             drain_timeout=ctx.config.server.drain_timeout)
                    ctx.draining = True  # a second signal now ends at once
                    accepting.cancel()  # at once, before the drain task gets to run
                    nursery.start_soon(_drain_then_stop, ctx, accepting, cancel)


async def _drain_then_stop(ctx: GatewayContext, accepting: trio.CancelScope,
                           cancel: trio.CancelScope) -> None:
    await drain(ctx, accepting)
    cancel.cancel()


async def _reload(ctx: GatewayContext) -> None:
    """SIGHUP: the TLS certificates, the policy and the OAuth key file."""
    holders: list[tuple[TLSContextHolder, Path | None]] = [(ctx.tls, ctx.config.tls.cert)]
    if ctx.web_tls is not None:
        holders.append((ctx.web_tls, ctx.config.web.cert))
    for holder, cert in holders:
        try:
            holder.reload()
            log.info("tls.reloaded", cert=str(cert))
        except TLSSetupError as exc:
            log.error("tls.reload_failed", error=str(exc))
    _export_cert_expiry(ctx)
    await ctx.reload_policy(force=True)
    if ctx.authenticator.oauth is not None:
        await ctx.authenticator.oauth.reload_file()


def _export_cert_expiry(ctx: GatewayContext) -> None:
    """The expiry of each certificate served now, by config role (never by path)."""
    metrics.tls_cert_expiry_timestamp_seconds.labels("imap").set(ctx.tls.not_after)
    if ctx.web_tls is not None:
        metrics.tls_cert_expiry_timestamp_seconds.labels("web").set(ctx.web_tls.not_after)


async def _every(seconds: float, job: Callable[[], Awaitable[object]], name: str) -> None:
    """Run ``job`` forever, ``seconds`` apart; a failing run is logged, not fatal."""
    while True:
        await trio.sleep(seconds)
        try:
            await job()
        except Exception:
            log.exception("background.failed", task=name)


async def _update_bans_gauge(ctx: GatewayContext) -> None:
    bans = await ctx.limiter.list_bans(time.time())
    counts = Counter[str](ban.scope for ban in bans)
    for scope in ("ip", "subnet", "user_ip"):
        metrics.bans_active.labels(scope).set(counts.get(scope, 0))


async def _prune_store(ctx: GatewayContext) -> None:
    now = time.time()

    def prune() -> tuple[int, int]:
        store = ctx.store
        return (store.prune_login_history(now, ctx.config.web.activity_retention),
                store.prune_expired(now))

    history, expired = await trio.to_thread.run_sync(prune)
    if history or expired:
        log.info("store.pruned", login_history=history, expired=expired)


async def serve(config: Config, runtime: Runtime, worker: WorkerSpec | None = None) -> None:
    """Run the gateway until SIGTERM/SIGINT.

    Every address (listeners, metrics, admin API) is bound before anything is served or
    logged: one that cannot be raises :class:`~gateway.proxy.bind.BindError` with no
    socket left open. Whatever ends the gateway, every socket is closed on the way out.

    ``worker``: this process is one of a supervisor's workers (``gateway.proxy.supervisor``):
    its sockets were bound by the supervisor and are inherited, and the connection caps
    (and, without Redis, the limiter state) are the supervisor's, over the link.
    """
    tls = TLSContextHolder(config.tls.cert, config.tls.key, config.tls.min_version)
    web_tls = None
    if config.web.address and config.web.cert is not None and config.web.key is not None:
        web_tls = TLSContextHolder(config.web.cert, config.web.key, config.tls.min_version)
    share_sessions = worker is not None and bool(config.admin.address or config.web.address)
    if worker is not None:
        # The supervisor serves [metrics] address for every worker (multiprocess files),
        # worker 0 the admin API, the portal and the auth-policy endpoint: the others must
        # not try to bind them.
        off = {"address": ""}
        config = config.model_copy(update={
            "metrics": config.metrics.model_copy(update=off),
            "admin": config.admin if worker.admin is not None else config.admin.model_copy(
                update=off),
            "web": config.web if worker.web is not None else config.web.model_copy(update=off),
            "auth_policy": config.auth_policy if worker.auth_policy is not None
            else config.auth_policy.model_copy(update=off),
        })
        bound = _inherited(worker)
        sockets = _BoundSockets(listeners=bound[:len(worker.listeners)], http=HttpSockets(
            admin=_inherited_http(worker.admin), web=_inherited_http(worker.web),
            auth_policy=_inherited_http(worker.auth_policy)))
        link = socket.socket(fileno=worker.link)
    else:
        metrics.workers.set(1)
        bound = await bind_all(_bind_requests(config))
        sockets = _BoundSockets.split(config, bound)
        link = None
    try:
        await _run(config, runtime, tls, web_tls, sockets, link,
                   worker if share_sessions else None)
    finally:
        close_all(bound)
        if worker is not None:
            close_all([lst for lst in (sockets.http.admin, sockets.http.web,
                                       sockets.http.auth_policy) if lst])


def _listener(fd: int) -> trio.SocketListener:
    return trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))


def _inherited(worker: WorkerSpec) -> list[list[trio.SocketListener]]:
    return [[_listener(fd) for fd in group] for group in worker.listeners]


def _inherited_http(fds: list[int] | None) -> list[trio.SocketListener] | None:
    return None if fds is None else [_listener(fd) for fd in fds]


def _bind_requests(config: Config) -> list[BindRequest]:
    """Listeners first, then the HTTP sockets (``http_bind_requests``); see
    _BoundSockets.split."""
    wanted = [BindRequest("[[listener]] address", lst.address, backlog=1024)
              for lst in config.listeners]
    return wanted + http_bind_requests(config)


def http_bind_requests(config: Config) -> list[BindRequest]:
    """Metrics, admin API, portal and auth-policy server, in that order, those that are on."""
    sections = (("metrics", config.metrics.address), ("admin", config.admin.address),
                ("web", config.web.address), ("auth_policy", config.auth_policy.address))
    return [BindRequest(f"[{name}] address", address) for name, address in sections if address]


@dataclass(frozen=True, slots=True)
class _BoundSockets:
    listeners: list[list[trio.SocketListener]]
    http: HttpSockets

    @classmethod
    def split(cls, config: Config, bound: list[list[trio.SocketListener]]) -> _BoundSockets:
        """``bound`` in the order of :func:`_bind_requests`."""
        rest = iter(bound[len(config.listeners):])
        return cls(
            listeners=bound[:len(config.listeners)],
            http=HttpSockets(
                metrics=next(rest) if config.metrics.address else None,
                admin=next(rest) if config.admin.address else None,
                web=next(rest) if config.web.address else None,
                auth_policy=next(rest) if config.auth_policy.address else None,
            ),
        )


#: How often workers share their session lists with worker 0 (admin API, portal).
SESSIONS_SHARE_SECONDS = 1.0


class _WorkerZeroView:
    """The ``GatewayContext`` of worker 0 as its admin API and portal see it: its own
    sessions and, fetched each second through the supervisor, every other worker's
    (``RemoteSession``: listed like a local one; a kill goes to its worker)."""

    def __init__(self, ctx: GatewayContext) -> None:
        self._ctx = ctx
        self._others: dict[str, RemoteSession] = {}

    @property
    def sessions(self) -> Mapping[str, object]:
        return ChainMap(cast(dict[str, object], self._ctx.sessions),
                        cast(dict[str, object], self._others))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    async def fetch_others(self, link: WorkerLink) -> None:
        others = await link.call("all_sessions")
        self._others = {record["id"]: RemoteSession(link, int(index), record)
                        for index, records in others for record in records}


async def _send_sessions(ctx: GatewayContext, link: WorkerLink) -> None:
    link.notify("sessions", [session_record(s) for s in list(ctx.sessions.values())])


def _on_supervisor_command(ctx: GatewayContext, feed_link: FeedSender | WorkerZeroFeed | None,
                           op: str, args: list[Any]) -> None:
    """A kill that worker 0's admin API asked for, of one of this worker's sessions, or
    the live feed's word (``gateway.proxy.feedlink``)."""
    if feed_link is not None and feed_link.command(op, args):
        return
    if op != "kill":
        log.warning("worker_link.unknown_command", op=op)
        return
    session_id, reason, message = args
    session = ctx.sessions.get(session_id)
    if session is not None:
        session.kill(reason, message)


def _supervisor_gone() -> None:
    """The link to the supervisor closed: it died or stops. Drain like on SIGTERM."""
    log.error("worker.supervisor_gone")
    os.kill(os.getpid(), signal.SIGTERM)


async def _run(config: Config, runtime: Runtime, tls: TLSContextHolder,
               web_tls: TLSContextHolder | None, sockets: _BoundSockets,
               link_socket: socket.socket | None = None,
               worker: WorkerSpec | None = None) -> None:
    """``worker``: set when this worker shares its sessions with worker 0's admin API."""
    for warning in runtime.warnings:
        log.warning("gateway.config_warning", detail=warning)
    async with contextlib.AsyncExitStack() as stack:
        link = None
        tracker: ConnectionTracker | RemoteTracker = ConnectionTracker.from_config(config.limits)
        if link_socket is not None:
            link = await stack.enter_async_context(open_link(
                trio.SocketStream(trio.socket.from_stdlib_socket(link_socket)), _supervisor_gone))
            tracker = RemoteTracker(link)
        state: StateBackend
        if link is not None and not config.state.redis:
            state = RemoteState(link)
        else:
            state = await stack.enter_async_context(open_state(config.state.redis))
        feed = await stack.enter_async_context(open_feed(config.state.redis))
        ctx = GatewayContext(
            config=config, tls=tls, runtime=runtime,
            limiter=Limiter(state, config.limits, config.anomaly),
            tracker=tracker, web_tls=web_tls, feed=feed,
        )
        _export_cert_expiry(ctx)
        accepting = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_signals, ctx, nursery.cancel_scope, accepting)
            nursery.start_soon(_every, POLICY_POLL_SECONDS,
                               lambda: ctx.reload_policy(force=False), "policy_watch")
            nursery.start_soon(_every, CREDENTIAL_POLL_SECONDS, ctx.check_credentials,
                               "credential_watch")
            nursery.start_soon(_every, BANS_GAUGE_SECONDS, lambda: _update_bans_gauge(ctx),
                               "bans_gauge")
            nursery.start_soon(_every, HISTORY_FLUSH_SECONDS, ctx.flush_history, "history")
            nursery.start_soon(_every, STORE_PRUNE_SECONDS, lambda: _prune_store(ctx),
                               "store_prune")
            web_view: Gateway = ctx
            if link is not None and worker is not None:  # worker 0 serves the admin API
                # Without Redis the other workers send their feed events to worker 0 over
                # the link; with it, each worker's Redis relay carries them.
                feed_link: FeedSender | WorkerZeroFeed | None = None
                if not config.state.redis and worker.index == 0:
                    feed_link = WorkerZeroFeed(feed, link)
                elif not config.state.redis:
                    feed_link = FeedSender(feed, link)
                    nursery.start_soon(feed_link.run)
                link.on_command = partial(_on_supervisor_command, ctx, feed_link)
                if worker.index == 0:
                    view = _WorkerZeroView(ctx)
                    web_view = cast(Gateway, view)
                    nursery.start_soon(_every, SESSIONS_SHARE_SECONDS,
                                       partial(view.fetch_others, link), "sessions_fetch")
                else:
                    nursery.start_soon(_every, SESSIONS_SHARE_SECONDS,
                                       partial(_send_sessions, ctx, link), "sessions_send")
            await nursery.start(partial(serve_web, web_view, sockets.http))
            # Sessions run in the outer nursery, so that cancelling ``accepting`` (the
            # drain) stops accepting without touching a live session.
            nursery.start_soon(_accept, ctx, config, sockets.listeners, nursery, accepting)
            ctx.ready = True
            if link is not None:
                link.notify("ready")
            log.info("gateway.listening", listeners=[lst.address for lst in config.listeners],
                     backend=ctx.backend_name, metrics=config.metrics.address or None,
                     admin=config.admin.address or None, web=config.web.address or None,
                     auth_policy=config.auth_policy.address or None,
                     policy=ctx.policy.current.fingerprint if ctx.policy.current else None)


async def _accept(ctx: GatewayContext, config: Config,
                  sockets: list[list[trio.SocketListener]], sessions: trio.Nursery,
                  accepting: trio.CancelScope) -> None:
    with accepting:
        async with trio.open_nursery() as nursery:
            for listener, listener_sockets in zip(config.listeners, sockets, strict=True):
                for sock in listener_sockets:
                    nursery.start_soon(_serve_listener, ctx, listener, sock, sessions)


#: accept() failures that mean "out of descriptors or memory for now": wait, then accept
#: again (what ``trio.serve_listeners`` does), instead of ending the listener.
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_RETRY_SECONDS = 0.1


async def _serve_listener(ctx: GatewayContext, listener: ListenerConfig,
                          sock: trio.SocketListener, sessions: trio.Nursery) -> None:
    """Accept connections on ``sock``, each run as its own task in ``sessions``.

    ``trio.serve_listeners`` without its per-connection ``aclose_forcefully``: a session
    closes its own streams, so the TCP socket is closed here synchronously (a cancel
    scope, a cancellation and a checkpoint less per connection).
    """
    async with sock:
        while True:
            try:
                tcp = await sock.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.error("listener.accept_failed", listener=listener.address,
                          error=errno.errorcode.get(exc.errno, str(exc.errno)),
                          retry_s=_ACCEPT_RETRY_SECONDS)
                await trio.sleep(_ACCEPT_RETRY_SECONDS)
            else:
                # The bound method itself, not a wrapper coroutine: every session's task
                # would keep the wrapper's frame alive for as long as it lasts.
                sessions.start_soon(ctx.handle, listener, tcp)
