"""Backend->client response scanning, capability rewriting and response builders.

Rules of this module:

1. The scanner only *watches* the backend stream: it never changes, holds back or copies
   the bytes the shell relays. It reports where response boundaries are (so the relay can
   inject its own replies without cutting a response in two), tagged completions,
   continuation requests (with their stream offsets, so the relay can cut one out) and
   expunges.
2. It never raises on backend bytes; odd lines are simply not counted.
3. Builders never emit a CR or LF from caller text (a text with CRLF would let whoever
   controls the text inject a response line): such characters become spaces.
4. No I/O, no clock, no logging.

Costs and bounds: the scanner is a :class:`~gateway.imap.framing.Framer` in server role.
Python work is O(lines); literal bodies (message data) are skipped by length with one slice
per fed chunk. The framer holds at most ``max_line`` bytes of an unfinished line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from .capabilities import client_capabilities
from .framing import (
    NEED_DATA,
    Framer,
    FramerEvent,
    FramingError,
    LineSegment,
    LiteralData,
    NeedData,
    strip_eol,
)

__all__ = [
    "ScanResult",
    "ResponseScanner",
    "ResponseReader",
    "ServerResponse",
    "parse_response",
    "capability_from_ok",
    "continuation",
    "quote",
    "rewrite_login_ok",
    "tagged",
    "untagged",
    "READY_FOR_LITERAL",
]

#: The gateway's own continuation request for a client's synchronizing literal.
READY_FOR_LITERAL: Final = b"+ Ready for literal data\r\n"

_EXPUNGE_RE: Final = re.compile(rb"\* [0-9]+ EXPUNGE\Z", re.IGNORECASE)
_VANISHED_RE: Final = re.compile(rb"\* VANISHED (?:\(EARLIER\) )?([0-9:,]+)\Z", re.IGNORECASE)
_TAGGED_RE: Final = re.compile(rb"([^\x00-\x20\x7f-\xff(){\"\\%*+]+) (OK|NO|BAD)(?: |\Z)", re.I)
_MAX_SET_RANGES: Final = 10_000
#: Shared empty list for results without continuation requests (never appended to).
_NONE: Final[list[tuple[int, int]]] = []


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What one chunk of backend data contained.

    ``at_line_boundary``: after this chunk the stream is between two responses; only then
    may the shell write its own reply bytes to the client.
    ``expunged``: ``* n EXPUNGE`` responses plus the sizes of ``VANISHED`` UID sets.
    ``completed``: ``(tag, status)`` of each tagged response, status upper-case.
    ``continuations``: ``(start, end)`` stream offsets of each ``+`` continuation request.
    """

    at_line_boundary: bool
    expunged: int = 0
    completed: list[tuple[bytes, str]] = field(default_factory=list)
    continuations: list[tuple[int, int]] = field(default_factory=list)


def _uid_set_size(spec: bytes) -> int:
    total = 0
    for n, part in enumerate(spec.split(b",")):
        if n >= _MAX_SET_RANGES:
            break
        lo, _, hi = part.partition(b":")
        if not lo or not lo.isdigit() or (hi and not hi.isdigit()):
            continue
        total += abs(int(hi) - int(lo)) + 1 if hi else 1
    return total


