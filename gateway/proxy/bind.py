"""Bind every configured address before anything is served.

The gateway listens on its IMAP listeners, the metrics endpoint and the admin API. When
one of those addresses cannot be bound (another process holds it, a port below 1024
without the right, an address this host does not have), the gateway must not run with
part of them: :func:`bind_all` binds them all first, and on the first failure closes
what it had bound and raises :class:`BindError`, whose message names the config key,
the address and the operating system's reason -- one line for ``imap-gateway serve`` to
print. Called outside any nursery, so the error is not wrapped in an ExceptionGroup.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from gateway.config import parse_address


class BindError(Exception):
    """A configured address cannot be bound; nothing is listening any more."""

    def __init__(self, key: str, address: str, reason: str) -> None:
        super().__init__(f"{key} {address}: cannot listen: {reason}")
        self.key = key
        self.address = address
        self.reason = reason


@dataclass(frozen=True, slots=True)
class BindRequest:
    """One address to bind. ``key`` names it in the config (``[metrics] address``)."""

    key: str
    address: str
    backlog: int | None = None


async def bind_all(wanted: Sequence[BindRequest]) -> list[list[trio.SocketListener]]:
    """The listeners for each request, in order (a host name may give several sockets).

    Raises :class:`BindError` for the first address that cannot be bound, after closing
    every socket bound before it; on any other exception (cancellation included) those
    sockets are closed too. The caller owns the sockets it gets back (:func:`close_all`).
    """
    bound: list[list[trio.SocketListener]] = []
    try:
        for want in wanted:
            host, port = parse_address(want.address)
            try:
                listeners = await trio.open_tcp_listeners(port, host=host, backlog=want.backlog)
            except OSError as exc:
                # strerror: "Address already in use", "Permission denied", "Cannot assign
                # requested address", or the resolver's "Name or service not known".
                raise BindError(want.key, want.address, exc.strerror or str(exc)) from None
            bound.append(listeners)
    except BaseException:
        close_all(bound)
        raise
    return bound


def close_all(bound: Sequence[Sequence[trio.SocketListener]]) -> None:
    """Close every socket (again is harmless: serving closes its own on the way out)."""
    for listeners in bound:
        for listener in listeners:
            listener.socket.close()


def bind_reuseport(want: BindRequest, count: int) -> list[list[socket.socket]]:
    """``count`` sets of listening sockets on ``want.address`` with SO_REUSEPORT: one set
    per worker (a set holds one socket per address the host name resolves to).

    The kernel spreads new connections over the sets by a hash of the client's address
    and port; each set has its own accept queue, so a worker that dies strands only the
    connections queued on its own set, and those wait there for its replacement (the
    supervisor keeps every set open and hands the same one on). Raises
    :class:`BindError` after closing what it had bound.
    """
    host, port = parse_address(want.address)
    made: list[list[socket.socket]] = []
    try:
        try:
            infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                       socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise BindError(want.key, want.address, exc.strerror or str(exc)) from None
        addresses = list(dict.fromkeys((family, sockaddr) for family, *_, sockaddr in infos))
        for _ in range(count):
            group: list[socket.socket] = []
            made.append(group)
            for family, sockaddr in addresses:
                sock = socket.socket(family, socket.SOCK_STREAM)
                group.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(sockaddr)
                    sock.listen(want.backlog or socket.SOMAXCONN)
                except OSError as exc:
                    raise BindError(want.key, want.address, exc.strerror or str(exc)) from None
                sock.set_inheritable(True)
    except BaseException:
        for group in made:
            for sock in group:
                sock.close()
        raise
    return made
