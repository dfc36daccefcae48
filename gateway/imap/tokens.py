"""Layer 2 of the IMAP core: a strict tokenizer for client commands.

Rules of this module:

1. It knows IMAP's lexical grammar (RFC 9051 §9): tags, atoms, quoted strings, literals,
   NIL, parenthesised lists. It does not know which command takes which arguments.
2. Errors are values (:class:`ParseError`, whose ``message`` is fit for a ``BAD`` reply);
   no exception escapes on any input.
3. Strict on purpose: one space between tokens, no trailing space, quoted strings only with
   ``\\"`` and ``\\\\`` escapes, no NUL/CR/LF, 8-bit only as valid UTF-8 inside quoted
   strings, never in atoms. Whatever the gateway lets through must mean the same thing to
   the backend; refusing odd input is how we make sure of that.
4. No I/O, no clock, no logging; it never prints a token's content (may be a password).

Cost: one pass over the command text with compiled regexes; output size is bounded by
the input size (the caller bounds that: pre-auth commands are at most a few KiB, and after
login only the first few tokens of a line are read, see ``max_tokens``).

Input format: a command is a list of ``(text, literal)`` parts, one per line segment:
``text`` is the segment without its line end and without its literal marker, ``literal`` is
the body of the literal announced at the end of that segment (``None`` for the last part).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ArgumentLexer",
    "Atom",
    "ListTok",
    "Nil",
    "ParseError",
    "ParsedCommand",
    "String",
    "Token",
    "UNCLOSED_LIST",
    "as_astring",
    "as_nstring",
    "parse_command",
    "parse_head",
    "tokenize",
]


@dataclass(frozen=True, slots=True)
class Atom:
    """An atom (command names, flags such as ``\\Seen``, sequence sets, base64 ...)."""

    value: str


@dataclass(frozen=True, slots=True)
class String:
    """A quoted string or literal. ``value`` may be a secret: it is never in the repr."""

    value: bytes = field(repr=False)
    literal: bool = False
    binary: bool = False


@dataclass(frozen=True, slots=True)
class Nil:
    """The NIL atom (absent nstring)."""


@dataclass(frozen=True, slots=True)
class ListTok:
    """A parenthesised list."""

    items: tuple[Token, ...]


Token = Atom | String | Nil | ListTok


@dataclass(frozen=True, slots=True)
class ParseError:
    """Why a command cannot be parsed; ``message`` is safe to send in a ``BAD`` reply.

    ``tag`` is the command's tag when it could be read (the reply is then tagged).
    """

    message: str
    tag: bytes | None = None


@dataclass(frozen=True, slots=True)
class ParsedCommand:
    tag: bytes
    name: str  # upper-case; "UID FETCH" for UID subcommands
    args: tuple[Token, ...]


# ATOM-CHAR: any CHAR except atom-specials ( ) { SP CTL % * " \ ]  -- we read a wider run
# (with % * ] and a leading backslash) and let the caller check what it needs: flags are
# "\" atom, LIST patterns contain % and *, astrings may contain ].
_ATOM_RE: Final = re.compile(rb'\\?[^\x00-\x20\x7f-\xff(){"\\]+')
_TAG_RE: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){"\\%*+\]]+')
_ASTRING_ATOM_RE: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){"\\%*]+\Z')
_QUOTED_RE: Final = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_UNESCAPE_RE: Final = re.compile(rb'\\(["\\])')
_HEAD_RE: Final = re.compile(rb'([^\x00-\x20\x7f-\xff(){"\\%*+\]]+) ([A-Za-z0-9\-]+)(?= |\Z)')
_UID_SUB_RE: Final = re.compile(rb" ([A-Za-z]+)(?= |\Z)")

_MAX_DEPTH: Final = 32
#: The message of the one error a command that goes on after a literal may show so far.
UNCLOSED_LIST: Final = "Missing ')'."


def _quoted_error(text: bytes, i: int) -> str:
    rest = text[i + 1 :]
    for j, c in enumerate(rest):
        if c == 0x22:
            return "Invalid quoted string."
        if c == 0x5C:
            nxt = rest[j + 1 : j + 2]
            if nxt not in (b'"', b"\\"):
                return 'Invalid escape in quoted string (only \\" and \\\\ are allowed).'
        if c in (0, 0x0D, 0x0A):
            return "NUL, CR or LF in quoted string."
    return "Unterminated quoted string."


class ArgumentLexer:
    """Tokenizes a command's arguments part by part: a line segment's text, then the
    literal that follows it (if any), then the next segment, and so on.

    ``after_name``: the first text follows the command name, so the first argument must
    be preceded by exactly one space. ``max_tokens``: stop (successfully, :attr:`done`)
    once that many top-level tokens are read and ignore the rest. ``keep=False``: only
    check and count top-level tokens (:attr:`count`), so a command of many segments costs
    no memory for the tokens already checked.
    """

    def __init__(self, *, after_name: bool = False, max_tokens: int | None = None,
                 keep: bool = True) -> None:
        self.top: list[Token] = []
        self.count = 0
        self.done = False
        self._stack: list[list[Token]] = [self.top]
        self._need_sep = after_name  # a token just ended: next must be SP, ")" or the end
        self._after_space = False
        self._max_tokens = max_tokens
        self._keep = keep

    @property
    def depth(self) -> int:
        """How many lists are open."""
        return len(self._stack) - 1

    def _add(self, tok: Token) -> None:
        if len(self._stack) > 1:
            self._stack[-1].append(tok)
            return
        self.count += 1
        if self._keep:
            self.top.append(tok)

    def feed(self, text: bytes, literal: bytes | None = None, *, start: int = 0
             ) -> ParseError | None:
        """Check ``text[start:]``; then, when ``literal`` is not None, the literal (its
        body, or ``b""`` when the body does not matter) as the next argument."""
        stack = self._stack
        need_sep = self._need_sep
        i = start
        n = len(text)
        while i < n:
            if (self._max_tokens is not None and len(stack) == 1
                    and self.count >= self._max_tokens):
                self.done = True
                return None
            c = text[i]
            if need_sep:
                if c == 0x20:
                    need_sep = False
                    self._after_space = True
                    i += 1
                    continue
                if c == 0x29 and len(stack) > 1:  # ")"
                    done = stack.pop()
                    self._add(ListTok(tuple(done)))
                    i += 1
                    continue
                if c >= 0x80:
                    return ParseError("8-bit characters are only allowed in quoted strings.")
                return ParseError("Missing space between arguments.")
            self._after_space = False
            if c == 0x20:
                return ParseError("Unexpected space (arguments are separated by one space).")
            if c == 0x28:  # "("
                if len(stack) > _MAX_DEPTH:
                    return ParseError("Lists nested too deeply.")
                stack.append([])
                i += 1
                continue
            if c == 0x29:  # ")"
                if len(stack) == 1 or stack[-1]:
                    return ParseError("Unexpected ')'.")
                stack.pop()
                self._add(ListTok(()))
                need_sep = True
                i += 1
                continue
            if c == 0x22:  # '"'
                m = _QUOTED_RE.match(text, i)
                if m is None:
                    return ParseError(_quoted_error(text, i))
                raw = m.group(1)
                if not raw.isascii():
                    try:
                        raw.decode("utf-8")
                    except UnicodeDecodeError:
                        return ParseError("Quoted string is not valid UTF-8.")
                self._add(String(_UNESCAPE_RE.sub(rb"\1", raw)))
                need_sep = True
                i = m.end()
                continue
            m = _ATOM_RE.match(text, i)
            if m is None:
                if c >= 0x80:
                    return ParseError("8-bit characters are only allowed in quoted strings.")
                return ParseError(f"Invalid character 0x{c:02x} in command.")
            value = m.group().decode("ascii")
            self._add(Nil() if value.upper() == "NIL" else Atom(value))
            need_sep = True
            i = m.end()
        if literal is not None:
            if need_sep:
                return ParseError("Missing space before literal.")
            self._add(String(literal, literal=True))
            need_sep = True
            self._after_space = False
        self._need_sep = need_sep
        return None

    def finish(self) -> list[Token] | ParseError:
        """The top-level tokens, or why the command as a whole is not well formed."""
        if self.done:
            return self.top
        if self._after_space:
            return ParseError("Trailing space at end of command.")
        if len(self._stack) > 1:
            return ParseError(UNCLOSED_LIST)
        return self.top


def tokenize(
    parts: Sequence[tuple[bytes, bytes | None]],
    *,
    start: int = 0,
    max_tokens: int | None = None,
) -> list[Token] | ParseError:
    """Tokenize a command's arguments, beginning at offset ``start`` of the first part.

    With ``start > 0`` the text there follows the command name, so the first argument must
    be preceded by exactly one space.

    With ``max_tokens``, stop (successfully) once that many top-level tokens are read and
    ignore the rest of the command -- the post-auth relay reads only the leading arguments.
    """
    lexer = ArgumentLexer(after_name=start > 0, max_tokens=max_tokens)
    for index, (text, literal) in enumerate(parts):
        error = lexer.feed(text, literal, start=start if index == 0 else 0)
        if error is not None:
            return error
        if lexer.done:
            return lexer.top
    return lexer.finish()


def parse_head(text: bytes) -> tuple[bytes, str, int] | ParseError:
    """Read ``tag SP command [SP UID-subcommand]`` from the start of a command line.

    Returns ``(tag, NAME, offset just after the name)``: arguments, if any, start with a
    space there (pass the offset to :func:`tokenize` as ``start``). Commands are case-insensitive;
    tags are astring characters without ``+`` and ``]`` (Dovecot refuses a tag with either).
    """
    m = _HEAD_RE.match(text)
    if m is None:
        t = _TAG_RE.match(text)
        if t is None or t.end() != (text.find(b" ") if b" " in text else len(text)):
            return ParseError("Missing or invalid tag.")
        tag = t.group()
        if t.end() == len(text):
            return ParseError("Missing command.", tag)
        return ParseError("Invalid command name.", tag)
    tag = m.group(1)
    name = m.group(2).decode("ascii").upper()
    pos = m.end()
    if name == "UID":
        s = _UID_SUB_RE.match(text, pos)
        if s is None:
            return ParseError("Missing or invalid UID subcommand.", tag)
        name = "UID " + s.group(1).decode("ascii").upper()
        pos = s.end()
    return tag, name, pos


def parse_command(
    parts: Sequence[tuple[bytes, bytes | None]], *, max_tokens: int | None = None
) -> ParsedCommand | ParseError:
    """Parse a whole command (tag, name, arguments). Never raises."""
    if not parts or (not parts[0][0] and parts[0][1] is None):
        return ParseError("Empty command line.")
    head = parse_head(parts[0][0])
    if isinstance(head, ParseError):
        return head
    tag, name, pos = head
    args = tokenize(parts, start=pos, max_tokens=max_tokens)
    if isinstance(args, ParseError):
        return ParseError(args.message, tag)
    return ParsedCommand(tag, name, tuple(args))


def as_astring(tok: Token) -> bytes | None:
    """The value of an ``astring`` argument, or None if ``tok`` is not one."""
    if isinstance(tok, String):
        return tok.value
    if isinstance(tok, Nil):
        return b"NIL"
    if isinstance(tok, Atom):
        raw = tok.value.encode("ascii")
        return raw if _ASTRING_ATOM_RE.match(raw) else None
    return None


def as_nstring(tok: Token) -> bytes | None | ParseError:
    """The value of an ``nstring`` (None for NIL), or a ParseError."""
    if isinstance(tok, Nil):
        return None
    if isinstance(tok, String):
        return tok.value
    return ParseError("Expected a string or NIL.")
