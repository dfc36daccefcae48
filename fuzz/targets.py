"""Fuzz targets: one input (a *blob*) in, gateway core driven, invariants checked.

A blob is ``flags`` (1 byte: which configuration) + ``split`` (1 byte: how the data is cut
into ``receive_data`` chunks) + data. Both engines (the hand-written mutator and atheris)
produce blobs, so every failure is replayable from its blob alone.

A target returns normally when every invariant held. A violated invariant raises
:class:`Violation`; any other exception escaping from gateway code is itself the failure
(the core's rule: every input becomes an event or an error value, never an exception).
"""

from __future__ import annotations

import base64
import ipaddress
import re
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth import scopes
from gateway.authpolicy import protocol as policy_proto
from gateway.imap import commands as cm
from gateway.imap import preauth as pa
from gateway.imap import sasl
from gateway.imap.capabilities import DEFAULT_COMMANDS, commands_for_capabilities
from gateway.imap.listfilter import MAX_HELD, ListResponseFilter
from gateway.imap.responses import (
    ResponseScanner,
    ScanResult,
    capability_from_ok,
    parse_response,
    rewrite_login_ok,
)
from gateway.proxy.proxyproto import SIGNATURE, proxy_v2_header

from . import seeds


class Violation(Exception):
    """An invariant did not hold. ``check`` names the invariant (the failure signature)."""

    def __init__(self, check: str, detail: str = "") -> None:
        super().__init__(f"{check}: {detail}" if detail else check)
        self.check = check


def _fail(check: str, detail: str = "") -> None:
    raise Violation(check, detail)


# -- blobs --------------------------------------------------------------------------------------


def decode(blob: bytes) -> tuple[int, int, bytes]:
    """``(flags, split, data)`` of a blob."""
    return (blob[0] if blob else 0), (blob[1] if len(blob) > 1 else 0), blob[2:]


_CUT_SIZES = (4, 16, 64, 512)


def chunks_of(data: bytes, split: int) -> list[bytes]:
    """Cut ``data`` as the ``split`` byte says (``split & 15``): 0-3 whole; 4-5 one chunk per
    line (what a client waiting for ``+`` after each literal marker sends); 6 byte by byte;
    7-15 pseudo-random sizes up to 4/16/64/512 bytes (an LCG seeded by ``split``:
    deterministic, no ``random`` state)."""
    mode = split & 15
    if not data:
        return []
    if mode <= 3:
        return [data]
    if mode <= 5:
        return _lines(data)
    if mode == 6:
        return [data[i : i + 1] for i in range(len(data))]
    top = _CUT_SIZES[(split >> 4) & 3]
    x = (split * 2654435761) & 0x7FFFFFFF
    out = []
    i, n = 0, len(data)
    while i < n:
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        size = 1 + (x >> 8) % top
        out.append(data[i : i + size])
        i += size
    return out


def split_name(split: int) -> str:
    mode = split & 15
    if mode <= 3:
        return "whole"
    if mode <= 5:
        return "one chunk per line"
    if mode == 6:
        return "byte by byte"
    return f"random cuts of 1..{_CUT_SIZES[(split >> 4) & 3]} bytes"


def _lines(data: bytes) -> list[bytes]:
    """``data`` cut after each LF (IMAP's line end; a bare CR is not one)."""
    parts = data.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


#: Split bytes of the sampled split-independence check: one chunk per line, or cuts of
#: 1..16 bytes.
_RESPLITS = (4, 7 | (1 << 4))


def _again(run: Callable, check: str, split: int):  # type: ignore[no-untyped-def]
    """The run with another split; whatever fails there is a split dependence (the input
    passed with its own split), reported with the split that failed."""
    try:
        return run(split)
    except Violation as e:
        raise Violation(check, f"with {split_name(split)}: {e}") from e
    except Exception as e:
        raise Violation(check, f"with {split_name(split)}: {type(e).__name__}: {e}") from e


#: Set by the minimizer: every input gets every re-split (a sampled check's failure must
#: not vanish because removing a byte changed the sample).
FORCE_RESPLIT = False


def _resplits(blob: bytes) -> tuple[int, ...]:
    """About one input in 8 is also run with another split (_RESPLITS) and must give the
    same result."""
    own = blob[1] if len(blob) > 1 else 0
    if FORCE_RESPLIT:
        return tuple(s for s in _RESPLITS if s != own)
    h = (len(blob) * 2654435761 + (blob[-1] if blob else 0)) & 0xFFFFFFFF
    if (h >> 7) & 7:
        return ()
    split = _RESPLITS[(h >> 11) & 1]
    return () if split == own else (split,)


def _check_reply(data: bytes, where: str) -> None:
    """Gateway-built replies: complete CRLF lines, no bare CR or LF (no response injection)."""
    if not data.endswith(b"\r\n"):
        _fail(f"{where}.reply_not_crlf", repr(data[-60:]))
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        _fail(f"{where}.reply_bare_cr_or_lf", repr(data[:120]))


# -- post-auth command stream ---------------------------------------------------------------------

CAPS_LINE = b"IMAP4rev1 SASL-IR ID ENABLE IDLE LITERAL+ MOVE UIDPLUS SORT THREAD=REFS"
EXTENDED_CAPS = (
    "IMAP4rev1 IDLE NAMESPACE UNSELECT ID ENABLE MOVE UIDPLUS SORT THREAD=REFS QUOTA ACL "
    "METADATA NOTIFY REPLACE XLIST UNAUTHENTICATE IMAP4rev2".split()
)
EXTENDED_COMMANDS = commands_for_capabilities(EXTENDED_CAPS)
#: Answered by the gateway, never forwarded (see CommandStream._builtin).
GATEWAY_ANSWERED = frozenset(
    {"CAPABILITY", "COMPRESS", "STARTTLS", "LOGIN", "AUTHENTICATE", "UNAUTHENTICATE"}
)
MAILBOX_PATTERNS = ("INBOX", "Archive/*")
_ALLOWED_MAILBOX = scopes.mailbox_matcher(MAILBOX_PATTERNS)
SCOPE_KINDS = (
    ("read-only",),
    ("read-only", "mailboxes=" + ",".join(MAILBOX_PATTERNS)),
    ("full", "mailboxes=" + ",".join(MAILBOX_PATTERNS)),
    ("read-only",),
)
_SELECT_RE = re.compile(rb"^(\S+ )SELECT(?=[ \r\n])", re.IGNORECASE)


