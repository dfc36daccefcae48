"""The client connection's TLS: OpenSSL reading and writing the socket itself.

Why not ``trio.SSLStream``: it runs OpenSSL over memory BIOs, so every byte is copied into a
BIO and out again on each side (twice more than a proxy in C does), and its general
machinery (a retry loop for every operation, conflict detectors, an attribute hook, the
renegotiation-safe interlock of reads and writes) was the largest share of the gateway's
own CPU per relayed command. Here an ``ssl.SSLSocket`` in non-blocking mode owns the
descriptor; ``SSL_read``/``SSL_write`` do the system calls, and the stream only waits (trio's
``wait_readable``/``wait_writable``) when OpenSSL says it must. What the session and the relay
rely on:

- one task receives and one task sends at a time (the relay's locks and the session's
  sequential dialogue guarantee it); the two may interleave, which OpenSSL allows for one
  connection in one thread. Renegotiation is off in the server context, so the only case
  where a read has to write (or wait for writability) is a TLS 1.3 KeyUpdate, handled by
  waiting for the socket to take it;
- a write interrupted by a full socket is retried with the same bytes, as OpenSSL requires;
- a peer that closes without ``close_notify`` is end of stream (``https_compatible`` in
  trio's terms: IMAP clients do that, and the gateway's framing never depends on it);
- errors are trio's: ``BrokenResourceError`` (with the ``ssl.SSLError`` as its cause when TLS
  failed, without one when the peer went away) and ``ClosedResourceError``;
- every receive and send is a checkpoint like trio's own streams (cancelled: raise before
  the call; not cancelled and nothing to wait for: yield once after it, without raising, so
  no data is lost and a peer that floods the gateway cannot starve the other sessions).

The ``trio.SocketStream`` the listener accepted is detached (its close becomes a no-op): the
descriptor belongs to this stream, and :meth:`aclose` tells trio before closing it.
"""

from __future__ import annotations

import math
import socket
import ssl

import trio

#: What one receive asks OpenSSL for (it returns at most one TLS record, 16 KiB).
_RECEIVE_SIZE = 65536


class TLSStream(trio.abc.Stream):
    """Server side TLS on the descriptor of ``transport`` (a connected ``trio.SocketStream``,
    which is left detached: this stream owns and closes the descriptor)."""

    __slots__ = ("_ssl", "_fd", "_closed")

    def __init__(self, transport: trio.SocketStream, context: ssl.SSLContext) -> None:
        tsock = transport.socket
        family, type_, proto = tsock.family, tsock.type, tsock.proto
        fd = tsock.detach()  # this object owns the descriptor from now on
        raw = socket.socket(family, type_, proto, fileno=fd)
        raw.setblocking(False)
        self._fd = fd
        self._ssl = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        self._closed = False

    def version(self) -> str | None:
        return self._ssl.version()

    async def do_handshake(self) -> None:
        """Complete the handshake. A TLS failure raises ``BrokenResourceError`` whose
        cause is the ``ssl.SSLError``; a peer that goes away, one without a cause."""
        sock = self._ssl
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                writing = False
            except ssl.SSLWantWriteError:
                writing = True
            except (ssl.SSLEOFError, ConnectionError, ssl.SSLZeroReturnError):
                raise trio.BrokenResourceError("peer closed during the TLS handshake") from None
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
            except OSError as exc:
                raise trio.BrokenResourceError(f"TLS handshake: {exc}") from None
            await self._wait(writing)

    async def receive_some(self, max_bytes: int | None = None, *,
                           wait_first: bool = False) -> bytes:
        """``wait_first``: when OpenSSL holds no decrypted bytes, wait for the socket to be
        readable before reading (see :func:`gateway.proxy.rawio.receive`). OpenSSL reads
        record by record (no read-ahead), so bytes it has not decrypted yet are still in
        the socket, and readability tells whether a record can arrive."""
        if self._closed:
            raise trio.ClosedResourceError("TLS stream closed")
        sock = self._ssl
        if wait_first and not sock.pending():
            await trio.lowlevel.wait_readable(self._fd)
            waited = True
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
        size = max_bytes or _RECEIVE_SIZE
        while True:
            try:
                data = sock.recv(size)
                break
            except ssl.SSLWantReadError:
                writing = False
            except ssl.SSLWantWriteError:
                writing = True  # a KeyUpdate answer waits for room in the socket
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                data = b""
                break
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS receive failed: {exc}") from exc
            except OSError as exc:
                raise trio.BrokenResourceError(f"TLS receive: {exc}") from exc
            # Waiting outside the except clause: an idle session keeps no exception alive;
            # and without a helper coroutine, whose frame it would keep as well.
            if writing:
                await trio.lowlevel.wait_writable(self._fd)
            else:
                await trio.lowlevel.wait_readable(self._fd)
            waited = True
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview, *,
                       schedule: bool = True) -> None:
        """``schedule=False``: see :func:`gateway.proxy.rawio.send_all`."""
        if self._closed:
            raise trio.ClosedResourceError("TLS stream closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self._ssl
        view = memoryview(data)
        waited = False
        while view:
            try:
                sent = sock.send(view)
            except ssl.SSLWantWriteError:
                writing = True  # retried with the same bytes, as OpenSSL requires
            except ssl.SSLWantReadError:
                writing = False
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS send failed: {exc}") from exc
            except OSError as exc:
                raise trio.BrokenResourceError(f"TLS send: {exc}") from exc
            else:
                view = view[sent:]
                continue
            await self._wait(writing)
            waited = True
        if not waited and schedule:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _wait(self, writing: bool) -> None:
        if writing:
            await trio.lowlevel.wait_writable(self._fd)
        else:
            await trio.lowlevel.wait_readable(self._fd)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._fd)

    async def aclose(self) -> None:
        """Close the descriptor (no ``close_notify``: IMAP's own LOGOUT/BYE end a session,
        and a forceful close could not wait for the peer anyway); a task waiting on it
        gets ``ClosedResourceError``."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self.close()
        if trio.current_effective_deadline() != -math.inf:
            await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """``aclose`` without the checkpoint: for a session's end, where nothing waits."""
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._fd)
            self._ssl.close()
