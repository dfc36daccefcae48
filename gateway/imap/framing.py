"""Layer 1 of the IMAP core: split a byte stream into line segments and literal bodies.

Rules of this module:

1. It knows only IMAP's framing: a *line segment* ends at LF (normally CRLF), and a segment
   whose text ends with a literal marker -- ``{n}``, ``{n+}``, ``~{n}``, ``~{n+}`` -- is
   followed by exactly ``n`` literal bytes, after which the same command/response goes on
   with another line segment. It knows nothing about commands, tags or sessions.
2. It never raises on input bytes. Every problem is a :class:`FramingError` *value*.
3. It does no I/O, no clock, no logging: bytes in (:meth:`Framer.receive_data`), events out
   (:meth:`Framer.next_event`).
4. Literal bodies are never copied or inspected: they come out as ``memoryview`` slices of
   the very objects that were fed in.

Theory of operation -- costs and bounds (the h11 ``_receivebuffer`` promise):

* Unconsumed input is kept as the list of fed ``bytes`` objects plus a read offset into the
  first one; nothing is ever joined. Memory: the bytes fed and not yet taken.
* A line that is not complete yet is copied once into ``_partial`` (a ``bytearray``). The
  search for LF only ever looks at bytes it has not looked at before, and never more than
  ``max_line`` bytes ahead, so framing costs O(bytes processed) whatever the split of the
  input (feeding one byte at a time does not rescan the buffer), and ``_partial`` never
  holds more than ``max_line`` bytes.
* Literal bytes cost O(1) Python work per fed chunk (one slice), not per byte.

What counts as a literal marker (kept in step with what Dovecot parses, so the gateway and
the backend never disagree about where a command ends -- a disagreement would let a client
smuggle a command past the gateway inside "literal" bytes):

* the marker must be the last thing before the line end;
* ``{`` (or the ``~`` of a binary literal) must start a token: it follows a space or ``(``;
* it must not be inside a quoted string (``"x {5}`` is an unterminated quoted string that
  the backend rejects as a whole line, not a literal);
* on the server side (``role="server"``) tagged responses, ``+`` continuation requests and
  untagged status responses (``* OK/NO/BAD/BYE/PREAUTH``) carry human text, never literals:
  ``a NO Mailbox doesn't exist: x {5}`` is one complete line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final
from typing import Literal as TypingLiteral

__all__ = [
    "NEED_DATA",
    "MAX_LITERAL_NUMBER",
    "Framer",
    "FramingError",
    "Literal",
    "LineSegment",
    "LiteralData",
    "NeedData",
    "FramerEvent",
    "Response",
    "find_literal_marker",
    "parse_response_line",
    "strip_eol",
]

#: RFC 9051 ``number64``: the largest literal size anybody may announce.
MAX_LITERAL_NUMBER: Final = 2**63 - 1

_MARKER_RE: Final = re.compile(rb"(~?)\{([0-9]{1,25})(\+?)\}\Z")
#: A marker is at most ``~{`` + 25 digits + ``+}``; look no further back than this.
_MARKER_TAIL: Final = 30
_STATUS_WORDS: Final = frozenset({b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"})


@dataclass(frozen=True, slots=True)
class Literal:
    """A literal announced at the end of a line segment."""

    size: int
    sync: bool  # ``{n}``: the sender waits for a ``+`` continuation before sending the body
    binary: bool  # ``~{n}`` (RFC 3516)


@dataclass(frozen=True, slots=True)
class LineSegment:
    """One line segment, ``data`` exactly as received including its CRLF (or bare LF).

    ``first`` is True when this segment starts a new command/response, False when it
    continues one after a literal body.
    """

    data: bytes
    literal: Literal | None
    first: bool = True


@dataclass(frozen=True, slots=True)
class LiteralData:
    """A piece of a literal body: a slice of fed data, not a copy. ``remaining`` bytes follow."""

    data: memoryview = field(repr=False)
    remaining: int


@dataclass(frozen=True, slots=True)
class FramingError:
    """The stream cannot be framed further (unless ``recoverable``).

    kinds: ``line_too_long`` (no LF within ``max_line`` bytes), ``literal_too_large`` (above
    ``max_literal``), ``bad_literal`` (a size no one can mean, e.g. 30 digits).

    ``recoverable`` is True only for a too-large *synchronizing* literal: the peer must wait
    for our ``+`` before sending the body, so once we refuse, the next bytes are a new
    command and the framer is back at a line start. ``line`` then holds the refused line
    segment so the caller can find the tag. All other errors are final: every later
    :meth:`Framer.next_event` returns the same error.
    """

    kind: TypingLiteral["line_too_long", "literal_too_large", "bad_literal"]
    detail: str
    recoverable: bool = False
    line: bytes = field(default=b"", repr=False)
    first: bool = True


class NeedData:
    """Sentinel type: the framer needs more bytes before it can return an event."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()

FramerEvent = LineSegment | LiteralData | FramingError | NeedData


def strip_eol(line: bytes) -> bytes:
    """``line`` without its trailing CRLF or LF."""
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