@dataclass(frozen=True)
class StreamConfig:
    scopes: tuple[str, ...] | None
    max_line: int
    known: frozenset[str]
    allow_catenate: bool
    #: How the simulated backend answers each literal: "+" (True) or a tagged refusal.
    accept_literals: bool = True

    def make(self, extra_line: int = 0) -> cm.CommandStream:
        return cm.CommandStream(
            capability_line=CAPS_LINE,
            command_filter=scopes.build_filter(self.scopes) if self.scopes else None,
            max_line=self.max_line + extra_line,
            known_commands=self.known,
            allow_catenate=self.allow_catenate,
        )

    def source(self) -> str:
        filt = f"build_filter({self.scopes!r})" if self.scopes else "None"
        known = "DEFAULT_COMMANDS" if self.known is DEFAULT_COMMANDS else (
            f"commands_for_capabilities({' '.join(EXTENDED_CAPS)!r}.split())")
        return (
            "from gateway.auth.scopes import build_filter\n"
            "from gateway.imap.commands import CommandStream\n"
            "from gateway.imap.capabilities import DEFAULT_COMMANDS, commands_for_capabilities\n"
            f"s = CommandStream(capability_line={CAPS_LINE!r}, command_filter={filt},\n"
            f"                  max_line={self.max_line}, known_commands={known},\n"
            f"                  allow_catenate={self.allow_catenate})\n"
        )


def stream_config(flags: int, scoped: bool) -> StreamConfig:
    scope = SCOPE_KINDS[flags & 3] if scoped else None
    mailbox_scoped = scope is not None and any(s.startswith("mailboxes=") for s in scope)
    return StreamConfig(
        scopes=scope,
        max_line=80 if flags & 4 else 65536,
        known=EXTENDED_COMMANDS if flags & 8 else DEFAULT_COMMANDS,
        # the session refuses CATENATE for mailbox-scoped credentials
        allow_catenate=not (mailbox_scoped or flags & 16),
        accept_literals=not flags & 64,
    )


class StreamChecker:
    """Drives a CommandStream and checks it after every chunk and at the end."""

    def __init__(self, config: StreamConfig, features: set) -> None:
        self.config = config
        self.stream = config.make()
        self.features = features
        self.fed = bytearray()
        self.backend = bytearray()
        self.client = bytearray()
        self.commands: list[str] = []
        self.closed = False

    def feed(self, chunk: bytes) -> None:
        """Feed one chunk; each literal the stream sends on is answered as the backend would
        (``+``, or a refusal when the config says so) before the next chunk."""
        stream = self.stream
        self.fed += chunk
        self._take(stream.receive_data(chunk))
        while stream.paused and not self.closed:
            self._take(stream.literal_answered(self.config.accept_literals))

    def _take(self, actions: list[cm.Action]) -> None:
        stream = self.stream
        if self.closed:
            if actions:
                _fail("commands.action_after_close", repr(actions[:3]))
            return
        feats = self.features
        for a in actions:
            if self.closed:
                _fail("commands.action_after_close", repr(a))
            cls = type(a)
            if cls is cm.Forward or cls is cm.ForwardLiteral:
                self.backend += a.data
            elif cls is cm.Reply:
                _check_reply(a.data, "commands")
                self.client += a.data
                feats.add(("reply", a.kind, a.data[:40].split(b" ", 2)[1:2] == [b"BAD"]))
            elif cls is cm.Command:
                self.commands.append(a.info.name)
                feats.add(("cmd", a.info.name, a.info.mailbox_unknown))
            elif cls is cm.Close:
                _check_reply(a.data, "commands")
                self.closed = True
                feats.add(("close", a.reason))
            else:
                _fail("commands.unknown_action", type(a).__name__)
        if stream.closed != self.closed:
            _fail("commands.closed_without_close_action")
        framer = stream._framer
        if framer.partial_len > framer.max_line:
            _fail("commands.partial_over_max_line", f"{framer.partial_len} > {framer.max_line}")
        if stream._mode == "collect" and (
            stream._held_size > cm.MAX_COLLECTED or len(stream._literal_buf) > cm.MAX_COLLECTED
        ):
            _fail("commands.collect_over_bound", f"held {stream._held_size}")
        feats.add(("mode", stream._mode, framer._literal_remaining > 0))

    def finish(self, eof: bool) -> None:
        if eof and self.stream.receive_data(b""):
            _fail("commands.actions_on_eof")
        fed, backend = bytes(self.fed), bytes(self.backend)
        lines = fed.count(b"\n")
        # Only "{n}" -> "{n+}" (one per line segment) and SELECT -> EXAMINE add bytes.
        if len(backend) > len(fed) + 2 * lines:
            _fail("commands.forward_amplified", f"{len(backend)} bytes from {len(fed)}")
        if len(self.client) > 400 * (lines + 1) + 2 * len(fed):
            _fail("commands.reply_amplified", f"{len(self.client)} bytes from {len(fed)}")
        read_only = self.config.scopes is not None and "read-only" in self.config.scopes
        if not _has_literal_marker(fed):
            _check_line_subsequence(fed, backend, read_only)
        if self.config.accept_literals:  # refused literals leave markers without bodies
            self._check_fixed_point(backend, read_only)

    def _check_fixed_point(self, backend: bytes, read_only: bool) -> None:
        """What the backend receives, read again by a fresh stream with the same rules, is
        forwarded unchanged, with no reply: the gateway and the backend see the same
        commands, and each of them is one the rules allow."""
        again = self.config.make(extra_line=64)
        out, reply, names = bytearray(), bytearray(), []
        actions = again.receive_data(backend)
        while True:
            for a in actions:
                if isinstance(a, cm.Forward | cm.ForwardLiteral):
                    out += a.data
                elif isinstance(a, cm.Command):
                    names.append(a.info)
                elif not (isinstance(a, cm.Reply) and a.kind == "continuation"):
                    reply += a.data  # the gateway's own "+" for a literal read whole is fine
            if not again.paused:
                break
            actions = again.literal_answered(True)
        for info in names:
            if info.name in GATEWAY_ANSWERED:
                _fail("commands.forwarded_gateway_command", info.name)
            if info.name not in self.config.known:
                _fail("commands.forwarded_unknown_command", info.name)
            if read_only and info.name not in scopes.READ_ONLY_COMMANDS:
                _fail("commands.read_only_forwarded_write", info.name)
            if self.config.scopes and any(
                s.startswith("mailboxes=") for s in self.config.scopes
            ):
                if info.name not in scopes.MAILBOX_SCOPED_COMMANDS:
                    _fail("commands.mailbox_scope_forwarded_command", info.name)
                if info.name not in ("LIST", "LSUB", "XLIST") and (
                    info.mailbox_unknown
                    or (info.mailbox is not None and not _ALLOWED_MAILBOX(info.mailbox))
                ):
                    _fail("commands.mailbox_scope_forwarded_mailbox", repr(info.mailbox))
        if bytes(out) != backend or reply:
            _fail(
                "commands.forwarded_stream_not_a_fixed_point",
                f"re-read forwards {len(out)}/{len(backend)} bytes, replies {bytes(reply[:80])!r}",
            )


