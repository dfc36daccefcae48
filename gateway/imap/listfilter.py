"""Backend→client filter for mailbox-scoped credentials (``mailboxes=INBOX,Archive/*``).

Rules of this module:

1. It only ever *removes* whole untagged ``LIST``/``LSUB``/``XLIST``/``STATUS``
   responses naming a mailbox the credential may not see; every other byte passes
   unchanged and in order. No I/O, no clock, never raises on backend bytes.
2. It is the slow path, used only by scoped sessions: responses are reassembled
   through a ``Framer``. A candidate response (one of the four above) is held until it
   is complete, bounded by ``MAX_HELD``; one larger than that is dropped (the safe
   side: a mailbox name is never that long). Any other response streams through as it
   arrives, literal bodies included, so a large FETCH is not buffered.
3. A name that cannot be read (malformed line) is treated as not permitted.
"""

from __future__ import annotations

from collections.abc import Callable

from .framing import (
    NEED_DATA,
    Framer,
    FramingError,
    LineSegment,
    LiteralData,
    find_literal_marker,
    strip_eol,
)
from .tokens import ListTok, ParseError, as_astring, tokenize

MAX_HELD = 65536
_CANDIDATES = {b"LIST": 2, b"LSUB": 2, b"XLIST": 2, b"STATUS": 0}


class ListResponseFilter:
    def __init__(self, allowed: Callable[[str], bool], *, max_line: int = 16 * 1024 * 1024) -> None:
        self._allowed = allowed
        self._framer = Framer(max_line, role="server")
        self._mode = "pass"  # "pass" | "hold" | "drop" for the current response
        self._held: list[bytes] = []
        self._parts: list[tuple[bytes, bytes | None]] = []
        self._held_size = 0
        self._literal: list[bytes] = []
        self._kind = b""
        self.broken = False

    @property
    def at_line_boundary(self) -> bool:
        return not self.broken and self._framer.at_boundary

    def receive_data(self, data: bytes) -> bytes:
        """Feed backend bytes; return the bytes to send to the client now."""
        if self.broken:
            return data
        out: list[bytes] = []
        self._framer.receive_data(data)
        while True:
            ev = self._framer.next_event()
            if ev is NEED_DATA:
                break
            if isinstance(ev, FramingError):
                # Not IMAP any more: stop filtering rather than corrupt; drop what is held.
                self.broken = True
                self._held.clear()
                out.append(self._framer.take_buffered())
                break
            if isinstance(ev, LiteralData):
                self._on_literal(ev, out)
            else:
                self._on_segment(ev, out)
        return b"".join(out)

    def _on_literal(self, ev: LiteralData, out: list[bytes]) -> None:
        chunk = bytes(ev.data)
        if self._mode == "pass":
            out.append(chunk)
            return
        if self._mode == "hold":
            self._held.append(chunk)
            self._literal.append(chunk)
            self._held_size += len(chunk)
            if self._held_size > MAX_HELD:
                self._mode, self._held, self._literal = "drop", [], []
        if ev.remaining == 0 and self._mode == "hold":
            self._parts[-1] = (self._parts[-1][0], b"".join(self._literal))
            self._literal = []

    def _on_segment(self, seg: LineSegment, out: list[bytes]) -> None:
        if seg.first:
            self._mode = "pass"
            if seg.data.startswith(b"* "):
                word = seg.data[2:].split(b" ", 1)[0].upper()
                if word in _CANDIDATES:
                    self._mode = "hold"
                    self._held, self._parts, self._held_size, self._literal = [], [], 0, []
                    self._kind = word
        if self._mode == "pass":
            out.append(seg.data)
            return
        if self._mode == "hold":
            self._held.append(seg.data)
            self._held_size += len(seg.data)
            text = strip_eol(seg.data)
            if seg.literal is not None:
                found = find_literal_marker(text)
                if isinstance(found, tuple):
                    text = text[: found[0]]
                self._parts.append((text, b""))
            else:
                self._parts.append((text, None))
            if self._held_size > MAX_HELD:
                self._mode, self._held = "drop", []
        if seg.literal is None:  # the response is complete
            if self._mode == "hold" and self._permitted():
                out.append(b"".join(self._held))
            self._mode, self._held, self._parts = "pass", [], []

    def _permitted(self) -> bool:
        start = 2 + len(self._kind)
        args = tokenize(self._parts, start=start, max_tokens=_CANDIDATES[self._kind] + 1)
        if isinstance(args, ParseError):
            return False
        index = _CANDIDATES[self._kind]
        if self._kind != b"STATUS" and args and not isinstance(args[0], ListTok):
            return False
        if len(args) <= index:
            return False
        raw = as_astring(args[index])
        if raw is None:
            return False
        return self._allowed(raw.decode("utf-8", "surrogateescape"))