def _inside_quotes(text: bytes, end: int) -> bool:
    """Whether position ``end`` of ``text`` lies inside a quoted string.

    Cost: one ``find`` per quote character and backslash inside quotes -- O(len(text)) in C.
    """
    pos = 0
    while True:
        q = text.find(b'"', pos, end)
        if q < 0:
            return False
        pos = q + 1
        # Inside a quoted string: find the closing quote, skipping backslash escapes.
        while True:
            q = text.find(b'"', pos, end)
            b = text.find(b"\\", pos, end)
            if q < 0 and b < 0:
                return True
            if 0 <= b < q or q < 0:
                pos = b + 2
                if pos > end:
                    return True
                continue
            pos = q + 1
            break


def find_literal_marker(text: bytes) -> tuple[int, int, bool, bool] | None | FramingError:
    """Find the literal marker at the end of ``text`` (a line without its EOL).

    Returns ``(marker_start, size, sync, binary)``, ``None`` when the line announces no
    literal, or a ``bad_literal`` :class:`FramingError` for an absurd size.
    """
    if not text.endswith(b"}"):
        return None
    m = _MARKER_RE.search(text, max(0, len(text) - _MARKER_TAIL))
    if m is None:
        return None
    start = m.start()
    if start == 0 or text[start - 1] not in b" (":
        return None
    if _inside_quotes(text, start):
        return None
    digits = m.group(2)
    size = int(digits)
    if len(digits) > 19 or size > MAX_LITERAL_NUMBER:
        return FramingError("bad_literal", f"literal size {digits[:25].decode()} is not a number64")
    return start, size, m.group(3) != b"+", m.group(1) == b"~"


def _is_text_response(body: bytes) -> bool:
    """A server line whose rest is human text (no literals): tagged, ``+``, ``* <status>``."""
    if body.startswith(b"+"):
        return True
    if not body.startswith(b"* "):
        return True  # tagged: always a status response
    word = body[2:].split(b" ", 1)[0].upper()
    return word in _STATUS_WORDS


