"""The pre-authentication IMAP session: the part of the gateway an anonymous client talks to.

Rules of this module:

1. Everything that changes the pre-auth session state goes through :meth:`_transition` and
   the one table :data:`TRANSITIONS`; a trigger not in the table for the current state is a
   :class:`PreauthStateError` naming both (a bug in the shell, never the client's doing).
2. It never raises on client bytes: bad input becomes a ``BAD``/``NO``/``BYE`` reply and an
   event. It does no I/O, has no clock (the shell calls :meth:`timed_out`) and logs nothing.
3. It never lets a credential travel before TLS: before TLS it advertises ``LOGINDISABLED``
   and no ``AUTH=``, refuses LOGIN/AUTHENTICATE with ``NO [PRIVACYREQUIRED]`` without asking
   for (or keeping) a password literal, and drops every byte pipelined after STARTTLS.
4. Secrets (passwords, SASL payloads) exist only inside :class:`LoginRequest.password`
   (``repr=False``) and transiently in the command buffer; they are never part of a reply,
   an error message or any other event.
5. It decides nothing about *who* may log in: it hands a :class:`LoginRequest` to the shell
   and is told the outcome (:meth:`login_failed` / :meth:`login_succeeded`).

Theory of operation: bytes go through a :class:`~gateway.imap.framing.Framer` (line and
literal caps); line segments and literal bodies of one command are collected, then the
complete command is tokenized strictly and executed. Sync literals are answered with ``+``
only for commands that may carry one (LOGIN after TLS, ID); otherwise the command is
refused at once and the framer is told the body will not come.

Bounds: a command (all its segments and literal bodies) is at most ``limits.max_command``
bytes; the framer holds at most ``max_line`` bytes of an unfinished line, except an ``ID``
line, which may be as long as RFC 2971 allows (:data:`ID_MAX_LINE`); bytes arriving
while a login is being decided are held up to ``4 * max_line``. Every event list is
O(input) in size: each command yields a bounded number of short replies.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from . import sasl
from .framing import (
    NEED_DATA,
    Framer,
    FramingError,
    LineSegment,
    LiteralData,
    find_literal_marker,
    strip_eol,
)
from .responses import READY_FOR_LITERAL, tagged, untagged
from .tokens import (
    Atom,
    ListTok,
    Nil,
    ParseError,
    String,
    Token,
    as_astring,
    parse_head,
    tokenize,
)

__all__ = [
    "Authenticated",
    "CAPS_PLAINTEXT",
    "CAPS_STARTTLS",
    "CAPS_TLS",
    "CAPS_TLS_OAUTH",
    "ClientIdentified",
    "CloseConnection",
    "CommandRejected",
    "Event",
    "LoginRequest",
    "PlaintextLoginRefused",
    "PreauthConnection",
    "PreauthLimits",
    "PreauthState",
    "PreauthStateError",
    "SendData",
    "StartTLS",
    "TRANSITIONS",
    "Trigger",
    "privacy_text",
]

_BASE_CAPS: Final = "IMAP4rev1 SASL-IR ID ENABLE IDLE LITERAL+"
CAPS_STARTTLS: Final = _BASE_CAPS + " STARTTLS LOGINDISABLED"
CAPS_PLAINTEXT: Final = _BASE_CAPS + " LOGINDISABLED"  # no TLS and none on offer
CAPS_TLS: Final = _BASE_CAPS + " AUTH=PLAIN AUTH=LOGIN"
CAPS_TLS_OAUTH: Final = CAPS_TLS + " AUTH=OAUTHBEARER AUTH=XOAUTH2"

PRIVACY_TEXT: Final = "Plaintext authentication is disabled; use STARTTLS or port 993."


def privacy_text(implicit_tls_ports: Iterable[int]) -> str:
    """The ``NO [PRIVACYREQUIRED]`` text naming the gateway's own implicit-TLS ports.

    The shell passes the ports of its ``implicit-tls`` listeners (a gateway on 10993
    must not send clients to 993); with none, STARTTLS is the only way.
    """
    ports = sorted(set(implicit_tls_ports))
    if not ports:
        return "Plaintext authentication is disabled; use STARTTLS."
    return ("Plaintext authentication is disabled; use STARTTLS or port "
            + " or ".join(str(p) for p in ports) + ".")

AUTH_FAILED: Final = b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
UNAVAILABLE: Final = b" NO [UNAVAILABLE] Mail service temporarily unavailable, try again later.\r\n"
ID_RESPONSE: Final = b'* ID ("name" "imap-gateway")\r\n'

#: RFC 2971 §3.3 bounds.
ID_MAX_PAIRS: Final = 30
ID_MAX_FIELD: Final = 30
ID_MAX_VALUE: Final = 1024
#: The longest ID line RFC 2971 allows: 30 pairs of quoted strings with every character
#: escaped (2 x (30 + 1024) + 4 quotes + 2 spaces each), "ID (", ")" and a tag.
ID_MAX_LINE: Final = 65536
#: ``tag ID `` at the start of a line: a line the framer lets grow to ID_MAX_LINE.
_ID_LINE_RE: Final = re.compile(rb"[^ \r\n]{1,48} [Ii][Dd] ")

#: ``_sasl_mech`` while the RFC 7628 error challenge waits for the client's answer.
_OAUTH_ERROR: Final = "OAUTH-ERROR"

#: Commands of later IMAP states: refused with a specific BAD text rather than "unknown".
_LATER_COMMANDS: Final = frozenset(
    "APPEND CHECK CLOSE COPY CREATE DELETE ENABLE EXAMINE EXPUNGE FETCH GETQUOTA GETQUOTAROOT "
    "IDLE LIST LSUB MOVE NAMESPACE RENAME SEARCH SELECT SETQUOTA SORT STATUS STORE SUBSCRIBE "
    "THREAD UNSELECT UNSUBSCRIBE COMPRESS GETACL SETACL MYRIGHTS GETMETADATA SETMETADATA".split()
    + ["UID COPY", "UID MOVE", "UID FETCH", "UID SEARCH", "UID STORE", "UID EXPUNGE"]
)


# -- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendData:
    """Write ``data`` to the client."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StartTLS:
    """The tagged OK went out in the SendData before this; do the TLS handshake now.

    ``discarded`` bytes the client pipelined after the STARTTLS line were thrown away.
    """

    discarded: int


