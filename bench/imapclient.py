"""A small blocking IMAP client for the benchmarks: one socket, optional TLS, buffered reads.

Why blocking sockets and threads rather than an event loop: the client must not be the
bottleneck, and with 2 cores it gets one. CPython's ssl module runs the handshake and record
decryption in OpenSSL with the GIL released, and BufferedReader.readline()/read(n) scan and copy
in C, so the Python work per login or per literal is a handful of calls. (An asyncio SSL transport
adds a memory-BIO copy and several callbacks per record.)

Reading rules: a response line ending in ``{n}`` is followed by an n-byte literal, read with one
``read(n)``; the command is complete when a line starts with its tag. That is all the IMAP the
benchmark needs, and it never searches message data for the tag, so message content cannot
confuse it.
"""

from __future__ import annotations

import re
import socket
import ssl
from dataclasses import dataclass, field

READ_BUFFER = 256 * 1024
_LITERAL = re.compile(rb"\{(\d+)\}\r\n\Z")


class ImapError(Exception):
    """The server answered something the benchmark did not expect (message says what and where)."""


@dataclass
class Credentials:
    user: str
    password: str = field(repr=False)


def client_context(cafile: str) -> ssl.SSLContext:
    """TLS client context that verifies the benchmark's self-signed certificate, as a mail client would."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Conn:
    """One IMAP connection. Not thread-safe: one thread owns it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb", buffering=READ_BUFFER)
        self.received = 0  # bytes read from the server since the last reset, literals included
        self.literals = 0  # literals read since the last reset (one per message in FETCH BODY[])

    @classmethod
    def open(cls, addr: tuple[str, int], ctx: ssl.SSLContext | None, timeout: float = 30.0) -> Conn:
        """Connect, do the TLS handshake (if ctx) and read the greeting; raise ImapError unless ``* OK``."""
        raw = socket.create_connection(addr, timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock = ctx.wrap_socket(raw, server_hostname="localhost") if ctx else raw
        except BaseException:
            raw.close()
            raise
        conn = cls(sock)
        try:
            greeting = conn.rfile.readline()
            if not greeting.startswith(b"* OK"):
                raise ImapError(
                    f"{addr[0]}:{addr[1]}: greeting {greeting[:120]!r}, expected '* OK'"
                )
        except BaseException:
            conn.close()
            raise
        return conn

    def tls_info(self) -> dict[str, str]:
        if isinstance(self.sock, ssl.SSLSocket):
            cipher = self.sock.cipher()
            return {"version": self.sock.version() or "", "cipher": cipher[0] if cipher else ""}
        return {"version": "none", "cipher": ""}

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, tag: bytes) -> tuple[bytes, list[bytes]]:
        """Read up to the tagged line; return it and the untagged lines (literals skipped, counted)."""
        prefix = tag + b" "
        untagged = []
        while True:
            line = self.rfile.readline()
            if not line:
                raise ImapError(f"connection closed while waiting for {tag.decode()}")
            self.received += len(line)
            m = _LITERAL.search(line)
            while m:
                n = int(m.group(1))
                data = self.rfile.read(n)
                if len(data) != n:
                    raise ImapError(f"connection closed inside a {n}-byte literal")
                self.received += n
                self.literals += 1
                line = self.rfile.readline()  # rest of the response after the literal
                self.received += len(line)
                m = _LITERAL.search(line)
            if line.startswith(prefix):
                return line, untagged
            untagged.append(line)

    def command(self, tag: bytes, text: bytes, expect_ok: bool = True) -> tuple[bytes, list[bytes]]:
        """Send ``tag text`` and read its response; raise ImapError if it is not OK (when expected)."""
        self.send(tag + b" " + text + b"\r\n")
        tagged, untagged = self.response(tag)
        if expect_ok and not tagged.startswith(tag + b" OK"):
            verb = text.split(b" ", 1)[0].decode()
            raise ImapError(f"{verb} answered {tagged.strip()[:200]!r}")
        return tagged, untagged

    def login(self, creds: Credentials) -> None:
        # quoted strings: the benchmark's credentials contain no quotes or backslashes
        self.command(b"l", f'LOGIN "{creds.user}" "{creds.password}"'.encode())

    def logout(self) -> None:
        self.command(b"z", b"LOGOUT")
        self.close()

    def close(self) -> None:
        try:
            self.rfile.close()
        finally:
            self.sock.close()