class ResponseScanner:
    """Find response boundaries in the backend->client stream.

    ``max_line`` bounds one response line; Dovecot's long lines are ``SEARCH``/``ESEARCH``
    results and ``LIST`` output, so the default is generous. A backend line over it means
    the scanner can no longer tell boundaries: ``broken`` becomes True and every later
    result says ``at_line_boundary=False`` (the shell then stops injecting and should end
    the session).
    """

    __slots__ = (
        "_framer",
        "broken",
        "position",
    )

    def __init__(self, *, max_line: int = 16 * 1024 * 1024) -> None:
        self._framer = Framer(max_line, None, role="server")
        self.broken: FramingError | None = None
        #: Stream offset just past the last line segment or literal piece scanned.
        self.position = 0

    @property
    def buffered(self) -> int:
        """Bytes received after :attr:`position` (an unfinished line)."""
        return self._framer.buffered_len

    @property
    def partial_is_first(self) -> bool:
        """The unfinished line, if any, starts a new response (it could be a ``+``)."""
        return self._framer.partial_len > 0 and self._framer.at_line_start

    def receive_data(self, data: bytes) -> ScanResult:
        framer = self._framer
        expunged = 0
        completed: list[tuple[bytes, str]] = []
        continuations: list[tuple[int, int]] = _NONE
        # Whole lines without literals (a tagged OK, untagged status data) are framed at
        # once; anything else goes through the framer's queue.
        segments = framer.whole_lines(data)
        events: Iterable[FramerEvent]
        if segments is None:
            framer.receive_data(data)
            events = iter(framer.next_event, NEED_DATA)
        else:
            events = segments
        for ev in events:
            if ev is NEED_DATA:  # never: iter() stops there (for the type checker)
                break
            if isinstance(ev, FramingError):
                self.broken = ev
                return ScanResult(False, expunged, completed, continuations)
            start = self.position
            self.position += len(ev.data)
            if isinstance(ev, LineSegment) and ev.first and ev.literal is None:
                body = strip_eol(ev.data)
                if body.startswith(b"* "):
                    if _EXPUNGE_RE.match(body):
                        expunged += 1
                    elif (v := _VANISHED_RE.match(body)) is not None:
                        expunged += _uid_set_size(v.group(1))
                elif body.startswith(b"+"):
                    if continuations is _NONE:
                        continuations = []
                    continuations.append((start, self.position))
                elif (t := _TAGGED_RE.match(body)) is not None:
                    completed.append((t.group(1), t.group(2).decode("ascii").upper()))
            # LiteralData and continuation segments need no work.
        return ScanResult(framer.at_boundary, expunged, completed, continuations)


# -- whole responses (the gateway's own backend dialogue) ---------------------------------------

_STATUS_NAMES: Final = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})


@dataclass(frozen=True, slots=True)
class ServerResponse:
    """One complete backend response, as the gateway's own backend dialogue (greeting,
    STARTTLS, ID, AUTHENTICATE, CAPABILITY) reads it.

    ``kind``: ``"tagged"``, ``"untagged"``, ``"continuation"``, or ``"invalid"`` (empty, or a
    tag with no status). ``status`` is the upper-case status word (None for untagged data
    such as ``* CAPABILITY ...``); ``code`` the text inside ``[...]`` after it; ``text``
    the rest of the first line, or for untagged data everything after ``* ``. ``raw`` is
    the whole response as received, literals included.
    """

    kind: Literal["tagged", "untagged", "continuation", "invalid"]
    tag: bytes | None
    status: str | None
    code: str | None
    text: str
    raw: bytes = field(repr=False, default=b"")

    @property
    def code_word(self) -> str | None:
        """The first word of ``code``, upper-case (``AUTHENTICATIONFAILED``), or None."""
        return self.code.split(" ", 1)[0].upper() if self.code else None

    @property
    def capabilities(self) -> list[str] | None:
        """``[CAPABILITY ...]`` of a status response, or the list of ``* CAPABILITY``."""
        if self.code_word == "CAPABILITY" and self.code is not None:
            return self.code.split()[1:]
        if self.kind == "untagged" and self.status is None and self.text.upper().startswith(
                "CAPABILITY "):
            return self.text.split()[1:]
        return None


def _split_code(rest: str) -> tuple[str | None, str]:
    if rest.startswith("["):
        end = rest.find("]")
        if end > 0:
            return rest[1:end], rest[end + 1 :].lstrip(" ")
    return None, rest


def parse_response(first_line: bytes, raw: bytes = b"") -> ServerResponse:
    """Classify a response by its first line (with or without CRLF). Never raises."""
    text = strip_eol(bytes(first_line)).decode("utf-8", errors="replace")
    if text.startswith("+"):
        return ServerResponse("continuation", None, None, None, text[1:].lstrip(" "), raw)
    head, _, rest = text.partition(" ")
    if not head:
        return ServerResponse("invalid", None, None, None, text, raw)
    word, _, after = rest.partition(" ")
    status = word.upper() if word.upper() in _STATUS_NAMES else None
    if head == "*":
        if status is None:
            return ServerResponse("untagged", None, None, None, rest, raw)
        code, msg = _split_code(after)
        return ServerResponse("untagged", None, status, code, msg, raw)
    tag = head.encode("utf-8", errors="surrogateescape")
    if status is None:
        return ServerResponse("invalid", tag, None, None, rest, raw)
    code, msg = _split_code(after)
    return ServerResponse("tagged", tag, status, code, msg, raw)