@dataclass(frozen=True, slots=True)
class LoginRequest:
    """The client asked to log in; the shell decides and calls login_failed/succeeded."""

    tag: bytes
    mechanism: str  # "LOGIN" | "PLAIN" | "AUTH-LOGIN" | "OAUTHBEARER" | "XOAUTH2"
    #: For OAUTHBEARER the user the client named, "" if none (the token's claim decides).
    username: str
    #: The password, or for OAUTHBEARER/XOAUTH2 the bearer token.
    password: str = field(repr=False)
    authzid: str = ""


@dataclass(frozen=True, slots=True)
class PlaintextLoginRefused:
    """LOGIN/AUTHENTICATE before TLS was refused with NO [PRIVACYREQUIRED].

    ``username``: the user a plaintext LOGIN named (not a secret; the operator wants to
    know whose client is misconfigured), when it could be read without the literal.
    """

    mechanism: str
    username: str | None = None


@dataclass(frozen=True, slots=True)
class ClientIdentified:
    """The client sent ID; ``fields`` are bounded per RFC 2971 (NIL values become "")."""

    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class CommandRejected:
    """A BAD (or an unsupported-mechanism NO) was sent; counts toward max_bad_commands."""

    reason: str


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close after writing the preceding SendData.

    reasons: logout, eof, timeout, too_many_bad_commands, line_too_long, literal_too_large,
    bad_literal.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Login succeeded; the shell owns the stream. ``leftover``: client bytes already read
    and not yet processed (pipelined after the login command); relay them first."""

    leftover: bytes = field(repr=False)


Event = (
    SendData
    | StartTLS
    | LoginRequest
    | PlaintextLoginRefused
    | ClientIdentified
    | CommandRejected
    | CloseConnection
    | Authenticated
)


@dataclass(frozen=True, slots=True)
class PreauthLimits:
    max_line: int = 8192
    max_literal: int = 8192
    max_bad_commands: int = 5
    #: One command with all its line segments and literal bodies (ID may carry 60 strings).
    max_command: int = ID_MAX_LINE + 4096


# -- state machine ----------------------------------------------------------------------------


class PreauthState(enum.Enum):
    NOT_AUTHENTICATED = "not_authenticated"  # reading commands
    AUTHENTICATING = "authenticating"  # AUTHENTICATE exchange: reading SASL responses
    STARTTLS_PENDING = "starttls_pending"  # OK sent; the shell does the handshake
    LOGGING_IN = "logging_in"  # LoginRequest emitted; waiting for the shell's verdict
    AUTHENTICATED = "authenticated"  # done: the shell owns the stream
    CLOSED = "closed"


class Trigger(enum.Enum):
    STARTTLS_ACCEPTED = "starttls_accepted"
    TLS_STARTED = "tls_started"
    SASL_STARTED = "sasl_started"
    SASL_ENDED = "sasl_ended"  # cancelled or malformed: back to commands
    LOGIN_REQUESTED = "login_requested"
    LOGIN_FAILED = "login_failed"
    OAUTH_ERROR_SENT = "oauth_error_sent"  # RFC 7628 error challenge: await the client's ^A
    LOGIN_SUCCEEDED = "login_succeeded"
    CLOSE = "close"


S = PreauthState
T = Trigger

#: The only place where the pre-auth state changes. Missing pair = PreauthStateError.
TRANSITIONS: Final[dict[tuple[PreauthState, Trigger], PreauthState]] = {
    (S.NOT_AUTHENTICATED, T.STARTTLS_ACCEPTED): S.STARTTLS_PENDING,
    (S.STARTTLS_PENDING, T.TLS_STARTED): S.NOT_AUTHENTICATED,
    (S.NOT_AUTHENTICATED, T.SASL_STARTED): S.AUTHENTICATING,
    (S.AUTHENTICATING, T.SASL_ENDED): S.NOT_AUTHENTICATED,
    (S.NOT_AUTHENTICATED, T.LOGIN_REQUESTED): S.LOGGING_IN,
    (S.AUTHENTICATING, T.LOGIN_REQUESTED): S.LOGGING_IN,
    (S.LOGGING_IN, T.LOGIN_FAILED): S.NOT_AUTHENTICATED,
    (S.LOGGING_IN, T.OAUTH_ERROR_SENT): S.AUTHENTICATING,
    (S.LOGGING_IN, T.LOGIN_SUCCEEDED): S.AUTHENTICATED,
    (S.NOT_AUTHENTICATED, T.CLOSE): S.CLOSED,
    (S.AUTHENTICATING, T.CLOSE): S.CLOSED,
    (S.STARTTLS_PENDING, T.CLOSE): S.CLOSED,
    (S.LOGGING_IN, T.CLOSE): S.CLOSED,
}


class PreauthStateError(RuntimeError):
    """The shell called a method the current state does not allow (a shell bug)."""


class _Stop(Exception):
    """Internal: stop processing input (state left NOT_AUTHENTICATED/AUTHENTICATING)."""


class PreauthConnection:
    """One client connection from greeting until login succeeds (or the connection ends).

    Drive it with :meth:`receive_data` and act on the returned events in order. The shell
    also reports what happened outside: TLS handshake done, login verdict, timeout.
    """

    def __init__(
        self,
        *,
        tls_active: bool,
        starttls_allowed: bool,
        limits: PreauthLimits,
        greeting_text: str = "imap-gateway ready.",
        privacy_text: str = PRIVACY_TEXT,
        oauth_challenge: bytes | None = None,
    ) -> None:
        """``oauth_challenge``: the base64 RFC 7628 error message a failed OAUTHBEARER or
        XOAUTH2 login is sent before its NO; None: those mechanisms are not offered."""
        self.oauth_challenge = oauth_challenge
        self.tls_active = tls_active
        #: Text of ``NO [PRIVACYREQUIRED]``: see :func:`privacy_text`.
        self.privacy_text = privacy_text
        self.starttls_allowed = starttls_allowed
        self.limits = limits
        self.greeting_text = greeting_text
        self.state = PreauthState.NOT_AUTHENTICATED
        self.bad_commands = 0
        #: Total bytes thrown away after STARTTLS (also those arriving before tls_started()).
        self.discarded = 0
        self._framer = self._new_framer()
        self._held = bytearray()  # input while LOGGING_IN (<= 4 * max_line)
        self._pending_tag = b""  # tag of the LOGIN/AUTHENTICATE being decided
        self._pending_mech = ""  # its mechanism
        self._reset_command()
        self._sasl_mech = ""
        self._sasl_tag = b""
        self._sasl_user: str | None = None

    def _new_framer(self) -> Framer:
        return Framer(self.limits.max_line, self.limits.max_literal, role="client",
                      long_lines=(_ID_LINE_RE, max(ID_MAX_LINE, self.limits.max_line)))

    def _reset_command(self) -> None:
        self._parts: list[tuple[bytes, bytes | None]] = []
        self._head: tuple[bytes, str, int] | ParseError | None = None
        self._literal_buf: bytearray | None = None  # body of the literal being received
        self._refusal: list[Event] | None = None  # replies for a command being discarded
        self._cmd_size = 0

    def _transition(self, trigger: Trigger) -> None:
        new = TRANSITIONS.get((self.state, trigger))
        if new is None:
            raise PreauthStateError(
                f"pre-auth connection: {trigger.value!r} is not allowed in state "
                f"{self.state.value!r}"
            )
        self.state = new

    # -- shell API ------------------------------------------------------------------------------

    @property
    def capabilities(self) -> str:
        """The capability list as the client sees it right now."""
        if self.tls_active:
            return CAPS_TLS if self.oauth_challenge is None else CAPS_TLS_OAUTH
        return CAPS_STARTTLS if self.starttls_allowed else CAPS_PLAINTEXT

    def initial_events(self) -> list[Event]:
        """The greeting. After STARTTLS no second greeting is sent (RFC 9051 §6.2.1)."""
        return [SendData(untagged("OK", self.greeting_text, "CAPABILITY " + self.capabilities))]

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed client bytes; ``b""`` means the client closed its side."""
        if self.state is S.CLOSED:
            return []
        if self.state is S.AUTHENTICATED:
            raise PreauthStateError(
                "pre-auth connection: receive_data() after login succeeded; the relay "
                "owns the stream now"
            )
        if not data:
            self._transition(T.CLOSE)
            return [CloseConnection("eof")]
        if self.state is S.STARTTLS_PENDING:
            self.discarded += len(data)
            return []
        if self.state is S.LOGGING_IN:
            self._held += data
            if len(self._held) > 4 * self.limits.max_line:
                return self._close("line_too_long", untagged("BYE", "Too much data during login."))
            return []
        self._framer.receive_data(data)
        return self._process()

    def tls_started(self) -> list[Event]:
        """The TLS handshake after STARTTLS succeeded: read commands again (no greeting)."""
        if self.state is S.CLOSED:
            return []
        self._transition(T.TLS_STARTED)
        self.tls_active = True
        self._framer = self._new_framer()
        self._reset_command()
        return []

    def login_failed(self, alert: str | None = None) -> list[Event]:
        """The shell refused the LoginRequest. Same reply whatever failed.

        ``alert`` replaces the uniform reply with ``NO [ALERT] <alert>``, a text the
        client must show its user (RFC 3501 §7.1): the shell's one other refusal, for a
        device waiting for approval. It comes from the configuration, never from the
        client, and must be printable ASCII (a bad one is a ValueError, not a reply).
        """
        if alert is None:
            if self._pending_mech in sasl.OAUTH_MECHANISMS and self.oauth_challenge is not None:
                return self._oauth_error()
            return self._end_login(AUTH_FAILED)
        if not alert or not all(" " <= c <= "~" for c in alert):
            raise ValueError(f"alert text must be printable ASCII: {alert!r}")
        return self._end_login(b" NO [ALERT] " + alert.encode("ascii") + b"\r\n")

    def _oauth_error(self) -> list[Event]:
        """RFC 7628 §3.2.2: a failed token is answered with an error challenge; the client
        answers it (with ^A) and only then gets the uniform tagged NO."""
        if self.state is S.CLOSED:
            return []
        self._transition(T.OAUTH_ERROR_SENT)
        self._sasl_mech, self._sasl_tag, self._sasl_user = _OAUTH_ERROR, self._pending_tag, None
        assert self.oauth_challenge is not None
        events: list[Event] = [SendData(b"+ " + self.oauth_challenge + b"\r\n")]
        held = bytes(self._held)
        self._held.clear()
        if held:
            self._framer.receive_data(held)
        events += self._process()
        return events

    def login_unavailable(self) -> list[Event]:
        """The backend could not be reached: the client may retry later (RFC 5530 UNAVAILABLE).

        Not a credential verdict, so it says so; it reveals nothing about the user.
        """
        return self._end_login(UNAVAILABLE)

    def _end_login(self, reply: bytes) -> list[Event]:
        """Answer the pending login with ``reply`` and read the commands held meanwhile."""
        if self.state is S.CLOSED:
            return []
        self._transition(T.LOGIN_FAILED)
        events: list[Event] = [SendData(self._pending_tag + reply)]
        held = bytes(self._held)
        self._held.clear()
        if held:
            self._framer.receive_data(held)
        events += self._process()
        return events

    def login_succeeded(self) -> list[Event]:
        """The shell logged the user in (it sends the tagged OK itself)."""
        if self.state is S.CLOSED:
            return []
        self._transition(T.LOGIN_SUCCEEDED)
        leftover = bytes(self._held)
        self._held.clear()
        return [Authenticated(leftover)]

    def timed_out(self) -> list[Event]:
        """The shell's pre-auth deadline passed."""
        if self.state in (S.CLOSED, S.AUTHENTICATED):
            return []
        return self._close("timeout", untagged("BYE", "Autologout; idle for too long."))

    # -- input processing -------------------------------------------------------------------------

    def _close(self, reason: str, bye: bytes) -> list[Event]:
        self._transition(T.CLOSE)
        return [SendData(bye), CloseConnection(reason)]

    def _process(self) -> list[Event]:
        out: list[Event] = []
        try:
            while self.state in (S.NOT_AUTHENTICATED, S.AUTHENTICATING):
                ev = self._framer.next_event()
                if ev is NEED_DATA:
                    break
                if isinstance(ev, LineSegment):
                    self._on_segment(ev, out)
                elif isinstance(ev, LiteralData):
                    self._on_literal(ev)
                elif isinstance(ev, FramingError):
                    self._on_framing_error(ev, out)
        except _Stop:
            pass
        return out

    def _bad(self, out: list[Event], tag: bytes | None, text: str, *, code: str | None = None,
             status: str = "BAD") -> None:
        """Send a BAD (or counted NO) and count it; close when over the limit."""
        line = tagged(tag, status, text, code) if tag else untagged(status, text, code)
        out.append(SendData(line))
        out.append(CommandRejected(text))
        self.bad_commands += 1
        if self.bad_commands > self.limits.max_bad_commands:
            out += self._close("too_many_bad_commands", untagged("BYE", "Too many invalid commands."))
            raise _Stop

    def _on_framing_error(self, ev: FramingError, out: list[Event]) -> None:
        if ev.kind == "line_too_long":
            out += self._close("line_too_long", untagged("BYE", "Line too long."))
            raise _Stop
        if ev.recoverable:  # too-large sync literal: refuse instead of "+"
            tag = self._tag_for(ev.line, ev.first)
            if self.state is S.AUTHENTICATING:
                self._transition(T.SASL_ENDED)
            self._reset_command()
            self._bad(out, tag, "Literal too large.", code="TOOBIG")
            return
        if ev.kind == "bad_literal":
            out += self._close("bad_literal", untagged("BYE", "Invalid literal marker."))
        else:
            out += self._close("literal_too_large",
                               untagged("BYE", "Literal too large.", "TOOBIG"))
        raise _Stop

    def _tag_for(self, line: bytes, first: bool) -> bytes | None:
        if self.state is S.AUTHENTICATING:
            return self._sasl_tag
        if not first:
            head = self._head
        else:
            head = parse_head(strip_eol(line))
        if isinstance(head, tuple):
            return head[0]
        if isinstance(head, ParseError):
            return head.tag
        return None

    def _on_literal(self, ev: LiteralData) -> None:
        if self._literal_buf is None:
            return  # discarding a refused command's literal
        self._literal_buf += ev.data
        if ev.remaining == 0:
            self._finish_literal()

    def _finish_literal(self) -> None:
        assert self._literal_buf is not None
        text, _ = self._parts[-1]
        self._parts[-1] = (text, bytes(self._literal_buf))
        self._literal_buf = None

    def _on_segment(self, seg: LineSegment, out: list[Event]) -> None:
        if seg.first:
            self._reset_command()
        self._cmd_size += len(seg.data) + (seg.literal.size if seg.literal else 0)
        if self._cmd_size > self.limits.max_command:
            out += self._close("line_too_long", untagged("BYE", "Command too long."))
            raise _Stop
        text = strip_eol(seg.data)
        if self.state is S.AUTHENTICATING:
            self._on_sasl_segment(seg, text, out)
            return
        if seg.first:
            self._head = parse_head(text)
        if seg.literal is not None:
            self._on_literal_segment(seg, text, out)
            return
        if self._refusal is not None:
            out += self._refusal
            refused = self._refusal
            self._reset_command()
            self._count_refusal(refused, out)
            return
        self._parts.append((text, None))
        self._execute(out)

    def _count_refusal(self, refusal: list[Event], out: list[Event]) -> None:
        if any(isinstance(e, CommandRejected) for e in refusal):
            self.bad_commands += 1
            if self.bad_commands > self.limits.max_bad_commands:
                out += self._close(
                    "too_many_bad_commands", untagged("BYE", "Too many invalid commands.")
                )
                raise _Stop

    def _on_literal_segment(self, seg: LineSegment, text: bytes, out: list[Event]) -> None:
        assert seg.literal is not None
        found = find_literal_marker(text)
        before = text[: found[0]] if isinstance(found, tuple) else text
        if self._refusal is None:
            self._refusal = self._literal_refusal()
        if self._refusal is not None:
            if seg.literal.sync:
                # The client waits for "+": refuse now, it will not send the body.
                self._framer.cancel_literal()
                refused = self._refusal
                self._reset_command()
                out += refused
                self._count_refusal(refused, out)
            # Non-sync: the body comes anyway; consume it without keeping it.
            return
        if seg.literal.sync:
            out.append(SendData(READY_FOR_LITERAL))
        self._parts.append((before, None))
        self._literal_buf = bytearray()
        if seg.literal.size == 0:
            self._finish_literal()

    def _literal_refusal(self) -> list[Event] | None:
        """Replies for a command that may not carry a literal, or None if it may."""
        head = self._head
        if not isinstance(head, tuple):
            tag = head.tag if isinstance(head, ParseError) else None
            msg = head.message if isinstance(head, ParseError) else "Invalid command."
            return self._bad_events(tag, msg)
        tag, name, _ = head
        if name in ("LOGIN", "AUTHENTICATE") and not self.tls_active:
            return self._privacy_events(tag, name)
        if name == "ID" or (name == "LOGIN" and self.tls_active):
            return None
        return self._bad_events(tag, f"{name} does not take a literal here.")

    @staticmethod
    def _bad_events(tag: bytes | None, text: str) -> list[Event]:
        line = tagged(tag, "BAD", text) if tag else untagged("BAD", text)
        return [SendData(line), CommandRejected(text)]

    def _privacy_events(self, tag: bytes, mechanism: str,
                        username: str | None = None) -> list[Event]:
        return [
            SendData(tagged(tag, "NO", self.privacy_text, "PRIVACYREQUIRED")),
            PlaintextLoginRefused(mechanism, username),
        ]

    # -- commands ---------------------------------------------------------------------------------

    def _execute(self, out: list[Event]) -> None:
        head = self._head
        parts = self._parts
        self._reset_command()
        if not isinstance(head, tuple):
            if not parts[0][0] and len(parts) == 1:
                self._bad(out, None, "Empty command line.")
            else:
                assert isinstance(head, ParseError)
                self._bad(out, head.tag, head.message)
            return
        tag, name, pos = head
        if name == "LOGIN" and not self.tls_active:
            first = tokenize(parts, start=pos, max_tokens=1)
            user = None
            if not isinstance(first, ParseError) and first:
                raw = as_astring(first[0])
                user = raw.decode("utf-8", "surrogateescape") if raw is not None else None
            out += self._privacy_events(tag, "LOGIN", user)
            return
        args = tokenize(parts, start=pos)
        if isinstance(args, ParseError):
            self._bad(out, tag, args.message)
            return
        handler = _HANDLERS.get(name)
        if handler is None:
            if name in _LATER_COMMANDS:
                self._bad(out, tag, f"{name} is not allowed before authentication.")
            else:
                self._bad(out, tag, "Unknown command.")
            return
        handler(self, tag, args, out)

    def _no_args(self, tag: bytes, name: str, args: list[Token], out: list[Event]) -> bool:
        if args:
            self._bad(out, tag, f"{name} takes no arguments.")
            return False
        return True

    def _cmd_capability(self, tag: bytes, args: list[Token], out: list[Event]) -> None:
        if self._no_args(tag, "CAPABILITY", args, out):
            out.append(SendData(
                untagged("CAPABILITY", self.capabilities) + tagged(tag, "OK", "Capability completed.")
            ))

    def _cmd_noop(self, tag: bytes, args: list[Token], out: list[Event]) -> None:
        if self._no_args(tag, "NOOP", args, out):
            out.append(SendData(tagged(tag, "OK", "NOOP completed.")))

    def _cmd_logout(self, tag: bytes, args: list[Token], out: list[Event]) -> None:
        if self._no_args(tag, "LOGOUT", args, out):
            out += self._close(
                "logout", untagged("BYE", "Logging out") + tagged(tag, "OK", "Logout completed.")
            )
            raise _Stop

    def _cmd_starttls(self, tag: bytes, args: list[Token], out: list[Event]) -> None:
        if not self._no_args(tag, "STARTTLS", args, out):
            return
        if self.tls_active:
            self._bad(out, tag, "TLS is already active.")
            return
        if not self.starttls_allowed:
            self._bad(out, tag, "STARTTLS is not available on this port.")
            return
        out.append(SendData(tagged(tag, "OK", "Begin TLS negotiation now.")))
        self._transition(T.STARTTLS_ACCEPTED)
        # Command injection defence: nothing sent in plaintext after STARTTLS survives.
        dropped = len(self._framer.take_buffered())
        self.discarded += dropped
        out.append(StartTLS(dropped))
        raise _Stop

    def _cmd_id(self, tag: bytes, args: list[Token], out: list[Event]) -> None:
        if len(args) != 1:
            self._bad(out, tag, "ID expects one argument: NIL or a list.")
            return
        fields: dict[str, str] = {}
        arg = args[0]
        if isinstance(arg, ListTok):
            items = arg.items
            if len(items) % 2 or len(items) > 2 * ID_MAX_PAIRS:
                self._bad(out, tag, f"ID expects at most {ID_MAX_PAIRS} field/value pairs.")
                return
            for i in range(0, len(items), 2):
                key, value = items[i], items[i + 1]
                if not isinstance(key, String) or not isinstance(value, String | Nil):
                    self._bad(out, tag, "ID fields are strings, values strings or NIL.")
                    return
                if len(key.value) > ID_MAX_FIELD or (
                    isinstance(value, String) and len(value.value) > ID_MAX_VALUE
                ):
                    self._bad(out, tag, "ID field or value too long.")
                    return
                text = value.value.decode("utf-8", "replace") if isinstance(value, String) else ""
                fields[key.value.decode("utf-8", "replace")] = text
        elif not isinstance(arg, Nil):
            self._bad(out, tag, "ID expects one argument: NIL or a list.")
            return
        out.append(SendData(ID_RESPONSE + tagged(tag, "OK", "ID completed.")))
        out.append(ClientIdentified(dict(fields)))

    def _cmd_login(self, tag: bytes, args: list[Token], out: list[Event]) -> None:
        # Only reached with TLS active (see _execute).
        values = [v for a in args if (v := as_astring(a)) is not None]
        if len(args) != 2 or len(values) != 2:
            self._bad(out, tag, "LOGIN expects a user name and a password.")
            return
        if any(b"\x00" in v or b"\r" in v or b"\n" in v for v in values):
            # RFC 9051 literals are CHAR8 (no NUL). A NUL would also split the SASL PLAIN
            # message the gateway builds for the backend, so the user the policy checked
            # would not be the user the backend logs in.
            self._bad(out, tag, "NUL, CR and LF are not allowed in a user name or password.")
            return
        user, password = (v.decode("utf-8", "surrogateescape") for v in values)
        self._request_login(out, LoginRequest(tag, "LOGIN", user, password))

    def _request_login(self, out: list[Event], request: LoginRequest) -> None:
        self._transition(T.LOGIN_REQUESTED)
        self._pending_tag = request.tag
        self._pending_mech = request.mechanism
        self._held = bytearray(self._framer.take_buffered())
        out.append(request)
        raise _Stop

    def _cmd_authenticate(self, tag: bytes, args: list[Token], out: list[Event]) -> None:
        atoms = [a for a in args if isinstance(a, Atom)]
        if not 1 <= len(args) <= 2 or len(atoms) != len(args):
            if not self.tls_active:
                out += self._privacy_events(tag, "UNKNOWN")
                return
            self._bad(out, tag, "AUTHENTICATE expects a mechanism and an optional response.")
            return
        mech = atoms[0].value.upper()
        if not self.tls_active:
            shown = mech if mech in ("PLAIN", "LOGIN") else "UNKNOWN"
            out += self._privacy_events(tag, shown)
            return
        offered = ("PLAIN", "LOGIN") if self.oauth_challenge is None else (
            "PLAIN", "LOGIN", *sorted(sasl.OAUTH_MECHANISMS))
        if mech not in offered:
            self._bad(out, tag, "Unsupported authentication mechanism.", status="NO")
            return
        self._sasl_mech, self._sasl_tag, self._sasl_user = mech, tag, None
        self._transition(T.SASL_STARTED)
        if len(args) == 2:
            self._sasl_step(atoms[1].value.encode("ascii"), out)
        elif mech != "LOGIN":
            out.append(SendData(b"+ \r\n"))
        else:
            out.append(SendData(b"+ " + sasl.LOGIN_USERNAME_PROMPT + b"\r\n"))

    # -- SASL exchange ----------------------------------------------------------------------------

    def _on_sasl_segment(self, seg: LineSegment, text: bytes, out: list[Event]) -> None:
        if (self._sasl_mech == _OAUTH_ERROR and seg.literal is None and seg.first
                and self._refusal is None):
            self._end_oauth_error(out)  # whatever the client answered (^A, "*", ...)
            return
        if seg.literal is not None or not seg.first or self._refusal is not None:
            # SASL responses are single base64 lines; a literal here is malformed.
            if seg.literal is not None and seg.literal.sync:
                self._framer.cancel_literal()
            elif seg.literal is not None:
                self._refusal = []  # swallow the body and the rest, then answer
                return
            self._sasl_fail(out, "Invalid SASL response.")
            return
        if text == b"*":
            self._sasl_fail(out, "Authentication cancelled.")
            return
        self._sasl_step(text, out)

    def _end_oauth_error(self, out: list[Event]) -> None:
        tag = self._sasl_tag
        self._transition(T.SASL_ENDED)
        self._reset_command()
        self._sasl_mech = ""
        out.append(SendData(tag + AUTH_FAILED))

    def _sasl_fail(self, out: list[Event], text: str) -> None:
        if self._sasl_mech == _OAUTH_ERROR:
            self._end_oauth_error(out)  # the login failed already: its answer is the NO
            return
        tag = self._sasl_tag
        self._transition(T.SASL_ENDED)
        self._reset_command()
        self._bad(out, tag, text)

    def _sasl_step(self, response: bytes, out: list[Event]) -> None:
        tag = self._sasl_tag
        if self._sasl_mech in sasl.OAUTH_MECHANISMS:
            bearer = (sasl.decode_oauthbearer(response) if self._sasl_mech == "OAUTHBEARER"
                      else sasl.decode_xoauth2(response))
            if isinstance(bearer, sasl.SaslError):
                self._sasl_fail(out, bearer.message)
                return
            self._request_login(
                out, LoginRequest(tag, self._sasl_mech, bearer.user, bearer.token))
            return
        if self._sasl_mech == "PLAIN":
            creds = sasl.decode_plain(response)
            if isinstance(creds, sasl.SaslError):
                self._sasl_fail(out, creds.message)
                return
            self._request_login(
                out, LoginRequest(tag, "PLAIN", creds.authcid, creds.password, creds.authzid)
            )
            return
        value = sasl.decode_login_response(response)
        if isinstance(value, sasl.SaslError):
            self._sasl_fail(out, value.message)
            return
        if self._sasl_user is None:
            self._sasl_user = value
            out.append(SendData(b"+ " + sasl.LOGIN_PASSWORD_PROMPT + b"\r\n"))
            return
        user, self._sasl_user = self._sasl_user, None
        self._request_login(out, LoginRequest(tag, "AUTH-LOGIN", user, value))


_HANDLERS: Final = {
    "CAPABILITY": PreauthConnection._cmd_capability,
    "NOOP": PreauthConnection._cmd_noop,
    "LOGOUT": PreauthConnection._cmd_logout,
    "STARTTLS": PreauthConnection._cmd_starttls,
    "ID": PreauthConnection._cmd_id,
    "LOGIN": PreauthConnection._cmd_login,
    "AUTHENTICATE": PreauthConnection._cmd_authenticate,
}