def _has_literal_marker(data: bytes) -> bool:
    return b"}\n" in data or b"}\r\n" in data


def _check_line_subsequence(fed: bytes, backend: bytes, read_only: bool) -> None:
    """Without literals, what is forwarded is whole input lines, in input order (a read-only
    scope may turn SELECT into EXAMINE)."""
    inp = _lines(fed)
    j = 0
    for line in _lines(backend):
        while j < len(inp):
            cand = inp[j]
            j += 1
            if cand == line or (read_only and _SELECT_RE.sub(rb"\1EXAMINE", cand, 1) == line):
                break
        else:
            _fail("commands.forward_not_input_lines", repr(line[:80]))


def run_commands(blob: bytes, features: set, scoped: bool = False) -> None:
    flags, split, data = decode(blob)
    chk = _drive_commands(flags, chunks_of(data, split), scoped, features)
    for resplit in _resplits(blob):
        other = _again(lambda sp: _drive_commands(flags, chunks_of(data, sp), scoped, set()),
                       "commands.split_dependent", resplit)
        if (bytes(other.backend), bytes(other.client), other.commands) != (
            bytes(chk.backend), bytes(chk.client), chk.commands
        ):
            _fail("commands.split_dependent", f"different result with {split_name(resplit)}")


def _drive_commands(flags: int, chunks: list[bytes], scoped: bool, features: set
                    ) -> StreamChecker:
    chk = StreamChecker(stream_config(flags, scoped), features)
    for chunk in chunks:
        chk.feed(chunk)
        if chk.closed:  # later bytes must yield nothing: check once, skip the rest
            if chk.stream.receive_data(b"z NOOP\r\n"):
                _fail("commands.action_after_close")
            break
    chk.finish(eof=bool(flags & 32))
    return chk


# -- pre-auth state machine -------------------------------------------------------------------------

_ID_HEAD = re.compile(rb"[^ \r\n]{1,48} [Ii][Dd] ")
SMALL_LIMITS = pa.PreauthLimits(max_line=64, max_literal=32, max_bad_commands=3, max_command=256)
DEFAULT_LIMITS = pa.PreauthLimits()
_VERDICTS = ("fail", "unavailable", "succeed", "fail-then-succeed")
_ENDS = ("none", "eof", "timeout", "eof+timeout")


