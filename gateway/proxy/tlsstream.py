"""The client connection's TLS: an ``ssl.SSLObject`` over memory BIOs on a trio socket.

Why not ``trio.SSLStream``: it is general (renegotiation, concurrent readers detected and
refused, a retry loop shared by every operation, an attribute hook) and that generality
was the largest share of the gateway's own CPU per relayed command and a fifth of a login.
This stream does what the session and the relay need and no more:

- one task receives and one task sends at a time (the relay's locks and the session's
  sequential dialogue guarantee it); both may run concurrently;
- every byte OpenSSL produces leaves through :meth:`_flush`, which holds the send lock and
  drains the outgoing BIO in order, so records a read produces (a TLS 1.3 KeyUpdate
  answer) can never overtake or split the records of a write in progress;
- renegotiation is off in the server context (``OP_NO_RENEGOTIATION``), so a read never
  has to wait for a write and a write never has to wait for a read;
- a peer that closes without ``close_notify`` is end of stream (``https_compatible`` in
  trio's terms: IMAP clients do that, and the gateway's framing never depends on it);
- errors are trio's: ``BrokenResourceError`` (with the ``ssl.SSLError`` as its cause when
  TLS failed, without one when the peer went away) and ``ClosedResourceError``.

Every receive and send is a checkpoint, like trio's own streams: a client that floods the
gateway cannot starve the other sessions.
"""

from __future__ import annotations

import math
import ssl

import trio

from gateway.proxy import rawio

#: What one read from the socket asks for: a full TLS record and then some.
_SOCKET_RECEIVE_SIZE = 65536
#: Plaintext encrypted per step of a large send: OpenSSL's outgoing memory buffer grows to
#: the largest ciphertext written at once and never shrinks, so this bounds it per session.
_WRITE_SIZE = 262144


class TLSStream(trio.abc.Stream):
    """Server side TLS over ``transport`` (a connected ``trio.SocketStream``)."""

    __slots__ = ("transport", "_fd", "_obj", "_in", "_out", "_send_lock", "_closed")

    def __init__(self, transport: trio.SocketStream, context: ssl.SSLContext) -> None:
        self.transport = transport
        self._fd = transport.socket.fileno()
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=True)
        self._send_lock = trio.Lock()
        self._closed = False

    def version(self) -> str | None:
        return self._obj.version()

    # -- socket side -----------------------------------------------------------------------

    async def _flush(self) -> None:
        """Send everything OpenSSL has written so far, in order (see the module doc)."""
        lock = self._send_lock
        if lock.locked():
            # Another task is sending: it drains the BIO, our records included.
            async with lock:
                await self._drain()
            return
        lock.acquire_nowait()
        try:
            await self._drain()
        finally:
            lock.release()

    async def _drain(self) -> None:
        out, fd = self._out, self._fd
        while out.pending:
            await rawio.send_all(fd, out.read())

    async def _fill(self) -> None:
        """Read from the socket into the incoming BIO; EOF is passed on to OpenSSL."""
        data = await rawio.receive(self._fd, _SOCKET_RECEIVE_SIZE)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    # -- trio.abc.Stream -------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Complete the handshake. A TLS failure raises ``BrokenResourceError`` whose
        cause is the ``ssl.SSLError``; a peer that goes away, one without a cause."""
        if self._closed:
            raise trio.ClosedResourceError("TLS stream closed")
        obj = self._obj
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pending_eof = self._in.eof
                await self._flush()
                if pending_eof:
                    raise trio.BrokenResourceError("peer closed during the TLS handshake") \
                        from None
                await self._fill()
            except ssl.SSLEOFError:
                raise trio.BrokenResourceError("peer closed during the TLS handshake") \
                    from None
            except ssl.SSLError as exc:
                try:
                    await self._flush()  # the alert, when OpenSSL wrote one
                except trio.BrokenResourceError:
                    pass
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
        await self._flush()  # the last handshake flight and the session tickets

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("TLS stream closed")
        size = max_bytes or _SOCKET_RECEIVE_SIZE
        obj, incoming = self._obj, self._in
        blocked = False
        while True:
            # Only ask OpenSSL when it has something to work on: an SSLWantReadError per
            # receive costs time, and one caught around the wait for the socket would be
            # kept alive (with its traceback) by every idle session.
            if incoming.pending or obj.pending() or incoming.eof:
                data: bytes | None
                try:
                    data = obj.read(size)
                except ssl.SSLWantReadError:
                    data = None  # a record is not complete yet
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    data = b""
                except ssl.SSLError as exc:
                    raise trio.BrokenResourceError(f"TLS receive failed: {exc}") from exc
                if data is not None:
                    if self._out.pending:
                        await self._flush()  # e.g. a KeyUpdate answer
                    elif not blocked:
                        await trio.lowlevel.checkpoint()  # decrypted already: still yield
                    return data
                if incoming.eof:
                    return b""
            if self._out.pending:
                await self._flush()
            await self._fill()
            blocked = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("TLS stream closed")
        if not data:
            await trio.lowlevel.checkpoint()
            return
        obj = self._obj
        view = memoryview(data)
        for start in range(0, len(view), _WRITE_SIZE):
            try:
                obj.write(view[start : start + _WRITE_SIZE])
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS send failed: {exc}") from exc
            await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Send ``close_notify`` (best effort, not waiting for the peer's) and close the
        socket; the socket is closed even when this is cancelled."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        if trio.current_effective_deadline() == -math.inf:
            # Already cancelled (``trio.aclose_forcefully``, how sessions end): no alert
            # could be sent anyway, so do not make OpenSSL build one.
            await self.transport.aclose()
            return
        try:
            try:
                self._obj.unwrap()
            except ssl.SSLError:
                pass  # the alert is queued or the session is already broken
            await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self.transport.aclose()
