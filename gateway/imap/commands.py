"""The post-auth client->backend command stream: the relay's hot path.

Rules of this module:

1. It sees every byte the logged-in client sends and decides, per command, whether the
   backend gets it (as is, or rewritten) or the gateway answers itself. It reads only what a
   decision needs: tag, command name, UID subcommand and the mailbox argument.
2. It never raises on client bytes (only on a bad :data:`CommandFilter` result, which is a
   gateway bug). No I/O, no clock, no logging.
3. It keeps the gateway and the backend in agreement on where every command ends, so no
   client can hide a command where the gateway does not look. The backend decides whether
   it reads a literal, and the stream waits for that decision:

   * Every literal goes to the backend as a *synchronizing* literal (``{n}``), and the
     stream then stops (:class:`ForwardLiteral`) until the shell reports the backend's
     answer (:meth:`CommandStream.literal_answered`): a ``+`` continuation means the
     backend reads the literal, so its body follows; a tagged response means the backend
     refused the command *without* reading it (Dovecot then skips the rest of the line and
     would run the body as commands), so the body never reaches the backend. Whatever made
     the backend refuse -- a syntax error before the literal, an argument it does not
     read, a bad APPEND flag -- the gateway never has to guess it.
   * A ``{...}`` the framer cannot place is a framing error (see framing.py), never data.
   * Commands the backend does not know are answered ``BAD`` here and never reach it,
     and commands with a fixed number of arguments that carry literals are read whole
     (at most MAX_COLLECTED bytes) so the filter sees their mailbox and extra arguments
     are refused here.
   * Lines that do not tokenize are answered ``BAD`` here when the stream reads them.
4. Literal bodies are never copied or inspected: they leave as ``memoryview`` slices of the
   fed chunks. A chunk that is forwarded unchanged leaves as one ``Forward`` of the chunk.

Costs and bounds: O(lines) Python work plus one ``find`` per byte of line text (in C);
literal bytes cost O(1) per fed chunk. The framer holds at most ``max_line`` bytes of an
unfinished line; a fixed-arity command that carries literals is held whole, at most
MAX_COLLECTED bytes; while the stream waits for the backend's answer to a literal, what
the client already sent stays in the framer and the shell stops reading the client
(:attr:`CommandStream.paused`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar, Final
from typing import Literal as TypingLiteral

from .capabilities import DEFAULT_COMMANDS
from .framing import (
    NEED_DATA,
    Framer,
    FramingError,
    LineSegment,
    Literal,
    LiteralData,
    find_literal_marker,
    strip_eol,
)
from .responses import READY_FOR_LITERAL, tagged, untagged
from .tokens import (
    UNCLOSED_LIST,
    ArgumentLexer,
    Atom,
    ListTok,
    ParseError,
    String,
    Token,
    as_astring,
    parse_head,
    tokenize,
)

__all__ = [
    "Action",
    "ForwardLiteral",
    "Close",
    "Command",
    "CommandFilter",
    "CommandFilterError",
    "CommandInfo",
    "CommandStream",
    "Forward",
    "MAX_ARGS",
    "Reply",
    "Verdict",
]

#: The only commands whose arguments may be binary literals (``~{n}``, RFC 3516: APPEND's
#: message data; RFC 8508 REPLACE uses the same syntax). Dovecot answers a ``~{`` anywhere
#: else with BAD *without reading the literal*; the stream refuses it before the backend
#: has to.
BINARY_LITERAL_COMMANDS: Final = frozenset({"APPEND", "REPLACE", "UID REPLACE"})

#: Commands Dovecot reads with a parser of their own that, after a syntax error, goes on
#: reading the same line as a new command (probed on Dovecot 2.3.19: ``a APPEND INBOX
#: {c SELECT Secret`` runs ``c SELECT Secret``). Every segment of these must tokenize
#: before it is forwarded: a first segment that does not is refused, a later one ends
#: the session.
STRICT_COMMANDS: Final = frozenset({"APPEND", "SETMETADATA", "REPLACE", "UID REPLACE"})

#: Commands whose handler reads a fixed number of arguments. Dovecot leaves any further
#: argument unread -- and an unread literal's body then runs as commands (verified for each
#: of these against Dovecot 2.3.19: ``a NOOP {14+}`` + ``b CAPABILITY`` runs b). The stream
#: reads such commands whole (bounded by MAX_COLLECTED) and refuses extra arguments.
MAX_ARGS: Final = {
    **dict.fromkeys(
        """NOOP CAPABILITY CHECK CLOSE EXPUNGE UNSELECT NAMESPACE LOGOUT IDLE UNAUTHENTICATE
        STARTTLS""".split(),
        0,
    ),
    **dict.fromkeys(
        "CREATE DELETE SUBSCRIBE UNSUBSCRIBE GETQUOTAROOT GETQUOTA MYRIGHTS GETACL".split(), 1
    ),
    **dict.fromkeys(
        "STATUS RENAME COPY MOVE SETQUOTA LISTRIGHTS DELETEACL SETMETADATA".split(), 2
    ),
    **dict.fromkeys(["UID COPY", "UID MOVE"], 2),
    "UID EXPUNGE": 1,
    "SETACL": 3,
}
#: Commands without arguments that the built-in rules forward unchanged (the others are
#: answered by the gateway: CAPABILITY, STARTTLS, UNAUTHENTICATE); read by the stream's
#: shortcut for a whole line (CommandStream._simple_command).
_FORWARDED_AS_IS: Final = frozenset(
    name for name, count in MAX_ARGS.items() if count == 0
) - {"CAPABILITY", "STARTTLS", "UNAUTHENTICATE"} - STRICT_COMMANDS
#: Bytes (lines and literals) of one fixed-arity command the stream holds while reading it.
MAX_COLLECTED: Final = 16384

#: Index of the mailbox argument, per command.
_MAILBOX_ARG: Final = {
    **dict.fromkeys(
        """SELECT EXAMINE STATUS APPEND CREATE DELETE RENAME SUBSCRIBE UNSUBSCRIBE
        GETQUOTAROOT MYRIGHTS GETACL SETACL DELETEACL LISTRIGHTS REPLACE""".split(),
        0,
    ),
    **dict.fromkeys(["COPY", "MOVE", "UID COPY", "UID MOVE", "UID REPLACE"], 1),
}
_LIST_COMMANDS: Final = frozenset({"LIST", "LSUB", "XLIST"})


@dataclass(frozen=True, slots=True)
class CommandInfo:
    """What a command filter may look at.

    ``mailbox``: the mailbox argument (SELECT/EXAMINE/STATUS/APPEND/CREATE/DELETE/RENAME
    source/SUBSCRIBE/..., COPY/MOVE destination, LIST/LSUB pattern), decoded UTF-8 with
    ``surrogateescape`` and *not* decoded from modified UTF-7; None when absent.
    ``mailbox_unknown``: the command names a mailbox that the stream could not read (given
    as a literal, or several LIST patterns) -- a scope filter should refuse such commands
    rather than treat them as mailbox-less.
    """

    tag: bytes
    name: str
    mailbox: str | None = None
    mailbox_unknown: bool = False
    #: The command's first line segment as received (CRLF included), given to a command
    #: filter so it can build a ``Verdict.REWRITE`` (e.g. SELECT sent as EXAMINE).
    line: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A command filter's answer. Use ``Verdict.FORWARD``, ``Verdict.REFUSE(response)``
    (complete reply bytes for the client, CRLF-terminated) or ``Verdict.REWRITE(line)``
    (replaces the command's first line segment, CRLF included; if that segment announced a
    literal the new line must end with the same literal marker)."""

    action: TypingLiteral["forward", "refuse", "rewrite"]
    data: bytes = field(default=b"", repr=False)
    #: Why a refusal happened (a metric label from a small fixed set).
    reason: str = "refused"

    FORWARD: ClassVar[Verdict]

    @staticmethod
    def REFUSE(response: bytes, reason: str = "refused") -> Verdict:  # noqa: N802
        return Verdict("refuse", response, reason)

    @staticmethod
    def REWRITE(line: bytes) -> Verdict:  # noqa: N802
        return Verdict("rewrite", line)