class PreauthDriver:
    """Plays the shell around a PreauthConnection (session.py's loop, without I/O)."""

    def __init__(self, flags: int, features: set, oauth: bool = False) -> None:
        self.oauth = oauth
        self.tls_at_start = bool(flags & 1)
        self.limits = SMALL_LIMITS if flags & 4 else DEFAULT_LIMITS
        self.verdict = _VERDICTS[(flags >> 3) & 3]
        self.delay = bool(flags & 32)
        self.end = _ENDS[(flags >> 6) & 3]
        self.conn = pa.PreauthConnection(
            tls_active=self.tls_at_start, starttls_allowed=bool(flags & 2), limits=self.limits,
            oauth_challenge=OAUTH_CHALLENGE if oauth else None,
        )
        self.features = features
        self.transcript: list = []
        self.sent = 0
        self.fed = 0
        self.max_chunk = 0
        self.closed = False
        self.saw_starttls = False
        self.logins = 0
        self.oauth_errors = 0
        self.pending: list[str] = []  # shell calls postponed to the next chunk (delay)
        self.post: StreamChecker | None = None
        greeting = self.conn.initial_events()
        self._handle(greeting)
        caps = self.conn.capabilities
        if not self.conn.tls_active and ("LOGINDISABLED" not in caps or "AUTH=" in caps):
            _fail("preauth.plaintext_caps_offer_login", caps)

    def feed(self, chunk: bytes) -> None:
        self.fed += len(chunk)
        self.max_chunk = max(self.max_chunk, len(chunk))
        if self.post is not None:
            self.post.feed(chunk)
            return
        conn = self.conn
        tls_pending = conn.state is pa.PreauthState.STARTTLS_PENDING
        events = conn.receive_data(chunk)
        if self.closed and events:
            _fail("preauth.events_after_close", repr(events[:3]))
        if tls_pending and events:
            _fail("preauth.reply_before_tls_handshake", repr(events[:3]))
        self._handle(events)
        self._run_pending(once=True)
        self._check_bounds()

    def _run_pending(self, once: bool = False) -> None:
        """Make the postponed shell calls (``once``: only those queued before now)."""
        while self.pending and not self.closed and self.post is None:
            calls, self.pending = self.pending, []
            for call in calls:
                if self.closed or self.post is not None:
                    break
                if call == "tls_started":
                    self._tls_started()
                else:
                    self._answer_login()
            if once:
                break

    def finish(self) -> None:
        self._run_pending()
        if self.post is not None:
            self.post.finish(eof=self.end != "none")
            return
        conn = self.conn
        if self.end in ("eof", "eof+timeout"):
            events = conn.receive_data(b"")
            if self.closed and events:
                _fail("preauth.events_after_close", repr(events))
            if not self.closed and not any(isinstance(e, pa.CloseConnection) for e in events):
                _fail("preauth.eof_without_close")
            self._handle(events)
        if self.end in ("timeout", "eof+timeout"):
            events = conn.timed_out()
            if self.closed and events:
                _fail("preauth.events_after_close", repr(events))
            self._handle(events)
        if self.sent > 200 * (self.fed + 1) + 1000:
            _fail("preauth.reply_amplified", f"{self.sent} bytes for {self.fed}")

    def _check_bounds(self) -> None:
        if self.closed or self.post is not None:
            return
        conn, lim = self.conn, self.limits
        # an ID line may grow to pa.ID_MAX_LINE (RFC 2971's largest), any other to max_line
        line_bound = max(lim.max_line, pa.ID_MAX_LINE)
        if conn._framer.partial_len > line_bound or (
                conn._framer.partial_len > lim.max_line and not _ID_HEAD.match(
                    bytes(conn._framer._partial[:64]))):
            _fail("preauth.partial_over_max_line", f"{conn._framer.partial_len}")
        if conn._cmd_size > lim.max_command:
            _fail("preauth.command_over_max_command", f"{conn._cmd_size}")
        if conn._literal_buf is not None and len(conn._literal_buf) > lim.max_literal:
            _fail("preauth.literal_over_max_literal", f"{len(conn._literal_buf)}")
        if len(conn._held) > 4 * lim.max_line + lim.max_line + self.max_chunk:
            _fail("preauth.held_over_bound", f"{len(conn._held)}")
        if conn.bad_commands > lim.max_bad_commands + 1:
            _fail("preauth.bad_commands_over_limit", f"{conn.bad_commands}")

    def _handle(self, events: list) -> None:
        """Act on events like the shell; shell calls made in reaction are handled in turn
        (a work queue, not recursion: a login's held bytes may hold many more logins)."""
        queue = deque(events)
        conn = self.conn
        feats = self.features
        while queue:
            ev = queue.popleft()
            if self.closed:
                _fail("preauth.event_after_close", repr(ev))
            cls = type(ev)
            if cls is pa.SendData:
                _check_reply(ev.data, "preauth")
                if ev.data.startswith(b"+ " + OAUTH_CHALLENGE):
                    if not self.oauth:
                        _fail("preauth.oauth_challenge_not_offered")
                    self.oauth_errors += 1
                self.sent += len(ev.data)
                self.transcript.append(ev.data)
                feats.add(("send", ev.data[:48].split(b" ", 3)[1:3].__repr__()))
                continue
            feats.add(("ev", cls.__name__, conn.state.value))
            if cls is pa.CloseConnection:
                if queue:
                    _fail("preauth.events_after_close", repr(list(queue)[:3]))
                if conn.state is not pa.PreauthState.CLOSED:
                    _fail("preauth.close_not_closed", conn.state.value)
                self.closed = True
                self.transcript.append(("close", ev.reason))
            elif cls is pa.StartTLS:
                self.saw_starttls = True
                if conn.tls_active or not conn.starttls_allowed:
                    _fail("preauth.starttls_when_not_allowed")
                if conn.state is not pa.PreauthState.STARTTLS_PENDING:
                    _fail("preauth.starttls_state", conn.state.value)
                if conn._framer.buffered_len:
                    _fail("preauth.starttls_kept_plaintext_bytes")
                if self.delay:
                    self.pending.append("tls_started")
                else:
                    self._tls_started()
            elif cls is pa.LoginRequest:
                self._check_login(ev)
                if self.delay:
                    self.pending.append("login")
                else:
                    queue.extend(self._answer_login(handle=False))
            elif cls is pa.Authenticated:
                if conn.state is not pa.PreauthState.AUTHENTICATED or queue:
                    _fail("preauth.authenticated_state")
                self.transcript.append("authenticated")
                self.post = StreamChecker(stream_config(0, False), feats)
                if ev.leftover:
                    self.post.feed(ev.leftover)
            elif cls is pa.PlaintextLoginRefused:
                if conn.tls_active:
                    _fail("preauth.privacy_refusal_with_tls")
                self.transcript.append(("refused", ev.mechanism, ev.username))
            elif cls is pa.ClientIdentified:
                f = ev.fields
                if len(f) > pa.ID_MAX_PAIRS or any(
                    len(k) > pa.ID_MAX_FIELD or len(v) > pa.ID_MAX_VALUE for k, v in f.items()
                ):
                    _fail("preauth.id_over_rfc2971_bounds")
                self.transcript.append(("id", sorted(f.items())))
            elif cls is pa.CommandRejected:
                self.transcript.append(("rejected", ev.reason))
            else:
                _fail("preauth.unknown_event", cls.__name__)

    def _check_login(self, ev: pa.LoginRequest) -> None:
        conn = self.conn
        if not conn.tls_active:
            _fail("preauth.credential_before_tls", ev.mechanism)
        if ev.mechanism in sasl.OAUTH_MECHANISMS:
            if not self.oauth:
                _fail("preauth.oauth_login_not_offered", ev.mechanism)
            # the shell sends the token to the provider: RFC 6750 b64token, nothing else
            if not _B64TOKEN.fullmatch(ev.password) or len(ev.password) > self.limits.max_line:
                _fail("preauth.oauth_token_not_b64token", repr(ev.password[:40]))
        if conn.state is not pa.PreauthState.LOGGING_IN:
            _fail("preauth.login_state", conn.state.value)
        # The shell hands these to sasl.encode_plain for the backend login: a NUL there
        # would raise in the shell (and split the user name the policy checked).
        try:
            sasl.encode_plain(ev.authzid, ev.username, ev.password)
        except ValueError:
            _fail("preauth.login_request_not_encodable", ev.mechanism)
        self.transcript.append(("login", ev.tag, ev.mechanism, ev.username, ev.password,
                                ev.authzid))

    def _tls_started(self) -> None:
        events = self.conn.tls_started()
        if events:
            _fail("preauth.greeting_after_starttls", repr(events))
        if not self.conn.tls_active or self.conn.state is not pa.PreauthState.NOT_AUTHENTICATED:
            _fail("preauth.tls_started_state", self.conn.state.value)

    def _answer_login(self, handle: bool = True) -> list:
        """Give the shell's verdict; ``handle=False``: return the events instead."""
        verdict = self.verdict
        if verdict == "fail-then-succeed":
            verdict = "succeed" if self.logins else "fail"
        self.logins += 1
        self.transcript.append(("verdict", verdict))
        conn = self.conn
        if verdict == "succeed":
            events = conn.login_succeeded()
        elif verdict == "unavailable":
            events = conn.login_unavailable()
        else:
            events = conn.login_failed()
        if handle:
            self._handle(events)
            return []
        return events


