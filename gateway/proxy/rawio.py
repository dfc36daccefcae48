"""Reads and writes on a connected, non-blocking socket descriptor, for the relay's hot path.

``trio.socket``'s own calls wrap every read and write in a context manager, a retry helper
and two checkpoints; on a relayed NOOP that was the largest single entry of the gateway's
profile, and its frames were part of what every idle session holds while it waits. These
two functions do the same job directly: try the system call, and only when the kernel
says "would block" wait for the descriptor with ``trio.lowlevel.wait_readable`` /
``wait_writable``.

Trio's rules kept: every call is a checkpoint (a cancelled task raises before the system
call; a call that did not have to wait yields once afterwards without raising, so a peer
that floods the gateway cannot starve the other sessions and no data read is lost),
cancellation works while waiting, and a socket closed with trio's ``close()`` (which calls
``notify_closing``) wakes a waiter with ``ClosedResourceError``. Errors become trio's
``BrokenResourceError`` with the ``OSError`` as cause. ``os.write`` on a socket whose peer
is gone fails with ``EPIPE`` (Python ignores ``SIGPIPE``).

The caller owns the socket and must not close it while a call is in progress from a task
that is not cancelled (the session closes its sockets after the relay's tasks ended).
"""

from __future__ import annotations

import errno
import os
import socket

import trio


async def receive(fd: int, max_bytes: int, *, wait_first: bool = False) -> bytes:
    """Up to ``max_bytes`` from the socket; ``b""`` at end of stream.

    ``wait_first``: wait for the socket to be readable before the first read, for a reader
    that nearly always has to wait (the relay: a peer answers what was just sent to it).
    It saves the read that would fail with "would block"; the wait is the checkpoint.
    """
    if wait_first:
        await trio.lowlevel.wait_readable(fd)
        waited = True
    else:
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled: raise before reading
        waited = False
    while True:
        try:
            data = os.read(fd, max_bytes)
        except BlockingIOError:
            pass  # wait below, outside the except clause: an idle session keeps no exception
        except OSError as exc:
            raise trio.BrokenResourceError(f"receive: {exc}") from exc
        else:
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()  # yield, never lose the data
            return data
        await trio.lowlevel.wait_readable(fd)
        waited = True


async def send_all(fd: int, data: bytes | bytearray | memoryview, *,
                   schedule: bool = True) -> None:
    """All of ``data`` to the socket (or ``BrokenResourceError``).

    ``schedule=False``: no schedule point after a send that did not have to wait (a
    cancelled task still raises before sending). Only for a caller whose loop reaches a
    receive -- a schedule point -- after every send, so that one task still cannot
    starve the others: the relay's pump loops.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    view = memoryview(data)
    waited = False
    while view:
        try:
            sent = os.write(fd, view)
        except BlockingIOError:
            pass
        except OSError as exc:
            raise trio.BrokenResourceError(f"send: {exc}") from exc
        else:
            view = view[sent:]
            continue
        await trio.lowlevel.wait_writable(fd)
        waited = True
    if not waited and schedule:
        await trio.lowlevel.cancel_shielded_checkpoint()


class PlainSocketStream(trio.abc.Stream):
    """A connected TCP socket as a trio stream, read and written with this module's two
    calls: the backend leg of a session, which carries a login dialogue and then the
    relay. ``trio.SocketStream`` would add its ``trio.socket`` wrapper (a Python object
    around the socket, a context manager and retry helper per call) to every login.

    The stream owns the socket. ``close()`` tells trio first (``notify_closing``), so a
    task waiting on it gets ``ClosedResourceError``; use after close raises it too.
    """

    __slots__ = ("socket", "fd", "_closed")

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.fd = sock.fileno()
        self._closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("socket closed")
        return await receive(self.fd, max_bytes or 65536)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("socket closed")
        await send_all(self.fd, data)

    async def wait_send_all_might_not_block(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("socket closed")
        await trio.lowlevel.wait_writable(self.fd)

    def close(self) -> None:
        """Close now (idempotent); ``aclose`` without its checkpoint."""
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.fd)
            self.socket.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


async def connect_tcp(family: int, address: tuple[str, int]) -> PlainSocketStream:
    """A TCP connection to an IP ``address`` (no name resolution), Nagle off like
    ``trio.SocketStream``. Refused or unreachable: the ``OSError`` subclass the errno
    maps to (``ConnectionRefusedError`` ...). Cancelled while connecting: the socket is
    closed."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(address)
        if err == errno.EINPROGRESS:
            await trio.lowlevel.wait_writable(sock.fileno())
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return PlainSocketStream(sock)