Verdict.FORWARD = Verdict("forward")

CommandFilter = Callable[[CommandInfo], Verdict]


class CommandFilterError(ValueError):
    """A command filter returned something the stream cannot apply safely."""


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``data`` to the backend as is."""

    data: bytes | memoryview = field(repr=False)


@dataclass(frozen=True, slots=True)
class ForwardLiteral:
    """Send ``data`` -- a line segment that announces a literal, always as a synchronizing
    ``{n}`` -- to the backend, then wait for its answer before sending anything else.

    The stream is :attr:`~CommandStream.paused` until the shell calls
    :meth:`CommandStream.literal_answered`: with True when the backend sent a ``+``
    continuation (it reads the literal), with False when it sent the tagged response for
    ``tag`` instead (it refused the command without reading the literal).

    ``first``: the segment starts its command, so the backend must have answered every
    earlier command before this one is sent (otherwise an earlier command's tagged response
    with the same tag could be taken for this one's). ``pass_continuation``: the client sent
    ``{n}`` and waits for a ``+`` itself, so the backend's ``+`` goes on to the client;
    otherwise (``{n+}``, or a command the gateway read whole) the client must not see it.
    """

    data: bytes = field(repr=False)
    tag: bytes
    first: bool
    pass_continuation: bool


@dataclass(frozen=True, slots=True)
class Reply:
    """The gateway answers the client itself (write at a backend response boundary).

    ``kind`` says why, for metrics: ``"continuation"`` (the gateway's own ``+`` for a
    literal), ``"answered"`` (a command the gateway serves itself, e.g. CAPABILITY), or
    the refusal's reason (``"bad_command"``, ``"too_long"``, ``"compress"``, or what a
    command filter said, e.g. ``"scope"``).
    """

    data: bytes
    kind: str = "bad_command"


@dataclass(frozen=True, slots=True)
class Command:
    """One command was seen (for metrics and logs)."""

    info: CommandInfo


@dataclass(frozen=True, slots=True)
class Close:
    """Write ``data`` (a BYE) to the client, then close the session."""

    reason: str
    data: bytes


Action = Forward | ForwardLiteral | Reply | Command | Close


def _has_line_break(data: bytes | memoryview) -> bool:
    raw = data if isinstance(data, bytes) else bytes(data)  # only non-message literals
    return b"\n" in raw or b"\r" in raw


def as_sync_marker(line: bytes, text_end: int, literal: Literal) -> bytes:
    """``line`` with its literal marker written as a synchronizing ``{n}`` (``~{n}``):
    canonical digits, no ``+``, the client's own line end."""
    body = strip_eol(line)
    marker = b"~{%d}" % literal.size if literal.binary else b"{%d}" % literal.size
    return line[:text_end] + marker + line[len(body) :]