#: What session.py passes as ``oauth_challenge`` (gateway.proxy.oauth.error_challenge).
OAUTH_CHALLENGE = base64.b64encode(
    b'{"status":"invalid_token","scope":"email","openid-configuration":'
    b'"https://id.example.com/.well-known/openid-configuration"}')
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def run_preauth(blob: bytes, features: set, oauth: bool = False) -> None:
    flags, split, data = decode(blob)
    d = _drive_preauth(flags, chunks_of(data, split), features, oauth)
    if d.oauth_errors and not d.closed and d.post is None:
        features.add(("oauth-error-challenge", d.conn.state.value))
    for resplit in () if d.saw_starttls or d.delay else _resplits(blob):
        other = _again(lambda sp: _drive_preauth(flags, chunks_of(data, sp), set(), oauth),
                       "preauth.split_dependent", resplit)
        if other.saw_starttls or _preauth_view(other) != _preauth_view(d):
            _fail("preauth.split_dependent", f"different result with {split_name(resplit)}")


def _drive_preauth(flags: int, chunks: list[bytes], features: set,
                   oauth: bool = False) -> PreauthDriver:
    d = PreauthDriver(flags, features, oauth)
    for chunk in chunks:
        d.feed(chunk)
        if d.closed:  # later bytes must yield nothing: check once, skip the rest
            if d.conn.receive_data(b"z NOOP\r\n"):
                _fail("preauth.events_after_close")
            break
    d.finish()
    return d


def _preauth_view(d: PreauthDriver) -> tuple:
    sent = b"".join(x for x in d.transcript if isinstance(x, bytes))
    other = [x for x in d.transcript if not isinstance(x, bytes)]
    post = (bytes(d.post.backend), bytes(d.post.client)) if d.post else None
    return sent, other, post


def _preauth_source(flags: int, oauth: bool = False) -> str:
    lim = "PreauthLimits(max_line=64, max_literal=32, max_bad_commands=3, max_command=256)" \
        if flags & 4 else "PreauthLimits()"
    return (
        "from gateway.imap.preauth import PreauthConnection, PreauthLimits\n"
        f"c = PreauthConnection(tls_active={bool(flags & 1)}, "
        f"starttls_allowed={bool(flags & 2)},\n"
        f"                      limits={lim}"
        + (",\n                      oauth_challenge=fuzz.targets.OAUTH_CHALLENGE)\n"
           if oauth else ")\n")
        + f"# shell: login verdict {_VERDICTS[(flags >> 3) & 3]!r}, "
        f"{'answered after the next chunk' if flags & 32 else 'answered at once'}; "
        f"at the end: {_ENDS[(flags >> 6) & 3]}\n"
    )


# -- backend response scanning -----------------------------------------------------------------------

_MATCHERS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("allow-all", lambda name: True),
    ("deny-all", lambda name: False),
    ("INBOX,Archive/*", _ALLOWED_MAILBOX),
    ("INBOX", scopes.mailbox_matcher(("INBOX",))),
)
_RESPONSE_KINDS = frozenset({"tagged", "untagged", "continuation", "invalid"})


def run_responses(blob: bytes, features: set) -> None:
    flags, split, data = decode(blob)
    result = _scan(flags, chunks_of(data, split), features)
    _check_response_lines(data, features)
    for resplit in _resplits(blob):
        again = _again(lambda sp: _scan(flags, chunks_of(data, sp), set()),
                       "responses.split_dependent", resplit)
        if again != result:
            _fail("responses.split_dependent", f"different result with {split_name(resplit)}")


def _scan(flags: int, chunks: list[bytes], features: set) -> tuple:
    max_line = 128 if flags & 1 else 16 * 1024 * 1024
    matcher_name, matcher = _MATCHERS[(flags >> 1) & 3]
    scanner = ResponseScanner(max_line=max_line)
    lf = ListResponseFilter(matcher, max_line=max_line)
    fed = bytearray()
    out = bytearray()
    expunged = 0
    completed: list = []
    last = None
    for chunk in chunks:
        fed += chunk
        r = scanner.receive_data(chunk)
        if type(r) is not ScanResult or r.expunged < 0:
            _fail("responses.bad_scan_result", repr(r))
        if r.at_line_boundary and (scanner.broken is not None or not fed.endswith(b"\n")):
            _fail("responses.boundary_inside_a_line")
        expunged += r.expunged
        completed += r.completed
        for tag, status in r.completed:
            if status not in ("OK", "NO", "BAD") or not tag:
                _fail("responses.bad_completion", repr((tag, status)))
        last = r.at_line_boundary
        if scanner._framer.partial_len > max_line:
            _fail("responses.partial_over_max_line")
        piece = lf.receive_data(chunk)
        if type(piece) is not bytes:
            _fail("responses.listfilter_not_bytes", type(piece).__name__)
        out += piece
        if lf._framer.partial_len > max_line:
            _fail("responses.listfilter_partial_over_max_line")
        if lf._mode == "hold" and lf._held_size > MAX_HELD:
            _fail("responses.listfilter_held_over_bound", f"{lf._held_size}")
        if lf.at_line_boundary and (lf._held or lf._mode != "pass"):
            _fail("responses.listfilter_holds_at_boundary")
    features.add(("scan", scanner.broken is not None, bool(expunged), len(completed) > 0, last))
    features.add(("lf", matcher_name, lf.broken, len(out) == len(fed)))
    if not lf.broken:
        _check_only_candidates_removed(bytes(fed), bytes(out))
        if lf.at_line_boundary:
            again = ListResponseFilter(matcher, max_line=max_line).receive_data(bytes(out))
            if again != out:
                _fail("responses.listfilter_not_idempotent")
    return expunged, completed, last, scanner.broken is not None, bytes(out), lf.broken


_CANDIDATE_RE = re.compile(rb"\* (?:LIST|LSUB|XLIST|STATUS) ", re.IGNORECASE)


