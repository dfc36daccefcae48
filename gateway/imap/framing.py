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
  holds more than ``max_line`` bytes (the ``long_lines`` limit for a line that matches its
  pattern; raising the limit rescans that line's bytes once).
* Literal bytes cost O(1) Python work per fed chunk (one slice), not per byte.

What counts as a literal marker (the same rule as Dovecot's parser, lib-imap/imap-parser.c,
so the gateway and the backend never disagree about where a command ends -- a disagreement
would let a client smuggle a command past the gateway inside "literal" bytes):

* the marker must be the last thing before the line end (Dovecot refuses anything between
  ``}`` and CRLF and then has no literal either);
* ``{`` (or the ``~`` of a binary literal) must start an argument: it follows a space, ``(``,
  ``)`` or the closing quote of a string, or it starts a segment that continues a command
  after a literal body. Dovecot reads a literal in each of these places;
* it must not be inside a quoted string (``"x {5}`` is an unterminated quoted string that
  the backend rejects as a whole line, not a literal);
* the size is digits with an optional ``+``; leading zeros are allowed, as Dovecot allows them.

On the client side (``role="client"``) a ``{...}`` at the end of a line that breaks one of
these rules (``{1a}``, ``x{5}``, a size of more than 19 significant digits) is a
:class:`FramingError`, never a line without a literal: the framer cannot know whether the
backend would take it for one, so it refuses to guess.

On the server side (``role="server"``) tagged responses, ``+`` continuation requests and
untagged status responses (``* OK/NO/BAD/BYE/PREAUTH``) carry human text, never literals:
``a NO Mailbox doesn't exist: x {5}`` is one complete line. Other server lines follow the
rules above, but an odd ``{...}`` is just text there (the backend writes well-formed
responses; only a too-large size is an error).
"""

from __future__ import annotations

import enum
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
    "find_literal_marker",
    "strip_eol",
]

#: RFC 9051 ``number64``: the largest literal size anybody may announce.
MAX_LITERAL_NUMBER: Final = 2**63 - 1

#: How much of a line's start ``long_lines`` patterns see.
_HEAD_BYTES: Final = 64
_SIZE_RE: Final = re.compile(rb"0*([0-9]+)(\+?)")
#: Bytes after which a literal marker's ``{`` starts an argument (besides a segment start).
_ARG_START_AFTER: Final = frozenset(b' ()"')
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
    continues one after a literal body. ``text_end`` is where the segment's text ends:
    the start of its literal marker, or of its line end when it announces no literal, so
    ``data[:text_end]`` is what a tokenizer reads.
    """

    data: bytes
    literal: Literal | None
    first: bool = True
    text_end: int = field(default=-1, compare=False)

    @property
    def text(self) -> bytes:
        """The segment without its line end and without its literal marker."""
        return self.data[: self.text_end] if self.text_end >= 0 else strip_eol(self.data)


@dataclass(frozen=True, slots=True)
class LiteralData:
    """A piece of a literal body: a slice of fed data, not a copy. ``remaining`` bytes follow."""

    data: memoryview = field(repr=False)
    remaining: int


_ErrorKind = TypingLiteral["line_too_long", "literal_too_large", "bad_literal"]


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

    kind: _ErrorKind
    detail: str
    recoverable: bool = False
    line: bytes = field(default=b"", repr=False)
    first: bool = True
    #: For a refused literal: where its marker starts in ``line`` (see LineSegment.text_end).
    text_end: int = -1


class NeedData(enum.Enum):
    """Sentinel type: the framer needs more bytes before it can return an event.

    A one-member enum, so ``ev is NEED_DATA`` narrows ``ev`` to the other event types for a
    type checker, and the sentinel stays a singleton through copy and pickle.
    """

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA

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


def find_literal_marker(
    text: bytes, *, continuation: bool = False, strict: bool = True
) -> tuple[int, int, bool, bool] | None | FramingError:
    """Find the literal marker at the end of ``text`` (a line segment without its EOL).

    Returns ``(marker_start, size, sync, binary)``, ``None`` when the segment announces no
    literal, or a ``bad_literal`` :class:`FramingError`. ``continuation``: the segment
    follows a literal body, so a marker may start it. ``strict`` (client side): a ``{...}``
    that breaks the rules of this module is an error; otherwise it is just text.

    Cost: a few ``rfind``/``find`` calls over ``text`` (in C) when it ends with ``}``.
    """
    if not text.endswith(b"}"):
        return None
    brace = text.rfind(b"{")
    if brace < 0 or _inside_quotes(text, brace):
        return None
    binary = brace > 0 and text[brace - 1] == 0x7E  # "~"
    start = brace - 1 if binary else brace
    at_arg_start = text[start - 1] in _ARG_START_AFTER if start > 0 else continuation
    m = _SIZE_RE.fullmatch(text, brace + 1, len(text) - 1)
    if m is None or not at_arg_start:
        if not strict:
            return None
        if m is None:
            return FramingError("bad_literal", "invalid literal size")
        return FramingError("bad_literal", "literal marker does not start an argument")
    digits = m.group(1)
    if len(digits) > 19 or int(digits) > MAX_LITERAL_NUMBER:
        return FramingError("bad_literal", "literal size is not a number64")
    return start, int(digits), m.group(2) != b"+", binary


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

    ``max_line``: the longest line segment accepted, terminator included (``long_lines``
    raises it for the first segment of the commands it matches).
    ``max_literal``: the largest literal accepted; ``None`` for no limit (post-auth relay).
    ``role``: ``"client"`` frames what a client sends; ``"server"`` frames backend
    responses (status responses and continuation requests never carry literals).

    Typical use::

        framer.receive_data(chunk)
        while (ev := framer.next_event()) is not NEED_DATA: ...
    """

    __slots__ = (
        "max_line",
        "max_literal",
        "long_lines",
        "_line_limit",
        "_server",
        "_chunks",
        "_offset",
        "_partial",
        "_literal_remaining",
        "_literal_pending",
        "_first",
        "_error",
    )

    def __init__(
        self,
        max_line: int,
        max_literal: int | None = None,
        *,
        role: TypingLiteral["client", "server"] = "client",
        long_lines: tuple[re.Pattern[bytes], int] | None = None,
    ) -> None:
        if max_line < 3:
            raise ValueError(f"max_line must be at least 3 bytes, got {max_line}")
        self.max_line = max_line
        #: ``(pattern, limit)``: a command line whose start matches ``pattern`` may be up to
        #: ``limit`` bytes long instead of ``max_line`` (a compliant ID line is ~32-64 KB).
        self.long_lines = long_lines
        self._line_limit = max_line
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
    def at_line_start(self) -> bool:
        """True when the next line segment starts a new command/response (no literal of
        the current one is outstanding)."""
        return self._first and self._literal_remaining == 0

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
        self._line_limit = self.max_line
        return b"".join(parts)

    def cancel_literal(self) -> bool:
        """Forget the synchronizing literal just announced: we refused it, so the peer will
        not send it and its next bytes start a new command.

        Meaningful only right after a :class:`LineSegment` announcing a literal, before any
        of its body (or, for ``{0}``, the line after it) was taken. Returns False and
        changes nothing otherwise: what the client sends next is then framed as usual.
        """
        if not self._literal_pending:
            return False
        self._literal_remaining = 0
        self._literal_pending = False
        self._first = True
        return True

    def whole_lines(self, data: bytes) -> list[LineSegment] | None:
        """Fast path for the relay: frame ``data`` at once when the framer holds nothing,
        is at the start of a command/response, and ``data`` is whole lines that announce no
        literal. Returns their events -- exactly what :meth:`receive_data` and
        :meth:`next_event` would return, the framer's state is the same afterwards -- or
        None, changing nothing, when any condition fails (the caller then takes the general
        path).

        Cost: one ``find``/``split`` pass over ``data`` (in C); a single line is returned as
        the very object passed in.
        """
        if (not data or self._chunks or self._partial or self._literal_remaining
                or not self._first or self._error is not None or data[-1] != 0x0A):
            return None
        limit = self._line_limit
        if data.find(b"\n") == len(data) - 1:
            if len(data) > limit:
                return None
            body = strip_eol(data)
            if body.endswith(b"}"):  # a literal marker can only end a line (see above)
                return None
            self._literal_pending = False
            return [LineSegment(data, None, True, len(body))]
        if b"}\n" in data or b"}\r\n" in data:
            return None
        lines = data.split(b"\n")
        del lines[-1]  # the b"" after the last line end
        out = []
        for text in lines:
            if len(text) >= limit:  # the line with its LF is longer than the limit
                return None
            body = text[:-1] if text.endswith(b"\r") else text
            out.append(LineSegment(text + b"\n", None, True, len(body)))
        self._literal_pending = False
        return out

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
            # Never look further than a line of the current limit could reach.
            limit = min(len(chunk), start + self._line_limit - len(self._partial))
            lf = chunk.find(b"\n", start, limit)
            if lf >= 0:
                if self._partial:
                    self._partial += chunk[start : lf + 1]
                    line = bytes(self._partial)
                    self._partial.clear()
                else:
                    line = chunk[start : lf + 1]
                self._consume(lf + 1 - start)
                self._line_limit = self.max_line
                return self._line_event(line)
            if limit < len(chunk):
                if self._extend_line_limit(chunk[start : start + _HEAD_BYTES]):
                    continue
                return self._too_long()
            self._partial += chunk[start:]
            self._consume(len(chunk) - start)
            if len(self._partial) >= self._line_limit:
                if self._extend_line_limit(b""):
                    continue
                return self._too_long()
        return NEED_DATA

    def _extend_line_limit(self, more: bytes) -> bool:
        """Whether the line being read may grow to ``long_lines``' limit (once per line)."""
        if self.long_lines is None or self._line_limit != self.max_line or not self._first:
            return False
        pattern, limit = self.long_lines
        head = bytes(self._partial[:_HEAD_BYTES]) + more
        if limit > self.max_line and pattern.match(head):
            self._line_limit = limit
            return True
        return False

    def _too_long(self) -> FramingError:
        return self._fail("line_too_long", f"no line end within {self._line_limit} bytes")

    def _fail(self, kind: _ErrorKind, detail: str) -> FramingError:
        self._error = FramingError(kind, detail)
        return self._error

    def _line_event(self, line: bytes) -> FramerEvent:
        first = self._first
        self._literal_pending = False
        body = strip_eol(line)
        if self._server and first and _is_text_response(body):
            found = None
        else:
            found = find_literal_marker(body, continuation=not first, strict=not self._server)
        if found is None:
            self._first = True
            return LineSegment(line, None, first, len(body))
        if isinstance(found, FramingError):
            self._error = FramingError(found.kind, found.detail, False, line, first)
            return self._error
        start, size, sync, binary = found
        lit = Literal(size, sync, binary)
        if self.max_literal is not None and size > self.max_literal:
            detail = f"literal of {size} bytes is above the limit of {self.max_literal}"
            if sync:
                self._first = True  # refused: the peer will not send the body
                return FramingError("literal_too_large", detail, True, line, first, start)
            self._error = FramingError("literal_too_large", detail, False, line, first)
            return self._error
        self._first = False
        self._literal_remaining = size
        self._literal_pending = True
        return LineSegment(line, lit, first, start)
