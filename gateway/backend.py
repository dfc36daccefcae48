"""The gateway→backend leg: connect, forward the client's address, log in.

Deadlines (trio's own habit: every one visible here, each with its config name):
``backend.connect_timeout`` covers TCP connect, the backend TLS handshake and the
greeting; ``backend.login_timeout`` covers ID and the AUTHENTICATE exchange. A
backend that accepts and then says nothing therefore costs a client at most
``connect_timeout`` before it gets ``NO [UNAVAILABLE]``.

The password is only ever put into the AUTHENTICATE PLAIN payload on this stream;
it is never logged and never part of an exception message.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass, field

import trio

from gateway.imap.responses import quote
from gateway.proxyproto import proxy_v2_header

_MAX_RESPONSE_LINE = 65536


class BackendUnavailable(Exception):
    """The backend could not be reached or did not behave; ``kind`` is a metric label."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"backend {kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class ClientEndpoint:
    """What the backend is told about the client (ID or PROXY v2)."""

    ip: str
    port: int
    local_ip: str
    local_port: int
    session_id: str
    tls_version: str | None


@dataclass
class LoginOutcome:
    ok: bool
    #: The backend's tagged response line (with CRLF), tag included.
    line: bytes
    #: ``[CODE]`` of a NO, e.g. "AUTHENTICATIONFAILED", "UNAVAILABLE", or None.
    code: str | None = None
    untagged: list[bytes] = field(default_factory=list)


class BackendConnection:
    """One logged-in (or logging-in) connection to the backend IMAP server."""

    def __init__(self, stream: trio.abc.Stream, name: str) -> None:
        self.stream = stream
        self.name = name
        #: Bytes read from the backend beyond the last response consumed here; the relay
        #: must send them to the client before anything else.
        self.buffer = bytearray()
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
            with trio.fail_after(connect_timeout):
                tcp = await trio.open_tcp_stream(host, port)
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
                        stream = trio.SSLStream(tcp, ssl_context, server_hostname=host)
                        await stream.do_handshake()
                    conn = cls(stream, name)
                    greeting = await conn._read_line()
                    if not greeting.startswith(b"* OK"):
                        raise BackendUnavailable("protocol", f"unexpected greeting {greeting[:80]!r}")
                    conn.capabilities = _capabilities_from(greeting)
                    if tls == "starttls":
                        await conn._starttls(ssl_context, host)
                except BaseException:
                    await trio.aclose_forcefully(tcp)
                    raise
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

    async def _starttls(self, ssl_context: ssl.SSLContext | None, host: str) -> None:
        outcome = await self._command(b"STARTTLS")
        if not outcome.ok:
            raise BackendUnavailable("tls", f"backend refused STARTTLS: {outcome.line[:120]!r}")
        if self.buffer:
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
    ) -> LoginOutcome:
        """AUTHENTICATE PLAIN (SASL-IR when the backend offers it). Never raises on a NO.

        A NUL in any part would move the field boundaries the backend sees: refused here
        too (defence in depth; the pre-auth machine already refuses it).
        """
        if "\0" in authzid or "\0" in authcid or "\0" in password:
            return LoginOutcome(ok=False, line=b"", code="NUL_IN_CREDENTIALS")
        payload = base64.b64encode(
            "\0".join((authzid, authcid, password)).encode("utf-8", "surrogateescape")
        )
        pending, self._pending = self._pending, b""
        id_tag = pending.split(b" ", 1)[0] if pending else None
        try:
            with trio.fail_after(timeout):
                tag = self._next_tag()
                if "SASL-IR" in self.capabilities:
                    await self.stream.send_all(
                        pending + tag + b" AUTHENTICATE PLAIN " + payload + b"\r\n")
                    await self._expect_id_ok(id_tag)
                    return await self._until_tagged(tag)
                await self.stream.send_all(pending + tag + b" AUTHENTICATE PLAIN\r\n")
                await self._expect_id_ok(id_tag)
                line = await self._read_line()
                if not line.startswith(b"+"):
                    return _outcome(tag, line, [])
                await self.stream.send_all(payload + b"\r\n")
                return await self._until_tagged(tag)
        except trio.TooSlowError:
            raise BackendUnavailable("login_timeout", f"{self.name}: no login answer within {timeout}s") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise BackendUnavailable("closed", f"{self.name}: {exc}") from None

    async def _expect_id_ok(self, id_tag: bytes | None) -> None:
        if id_tag is None:
            return
        outcome = await self._until_tagged(id_tag)
        if not outcome.ok:
            raise BackendUnavailable("protocol", f"backend refused ID: {outcome.line[:120]!r}")

    async def fetch_capabilities(self) -> list[str]:
        """Ask the backend for its capabilities (used when its login OK carried none)."""
        outcome = await self._command(b"CAPABILITY")
        for line in outcome.untagged:
            if line.upper().startswith(b"* CAPABILITY "):
                return line[len(b"* CAPABILITY "):].decode("ascii", "replace").split()
        return []

    # -- plumbing --------------------------------------------------------------------------

    def _next_tag(self) -> bytes:
        self._tag_counter += 1
        return b"gw%d" % self._tag_counter

    async def _command(self, command: bytes) -> LoginOutcome:
        tag = self._next_tag()
        await self.stream.send_all(tag + b" " + command + b"\r\n")
        return await self._until_tagged(tag)

    async def _until_tagged(self, tag: bytes) -> LoginOutcome:
        untagged: list[bytes] = []
        while True:
            line = await self._read_line()
            if line.startswith(tag + b" "):
                return _outcome(tag, line, untagged)
            if line.startswith(b"* BYE"):
                raise BackendUnavailable("closed", f"backend said {line[:120]!r}")
            untagged.append(line)
            if len(untagged) > 100:
                raise BackendUnavailable("protocol", "too many untagged responses during login")

    async def _read_line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[: end + 2])
                del self.buffer[: end + 2]
                return line
            if len(self.buffer) > _MAX_RESPONSE_LINE:
                raise BackendUnavailable("protocol", "backend response line too long")
            data = await self.stream.receive_some(65536)
            if not data:
                raise BackendUnavailable("closed", f"{self.name} closed the connection")
            self.buffer += data

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


def _capabilities_from(line: bytes) -> list[str]:
    start = line.find(b"[CAPABILITY ")
    if start < 0:
        return []
    end = line.find(b"]", start)
    return line[start + len(b"[CAPABILITY "): end].decode("ascii", "replace").split()


def _outcome(tag: bytes, line: bytes, untagged: list[bytes]) -> LoginOutcome:
    status, _, after = line[len(tag) + 1:].partition(b" ")
    ok = status.upper() == b"OK"
    code = None
    if after.startswith(b"["):
        end = after.find(b"]")
        if end > 0:
            code = after[1:end].decode("ascii", "replace").split(" ", 1)[0].upper()
    return LoginOutcome(ok=ok, line=line, code=code, untagged=untagged)