def _check_only_candidates_removed(fed: bytes, out: bytes) -> None:
    """The list filter's output is its input, in order, less whole lines; each run of
    removed lines starts with an untagged LIST/LSUB/XLIST/STATUS response (the rest of
    the run is that response's literal and continuation lines)."""
    inp, outl = _lines(fed), _lines(out)
    if _greedy_alignment(inp, outl) or _any_alignment(inp, outl):
        return
    _fail("responses.listfilter_removed_other_response")


def _out_matches(inp_line: bytes, out_line: bytes, last: bool) -> bool:
    if last and not out_line.endswith(b"\n"):  # a literal still streaming: a prefix
        return inp_line.startswith(out_line)
    return inp_line == out_line


def _removable(line: bytes, in_run: bool) -> bool:
    return in_run or not line.endswith(b"\n") or _CANDIDATE_RE.match(line) is not None


def _greedy_alignment(inp: list[bytes], outl: list[bytes]) -> bool:
    """Each output line matched to the first equal input line (a witness, or False)."""
    j, m = 0, len(outl)
    in_run = False
    for k, line in enumerate(outl):
        while j < len(inp) and not _out_matches(inp[j], line, k == m - 1):
            if not _removable(inp[j], in_run):
                return False
            in_run = True
            j += 1
        if j == len(inp):
            return False
        j += 1
        in_run = False
        if k == m - 1 and not line.endswith(b"\n"):
            return True
    return all(_removable(x, in_run or i > 0) for i, x in enumerate(inp[j:]))


def _any_alignment(inp: list[bytes], outl: list[bytes]) -> bool:
    """Exhaustive version of _greedy_alignment (repeated lines make greedy choices wrong);
    gives up (True) past 256 live states."""
    m = len(outl)
    states = {(0, False)}
    for line in inp:
        nxt = set()
        for k, in_run in states:
            if k < m and _out_matches(line, outl[k], k == m - 1):
                if k == m - 1 and not outl[k].endswith(b"\n"):
                    return True
                nxt.add((k + 1, False))
            if _removable(line, in_run):
                nxt.add((k, True))
        if not nxt:
            return False
        if len(nxt) > 256:
            return True
        states = nxt
    return any(k == m for k, _ in states)


def _check_response_lines(data: bytes, features: set) -> None:
    for n, line in enumerate(_lines(data)):
        if n >= 64:
            break
        r = parse_response(line)
        if r.kind not in _RESPONSE_KINDS:
            _fail("responses.parse_kind", r.kind)
        caps = capability_from_ok(line)
        if caps is not None and not all(isinstance(c, str) and c for c in caps):
            _fail("responses.capability_list")
        new = rewrite_login_ok(line)
        if type(new) is not bytes:
            _fail("responses.rewrite_not_bytes")
        if new != line:
            features.add(("rewrote", r.status))
            if caps is None or line.startswith((b"*", b"+")):
                _fail("responses.rewrote_other_line", repr(line[:80]))
            eol = b"\r\n" if line.endswith(b"\r\n") else b"\n" if line.endswith(b"\n") else b""
            if not new.endswith(eol):
                _fail("responses.rewrite_changed_eol")
            if new.count(b"\n") != line.count(b"\n") or new.count(b"\r") > line.count(b"\r"):
                _fail("responses.rewrite_added_line_break")
            kept = capability_from_ok(new) or []
            if any(c.upper() in ("STARTTLS", "LOGINDISABLED")
                   or c.upper().startswith(("AUTH=", "COMPRESS=")) for c in kept):
                _fail("responses.rewrite_kept_dropped_caps", repr(kept[:5]))
        features.add(("line", r.kind, r.status, caps is not None))


# -- SASL decoders -------------------------------------------------------------------------------------

_STRICT_B64 = re.compile(
    rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z"
)
_SASL_MESSAGES = frozenset({
    "Invalid base64 data.",
    "Invalid SASL PLAIN message (expected authzid NUL authcid NUL password).",
    "Invalid SASL PLAIN message (empty user name).",
    "Invalid SASL LOGIN response (NUL).",
})


def _strict_b64(text: bytes) -> bytes | None:
    """RFC 4648 base64, canonical: exact padding, zero pad bits (the reference); ``=`` is the
    empty message."""
    if text == b"=":
        return b""
    if _STRICT_B64.match(text) is None:
        return None
    decoded = base64.b64decode(text)
    # canonical only: unused bits of the last character are zero (RFC 4648 section 3.5)
    return decoded if base64.b64encode(decoded) == text else None


def run_sasl(blob: bytes, features: set) -> None:
    flags, _split, data = decode(blob)
    text = base64.b64encode(data) if flags & 1 else data
    want = _strict_b64(text)
    raw = sasl.decode_b64(text)
    if isinstance(raw, sasl.SaslError):
        _check_sasl_error(raw)
        if want is not None:
            _fail("sasl.b64_rejects_strict_base64", repr(text[:60]))
    elif type(raw) is not bytes:
        _fail("sasl.b64_type", type(raw).__name__)
    elif want is None:
        _fail("sasl.b64_accepts_non_strict_base64", repr(text[:60]))
    elif raw != want:
        _fail("sasl.b64_wrong_value")
    features.add(("b64", want is None, isinstance(raw, bytes)))

    creds = sasl.decode_plain(text)
    if isinstance(creds, sasl.SaslError):
        _check_sasl_error(creds)
        features.add(("plain-error", creds.message))
        if isinstance(raw, bytes):
            parts = raw.split(b"\x00")
            if len(parts) == 3 and parts[1]:
                _fail("sasl.plain_rejects_valid_message")
    elif type(creds) is not sasl.PlainCredentials:
        _fail("sasl.plain_type", type(creds).__name__)
    else:
        if not isinstance(raw, bytes):
            _fail("sasl.plain_accepts_invalid_base64")
        authzid, authcid, password = creds
        if not authcid or any("\x00" in f for f in (authzid, authcid, password)):
            _fail("sasl.plain_bad_fields")
        if base64.b64decode(sasl.encode_plain(authzid, authcid, password)) != raw:
            _fail("sasl.plain_round_trip")
        if "password" in repr(creds):
            _fail("sasl.password_in_repr")
        features.add(("plain-ok", bool(authzid), authcid.isascii()))

    value = sasl.decode_login_response(text)
    if isinstance(value, sasl.SaslError):
        _check_sasl_error(value)
        if isinstance(raw, bytes) and b"\x00" not in raw:
            _fail("sasl.login_rejects_valid_response")
        features.add(("login-error", value.message))
    elif type(value) is not str:
        _fail("sasl.login_type", type(value).__name__)
    else:
        if "\x00" in value or base64.b64decode(sasl.encode_login_response(value)) != raw:
            _fail("sasl.login_round_trip")
        features.add(("login-ok", value.isascii()))


