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
