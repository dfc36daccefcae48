"""The gateway→backend leg: connect, forward the client's address, log in.

Deadlines (trio's own habit: every one visible here, each with its config name):
``backend.connect_timeout`` covers TCP connect, the backend TLS handshake and the
greeting; ``backend.login_timeout`` covers ID and the AUTHENTICATE exchange. A
backend that accepts and then says nothing therefore costs a client at most
``connect_timeout`` before it gets ``NO [UNAVAILABLE]``.

The password is only ever put into the AUTHENTICATE PLAIN payload on this stream;
it is never logged and never part of an exception message. Responses are read with the
sans-IO :class:`~gateway.imap.responses.ResponseReader` (the same framer as the relay),
so an untagged response with a literal cannot be mistaken for a tagged one.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import socket
import ssl

import trio

from gateway.imap.framing import FramingError, NeedData
from gateway.imap.responses import ResponseReader, ServerResponse, quote
from gateway.proxy.proxyproto import proxy_v2_header
from gateway.proxy.rawio import PlainSocketStream, connect_tcp
from gateway.proxy.values import BackendLoginResult, ClientEndpoint

_MAX_RESPONSE_LINE = 65536
#: Untagged responses tolerated while waiting for one tagged answer during login.
_MAX_UNTAGGED = 100


class BackendUnavailable(Exception):
    """The backend could not be reached or did not behave; ``kind`` is a metric label."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"backend {kind}: {detail}")
        self.kind = kind
        self.detail = detail


