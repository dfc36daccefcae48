"""The post-login relay as a sans-IO object: client bytes and backend bytes in, actions out.

Rules of this module:

1. It owns every rule of the logged-in session that is about bytes: what goes to the
   backend (the :class:`~gateway.imap.commands.CommandStream` decides, command by
   command), where the gateway may write its own replies into the backend->client stream
   (only between two responses), which backend continuation requests the client must not
   see, when reading the client must pause, and why the session ends.
2. Literal synchronisation: every literal goes to the backend as ``{n}`` and nothing more
   is sent until the backend answers it (see commands.py, rule 3). The relay reads that
   answer: a ``+`` line resumes the command stream, a tagged response for the waiting
   command tells it the literal was refused. A command that opens with a literal is held
   until the backend has answered every earlier command, so the only tagged response that
   can arrive while the relay waits is that command's own.
3. It never raises on client or backend bytes, and does no I/O, no clock, no logging.
   The trio shell (gateway/relay.py) is two pump loops around it.

Costs and bounds: the backend->client hot path is one framer pass per chunk (O(lines);
literal bodies are skipped by length) and, when nothing is cut or held back, the chunk goes
to the client as the very object that came in. The gateway's own replies wait for a
response boundary in a queue of at most ``max_injected`` bytes: past that, the relay stops
reading the client until the queue drains (:attr:`Relay.reading_client`). While it waits
for the backend's answer to a literal, a response line that could be the ``+`` to cut is
held back until its line end (at most one line, bounded by the scanner's ``max_line``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Protocol

from .commands import Action as StreamAction
from .commands import Close, Command, CommandInfo, CommandStream, Forward, ForwardLiteral, Reply
from .responses import ResponseScanner, untagged

__all__ = [
    "BytesSeen",
    "CommandSeen",
    "End",
    "Expunged",
    "Refused",
    "Relay",
    "RelayAction",
    "ResponseFilter",
    "ToBackend",
    "ToClient",
]

#: Replies the gateway writes itself that are not refusals of a client command.
_NOT_REFUSALS: Final = frozenset({"continuation", "answered"})


class ResponseFilter(Protocol):
    """Rewrites the backend->client stream (e.g. ``ListResponseFilter``)."""

    @property
    def at_line_boundary(self) -> bool: ...

    def receive_data(self, data: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class ToBackend:
    data: bytes | memoryview = field(repr=False)


@dataclass(frozen=True, slots=True)
class ToClient:
    data: bytes | memoryview = field(repr=False)


@dataclass(frozen=True, slots=True)
class CommandSeen:
    """A client command was read (forwarded or not): for counters and detectors."""

    info: CommandInfo


@dataclass(frozen=True, slots=True)
class Refused:
    """The gateway answered a client command itself instead of forwarding it."""

    kind: str


@dataclass(frozen=True, slots=True)
class Expunged:
    """The backend reported ``count`` expunged messages."""

    count: int


@dataclass(frozen=True, slots=True)
class BytesSeen:
    """``count`` more backend->client bytes (reported in steps of ``report_every``)."""

    count: int


@dataclass(frozen=True, slots=True)
class End:
    """Write ``data`` (a BYE, may be empty) to the client, then end the session."""

    reason: str
    data: bytes = b""


RelayAction = ToBackend | ToClient | CommandSeen | Refused | Expunged | BytesSeen | End


class Relay:
    """One logged-in session's byte rules.

    Feed client bytes to :meth:`client_data` and backend bytes to :meth:`backend_data`;
    carry out the returned actions in order. Stop reading the client while
    :attr:`reading_client` is False (a later :meth:`backend_data` call makes it True again).
    """

    __slots__ = (
        "commands",
        "response_filter",
        "report_every",
        "max_injected",
        "_scanner",
        "ended",
        "_logout",
        "_completed",
        "_held_line",
        "_waiting",
        "_injected",
        "_injected_size",
        "_at_boundary",
        "_unsent",
        "_unsent_start",
        "_cuts",
        "_unreported",
        "_drain_bye",
    )

    def __init__(
        self,
        commands: CommandStream,
        *,
        response_filter: ResponseFilter | None = None,
        report_every: int = 1 << 20,
        max_injected: int = 65536,
        max_response_line: int = 16 * 1024 * 1024,
    ) -> None:
        self.commands = commands
        self.response_filter = response_filter
        self.report_every = report_every
        self.max_injected = max_injected
        self._scanner = ResponseScanner(max_line=max_response_line)
        self.ended: str | None = None  # the end reason once the session is over
        self._logout = False
        self._completed = 0  # tagged responses seen from the backend
        self._held_line: ForwardLiteral | None = None  # waits for earlier commands to finish
        self._waiting: ForwardLiteral | None = None  # sent; its answer is outstanding
        self._injected: list[bytes] = []
        self._injected_size = 0
        self._at_boundary = True  # the client stream, as written so far, is between responses
        self._unsent: list[bytes] = []  # backend bytes received, not yet written to the client
        self._unsent_start = 0  # stream offset of _unsent's first byte
        self._cuts: list[tuple[int, int]] = []  # stream offsets of "+" lines never to send
        self._unreported = 0
        self._drain_bye: bytes | None = None  # set by drain(): the BYE that ends the session

    # -- state the shell looks at ---------------------------------------------------------------

    @property
    def reading_client(self) -> bool:
        """False while client input must wait: the backend has not answered a literal yet,
        or too many of the gateway's own replies wait for a response boundary."""
        return (
            self.ended is None
            and self._drain_bye is None
            and not self.commands.paused
            and self._injected_size < self.max_injected
        )

    @property
    def outstanding(self) -> int:
        """Commands sent to the backend whose tagged response has not come back yet."""
        return max(0, self.commands.forwarded_commands - self._completed)

    # -- client side ------------------------------------------------------------------------------

    def client_data(self, data: bytes) -> list[RelayAction]:
        """Client bytes (never while :attr:`reading_client` is False). While draining,
        client bytes that were already on their way are dropped: the BYE says why."""
        if self.ended is not None or not data or self._drain_bye is not None:
            return []
        return self._from_stream(self.commands.receive_data(data))

    def client_closed(self) -> list[RelayAction]:
        return self._end("client_closed")

    def _from_stream(self, actions: list[StreamAction]) -> list[RelayAction]:
        out: list[RelayAction] = []
        for action in actions:
            if isinstance(action, Forward):
                out.append(ToBackend(action.data))
            elif isinstance(action, ForwardLiteral):
                if action.first and self.outstanding > 1:
                    self._held_line = action  # this command counts as forwarded already
                else:
                    self._send_literal_line(action, out)
            elif isinstance(action, Command):
                out.append(CommandSeen(action.info))
                if action.info.name == "LOGOUT":
                    self._logout = True
            elif isinstance(action, Reply):
                if action.kind not in _NOT_REFUSALS:
                    out.append(Refused(action.kind))
                self._inject(action.data, out)
            elif isinstance(action, Close):
                out.extend(self._end(action.reason, action.data))
        return out

    def _send_literal_line(self, action: ForwardLiteral, out: list[RelayAction]) -> None:
        self._waiting = action
        out.append(ToBackend(action.data))

    def _inject(self, data: bytes, out: list[RelayAction]) -> None:
        if self._at_boundary and not self._unsent:
            out.append(ToClient(data))
        else:
            self._injected.append(data)
            self._injected_size += len(data)

    # -- backend side -----------------------------------------------------------------------------

    def backend_data(self, data: bytes) -> list[RelayAction]:
        """Backend bytes."""
        if self.ended is not None or not data:
            return []
        scanner = self._scanner
        start = scanner.position + scanner.buffered
        result = scanner.receive_data(data)
        if scanner.broken is not None:
            # Boundaries cannot be told any more: pass what came and end the session.
            return [ToClient(data), *self._end("backend_unreadable")]
        out: list[RelayAction] = []
        for pos, end in result.continuations:
            self._on_continuation(pos, end, out)
        for tag, _status in result.completed:
            self._completed += 1
            if self._waiting is not None and tag == self._waiting.tag:
                self._waiting = None
                out.extend(self._from_stream(self.commands.literal_answered(False)))
            elif tag == self.commands.current_tag:
                out.extend(self._from_stream(self.commands.command_answered()))
        if self._held_line is not None and self.outstanding <= 1:
            held, self._held_line = self._held_line, None
            self._send_literal_line(held, out)
        if not self._unsent:
            self._unsent_start = start
        self._unsent.append(data)
        self._write_client(result.at_line_boundary, out)
        if result.expunged:
            out.append(Expunged(result.expunged))
        self._unreported += len(data)
        if self._unreported >= self.report_every:
            out.append(BytesSeen(self._unreported))
            self._unreported = 0
        if self._drain_bye is not None and self._quiet():
            out.extend(self._end("shutdown", self._drain_bye))
        return out

    def _on_continuation(self, pos: int, end: int, out: list[RelayAction]) -> None:
        waiting = self._waiting
        if waiting is None:
            return  # IDLE's "+ idling" and the like: the client's business
        if not waiting.pass_continuation:
            self._cuts.append((pos, end))
        self._waiting = None
        out.extend(self._from_stream(self.commands.literal_answered(True)))

    def _write_client(self, at_boundary: bool, out: list[RelayAction]) -> None:
        """Send what may go to the client now: everything, minus cut ``+`` lines, minus a
        response line still arriving that might be a ``+`` to cut."""
        limit = self._scanner.position
        if not (self._waiting is not None and not self._waiting.pass_continuation
                and self._scanner.partial_is_first):
            limit += self._scanner.buffered
        if not self._cuts and limit == self._unsent_start + sum(map(len, self._unsent)):
            chunks, self._unsent = self._unsent, []
            self._unsent_start = limit
        else:
            chunks = self._take_unsent(limit)
        for chunk in chunks:
            if self.response_filter is not None:
                chunk = self.response_filter.receive_data(bytes(chunk))
            if chunk:
                out.append(ToClient(chunk))
        if self.response_filter is not None:
            at_boundary = self.response_filter.at_line_boundary
        self._at_boundary = at_boundary and not self._unsent
        if self._at_boundary and self._injected:
            joined = b"".join(self._injected)
            self._injected.clear()
            self._injected_size = 0
            out.append(ToClient(joined))

    def _take_unsent(self, limit: int) -> list[bytes]:
        """The unsent bytes before stream offset ``limit``, without cut ranges (slow path:
        only while a literal's answer is awaited or just came)."""
        raw = b"".join(self._unsent)
        base = self._unsent_start
        pieces: list[bytes] = []
        pos = base
        for cut_start, cut_end in self._cuts:
            if cut_end > limit:
                break
            pieces.append(raw[pos - base : cut_start - base])
            pos = cut_end
        self._cuts = [c for c in self._cuts if c[1] > limit]
        pieces.append(raw[pos - base : limit - base])
        rest = raw[limit - base :]
        self._unsent = [rest] if rest else []
        self._unsent_start = limit
        return [p for p in pieces if p]

    def backend_closed(self) -> list[RelayAction]:
        return self._end("logout" if self._logout else "backend_closed")

    # -- ending -----------------------------------------------------------------------------------

    def drain(self, bye: bytes) -> list[RelayAction]:
        """End the session with ``bye`` once the client has every response it asked for.

        From now on the client is not read (:attr:`reading_client` is False). When no
        command is outstanding (or only an IDLE, which waits for nothing but DONE) and the
        client stream is between two responses, the session ends at once; otherwise the
        :meth:`backend_data` call that completes the last response ends it, right after
        that response. The shell bounds the wait (``[server] drain_timeout``).
        """
        if self.ended is not None or self._drain_bye is not None:
            return []
        self._drain_bye = bye
        return self._end("shutdown", bye) if self._quiet() else []

    def _quiet(self) -> bool:
        """Between two responses with nothing owed to the client."""
        owed = self.outstanding - (1 if self.commands.idling else 0)
        return (owed <= 0 and self._at_boundary and not self._unsent and not self._injected
                and self._held_line is None and self._waiting is None)

    def _end(self, reason: str, data: bytes = b"") -> list[RelayAction]:
        if self.ended is not None:
            return []
        self.ended = reason
        out: list[RelayAction] = []
        if self._unreported:
            out.append(BytesSeen(self._unreported))
            self._unreported = 0
        out.append(End(reason, data))
        return out

    def take_unreported(self) -> int:
        """Backend->client bytes not reported yet (the shell reports them at the end)."""
        n, self._unreported = self._unreported, 0
        return n


def bye(text: str) -> bytes:
    """The BYE the shell sends when it ends a session itself (idle timeout, kill)."""
    return untagged("BYE", text)