class ResponseReader:
    """Whole backend responses from a byte stream, literals included (sans-IO).

    Feed bytes with :meth:`receive_data`; :meth:`next_response` returns the next complete
    :class:`ServerResponse`, ``NEED_DATA``, or a :class:`FramingError` (a line over
    ``max_line`` or a response over ``max_response`` bytes: the backend is not one the
    gateway can talk to). Bytes after the last response taken stay here
    (:meth:`take_buffered`) for whoever reads the stream next.
    """

    def __init__(self, *, max_line: int = 65536, max_response: int = 1 << 20) -> None:
        self._framer = Framer(max_line, None, role="server")
        self.max_response = max_response
        self._parts: list[bytes] = []
        self._size = 0
        self._first_line = b""

    def receive_data(self, data: bytes) -> None:
        self._framer.receive_data(data)

    def next_response(self) -> ServerResponse | NeedData | FramingError:
        while True:
            ev = self._framer.next_event()
            if isinstance(ev, NeedData | FramingError):
                return ev
            data = bytes(ev.data)
            self._size += len(data)
            if self._size > self.max_response:
                return FramingError("line_too_long", f"response over {self.max_response} bytes")
            if isinstance(ev, LineSegment) and ev.first:
                self._first_line = data
            self._parts.append(data)
            if isinstance(ev, LiteralData) or ev.literal is not None:
                continue
            raw = b"".join(self._parts)
            self._parts, self._size = [], 0
            return parse_response(self._first_line, raw)

    def take_buffered(self) -> bytes:
        """Bytes received after the last complete response (the framer starts afresh)."""
        held = b"".join(self._parts)
        self._parts, self._size = [], 0
        return held + self._framer.take_buffered()


# -- capabilities -----------------------------------------------------------------------------


def capability_from_ok(line: bytes) -> list[str] | None:
    """The ``[CAPABILITY ...]`` list of an OK line (greeting or tagged), else None."""
    response = parse_response(line)
    if response.status not in ("OK", "PREAUTH"):
        return None
    return response.capabilities


def rewrite_login_ok(line: bytes) -> bytes:
    """Rewrite the ``[CAPABILITY ...]`` code of a *tagged* OK line with
    :func:`~gateway.imap.capabilities.client_capabilities`; any other line is returned
    unchanged."""
    body = strip_eol(line)
    eol = line[len(body) :]
    if body.startswith((b"*", b"+")):
        return line
    caps = capability_from_ok(body)
    if caps is None:
        return line
    tag, status, rest = body.split(b" ", 2)
    end = rest.index(b"]")
    new_code = " ".join(["CAPABILITY", *client_capabilities(caps)]).encode()
    return b"%s %s [%s]%s%s" % (tag, status, new_code, rest[end + 1 :], eol)


# -- builders ---------------------------------------------------------------------------------

_QUOTED_SAFE_RE: Final = re.compile(r'[\x01-\x09\x0b\x0c\x0e-\x7f]*\Z')


def _clean(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def quote(s: str) -> bytes:
    """``s`` as an IMAP string: quoted when it is 7-bit without CR/LF/NUL, else a literal.

    Non-ASCII becomes a literal (UTF-8) because quoted UTF-8 is only legal in IMAP4rev2.
    """
    if _QUOTED_SAFE_RE.match(s):
        return b'"' + s.replace("\\", "\\\\").replace('"', '\\"').encode("ascii") + b'"'
    raw = s.encode("utf-8", errors="surrogateescape")
    return b"{%d}\r\n%s" % (len(raw), raw)


def tagged(tag: bytes, status: str, text: str, code: str | None = None) -> bytes:
    """``<tag> <status> [<code>] <text>\\r\\n``."""
    code_part = f"[{_clean(code)}] " if code else ""
    return bytes(tag) + f" {status} {code_part}{_clean(text)}\r\n".encode()


def untagged(status: str, text: str = "", code: str | None = None) -> bytes:
    """``* <status> [<code>] <text>\\r\\n``; ``status`` may also be a data word (``ID``)."""
    parts = [status]
    if code:
        parts.append(f"[{_clean(code)}]")
    if text:
        parts.append(_clean(text))
    return ("* " + " ".join(_clean(p) for p in parts) + "\r\n").encode()


def continuation(text: str = "") -> bytes:
    """``+ <text>\\r\\n`` (a continuation request)."""
    return f"+ {_clean(text)}\r\n".encode()