class BackendConnection:
    """One logged-in (or logging-in) connection to the backend IMAP server.

    Held by every logged-in session for its whole life, so it is kept small: slots, and the
    response reader of the login dialogue is dropped once the relay has taken its bytes
    (:meth:`take_buffered`).
    """

    __slots__ = ("stream", "name", "_reader", "capabilities", "_tag_counter", "_pending")

    def __init__(self, stream: trio.abc.Stream, name: str) -> None:
        self.stream = stream
        self.name = name
        self._reader: ResponseReader | None = ResponseReader(max_line=_MAX_RESPONSE_LINE)
        self.capabilities: list[str] = []
        self._tag_counter = 0
        #: Commands to send together with the login (the pipelined ID).
        self._pending = b""

    # -- opening ---------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        *,
        host: str,
        port: int,
        tls: str,
        ssl_context: ssl.SSLContext | None,
        client_ip_mode: str,
        endpoint: ClientEndpoint,
        connect_timeout: float,
    ) -> BackendConnection:
        name = f"{host}:{port}"
        try:
            # move_on_after + cancelled_caught below, not fail_after: the same deadline
            # without fail_after's generator-based context manager (twice per login).
            with trio.move_on_after(connect_timeout) as deadline:
                tcp = await _open_tcp(host, port)
                try:
                    stream: trio.abc.Stream = tcp
                    if client_ip_mode == "proxy-v2":
                        await tcp.send_all(
                            proxy_v2_header(
                                (endpoint.ip, endpoint.port),
                                (endpoint.local_ip, endpoint.local_port),
                                tls_version=endpoint.tls_version or "TLSv1.3",
                            )
                        )
                    if tls == "implicit":
                        stream = trio.SSLStream(tcp, _context(ssl_context, tls),
                                                server_hostname=host)
                        await stream.do_handshake()
                    conn = cls(stream, name)
                    greeting = await conn._read_response()
                    if greeting.kind != "untagged" or greeting.status != "OK":
                        raise BackendUnavailable(
                            "protocol", f"unexpected greeting {greeting.raw[:80]!r}")
                    conn.capabilities = greeting.capabilities or []
                    if tls == "starttls":
                        await conn._starttls(_context(ssl_context, tls), host)
                except BaseException:
                    await trio.aclose_forcefully(tcp)
                    raise
            if deadline.cancelled_caught:
                raise trio.TooSlowError
        except trio.TooSlowError:
            raise BackendUnavailable("connect_timeout", f"no greeting from {name} within {connect_timeout}s") from None
        except ConnectionRefusedError as exc:
            raise BackendUnavailable("refused", f"{name}: {exc.strerror}") from None
        except OSError as exc:
            raise BackendUnavailable("refused", f"{name}: {exc}") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            kind = "tls" if isinstance(exc.__cause__, ssl.SSLError) else "closed"
            raise BackendUnavailable(kind, f"{name}: {exc.__cause__ or exc}") from None

        if client_ip_mode == "id":
            # Sent with the login in one write (pipelined): one round trip less per login.
            conn._pending = conn._id_command(endpoint)
        return conn

    async def _starttls(self, ssl_context: ssl.SSLContext, host: str) -> None:
        outcome = await self._command(b"STARTTLS")
        if not outcome.ok:
            raise BackendUnavailable("tls", f"backend refused STARTTLS: {outcome.line[:120]!r}")
        if self._live_reader().take_buffered():
            # Bytes after the OK and before the handshake: an injection attempt or a broken server.
            raise BackendUnavailable("protocol", "backend sent data after STARTTLS OK")
        self.stream = trio.SSLStream(self.stream, ssl_context, server_hostname=host)
        await self.stream.do_handshake()
        self.capabilities = await self.fetch_capabilities()

    def _id_command(self, endpoint: ClientEndpoint) -> bytes:
        """``ID`` with the client's address and our session id (Dovecot honours it from
        ``login_trusted_networks`` and logs ``rip=`` / ``session=`` accordingly)."""
        fields = [
            ("name", "imap-gateway"),
            ("x-originating-ip", endpoint.ip),
            ("x-originating-port", str(endpoint.port)),
            ("x-connected-ip", endpoint.local_ip),
            ("x-connected-port", str(endpoint.local_port)),
            ("x-session-id", endpoint.session_id),
        ]
        args = b" ".join(quote(k) + b" " + quote(v) for k, v in fields)
        return self._next_tag() + b" ID (" + args + b")\r\n"

    # -- login ---------------------------------------------------------------------------

    async def login_plain(
        self, *, authzid: str, authcid: str, password: str, timeout: float
    ) -> BackendLoginResult:
        """AUTHENTICATE PLAIN (SASL-IR when the backend offers it). Never raises on a NO.

        A NUL in any part would move the field boundaries the backend sees: refused here
        too (defence in depth; the pre-auth machine already refuses it).
        """
        if "\0" in authzid or "\0" in authcid or "\0" in password:
            return BackendLoginResult(ok=False, line=b"", code="NUL_IN_CREDENTIALS")
        payload = base64.b64encode(
            "\0".join((authzid, authcid, password)).encode("utf-8", "surrogateescape")
        )
        pending, self._pending = self._pending, b""
        id_tag = pending.split(b" ", 1)[0] if pending else None
        try:
            # The body returns or raises: leaving the scope any other way is the deadline.
            with trio.move_on_after(timeout):
                tag = self._next_tag()
                if "SASL-IR" in self.capabilities:
                    await self.stream.send_all(
                        pending + tag + b" AUTHENTICATE PLAIN " + payload + b"\r\n")
                    await self._expect_id_ok(id_tag)
                    return await self._until_tagged(tag)
                await self.stream.send_all(pending + tag + b" AUTHENTICATE PLAIN\r\n")
                await self._expect_id_ok(id_tag)
                first = await self._read_response()
                if first.kind != "continuation":
                    return _result(first, [])
                await self.stream.send_all(payload + b"\r\n")
                return await self._until_tagged(tag)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise BackendUnavailable("closed", f"{self.name}: {exc}") from None
        raise BackendUnavailable("login_timeout", f"{self.name}: no login answer within {timeout}s")

    async def _expect_id_ok(self, id_tag: bytes | None) -> None:
        if id_tag is None:
            return
        outcome = await self._until_tagged(id_tag)
        if not outcome.ok:
            raise BackendUnavailable("protocol", f"backend refused ID: {outcome.line[:120]!r}")

    async def fetch_capabilities(self) -> list[str]:
        """Ask the backend for its capabilities (used when its login OK carried none)."""
        outcome = await self._command(b"CAPABILITY")
        for response in outcome.untagged:
            if response.capabilities is not None:
                return response.capabilities
        return []

    def take_buffered(self) -> bytes:
        """Backend bytes received after the last response read here (after the login's
        tagged OK): the relay must send them to the client before anything else. The relay
        reads the stream from then on: the login dialogue's reader is released."""
        held = self._live_reader().take_buffered()
        self._reader = None
        return held

    def _live_reader(self) -> ResponseReader:
        if self._reader is None:
            raise RuntimeError(f"{self.name}: the relay owns this backend stream now")
        return self._reader

    # -- plumbing --------------------------------------------------------------------------

    def _next_tag(self) -> bytes:
        self._tag_counter += 1
        return b"gw%d" % self._tag_counter

    async def _command(self, command: bytes) -> BackendLoginResult:
        tag = self._next_tag()
        await self.stream.send_all(tag + b" " + command + b"\r\n")
        return await self._until_tagged(tag)

    async def _until_tagged(self, tag: bytes) -> BackendLoginResult:
        untagged: list[ServerResponse] = []
        while True:
            response = await self._read_response()
            if response.kind == "tagged" and response.tag == tag:
                return _result(response, untagged)
            if response.status == "BYE":
                raise BackendUnavailable("closed", f"backend said {response.raw[:120]!r}")
            untagged.append(response)
            if len(untagged) > _MAX_UNTAGGED:
                raise BackendUnavailable("protocol", "too many untagged responses during login")

    async def _read_response(self) -> ServerResponse:
        while True:
            response = self._live_reader().next_response()
            if isinstance(response, ServerResponse):
                return response
            if isinstance(response, FramingError):
                raise BackendUnavailable("protocol", f"backend response: {response.detail}")
            assert isinstance(response, NeedData)
            data = await self.stream.receive_some(65536)
            if not data:
                raise BackendUnavailable("closed", f"{self.name} closed the connection")
            # bytes(): the reader keeps views of what it is fed (typed bytes | bytearray;
            # trio gives bytes, which bytes() returns as is).
            self._live_reader().receive_data(bytes(data))

    async def aclose(self) -> None:
        """Close the backend connection now (cancel-safe). A plain TCP stream closes
        synchronously, without the cancel scope and checkpoint of ``aclose_forcefully``."""
        stream = self.stream
        if type(stream) is PlainSocketStream:
            stream.close()
        elif type(stream) is trio.SocketStream:
            stream.socket.close()
        else:
            await trio.aclose_forcefully(self.stream)


