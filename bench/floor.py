"""``python -m bench.floor --config FILE``: the least a trio TLS login relay does.

What it is for: the bench's ``trio-floor`` target. It measures what trio and the gateway's
I/O layer cost with no gateway features: the part of the gateway/haproxy ratio that no
feature work can remove. Read next to HAProxy in the same run, ``trio-floor/haproxy`` is
that floor, and ``gateway/haproxy`` minus it is what the gateway's features cost.

It is NOT a product path: it forwards the client's password to the backend and checks
nothing (no policy, no limits, no parsing, no logging, no metrics). Nothing outside
``bench`` imports it, and it listens only where the bench's rendered config says.

To measure the gateway's own pieces, it is built from them: the TLS context of
:func:`gateway.proxy.tls.server_context` (same ciphers and options, from the same
``[tls]`` keys), the client side through :class:`gateway.proxy.tlsstream.TLSStream`, the
backend socket through :mod:`gateway.proxy.rawio`, and the accept loop of
``gateway.proxy.server`` (trio's ``accept``, no per-connection ``aclose_forcefully``).

Per connection: TLS handshake, ``* OK`` greeting, one line from the client (its
``tag LOGIN user pass``, assumed to arrive in one read, as the bench client sends it),
a plain TCP connection to the backend, its greeting line, ``g1 ID`` with the client's
address and ``g2`` with the client's command in one write (the gateway pipelines ID and
AUTHENTICATE PLAIN the same way), the backend's reply up to the ``g2`` tagged line
handed to the client under the client's tag, then bytes relayed both ways unparsed until
either side closes. The config is the one the ``gateway`` target gets
(``bench/gateway.toml.in``); only ``[[listener]]``, ``[tls]`` and ``[backend] address``
are read.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import socket
import sys
import tomllib
from pathlib import Path

import trio

from gateway.config import parse_address
from gateway.proxy import rawio
from gateway.proxy.tls import server_context
from gateway.proxy.tlsstream import TLSStream

#: From accept to the client's tagged login reply: one deadline where the gateway has two
#: (``limits.tls_handshake_timeout``, ``limits.preauth_timeout``). Only a stalled client
#: reaches it; what is measured is that a cancel scope is set up per login, as in the gateway.
LOGIN_TIMEOUT = 30.0
#: Read sizes of the gateway's relay (``gateway.proxy.relay``; a bench test keeps them equal).
CLIENT_RECEIVE_SIZE = 65536
BACKEND_RECEIVE_SIZE = 1048576
GREETING = b"* OK trio-floor ready\r\n"
#: accept() failures that mean "out of descriptors or memory for now": wait and accept again
#: (the memory workload holds thousands of sessions), as the gateway's listener does.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_SECONDS = 0.1


class BackendClosed(Exception):
    """The backend closed before its login reply was complete."""


def backend_commands(peer: tuple[str, int], client_command: bytes) -> bytes:
    """``g1 ID`` with the client's address, then the client's command (``LOGIN user pass``
    with its own arguments, unparsed) as ``g2``: one write, as the gateway pipelines them."""
    ip, port = peer[0].encode(), peer[1]
    return (b'g1 ID ("x-originating-ip" "%s" "x-originating-port" "%d")\r\n' % (ip, port)
            + b"g2 " + client_command)


def tagged_reply(buf: bytes) -> bytes | None:
    """``buf`` from the backend's ``g2`` tagged line on, once that line is complete; else None.

    What follows the tagged line (nothing, from Dovecot) is returned with it, so that no
    backend byte is dropped when the relay starts.
    """
    start = 0 if buf.startswith(b"g2 ") else buf.find(b"\r\ng2 ") + 2
    if start == 1:  # find() gave -1: no tagged line yet
        return None
    if buf.find(b"\r\n", start) < 0:
        return None
    return buf[start:]


class Floor:
    """The listener's settings and the per-connection handler."""

    def __init__(self, config: Path) -> None:
        cfg = tomllib.loads(config.read_text())
        base = config.parent
        tls = cfg["tls"]
        self.context = server_context(base / tls["cert"], base / tls["key"],
                                      tls.get("min_version", "1.2"))
        self.listen = parse_address(cfg["listener"][0]["address"])
        self.backend = parse_address(cfg["backend"]["address"])
        self.backend_family = (socket.AF_INET6
                               if ipaddress.ip_address(self.backend[0]).version == 6
                               else socket.AF_INET)

    async def serve(self) -> None:
        """Accept until killed (SIGTERM ends the process: nothing here needs a drain)."""
        host, port = self.listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        async with trio.open_nursery() as sessions:
            for listener in listeners:
                sessions.start_soon(self._accept, listener, sessions)

    async def _accept(self, listener: trio.SocketListener, sessions: trio.Nursery) -> None:
        while True:
            try:
                tcp = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                await trio.sleep(ACCEPT_RETRY_SECONDS)
            else:
                sessions.start_soon(self.handle, tcp)

    async def handle(self, tcp: trio.SocketStream) -> None:
        """One connection; whatever a client or the backend does ends only this one."""
        client: TLSStream | None = None
        backend: socket.socket | None = None
        logged_in = False
        try:
            peer = tcp.socket.getpeername()  # fails if the client is already gone
            client = TLSStream(tcp, self.context)  # owns the descriptor from here on
            backend = socket.socket(self.backend_family, socket.SOCK_STREAM)
            with trio.move_on_after(LOGIN_TIMEOUT) as deadline:
                logged_in = await self._login(client, backend, peer)
            if deadline.cancelled_caught or not logged_in:
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_backend_to_client, backend.fileno(), client,
                                   nursery.cancel_scope)
                await _client_to_backend(client, backend.fileno(), nursery.cancel_scope)
        except Exception:  # a bad client or a backend error ends its own connection only
            pass
        finally:
            if backend is not None:
                backend.close()  # no task waits on it any more: the nursery has ended
            if client is not None:
                client.close()
            else:
                tcp.socket.close()

    async def _login(self, client: TLSStream, backend: socket.socket,
                     peer: tuple[str, int]) -> bool:
        """Handshake, greeting, the client's line, the backend's login; the client gets the
        backend's tagged reply (and anything after it) under its own tag. False: the client
        sent no command line, there is nothing to relay."""
        await client.do_handshake()
        await client.send_all(GREETING)
        line = await client.receive_some(CLIENT_RECEIVE_SIZE, wait_first=True)
        tag, space, command = line.partition(b" ")
        if not space:
            return False  # end of stream (the rig's readiness probe) or not a command
        fd = await _connect(backend, self.backend)
        buf = b""
        while b"\r\n" not in buf:  # the backend's greeting
            buf += await _receive(fd)
        await rawio.send_all(fd, backend_commands(peer, command))
        buf = b""
        reply = None
        while reply is None:
            buf += await _receive(fd)
            reply = tagged_reply(buf)
        await client.send_all(tag + reply[2:])
        return True