def _check_sasl_error(err: sasl.SaslError) -> None:
    if err.message not in _SASL_MESSAGES:  # fixed texts: a payload never reaches a reply
        _fail("sasl.unexpected_error_text", err.message[:80])


# -- PROXY protocol v2 -------------------------------------------------------------------------------

_FAMILIES = ("v4/v4", "v6/v6", "v4/v6", "v6/v4", "v6%scope/v4", "v4/v4-mapped")
_TLS_NAMES = ("TLSv1.3", "TLSv1.2", None, "")


def _proxy_fields(data: bytes) -> tuple[tuple[str, int], tuple[str, int], str | None]:
    """Socket-address values (what getpeername/getsockname give the session) from bytes."""
    buf = data.ljust(40, b"\x00")
    fam = _FAMILIES[buf[0] % len(_FAMILIES)]
    v4a, v4b = str(ipaddress.IPv4Address(buf[1:5])), str(ipaddress.IPv4Address(buf[5:9]))
    v6a, v6b = str(ipaddress.IPv6Address(buf[1:17])), str(ipaddress.IPv6Address(buf[17:33]))
    src_port, dst_port = struct.unpack("!HH", buf[33:37])
    src, dst = {
        "v4/v4": (v4a, v4b),
        "v6/v6": (v6a, v6b),
        "v4/v6": (v4a, v6b),
        "v6/v4": (v6a, v4b),
        "v6%scope/v4": (str(ipaddress.IPv6Address(b"\xfe\x80" + buf[3:17])) + "%eth0", v4b),
        "v4/v4-mapped": (v4a, "::ffff:" + v4b),
    }[fam]
    sel = buf[37]
    if sel & 3 == 3:
        tail = data[40:104]
        tls = "".join(chr(0x21 + c % 94) for c in tail)  # printable ASCII, as ssl reports
    else:
        tls = _TLS_NAMES[sel & 3]
    return (src, src_port), (dst, dst_port), tls


def parse_proxy_v2(header: bytes) -> dict:
    """An independent PROXY v2 parser (haproxy proxy-protocol.txt §2.2), strict: every
    byte must be accounted for. Raises Violation on anything malformed."""
    if not header.startswith(SIGNATURE) or len(header) < 16:
        _fail("proxy.signature")
    ver_cmd, fam, length = struct.unpack("!BBH", header[12:16])
    if ver_cmd != 0x21:
        _fail("proxy.version_command", hex(ver_cmd))
    body = header[16:]
    if len(body) != length:
        _fail("proxy.length_field", f"{length} != {len(body)}")
    if fam == 0x11:
        if len(body) < 12:
            _fail("proxy.short_ipv4_block")
        src = ipaddress.IPv4Address(body[0:4])
        dst = ipaddress.IPv4Address(body[4:8])
        ports, tlvs = body[8:12], body[12:]
    elif fam == 0x21:
        if len(body) < 36:
            _fail("proxy.short_ipv6_block")
        src = ipaddress.IPv6Address(body[0:16])
        dst = ipaddress.IPv6Address(body[16:32])
        ports, tlvs = body[32:36], body[36:]
    else:
        _fail("proxy.family", hex(fam))
    sport, dport = struct.unpack("!HH", ports)
    out = {"src": src, "dst": dst, "sport": sport, "dport": dport, "tlvs": {}}
    while tlvs:
        if len(tlvs) < 3:
            _fail("proxy.truncated_tlv")
        kind, size = struct.unpack("!BH", tlvs[:3])
        if len(tlvs) < 3 + size:
            _fail("proxy.tlv_overruns_header")
        if kind in out["tlvs"]:
            _fail("proxy.duplicate_tlv")
        out["tlvs"][kind] = tlvs[3 : 3 + size]
        tlvs = tlvs[3 + size :]
    return out


def _as_family(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, v6: bool):
    if v6 and ip.version == 4:
        return ipaddress.IPv6Address(f"::ffff:{ip}")
    return ip


def run_proxy(blob: bytes, features: set) -> None:
    _flags, _split, data = decode(blob)
    src, dst, tls = _proxy_fields(data)
    header = proxy_v2_header(src, dst, tls_version=tls)
    parsed = parse_proxy_v2(header)
    s_ip = ipaddress.ip_address(src[0].split("%")[0])
    d_ip = ipaddress.ip_address(dst[0].split("%")[0])
    v6 = s_ip.version == 6 or d_ip.version == 6
    if (parsed["src"], parsed["dst"]) != (_as_family(s_ip, v6), _as_family(d_ip, v6)):
        _fail("proxy.addresses", f"{parsed['src']} {parsed['dst']} for {src} {dst}")
    if (parsed["sport"], parsed["dport"]) != (src[1], dst[1]):
        _fail("proxy.ports")
    tlvs = parsed["tlvs"]
    if tls is None:
        if tlvs:
            _fail("proxy.unexpected_tlv")
    else:
        ssl = tlvs.get(0x20)
        if ssl is None or set(tlvs) != {0x20} or len(ssl) < 5:
            _fail("proxy.missing_ssl_tlv")
        client, verify = struct.unpack("!BI", ssl[:5])
        if not client & 0x01 or verify != 0:
            _fail("proxy.ssl_tlv_flags")
        sub = parse_proxy_v2(SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 12 + len(ssl) - 5)
                             + bytes(12) + ssl[5:])["tlvs"]
        if sub != {0x21: tls.encode("ascii")}:
            _fail("proxy.ssl_version_sub_tlv")
    features.add(("proxy", v6, tls is None, len(header) > 100))


# -- Dovecot auth-policy requests ------------------------------------------------------------------

