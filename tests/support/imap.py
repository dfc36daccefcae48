"""IMAP clients for the e2e suite: imaplib wrappers and a raw line client.

imaplib is what a Python user would use, so "works with imaplib" is a user-relevant claim;
the raw ``LineClient`` exists for what imaplib hides: exact bytes, pipelining (the STARTTLS
injection test), literals sent by hand, IDLE, and noticing that the server closed.
"""

from __future__ import annotations

import base64
import imaplib
import re
import socket
import ssl
import struct
import time
from typing import Protocol

CRLF = b"\r\n"
_LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}\r\n\Z")

# imaplib (3.11) has no ID command; registering it lets `_simple_command("ID", ...)` work.
imaplib.Commands.setdefault("ID", ("NONAUTH", "AUTH", "SELECTED"))


def make_message(i: int, size: int, tag: str = "test") -> bytes:
    """A plain-text RFC 5322 message with CRLF line ends, exactly ``size`` bytes when
    ``size`` is at least the header length; deterministic in (i, size, tag), so a test can
    rebuild what ``DovecotRig.populate`` stored."""
    hdr = (f"From: Test Sender <sender{i % 97}@example.org>\r\n"
           f"To: alice@example.org\r\n"
           f"Subject: {tag} message {i}\r\n"
           f"Date: Mon, 02 Jan 2023 {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d} +0000\r\n"
           f"Message-ID: <{tag}.{i}@rig.example>\r\n"
           f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    line = (f"line of message {i} " + "abcdefghijklmnopqrstuvwxyz0123456789" * 2)[:74].encode() + CRLF
    body = bytearray()
    while len(hdr) + len(body) + len(line) <= size:
        body += line
    pad = size - len(hdr) - len(body)
    if pad >= 2:
        body += b"x" * (pad - 2) + CRLF
    return hdr + bytes(body)


def sasl_plain(user: str, password: str, authzid: str = "") -> str:
    """Base64 of the SASL PLAIN message ``authzid NUL user NUL password`` (RFC 4616)."""
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


class HasEndpoint(Protocol):
    """What the helpers need from a gateway (``GatewayProcess``) or any TLS endpoint."""

    host: str
    implicit_port: int
    starttls_port: int

    def client_ssl_context(self) -> ssl.SSLContext: ...


def proxy_v2_header(src: str, sport: int, dst: str, dport: int, *, ssl_tlv: bool = False) -> bytes:
    """PROXY protocol v2 header (PROXY command, TCP/IPv4), optionally with the PP2_TYPE_SSL
    TLV (client connected over TLS). Used by tests as a control: what Dovecot does with a
    header *without* the TLV."""
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    if ssl_tlv:
        sub = struct.pack("!BH", 0x21, 7) + b"TLSv1.3"
        value = struct.pack("!BI", 0x01, 0) + sub
        body += struct.pack("!BH", 0x20, len(value)) + value
    return b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", 0x21, 0x11, len(body)) + body


# ---- imaplib ------------------------------------------------------------------------------

class BoundIMAP4(imaplib.IMAP4):
    """imaplib.IMAP4 whose socket is bound to ``source`` (e.g. "127.0.0.2") before connect."""

    def __init__(self, host: str, port: int, *, source: str | None = None,
                 timeout: float | None = 10.0):
        self._source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        src = (self._source, 0) if self._source else None
        return socket.create_connection((self.host, self.port), timeout, source_address=src)


class BoundIMAP4_SSL(imaplib.IMAP4_SSL):
    """imaplib.IMAP4_SSL bound to ``source``; IMAP4_SSL calls IMAP4._create_socket directly,
    so the bind has to be redone here rather than in a mixin."""

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext,
                 source: str | None = None, timeout: float | None = 10.0):
        self._source = source
        super().__init__(host, port, ssl_context=ssl_context, timeout=timeout)

    def _create_socket(self, timeout):
        src = (self._source, 0) if self._source else None
        sock = socket.create_connection((self.host, self.port), timeout, source_address=src)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def imaps(gw: HasEndpoint, *, source: str | None = None,
          ssl_context: ssl.SSLContext | None = None, timeout: float = 10.0) -> BoundIMAP4_SSL:
    """imaplib client connected to the gateway's implicit-TLS listener, verifying the
    gateway certificate against the test CA."""
    return BoundIMAP4_SSL(gw.host, gw.implicit_port, source=source, timeout=timeout,
                          ssl_context=ssl_context or gw.client_ssl_context())


def starttls_client(gw: HasEndpoint, *, source: str | None = None, tls: bool = True,
                    ssl_context: ssl.SSLContext | None = None,
                    timeout: float = 10.0) -> BoundIMAP4:
    """imaplib client on the gateway's STARTTLS listener; with ``tls=True`` (default) it has
    already run STARTTLS with certificate verification, else it is still in plaintext."""
    m = BoundIMAP4(gw.host, gw.starttls_port, source=source, timeout=timeout)
    if tls:
        m.starttls(ssl_context or gw.client_ssl_context())
    return m