async def _connect(sock: socket.socket, address: tuple[str, int]) -> int:
    """Non-blocking connect, as trio's ``connect`` does it without its wrappers; returns the fd."""
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as trio.SocketStream sets it
    try:
        sock.connect(address)
        return sock.fileno()
    except BlockingIOError:
        pass  # in progress: wait outside the except clause
    await trio.lowlevel.wait_writable(sock.fileno())
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, f"connect to {address[0]}:{address[1]}: {os.strerror(err)}")
    return sock.fileno()


async def _receive(fd: int) -> bytes:
    data = await rawio.receive(fd, BACKEND_RECEIVE_SIZE, wait_first=True)
    if not data:
        raise BackendClosed("backend closed during the login")
    return data


async def _client_to_backend(client: TLSStream, fd: int, done: trio.CancelScope) -> None:
    """Client bytes to the backend until either end closes; then the other direction stops."""
    try:
        while True:
            data = await client.receive_some(CLIENT_RECEIVE_SIZE, wait_first=True)
            if not data:
                return
            await rawio.send_all(fd, data, schedule=False)  # the receive is the schedule point
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        done.cancel()


async def _backend_to_client(fd: int, client: TLSStream, done: trio.CancelScope) -> None:
    """Backend bytes to the client until either end closes; then the other direction stops."""
    try:
        while True:
            data = await rawio.receive(fd, BACKEND_RECEIVE_SIZE, wait_first=True)
            if not data:
                return
            await client.send_all(data, schedule=False)  # the receive is the schedule point
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        done.cancel()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, required=True,
                   help="the rendered gateway config of the bench (bench/gateway.toml.in)")
    args = p.parse_args(argv)
    floor = Floor(args.config)
    trio.run(floor.serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