_POLICY_COMMANDS = ("allow", "report", None, "allow ")
_GATEWAY_NETS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def run_authpolicy(blob: bytes, features: set) -> None:
    """``parse_request`` of a body: a PolicyRequest or BadRequest, never another exception;
    what it keeps is what the service and the logs can take (bounded text, a canonical
    address or None, UTF-8-encodable strings)."""
    flags, _split, data = decode(blob)
    command = _POLICY_COMMANDS[flags & 3]
    try:
        req = policy_proto.parse_request(command, data)
    except policy_proto.BadRequest as exc:
        if len(str(exc)) > 200:
            _fail("authpolicy.long_error", str(exc)[:80])
        features.add(("policy-bad", str(exc)[:24]))
        return
    if command not in policy_proto.COMMANDS:
        _fail("authpolicy.accepted_unknown_command", repr(command))
    if req.command != command:
        _fail("authpolicy.command_changed")
    texts = (req.login, req.protocol, req.pwhash, req.session_id, req.device_id)
    for text in texts:
        if type(text) is not str or len(text) > policy_proto.MAX_FIELD:
            _fail("authpolicy.text_unbounded", repr(text)[:80])
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            _fail("authpolicy.text_not_utf8", repr(text)[:80])
    for addr in (req.remote, req.real_remote):
        if addr is not None and str(ipaddress.ip_address(addr)) != addr:
            _fail("authpolicy.address_not_canonical", addr)
    if req.protocol != req.protocol.lower() or not req.protocol:
        _fail("authpolicy.protocol_not_lowercase")
    if command == "report" and type(req.success) is not bool:
        _fail("authpolicy.report_without_success")
    if command == "allow" and (req.success is not None or req.policy_reject is not None):
        _fail("authpolicy.allow_with_report_fields")
    policy_proto.is_gateway_relay(req, _GATEWAY_NETS)
    policy_proto.fingerprint(b"k" * 32, req.login, req.pwhash)
    policy_proto.protocol_label(req.protocol)
    features.add(("policy-ok", req.command, req.remote is None, bool(req.login),
                  req.success))


# -- registry -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes, set], None]
    seeds: list[bytes]
    tokens: list[bytes]
    weight: float
    description: str
    source: Callable[[int], str]

    def reproducer(self, blob: bytes) -> str:
        """A Python snippet that feeds the blob's chunks to the gateway code directly."""
        flags, split, data = decode(blob)
        chunks = chunks_of(data, split)
        src = self.source(flags)
        if self.name in ("preauth", "preauth-oauth", "commands", "commands-scoped",
                         "responses"):
            obj = {"preauth": "c", "preauth-oauth": "c", "responses": "r"}.get(self.name, "s")
            lines = [src, f"for chunk in {chunks!r}:", f"    {obj}.receive_data(chunk)"]
            return "\n".join(lines)
        return src + f"data = {data!r}\n"


def _commands_source(scoped: bool) -> Callable[[int], str]:
    return lambda flags: stream_config(flags, scoped).source() + (
        "# then receive_data(b'') (EOF)\n" if flags & 32 else "")


def _responses_source(flags: int) -> str:
    max_line = 128 if flags & 1 else 16 * 1024 * 1024
    name = _MATCHERS[(flags >> 1) & 3][0]
    return (
        "from gateway.imap.responses import ResponseScanner\n"
        "from gateway.imap.listfilter import ListResponseFilter\n"
        f"r = ResponseScanner(max_line={max_line})  # and ListResponseFilter(<{name}>, "
        f"max_line={max_line}) on the same chunks\n"
    )


def _sasl_source(flags: int) -> str:
    enc = "base64.b64encode(data)" if flags & 1 else "data"
    return (
        "from gateway.imap import sasl\n"
        f"# sasl.decode_b64 / decode_plain / decode_login_response of {enc}\n"
    )


def _authpolicy_source(flags: int) -> str:
    return (
        "from gateway.authpolicy.protocol import parse_request\n"
        f"parse_request({_POLICY_COMMANDS[flags & 3]!r}, data)\n"
    )


def _proxy_source(flags: int) -> str:
    return (
        "from gateway.proxyproto import proxy_v2_header\n"
        "# proxy_v2_header(*fuzz.targets._proxy_fields(data))\n"
    )


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("preauth", run_preauth, seeds.PREAUTH, seeds.IMAP_TOKENS, 0.25,
               "PreauthConnection + a shell driver (STARTTLS, login verdicts, "
               "timeout, EOF); after a successful login the rest goes to a CommandStream",
               _preauth_source),
        Target("preauth-oauth", lambda b, f: run_preauth(b, f, oauth=True),
               seeds.PREAUTH_OAUTH + seeds.PREAUTH[-12:-8],
               seeds.IMAP_TOKENS + seeds.OAUTH_TOKENS, 0.10,
               "PreauthConnection offering OAUTHBEARER and XOAUTH2 (oauth_challenge set): "
               "SASL-IR and continuation, the RFC 7628 error challenge and its ^A answer",
               lambda flags: _preauth_source(flags, oauth=True)),
        Target("commands", lambda b, f: run_commands(b, f, False), seeds.COMMANDS,
               seeds.IMAP_TOKENS, 0.15, "CommandStream without a command filter",
               _commands_source(False)),
        Target("commands-scoped", lambda b, f: run_commands(b, f, True), seeds.COMMANDS,
               seeds.IMAP_TOKENS, 0.15,
               "CommandStream with scope filters from gateway.auth.scopes.build_filter "
               "(read-only; read-only + mailboxes=; mailboxes=)", _commands_source(True)),
        Target("responses", run_responses, seeds.RESPONSES, seeds.IMAP_TOKENS, 0.15,
               "ResponseScanner, ListResponseFilter, parse_response, "
               "capability_from_ok, rewrite_login_ok", _responses_source),
        Target("sasl", run_sasl, seeds.SASL, seeds.SASL_TOKENS, 0.10,
               "sasl.decode_b64, decode_plain, decode_login_response (+ encoders)",
               _sasl_source),
        Target("proxyproto", run_proxy, seeds.PROXY, [], 0.05,
               "proxy_v2_header (the gateway only builds PROXY v2; checked by an "
               "independent parser)", _proxy_source),
        Target("authpolicy", run_authpolicy, seeds.AUTHPOLICY, seeds.AUTHPOLICY_TOKENS, 0.05,
               "gateway.authpolicy.protocol.parse_request of a Dovecot policy body "
               "(+ is_gateway_relay, fingerprint)", _authpolicy_source),
    )
}
