"""Serve the web apps with Hypercorn's trio worker, in the gateway's nursery.

One Hypercorn server per configured listener, each with the app of its role
(``gateway.web.app``): ``[admin] address`` and ``[metrics] address`` in plain HTTP (they
default to loopback), ``[web] address`` in HTTPS only, ``[auth_policy] address`` (Dovecot's
policy requests, ``gateway.web.policy_app``) in plain HTTP. All of them run in one nursery
that ``serve_web`` owns; cancelling it (SIGTERM) closes every listener.

Choices and why:

- TLS for ``[web]``: the gateway's own server context (``[tls] min_version``, its cipher
  list), HTTP/1.1 only (no ALPN is offered, so Hypercorn speaks h11). The listening context picks, at each handshake, the current
  context of a ``TLSContextHolder`` (an SNI callback), so the SIGHUP that renews the
  IMAP certificate renews the portal's too without a restart.
- Hypercorn's log lines go through structlog (``web.server`` events), like every other
  line the gateway writes; its access log is off (the admin API logs what it changes).
- No ``Server`` header: a version banner helps nobody but a scanner.
"""

from __future__ import annotations

import os
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.logging import Logger as HypercornLogger
from hypercorn.trio import serve as hypercorn_serve

from gateway.authpolicy.service import AuthPolicyService
from gateway.config import Config
from gateway.limits.limiter import Limiter
from gateway.observability import metrics
from gateway.observability.events import EventFeed
from gateway.observability.logs import get_logger
from gateway.proxy.tls import server_context
from gateway.startup import Runtime
from gateway.web.admin_pages import AdminPortalServices, admin_routes
from gateway.web.app import MAX_BODY, REQUEST_DEADLINE, admin_app, metrics_app, portal_app
from gateway.web.auth import PortalServices
from gateway.web.policy_app import auth_policy_app
from gateway.web.token import MIN_TOKEN_CHARS, AdminTokenError, check_admin_address

__all__ = ["Gateway", "HttpSockets", "hypercorn_config", "serve_web", "switching_context"]

log = get_logger()

#: Seconds Hypercorn gives open requests to finish when the gateway stops.
GRACEFUL_SECONDS = 1.0
#: How long the auth-policy listener keeps an idle connection (keep-alive and read
#: timeout): longer than Dovecot's own idle limit (10 s), so Dovecot closes first. Closed
#: by us first, Dovecot 2.3 sends its next request on the dead connection and waits for
#: its timeout: that login is slowed by 1.5 s and allowed unchecked.
POLICY_KEEP_ALIVE = 30.0


class _ContextSource(Protocol):
    @property
    def context(self) -> ssl.SSLContext: ...


class Gateway(AdminPortalServices, PortalServices, Protocol):
    """What the web layer needs from the running gateway (``GatewayContext``)."""

    @property
    def config(self) -> Config: ...
    @property
    def feed(self) -> EventFeed: ...
    @property
    def runtime(self) -> Runtime: ...  # .admin_token
    @property
    def tls(self) -> _ContextSource: ...  # [tls]
    @property
    def web_tls(self) -> _ContextSource | None: ...  # [web] cert/key, or None: [tls]'s
    @property
    def ready(self) -> bool: ...
    @property
    def limiter(self) -> Limiter: ...


class _StructlogLogger(HypercornLogger):
    """Hypercorn's logger, writing ``web.server`` events through structlog."""

    async def access(self, request: Any, response: Any, request_time: float) -> None:
        return None

    async def critical(self, message: str, *args: Any, **kwargs: Any) -> None:
        log.critical("web.server", detail=message % args if args else message)

    async def error(self, message: str, *args: Any, **kwargs: Any) -> None:
        log.error("web.server", detail=message % args if args else message)

    async def warning(self, message: str, *args: Any, **kwargs: Any) -> None:
        log.warning("web.server", detail=message % args if args else message)

    async def info(self, message: str, *args: Any, **kwargs: Any) -> None:
        log.debug("web.server", detail=message % args if args else message)

    async def debug(self, message: str, *args: Any, **kwargs: Any) -> None:
        log.debug("web.server", detail=message % args if args else message)

    async def exception(self, message: str, *args: Any, **kwargs: Any) -> None:
        log.exception("web.server", detail=message % args if args else message)

    async def log(self, level: int, message: str, *args: Any, **kwargs: Any) -> None:
        log.info("web.server", detail=message % args if args else message)


class _Config(HypercornConfig):
    """Hypercorn's config with the TLS context handed in rather than built from files."""

    ssl_context: ssl.SSLContext | None = None

    @property
    def ssl_enabled(self) -> bool:
        return self.ssl_context is not None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self.ssl_context


@dataclass(frozen=True, slots=True)
class HttpSockets:
    """The HTTP listeners' sockets, bound by the gateway before it serves anything
    (``gateway.proxy.bind``): None where the address is off."""

    metrics: list[trio.SocketListener] | None = None
    admin: list[trio.SocketListener] | None = None
    web: list[trio.SocketListener] | None = None
    auth_policy: list[trio.SocketListener] | None = None