async def _open_tcp(host: str, port: int) -> trio.SocketStream | PlainSocketStream:
    """TCP to the backend. An IP address (the usual backend ``address``) is connected
    directly, as a :class:`~gateway.proxy.rawio.PlainSocketStream`: ``trio.open_tcp_stream``'s
    name resolution and happy-eyeballs nursery (a task per address) and ``trio.socket``'s
    per-call layers cost a login more than the connect itself. A host name goes through
    ``trio.open_tcp_stream``."""
    family = _ip_family(host)
    if family is None:
        return await trio.open_tcp_stream(host, port)
    return await connect_tcp(family, (host, port))


@functools.lru_cache(maxsize=16)
def _ip_family(host: str) -> int | None:
    """The address family of an IP address literal; None for a host name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def _context(ssl_context: ssl.SSLContext | None, tls: str) -> ssl.SSLContext:
    """The context for a TLS backend; the caller builds one whenever ``tls`` is not "none"."""
    if ssl_context is None:
        raise ValueError(f"backend tls = {tls!r} needs an ssl_context")
    return ssl_context


def _result(response: ServerResponse, untagged: list[ServerResponse]) -> BackendLoginResult:
    return BackendLoginResult(ok=response.status == "OK", line=response.raw,
                              code=response.code_word, untagged=untagged)