def imap_id(m: imaplib.IMAP4, fields: dict[str, str] | None = None) -> tuple[str, list]:
    """Send RFC 2971 ID with imaplib (which lacks it); returns (typ, untagged ID data)."""
    if fields:
        arg = "(" + " ".join(f'"{k}" "{v}"' for k, v in fields.items()) + ")"
    else:
        arg = "NIL"
    typ, _ = m._simple_command("ID", arg)
    return typ, m._untagged_response(typ, [None], "ID")[1]


def capabilities(m: imaplib.IMAP4) -> set[str]:
    """The server's CAPABILITY list, asked afresh (not imaplib's cached greeting caps)."""
    typ, data = m.capability()
    assert typ == "OK", (typ, data)
    return set(data[-1].decode().upper().split())


# ---- raw line client ----------------------------------------------------------------------

class ServerClosed(ConnectionError):
    """The server closed the connection (EOF) while we expected more data."""


class LineClient:
    """Minimal IMAP client on a raw (optionally TLS) socket.

    ``read_response`` returns one complete server response: a line plus any literals it
    announces, so a literal that happens to contain "a OK" cannot end a wait early.
    Every read has a timeout (``TimeoutError``); EOF raises ``ServerClosed`` carrying the
    bytes that arrived before it.
    """

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, source: str | None = None,
                 timeout: float = 5.0, read_greeting: bool = True):
        self.host = host
        self.timeout = timeout
        src = (source, 0) if source else None
        self.sock: socket.socket = socket.create_connection((host, port), timeout,
                                                            source_address=src)
        self.local_address = self.sock.getsockname()
        if ssl_context is not None:
            self.sock = ssl_context.wrap_socket(self.sock, server_hostname=server_hostname or host)
        self.buf = bytearray()
        self.greeting = self.read_line() if read_greeting else b""

    @classmethod
    def implicit(cls, gw: HasEndpoint, **kw) -> LineClient:
        """Connected to the gateway's implicit-TLS port, certificate verified."""
        kw.setdefault("ssl_context", gw.client_ssl_context())
        return cls(gw.host, gw.implicit_port, **kw)

    @classmethod
    def plain(cls, gw: HasEndpoint, **kw) -> LineClient:
        """Connected (no TLS yet) to the gateway's STARTTLS port."""
        return cls(gw.host, gw.starttls_port, **kw)

    @property
    def local_port(self) -> int:
        return self.local_address[1]

    # -- bytes --

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no data from server; buffered so far: {bytes(self.buf)[-300:]!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError(
                f"no data from server; buffered so far: {bytes(self.buf)[-300:]!r}") from None
        except ConnectionResetError as e:
            raise ServerClosed(f"connection reset; buffered: {bytes(self.buf)[-300:]!r}") from e
        if not chunk:
            raise ServerClosed(f"server closed the connection; buffered: {bytes(self.buf)[-300:]!r}")
        self.buf += chunk

    def read_exact(self, n: int, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < n:
            self._fill(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_line(self, timeout: float | None = None) -> bytes:
        """One line including its CRLF."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            i = self.buf.find(CRLF)
            if i >= 0:
                line = bytes(self.buf[: i + 2])
                del self.buf[: i + 2]
                return line
            self._fill(deadline)

    def read_response(self, timeout: float | None = None) -> bytes:
        """One response: a line and, for each ``{n}`` at a line end, n literal bytes and the
        line that follows."""
        t = timeout or self.timeout
        out = self.read_line(t)
        while (m := _LITERAL_AT_END.search(out)) is not None:
            out += self.read_exact(int(m.group(1)), t)
            out += self.read_line(t)
        return out

    def read_until_tagged(self, tag: str, timeout: float | None = None) -> list[bytes]:
        """Responses up to and including the one tagged ``tag`` (last element)."""
        prefix = tag.encode() + b" "
        out = []
        while True:
            r = self.read_response(timeout)
            out.append(r)
            if r.startswith(prefix):
                return out

    def command(self, tag: str, text: str | bytes, timeout: float | None = None) -> list[bytes]:
        """Send ``tag text CRLF`` and return the responses up to the tagged one."""
        if isinstance(text, str):
            text = text.encode()
        self.send(tag.encode() + b" " + text + CRLF)
        return self.read_until_tagged(tag, timeout)

    def expect_close(self, timeout: float | None = None) -> bytes:
        """Read until the server closes; returns everything received (buffer included).
        Raises TimeoutError if the connection stays open."""
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            while True:
                self._fill(deadline)
        except ServerClosed:
            pass
        except ssl.SSLError:
            pass  # e.g. the server closed without close_notify: still a close
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def starttls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None) -> None:
        """Wrap the socket in TLS after the server's OK to STARTTLS. Refuses to run with
        unread plaintext in the buffer: such bytes would be exactly the injection a gateway
        must not produce, so the caller has to look at them first."""
        if self.buf:
            raise AssertionError(f"plaintext bytes left before TLS: {bytes(self.buf)!r}")
        self.sock.settimeout(self.timeout)
        self.sock = ssl_context.wrap_socket(self.sock, server_hostname=server_hostname or self.host)

    def abort(self) -> None:
        """Vanish: close with RST (SO_LINGER 0), no LOGOUT. CPython's SSLSocket.close() does
        not send a TLS close_notify, so this looks like a client that lost its network."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tagged_status(resp: bytes) -> bytes:
    """'OK'/'NO'/'BAD' of a tagged response line."""
    return resp.split(b" ", 2)[1].upper()