def hypercorn_config(address: str, *, ssl_context: ssl.SSLContext | None = None,
                     handshake_timeout: float = 10.0,
                     sockets: list[trio.SocketListener] | None = None) -> HypercornConfig:
    """Hypercorn settings for one listener on ``address`` ("host:port", IPv6 bracketed).

    With ``sockets`` Hypercorn serves those already bound sockets instead of binding
    ``address`` itself: it gets duplicates of their descriptors (``fd://``), which it
    owns and closes, while the originals stay with whoever bound them.
    """
    config = _Config()
    if sockets is None:
        config.bind = [address]
    else:
        config.bind = [f"fd://{os.dup(s.socket.fileno())}" for s in sockets]
    config.ssl_context = ssl_context
    config.logger_class = _StructlogLogger
    config.accesslog = None
    config.errorlog = None
    config.include_server_header = False
    config.keep_alive_timeout = REQUEST_DEADLINE
    config.read_timeout = int(REQUEST_DEADLINE)
    config.ssl_handshake_timeout = handshake_timeout
    config.graceful_timeout = GRACEFUL_SECONDS
    config.websocket_max_message_size = MAX_BODY
    # Hypercorn closes a connection that sends nothing for read_timeout, a WebSocket
    # included; a feed reader only listens. Pinging it twice as often keeps a live reader's
    # pongs coming (browsers and trio-websocket answer on their own), and still ends one
    # that stopped answering within read_timeout.
    config.websocket_ping_interval = REQUEST_DEADLINE / 2
    return config


def switching_context(source: _ContextSource, cert: Path, key: Path,
                      min_version: str) -> ssl.SSLContext:
    """A listening TLS context that hands each handshake ``source.context`` as it is then.

    OpenSSL runs the SNI callback for every ClientHello (with ``None`` as the name when
    the client sent none, as for an IP address), and the callback may replace the
    connection's context, whose certificate is then the one sent. Which settings
    OpenSSL takes from which of the two contexts differs by setting (protocol versions
    stay with the listening one), so both are built by the same ``server_context`` from
    the same files: they differ only once ``source`` has reloaded a renewed certificate.
    Raises ``TLSSetupError`` naming the files.
    """

    def pick(ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        ssl_object.context = source.context

    listening = server_context(cert, key, min_version)
    listening.sni_callback = pick
    return listening


async def serve_web(gateway: Gateway, sockets: HttpSockets | None = None, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve every configured HTTP listener of ``gateway`` until cancelled.

    ``sockets``: listeners already bound (the gateway binds every address before it serves
    anything); without them each address is bound here, before ``task_status.started()``
    (a port in use then fails the start with ``OSError``). Refuses a non-loopback ``[admin] address`` without an explicit token
    file (``AdminAddressRefused``) and an admin API without a token (``AdminTokenError``).
    """
    config = gateway.config
    bound = sockets or HttpSockets()
    servers: list[tuple[str, str, Any, HypercornConfig]] = []
    if config.metrics.address:
        app = metrics_app(lambda: gateway.ready)
        servers.append(("metrics", config.metrics.address, app,
                        hypercorn_config(config.metrics.address, sockets=bound.metrics)))
    if config.admin.address:
        check_admin_address(config)
        token = gateway.runtime.admin_token
        if token is None or len(token) < MIN_TOKEN_CHARS:
            raise AdminTokenError("the admin API needs a token; see load_admin_token")
        app = admin_app(gateway, token, feed=gateway.feed)
        servers.append(("admin", config.admin.address, app,
                        hypercorn_config(config.admin.address, sockets=bound.admin)))
    if config.web.address:
        web, tls = config.web, config.tls
        own = gateway.web_tls
        source, cert, key = gateway.tls, tls.cert, tls.key
        if own is not None and web.cert is not None and web.key is not None:
            source, cert, key = own, web.cert, web.key  # [web] has its own certificate
        listening = switching_context(source, cert, key, tls.min_version)
        app = portal_app(gateway, secret=secrets.token_bytes(32), routes=admin_routes(gateway))
        servers.append(("web", web.address, app, hypercorn_config(
            web.address, ssl_context=listening,
            handshake_timeout=config.limits.tls_handshake_timeout, sockets=bound.web)))
    policy = config.auth_policy
    if policy.address:
        service = AuthPolicyService(gateway.limiter, policy, config.limits)
        app = auth_policy_app(service, gateway.runtime.auth_policy_token)
        hc = hypercorn_config(policy.address, sockets=bound.auth_policy)
        hc.keep_alive_timeout = POLICY_KEEP_ALIVE
        hc.read_timeout = int(POLICY_KEEP_ALIVE)
        metrics.init_auth_policy_series()
        servers.append(("auth_policy", policy.address, app, hc))
    async with trio.open_nursery() as nursery:
        for role, address, app, hc in servers:
            binds = await nursery.start(hypercorn_serve, app, hc)
            log.info(f"{role}.listening", address=address, bound=binds)
        task_status.started()