class Framer:
    """Incremental IMAP framer with hard size caps. Used in both directions.

    ``max_line``: the longest line segment accepted, terminator included.
    ``max_literal``: the largest literal accepted; ``None`` for no limit (post-auth relay).
    ``role``: ``"client"`` frames what a client sends; ``"server"`` frames backend
    responses (status responses and continuation requests never carry literals).

    Typical use::

        framer.receive_data(chunk)
        while (ev := framer.next_event()) is not NEED_DATA: ...
    """

    def __init__(
        self,
        max_line: int,
        max_literal: int | None = None,
        *,
        role: TypingLiteral["client", "server"] = "client",
    ) -> None:
        if max_line < 3:
            raise ValueError(f"max_line must be at least 3 bytes, got {max_line}")
        self.max_line = max_line
        self.max_literal = max_literal
        self._server = role == "server"
        self._chunks: list[bytes] = []  # unconsumed input; _chunks[0] read from _offset
        self._offset = 0
        self._partial = bytearray()  # start of a line not complete yet (<= max_line bytes)
        self._literal_remaining = 0
        self._literal_pending = False  # a literal was announced and none of it taken yet
        self._first = True
        self._error: FramingError | None = None

    # -- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``. It is kept by reference when it is ``bytes`` (no copy)."""
        if data:
            self._chunks.append(data if isinstance(data, bytes) else bytes(data))

    # -- state the caller may look at --------------------------------------------------------

    @property
    def at_boundary(self) -> bool:
        """True between commands/responses: no partial line, no literal, no continuation."""
        return (
            self._first
            and not self._partial
            and self._literal_remaining == 0
            and self._error is None
        )

    @property
    def in_literal(self) -> bool:
        """True while literal body bytes are expected."""
        return self._literal_remaining > 0

    @property
    def partial_len(self) -> int:
        """Bytes of an unfinished line held in the framer's own buffer."""
        return len(self._partial)

    @property
    def buffered_len(self) -> int:
        """All bytes held and not yet returned as events."""
        n = len(self._partial) - self._offset
        for c in self._chunks:
            n += len(c)
        return n

    def take_buffered(self) -> bytes:
        """Remove and return every byte not yet returned as an event (partial line first).

        Used when the stream changes hands (after login the relay owns it) or must be
        thrown away (bytes pipelined after STARTTLS). The framer is back at a line start.
        """
        parts = [bytes(self._partial)]
        if self._chunks:
            parts.append(self._chunks[0][self._offset :])
            parts.extend(self._chunks[1:])
        self._chunks.clear()
        self._offset = 0
        self._partial.clear()
        self._literal_remaining = 0
        self._literal_pending = False
        self._first = True
        return b"".join(parts)

    def cancel_literal(self) -> None:
        """Forget the synchronizing literal just announced: we refused it, so the peer will
        not send it and its next bytes start a new command.

        Only valid right after a :class:`LineSegment` announcing a literal, before any of
        its body was taken.
        """
        if not self._literal_pending:
            raise RuntimeError("cancel_literal() called but no literal is pending")
        self._literal_remaining = 0
        self._literal_pending = False
        self._first = True

    # -- output ------------------------------------------------------------------------------

    def next_event(self) -> FramerEvent:
        """Return the next event, or ``NEED_DATA``. Never raises."""
        if self._error is not None:
            return self._error
        if self._literal_remaining:
            return self._next_literal_piece()
        return self._next_line()

    def _next_literal_piece(self) -> LiteralData | NeedData:
        if not self._chunks:
            return NEED_DATA
        chunk = self._chunks[0]
        avail = len(chunk) - self._offset
        n = min(avail, self._literal_remaining)
        if self._offset == 0 and n == len(chunk):
            piece = memoryview(chunk)
        else:
            piece = memoryview(chunk)[self._offset : self._offset + n]
        self._consume(n)
        self._literal_remaining -= n
        self._literal_pending = False
        return LiteralData(piece, self._literal_remaining)

    def _consume(self, n: int) -> None:
        self._offset += n
        if self._offset == len(self._chunks[0]):
            del self._chunks[0]
            self._offset = 0

    def _next_line(self) -> FramerEvent:
        while self._chunks:
            chunk = self._chunks[0]
            start = self._offset
            # Never look further than a line of max_line bytes could reach.
            limit = min(len(chunk), start + self.max_line - len(self._partial))
            lf = chunk.find(b"\n", start, limit)
            if lf >= 0:
                if self._partial:
                    self._partial += chunk[start : lf + 1]
                    line = bytes(self._partial)
                    self._partial.clear()
                else:
                    line = chunk[start : lf + 1]
                self._consume(lf + 1 - start)
                return self._line_event(line)
            if limit < len(chunk):
                return self._fail("line_too_long", f"no line end within {self.max_line} bytes")
            self._partial += chunk[start:]
            self._consume(len(chunk) - start)
            if len(self._partial) >= self.max_line:
                return self._fail("line_too_long", f"no line end within {self.max_line} bytes")
        return NEED_DATA

    def _fail(self, kind, detail: str) -> FramingError:  # type: ignore[no-untyped-def]
        self._error = FramingError(kind, detail)
        return self._error

    def _line_event(self, line: bytes) -> FramerEvent:
        first = self._first
        body = strip_eol(line)
        if self._server and first and _is_text_response(body):
            found = None
        else:
            found = find_literal_marker(body)
        if found is None:
            self._first = True
            return LineSegment(line, None, first)
        if isinstance(found, FramingError):
            if self.max_literal is not None:
                found = FramingError("literal_too_large", found.detail)
            self._error = FramingError(found.kind, found.detail, False, line, first)
            return self._error
        _, size, sync, binary = found
        lit = Literal(size, sync, binary)
        if self.max_literal is not None and size > self.max_literal:
            detail = f"literal of {size} bytes is above the limit of {self.max_literal}"
            if sync:
                self._first = True  # refused: the peer will not send the body
                return FramingError("literal_too_large", detail, True, line, first)
            self._error = FramingError("literal_too_large", detail, False, line, first)
            return self._error
        self._first = False
        self._literal_remaining = size
        self._literal_pending = size > 0
        return LineSegment(line, lit, first)


# -- backend responses --------------------------------------------------------------------------

_STATUS_NAMES: Final = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})


@dataclass(frozen=True, slots=True)
class Response:
    """A parsed response line (the shell reads Dovecot's greeting, ID and login results).

    ``kind`` is ``"tagged"``, ``"untagged"``, ``"continuation"``, or ``"invalid"`` for a line
    that is none of these (empty, or a tag with nothing after it).
    ``code`` is the text inside ``[...]`` after the status, e.g. ``"CAPABILITY IMAP4rev1 ..."``.
    For untagged data responses (``* CAPABILITY ...``, ``* 3 EXISTS``) ``status`` is None
    and ``text`` is everything after ``* ``.
    """

    kind: TypingLiteral["tagged", "untagged", "continuation", "invalid"]
    tag: bytes | None
    status: str | None
    code: str | None
    text: str


def _split_code(rest: str) -> tuple[str | None, str]:
    if rest.startswith("["):
        end = rest.find("]")
        if end > 0:
            return rest[1:end], rest[end + 1 :].lstrip(" ")
    return None, rest


def parse_response_line(line: bytes) -> Response:
    """Parse one response line (with or without CRLF). Never raises."""
    text = strip_eol(bytes(line)).decode("utf-8", errors="replace")
    if text.startswith("+"):
        return Response("continuation", None, None, None, text[1:].lstrip(" "))
    head, _, rest = text.partition(" ")
    if not head:
        return Response("invalid", None, None, None, text)
    word, _, after = rest.partition(" ")
    status = word.upper() if word.upper() in _STATUS_NAMES else None
    if head == "*":
        if status is None:
            return Response("untagged", None, None, None, rest)
        code, msg = _split_code(after)
        return Response("untagged", None, status, code, msg)
    tag = head.encode("utf-8", errors="surrogateescape")
    if status is None:
        return Response("invalid", tag, None, None, rest)
    code, msg = _split_code(after)
    return Response("tagged", tag, status, code, msg)