@dataclass(slots=True)
class _HeldPiece:
    """Part of a command read whole, waiting to be released to the backend in order."""

    data: bytes
    text_end: int = -1  # a line announcing a literal: where its marker starts
    literal: Literal | None = None


class CommandStream:
    """Relay state for one logged-in client: feed bytes, get actions.

    ``capability_line``: the capability list (without ``* CAPABILITY``) the gateway answers
    CAPABILITY with, so the backend's list (which has COMPRESS) never reaches the client.
    ``command_filter``: called once per command after the built-in rules.
    """

    __slots__ = (
        "capability_line",
        "command_filter",
        "known_commands",
        "allow_catenate",
        "closed",
        "forwarded_commands",
        "_framer",
        "_mode",
        "_tag",
        "_command_name",
        "_binary_seen",
        "_parts",
        "_collected",
        "_literal_buf",
        "_held_size",
        "_first_seg",
        "_release",
        "_waiting",
        "_idle",
        "_lexer",
        "_single_line_literal",
        "_out",
        "_pending",
        "_unchanged",
    )

    def __init__(
        self,
        *,
        capability_line: bytes,
        command_filter: CommandFilter | None = None,
        max_line: int = 65536,
        known_commands: frozenset[str] = DEFAULT_COMMANDS,
        allow_catenate: bool = True,
    ) -> None:
        """``allow_catenate=False`` (mailbox-scoped credentials): APPEND with CATENATE is
        refused, since its URL parts name source mailboxes no filter sees (RFC 4469)."""
        self.capability_line = capability_line
        self.command_filter = command_filter
        self.known_commands = known_commands
        self.allow_catenate = allow_catenate
        self.closed = False
        #: Commands sent to the backend so far (each gets exactly one tagged response).
        self.forwarded_commands = 0
        self._framer = Framer(max_line, None, role="client")
        self._mode: TypingLiteral["forward", "drop", "collect"] = "forward"  # current command's rest
        self._tag = b""  # the current command's tag
        self._command_name = ""  # the command whose segments are flowing now
        self._binary_seen = False  # a collected command carried a binary literal
        # "collect" (a fixed-arity command with literals, read whole before deciding):
        self._parts: list[tuple[bytes, bytes | None]] = []  # tokenizer input
        self._collected: list[_HeldPiece] = []  # its bytes as received, after the first line
        self._literal_buf = bytearray()
        self._held_size = 0
        self._first_seg: LineSegment | None = None
        # a command read whole and accepted, released piece by piece as the backend answers:
        self._release: list[_HeldPiece] = []
        self._waiting: Literal | None = None  # the literal whose answer we wait for
        self._idle = False  # an IDLE was forwarded: the next line should be DONE
        #: Checks every segment of a STRICT_COMMANDS command (None for other commands).
        self._lexer: ArgumentLexer | None = None
        #: The literal being forwarded may not contain CR or LF (it is not message data).
        self._single_line_literal = False
        self._out: list[Action] = []
        self._pending: list[bytes] = []
        self._unchanged = True

    @property
    def paused(self) -> bool:
        """True while the backend's answer to a :class:`ForwardLiteral` is outstanding: the
        shell must stop reading the client (the stream holds what it was already given)."""
        return self._waiting is not None

    def receive_data(self, data: bytes) -> list[Action]:
        """Feed client bytes; returns actions in order. ``b""`` (EOF) returns ``[]``."""
        if self.closed or not data:
            return []
        framer = self._framer
        whole = framer.partial_len == 0 and self._waiting is None
        segments = framer.whole_lines(data) if whole else None
        if (segments is not None and len(segments) == 1 and not self._idle
                and self.command_filter is None):
            info = self._simple_command(segments[0])
            if info is not None:
                return [Command(info), Forward(data)]
        self._begin()
        if segments is not None:
            # Whole lines without literals (a NOOP, a FETCH ...): the same events the
            # framer would return, without queueing the bytes in it first.
            for i, seg in enumerate(segments):
                if self._waiting is not None or self.closed:
                    # the rest stays in the framer, as the general path leaves it
                    framer.receive_data(b"".join(x.data for x in segments[i:]))
                    break
                self._on_segment(seg)
        else:
            framer.receive_data(data)
            self._pump()
        if (whole and self._unchanged and framer.buffered_len == 0
                and self._mode == "forward" and self._waiting is None):
            out: list[Action] = [a for a in self._out if isinstance(a, Command)]
            out.append(Forward(data))
            return out
        return self._finish()

    @property
    def idling(self) -> bool:
        """An IDLE was forwarded and its DONE has not come: the backend is only pushing
        untagged updates, so the session is idle although a command is outstanding."""
        return self._idle

    @property
    def current_tag(self) -> bytes | None:
        """The tag of a forwarded command whose rest (after a literal) is still to come from
        the client, else None."""
        if self._mode != "forward" or self._framer.at_line_start or self.closed:
            return None
        return self._tag

    def command_answered(self) -> list[Action]:
        """The backend answered :attr:`current_tag`'s command before the client finished it
        (Dovecot answers an APPEND whose mailbox literal is bad at once, and skips the rest
        of that line). The rest of the command is dropped, and the backend gets a line end
        to end its skip, so the next command is read from its start."""
        if self.current_tag is None or self._waiting is not None:
            return []
        self._begin()
        self._mode = "drop"
        self._forward_line(b"\r\n", changed=True)
        return self._finish()

    def literal_answered(self, accepted: bool) -> list[Action]:
        """The backend's answer to the last :class:`ForwardLiteral`: True for a ``+``
        continuation, False for a tagged response. Outside a wait it does nothing."""
        lit = self._waiting
        if lit is None or self.closed:
            return []
        self._waiting = None
        self._begin()
        if self._release:
            if accepted:
                self._release_held()
            else:
                self._release = []  # read from the client already: nothing left to drop
        elif not accepted:
            if lit.sync:
                self._framer.cancel_literal()  # the client gets the tagged reply, not "+"
            else:
                self._mode = "drop"  # the body comes anyway: consume it, forward nothing
        if self._waiting is None:
            self._pump()
        return self._finish()

    # -- output helpers ---------------------------------------------------------------------------

    def _begin(self) -> None:
        self._out = []
        self._pending = []  # consecutive small forwards, joined once
        self._unchanged = True

    def _finish(self) -> list[Action]:
        self._flush()
        out, self._out = self._out, []
        return out

    def _pump(self) -> None:
        """Turn framer events into actions until input runs out, a literal's answer is
        awaited or the stream closes."""
        framer = self._framer
        while self._waiting is None and not self.closed:
            ev = framer.next_event()
            if ev is NEED_DATA:
                break
            if isinstance(ev, LiteralData):
                if self._mode == "forward":
                    if self._single_line_literal and _has_line_break(ev.data):
                        # what precedes the break goes on, so the result is the same
                        # however the literal was split
                        raw = bytes(ev.data)
                        cut = min(i for i in (raw.find(b"\r"), raw.find(b"\n")) if i >= 0)
                        if cut:
                            self._forward_view(memoryview(raw)[:cut])
                        self._line_break_in_literal()
                        continue
                    self._forward_view(ev.data)
                else:
                    self._unchanged = False  # dropped, or held until the command is whole
                    if self._mode == "collect":
                        self._collect_literal(ev)
            elif isinstance(ev, LineSegment):
                self._on_segment(ev)
            elif isinstance(ev, FramingError):
                self._on_error(ev)

    def _flush(self) -> None:
        if self._pending:
            joined = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._out.append(Forward(joined))
            self._pending = []

    def _forward_line(self, line: bytes, changed: bool = False) -> None:
        self._pending.append(line)
        if changed:
            self._unchanged = False

    def _forward_view(self, view: memoryview) -> None:
        self._flush()
        self._out.append(Forward(view))

    def _act(self, action: Action) -> None:
        if not isinstance(action, Command):
            self._unchanged = False
        self._flush()
        self._out.append(action)

    def _forward_literal_line(self, line: bytes, text_end: int, lit: Literal, *,
                              first: bool, pass_continuation: bool) -> None:
        """Send a line announcing ``lit`` as ``{n}`` and wait for the backend's answer."""
        self._act(ForwardLiteral(as_sync_marker(line, text_end, lit), self._tag, first,
                                 pass_continuation))
        self._waiting = lit
        self._single_line_literal = not self._is_message_literal()

    def _is_message_literal(self) -> bool:
        """The literal about to be sent is message data (APPEND's, REPLACE's), which the
        backend stores and never copies into a response line; any other literal -- a
        mailbox name, a search string, APPEND's mailbox -- may come back inside an error
        response, so it must not carry a line break (see _line_break_in_literal)."""
        if self._command_name not in BINARY_LITERAL_COMMANDS:
            return False
        lexer = self._lexer  # APPEND and REPLACE are STRICT_COMMANDS: always lexed
        # The lexer has just taken the literal: as the first top-level argument it is the
        # mailbox; later, or inside a list (CATENATE's TEXT), it is message data.
        return lexer is not None and (lexer.count > 1 or lexer.depth > 0)

    def _line_break_in_literal(self) -> None:
        """Dovecot copies a bad search key (literal included) into its BAD response, line
        breaks and all: a literal with CR or LF could forge response lines -- a tagged
        completion, a "+" -- that the relay would take for the backend's own. Part of the
        literal's command is at the backend already, so the session ends."""
        self.closed = True
        self._act(Close("line_break_in_literal",
                        untagged("BYE", "Line breaks are not allowed in this literal.")))

    # -- events -----------------------------------------------------------------------------------

    def _on_error(self, ev: FramingError) -> None:
        self.closed = True
        if ev.kind == "line_too_long":
            self._act(Close("line_too_long", untagged("BYE", "Line too long.")))
        else:
            self._act(Close(ev.kind, untagged("BYE", "Invalid literal marker.")))

    def _on_segment(self, seg: LineSegment) -> None:
        lit = seg.literal
        if not seg.first:
            # The rest of a command that has (had) a literal.
            if self._mode == "drop":
                if lit is not None and lit.sync:
                    self._framer.cancel_literal()
                self._unchanged = False
                return
            if self._mode == "collect":
                if lit is not None and lit.binary:
                    self._binary_seen = True
                self._collect_segment(seg)
                return
            if self._lexer is not None and not self._lexes(seg):
                self.closed = True
                self._act(Close("bad_syntax", untagged("BYE", "Invalid command syntax.")))
                return
            if self._continuation_not_allowed(seg):
                # Earlier segments already went to the backend: no clean refusal is
                # possible any more, and forwarding would desynchronise us from it.
                self.closed = True
                self._act(Close("literal_not_allowed",
                                untagged("BYE", "Literal or CATENATE not allowed here.")))
                return
            self._forward_segment(seg, seg.data, first=False)
            return
        if self._idle:
            self._idle = False
            if lit is None and strip_eol(seg.data).upper() == b"DONE":
                self._forward_line(seg.data)
                return
            # The backend reads this line as IDLE's end (raw text, no literal) and refuses
            # it; the gateway would read it as a command: end the session instead.
            self.closed = True
            self._act(Close("idle_not_done", untagged("BYE", "Expected DONE after IDLE.")))
            return
        self._mode = "forward"
        info_or_reply = self._inspect(seg)
        if isinstance(info_or_reply, bytes):
            self._refuse(seg, info_or_reply)
            return
        if isinstance(info_or_reply, tuple):  # fixed arity with a literal: read it whole
            self._start_collect(seg)
            return
        self._decide(seg, info_or_reply)

    def _lexes(self, seg: LineSegment) -> bool:
        """The next segment of a STRICT_COMMANDS command tokenizes (with its literal)."""
        assert self._lexer is not None
        if self._lexer.feed(seg.text, b"" if seg.literal is not None else None) is not None:
            return False
        return seg.literal is not None or not isinstance(self._lexer.finish(), ParseError)

    def _continuation_not_allowed(self, seg: LineSegment) -> bool:
        """A later segment of a forwarded command that must not reach the backend."""
        lit = seg.literal
        if lit is not None and lit.binary and self._command_name not in BINARY_LITERAL_COMMANDS:
            return True
        return (not self.allow_catenate and self._command_name == "APPEND"
                and b"CATENATE" in seg.data.upper())

    def _decide(self, seg: LineSegment, info: CommandInfo, held: bool = False) -> None:
        """Apply the built-in rules and the filter to a command whose first segment is
        ``seg``; ``held``: the command was read whole (its rest is in ``_collected``)."""
        lit = seg.literal
        self._act(Command(info))
        self._command_name = info.name
        self._tag = info.tag
        binary = (lit is not None and lit.binary) or (held and self._binary_seen)
        self._binary_seen = False
        verdict = None
        if binary and info.name not in BINARY_LITERAL_COMMANDS:
            verdict = Verdict.REFUSE(
                tagged(info.tag, "BAD", "Binary literal not allowed here."), "bad_command")
        elif (not self.allow_catenate and info.name == "APPEND"
              and b"CATENATE" in seg.data.upper()):
            verdict = Verdict.REFUSE(
                tagged(info.tag, "NO", "CATENATE not permitted by this credential.", "NOPERM"),
                "scope")
        if verdict is None:
            verdict = self._builtin(info)
        if verdict is None and self.command_filter is not None:
            verdict = self.command_filter(replace(info, line=seg.data))
            if not isinstance(verdict, Verdict):
                verdict = self._filter_failed(info, f"returned {type(verdict).__name__}")
        line = seg.data
        if verdict is not None and verdict.action == "rewrite":
            rewritten = self._checked_rewrite(seg, verdict.data)
            if isinstance(rewritten, CommandFilterError):
                verdict = self._filter_failed(info, str(rewritten))
            else:
                line = rewritten
        if verdict is not None and verdict.action == "refuse":
            if held:  # all of it was read already: nothing more to drop
                self._act(Reply(verdict.data, verdict.reason))
                self._collected = []
                self._mode = "forward"
            else:
                self._refuse(seg, verdict.data, verdict.reason)
            return
        self.forwarded_commands += 1
        if lit is None and info.name == "IDLE":
            self._idle = True
        if held:
            self._mode = "forward"
            self._release = [_HeldPiece(line, seg.text_end, lit), *self._collected]
            self._collected = []
            self._release_held(first=True)
            return
        self._forward_segment(seg, line, first=True, changed=line is not seg.data)

    def _filter_failed(self, info: CommandInfo, why: str) -> Verdict:
        """A command filter bug must not cost the session: refuse the command instead."""
        return Verdict.REFUSE(
            tagged(info.tag, "NO", "Command not permitted.", "SERVERBUG"), "filter_error")

    def _forward_segment(self, seg: LineSegment, line: bytes, *, first: bool,
                         changed: bool = False) -> None:
        lit = seg.literal
        if lit is None:
            self._forward_line(line, changed)
            return
        text_end = seg.text_end + len(line) - len(seg.data)  # a rewrite may move the marker
        self._forward_literal_line(line, text_end, lit, first=first,
                                   pass_continuation=lit.sync)

    def _release_held(self, first: bool = False) -> None:
        """Send a command read whole, up to and including its next literal line."""
        while self._release:
            piece = self._release.pop(0)
            if piece.literal is None:
                self._forward_line(piece.data, changed=True)
                continue
            self._forward_literal_line(piece.data, piece.text_end, piece.literal,
                                       first=first, pass_continuation=False)
            return

    # -- fixed-arity commands with literals: read whole, then decide ------------------------------

    def _start_collect(self, seg: LineSegment) -> None:
        self._unchanged = False  # held, not forwarded as received
        self._mode = "collect"
        self._first_seg = seg
        self._collected = []
        self._parts = []
        self._held_size = 0
        self._collect_segment(seg, first=True)

    def _collect_segment(self, seg: LineSegment, first: bool = False) -> None:
        lit = seg.literal
        text = seg.text
        self._held_size += len(seg.data) + (lit.size if lit else 0)
        if self._held_size > MAX_COLLECTED:
            tag = self._first_seg.data.split(b" ", 1)[0] if self._first_seg else b"*"
            self._mode = "drop"
            self._collected = []
            self._act(Reply(tagged(tag, "BAD", "Command too long.", "TOOBIG"), "too_long"))
            if lit is not None and lit.sync:
                self._framer.cancel_literal()
            return
        if lit is None:
            self._parts.append((text, None))
            self._collected.append(_HeldPiece(seg.data))
            self._finish_collect()
            return
        if not first:
            early = self._info_from_parts([*self._parts, (text, b"")], partial=True)
            if isinstance(early, bytes):
                self._mode = "drop"
                self._collected = []
                self._act(Reply(early))
                if lit.sync:
                    self._framer.cancel_literal()
                return
            self._collected.append(_HeldPiece(seg.data, seg.text_end, lit))
        self._parts.append((text, None))
        if lit.sync:
            self._act(Reply(READY_FOR_LITERAL, "continuation"))
        self._literal_buf = bytearray()
        if lit.size == 0:
            self._parts[-1] = (text, b"")

    def _collect_literal(self, ev: LiteralData) -> None:
        self._literal_buf += ev.data
        if ev.remaining == 0:
            body = bytes(self._literal_buf)
            if _has_line_break(body):  # see _line_break_in_literal; nothing forwarded yet
                tag = self._first_seg.data.split(b" ", 1)[0] if self._first_seg else b"*"
                self._mode = "drop"
                self._collected = []
                self._act(Reply(tagged(tag, "BAD", "Line breaks are not allowed here."),
                                "bad_command"))
                return
            self._collected.append(_HeldPiece(body))
            self._parts[-1] = (self._parts[-1][0], body)
            self._literal_buf = bytearray()

    def _finish_collect(self) -> None:
        seg = self._first_seg
        assert seg is not None
        self._first_seg = None
        info = self._info_from_parts(self._parts)
        if isinstance(info, bytes):
            self._act(Reply(info))
            self._collected = []
            self._mode = "forward"
            return
        self._decide(seg, info, held=True)

    def _refuse(self, seg: LineSegment, response: bytes, kind: str = "bad_command") -> None:
        self._act(Reply(response, kind))
        lit = seg.literal
        if lit is not None:
            if lit.sync:
                self._framer.cancel_literal()  # the client gets the reply instead of "+"
            else:
                self._mode = "drop"  # the body comes anyway: consume it, forward nothing

    def _checked_rewrite(self, seg: LineSegment, line: bytes) -> bytes | CommandFilterError:
        """The filter's new first line, or why it cannot be applied safely."""
        eol = seg.data[len(strip_eol(seg.data)):]
        if not line.endswith(eol) or b"\n" in line[: -len(eol)]:
            return CommandFilterError("REWRITE line must be one line with the original line end")
        new = find_literal_marker(strip_eol(line))
        old = seg.literal
        new_marker = (new[1], new[2], new[3]) if isinstance(new, tuple) else None
        old_marker = (old.size, old.sync, old.binary) if old is not None else None
        if new_marker != old_marker:
            return CommandFilterError(
                "REWRITE line must keep the original literal marker (or lack of one); "
                "changing it would desynchronise the gateway and the backend"
            )
        return line

    # -- command inspection -----------------------------------------------------------------------

    def _simple_command(self, seg: LineSegment) -> CommandInfo | None:
        """The commonest client line, a known command without arguments that is forwarded
        as it is (NOOP, CHECK, IDLE ...), read without the general path's steps: its
        CommandInfo, with the stream's state set exactly as :meth:`_on_segment` sets it
        for that line; None, changing nothing, for any other line. Only for a whole first
        line without a literal, outside IDLE and without a command filter (the caller
        checks)."""
        text = seg.text
        head = parse_head(text)
        if isinstance(head, ParseError):
            return None
        tag, name, pos = head
        if pos != len(text) or name not in _FORWARDED_AS_IS or name not in self.known_commands:
            return None
        self._mode = "forward"
        self._lexer = None
        self._command_name = name
        self._tag = tag
        self._binary_seen = False
        self.forwarded_commands += 1
        if name == "IDLE":
            self._idle = True
        return CommandInfo(tag, name)

    def _inspect(self, seg: LineSegment) -> CommandInfo | bytes | tuple[str]:
        """The command's CommandInfo, the complete reply refusing it, or ``("collect",)``
        for a fixed-arity command with a literal, which must be read whole first."""
        text = seg.text
        head = parse_head(text)
        if isinstance(head, ParseError):
            if not text and seg.literal is None:
                return untagged("BAD", "Empty command line.")
            return self._bad(head.tag, head.message)
        tag, name, pos = head
        if name not in self.known_commands:
            return tagged(tag, "BAD", "Unknown command.")
        self._lexer = None
        if name in STRICT_COMMANDS:
            lexer = ArgumentLexer(after_name=True, keep=False)
            error = lexer.feed(text, b"" if seg.literal is not None else None, start=pos)
            if error is None and seg.literal is None:
                done = lexer.finish()
                error = done if isinstance(done, ParseError) else None
            if error is not None:
                return self._bad(tag, error.message)
            self._lexer = lexer
        elif seg.literal is not None:
            # Everything before the literal must tokenize, or the command goes no further
            # (the backend would refuse it too, and a refusal costs it nothing).
            checked = tokenize([(text, b"")], start=pos)
            if isinstance(checked, ParseError) and checked.message != UNCLOSED_LIST:
                return self._bad(tag, checked.message)
        if name in MAX_ARGS:
            if seg.literal is not None:
                # Refuse before answering "+" when the literal is already one too many.
                early = self._info_from_parts([(text, b"")], partial=True)
                return early if isinstance(early, bytes) else ("collect",)
            if pos == len(text):  # the common case: no argument at all (NOOP, CHECK, ...)
                return CommandInfo(tag, name)
            return self._info_from_parts([(text, None)])
        index = _MAILBOX_ARG.get(name)
        if index is None and name not in _LIST_COMMANDS:
            return CommandInfo(tag, name)
        parts = [(text, b"" if seg.literal is not None else None)]
        args = tokenize(parts, start=pos, max_tokens=3 if index is None else index + 1)
        if isinstance(args, ParseError):
            return self._bad(tag, args.message)
        is_list = index is None
        if index is None:  # LIST [(options)] reference pattern
            index = 2 if args and isinstance(args[0], ListTok) else 1
        if index >= len(args) and seg.literal is not None:
            return CommandInfo(tag, name, None, True)  # it lies after a literal
        mailbox, unknown = self._mailbox_of(args, index, is_list)
        return CommandInfo(tag, name, mailbox, unknown)

    def _info_from_parts(
        self, parts: list[tuple[bytes, bytes | None]], partial: bool = False
    ) -> CommandInfo | bytes:
        """Parse a whole fixed-arity command; refuse it when it has too many arguments.

        ``partial``: the parts end with a literal still to come (an empty placeholder);
        only the argument count is checked, so an unterminated list is fine.
        """
        head = parse_head(parts[0][0])
        if isinstance(head, ParseError):  # cannot happen: checked on the first segment
            return self._bad(head.tag, head.message)
        tag, name, pos = head
        limit = MAX_ARGS[name]
        args = tokenize(parts, start=pos, max_tokens=limit + 1)
        if isinstance(args, ParseError):
            if partial and args.message == UNCLOSED_LIST:
                return CommandInfo(tag, name)
            return self._bad(tag, args.message)
        if len(args) > limit:
            return self._bad(tag, f"Too many arguments for {name}.")
        index = _MAILBOX_ARG.get(name)
        if index is None:
            return CommandInfo(tag, name)
        mailbox, unknown = self._mailbox_of(args, index, False, literals_read=True)
        return CommandInfo(tag, name, mailbox, unknown)

    @staticmethod
    def _mailbox_of(
        args: list[Token], index: int, pattern: bool, literals_read: bool = False
    ) -> tuple[str | None, bool]:
        if index >= len(args):
            return None, False
        tok = args[index]
        if isinstance(tok, ListTok):  # LIST ... (pattern pattern)
            if len(tok.items) == 1:
                tok = tok.items[0]
            else:
                return None, True
        if isinstance(tok, String) and tok.literal and not literals_read:
            return None, True
        if pattern and isinstance(tok, Atom):  # list-mailbox: astring chars plus % and *
            return tok.value, False
        value = as_astring(tok)
        if value is None:
            return None, True
        return value.decode("utf-8", errors="surrogateescape"), False

    @staticmethod
    def _bad(tag: bytes | None, text: str) -> bytes:
        return tagged(tag, "BAD", text) if tag else untagged("BAD", text)

    def _builtin(self, info: CommandInfo) -> Verdict | None:
        tag, name = info.tag, info.name
        if name == "COMPRESS":
            return Verdict.REFUSE(
                tagged(tag, "NO", "COMPRESS is not available through this gateway.", "CANNOT"),
                "compress",
            )
        if name == "STARTTLS":
            return Verdict.REFUSE(tagged(tag, "BAD", "Already in TLS."), "bad_command")
        if name == "CAPABILITY":
            return Verdict.REFUSE(
                b"* CAPABILITY " + self.capability_line + b"\r\n"
                + tagged(tag, "OK", "Capability completed."),
                "answered",
            )
        if name in ("LOGIN", "AUTHENTICATE"):
            return Verdict.REFUSE(tagged(tag, "BAD", "Already authenticated."), "bad_command")
        if name == "UNAUTHENTICATE":
            # Back to not-authenticated on the backend, where a LOGIN would go straight to
            # Dovecot, past every policy and factor the gateway checks.
            return Verdict.REFUSE(
                tagged(tag, "NO", "UNAUTHENTICATE is not available through this gateway.",
                       "CANNOT"), "unauthenticate")
        return None
