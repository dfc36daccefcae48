"""The gateway side of the differential test: the sans-IO relay as the proxy between a
scripted client byte stream and a real backend connection.

:func:`drive` does what ``gateway/proxy/relay.py``'s two pump loops do, in one thread: it
feeds the client's chunks to :meth:`Relay.client_data` while the relay reads the client,
carries out every action (``ToBackend`` goes to the backend, ``ToClient`` is recorded), feeds
whatever the backend sends to :meth:`Relay.backend_data`, and waits for the backend while
the relay waits for it. After the client's own bytes come sentinels (``zz9a NOOP``...), one
at a time, until the relay forwards one as a command; the run is over when the backend has
answered that sentinel, the relay ended the session, or a deadline passed.

What it records (:class:`Run`): the commands the relay saw (``CommandSeen``) and which of
them it forwarded, every byte that went to the backend and to the client, both sides'
responses parsed independently of the gateway's own response code (:class:`Responses`),
and how the run ended (:attr:`Run.outcome`).

Pure Python plus ``select`` on one socket; the backend is anything with the small
:class:`Backend` interface, so the driver itself is tested without Dovecot
(``tests/unit/test_cmdgen.py``, :class:`ScriptedBackend`).
"""

from __future__ import annotations

import re
import select
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.imap import relay as rl
from gateway.imap.commands import Action, Command, CommandStream, ForwardLiteral, Reply

#: Sentinel tags, fed after the client's bytes until the relay forwards one as a command.
SENTINELS = tuple(b"zz9" + bytes([c]) for c in b"abcdefgh")


# -- responses, parsed without the gateway's code ------------------------------------------

_SERVER_LITERAL = re.compile(rb"~?\{(\d+)\}\r?\n\Z")
#: Dovecot's tagged replies end with the command's timing: ``(0.001 + 0.000 secs).``
_TIMING_END = re.compile(rb"secs\)\.\r?\n\Z")


class Responses:
    """Incremental parser for what an IMAP server sends: tagged responses, ``+``
    continuation requests and untagged ``BYE``. Untagged responses may carry literals
    (``{n}`` at a line end); tagged and ``+`` lines never do (RFC 9051, 7.1 and 7.5).

    Dovecot 2.3.19 breaks that grammar in one place: a SEARCH/SORT/THREAD argument that is
    a string where a search key belongs is echoed raw, CR and LF included, in ``<tag> BAD
    Error in IMAP command SEARCH: Unexpected string as search key: <string> (0.001 + 0.000
    secs).`` -- so its text can hold lines that look like responses of their own. Such a
    tagged reply ("Error in IMAP command" without the timing at its line end) is read here
    up to the line that ends with Dovecot's timing.
    """

    def __init__(self) -> None:
        self.raw = bytearray()
        #: ``(tag, status)`` of every tagged response, in order.
        self.tagged: list[tuple[bytes, bytes]] = []
        self.continuations: list[bytes] = []
        self.byes: list[bytes] = []
        #: Tagged replies whose text spanned lines (see above).
        self.echoed = 0
        self._buf = bytearray()
        self._literal = 0
        self._first = True  # the next line starts a response
        self._echo = False  # inside a tagged reply whose text spans lines

    @property
    def tags(self) -> list[bytes]:
        return [t for t, _ in self.tagged]

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.raw += data
        self._buf += data
        buf = self._buf
        pos = 0
        while pos < len(buf):
            if self._literal:
                take = min(self._literal, len(buf) - pos)
                self._literal -= take
                pos += take
                continue
            end = buf.find(b"\n", pos)
            if end < 0:
                break
            line = bytes(buf[pos:end + 1])
            pos = end + 1
            if self._echo:
                self._echo = _TIMING_END.search(line) is None
                continue
            first, self._first = self._first, True
            if first and line.startswith(b"+"):
                self.continuations.append(line)
                continue
            if first and not line.startswith(b"*"):
                tag, _, rest = line.partition(b" ")
                self.tagged.append((tag, rest.split(b" ", 1)[0].rstrip(b"\r\n").upper()))
                self._echo = (b" Error in IMAP command " in line
                              and _TIMING_END.search(line) is None)
                self.echoed += self._echo
                continue
            if first and line[2:5].upper() == b"BYE":
                self.byes.append(line)
            m = _SERVER_LITERAL.search(line)
            if m is not None:
                self._literal = int(m.group(1))
                self._first = False
        del buf[:pos]


# -- the backend side ----------------------------------------------------------------------

class Backend(Protocol):
    """A connection the relay talks to. ``inbox``: bytes received and not yet fed."""

    inbox: bytearray
    closed: bool

    def send(self, data: bytes | memoryview) -> None: ...

    def wait(self, timeout: float) -> bool:
        """Receive what the backend sends within ``timeout`` (0: what is there now); True
        when something arrived or the connection closed."""
        ...


class SocketBackend:
    """A backend on a connected socket. Sending never blocks on a full send buffer while
    the peer waits for us to read: what arrives meanwhile goes to ``inbox``."""

    def __init__(self, sock: socket.socket, leftover: bytes = b"") -> None:
        self.sock = sock
        sock.setblocking(False)
        self.inbox = bytearray(leftover)
        self.closed = False

    def _recv(self) -> None:
        try:
            chunk = self.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self.inbox += chunk
        else:
            self.closed = True

    def send(self, data: bytes | memoryview, timeout: float = 10.0) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("backend accepts no more bytes")
            readable, writable, _ = select.select([self.sock], [self.sock], [], left)
            if readable:
                self._recv()
            if writable and not self.closed:
                try:
                    view = view[self.sock.send(view):]
                except BlockingIOError:
                    pass
                except OSError:
                    self.closed = True  # what it sent before is still in inbox

    def wait(self, timeout: float) -> bool:
        if self.closed:
            return True
        before = len(self.inbox)
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if readable:
            self._recv()
            while not self.closed and select.select([self.sock], [], [], 0)[0]:
                self._recv()
        return self.closed or len(self.inbox) > before


class ScriptedBackend:
    """A tiny in-process IMAP server for testing the driver: it answers ``+ OK`` to every
    synchronizing literal and ``<tag> OK`` to every complete command, except that a
    command whose tag starts with ``refuse`` gets ``<tag> NO`` instead of the ``+``."""

    def __init__(self) -> None:
        self.inbox = bytearray()
        self.closed = False
        self.received = bytearray()
        self._buf = bytearray()
        self._literal = 0
        self._tag: bytes | None = None

    def send(self, data: bytes | memoryview) -> None:
        self.received += data
        self._buf += data
        while self._buf:
            if self._literal:
                take = min(self._literal, len(self._buf))
                del self._buf[:take]
                self._literal -= take
                continue
            end = self._buf.find(b"\n")
            if end < 0:
                return
            line = bytes(self._buf[:end + 1])
            del self._buf[:end + 1]
            if self._tag is None and not line.strip():
                self.inbox += b"* BAD Empty line\r\n"
                continue
            if self._tag is None:
                self._tag = line.split(b" ", 1)[0]
            m = re.search(rb"\{(\d+)\}\r?\n\Z", line)
            if m is None:
                self.inbox += self._tag + b" OK done\r\n"
                self._tag = None
            elif self._tag.startswith(b"refuse"):
                self.inbox += self._tag + b" NO refused\r\n"
                self._tag = None
            else:
                self.inbox += b"+ OK\r\n"
                self._literal = int(m.group(1))

    def wait(self, timeout: float) -> bool:
        return bool(self.inbox)


# -- the relay, observed -------------------------------------------------------------------

class ObservedStream(CommandStream):
    """A ``CommandStream`` that keeps a copy of the actions it returns: the relay's own
    actions do not say which command a refusal belongs to, the stream's do."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.log: list[Action] = []
        #: The backend's answers to the relay's ``{n}`` lines (True: ``+``, False: refused).
        self.answers: list[bool] = []

    def receive_data(self, data: bytes) -> list[Action]:
        out = super().receive_data(data)
        self.log.extend(out)
        return out

    def literal_answered(self, accepted: bool) -> list[Action]:
        if self.paused:
            self.answers.append(accepted)
        out = super().literal_answered(accepted)
        self.log.extend(out)
        return out

    def forwarded_tags(self) -> list[bytes]:
        """Tags of the commands that went (or go) to the backend: every ``Command`` except
        those the stream answered itself right away (a refusal, CAPABILITY)."""
        out = []
        log = self.log
        for i, a in enumerate(log):
            if not isinstance(a, Command):
                continue
            nxt = log[i + 1] if i + 1 < len(log) else None
            if (isinstance(nxt, Reply) and nxt.kind != "continuation"
                    and a.info.tag in _reply_tags(nxt.data)):
                continue
            out.append(a.info.tag)
        return out

    def replies(self) -> bytes:
        """Every reply the stream made itself, continuations excluded."""
        return b"".join(a.data for a in self.log if isinstance(a, Reply)
                        and a.kind != "continuation")


def _waiting_tag(stream: ObservedStream) -> bytes | None:
    """The tag of the command whose ``{n}`` line waits for the backend's answer."""
    if not stream.paused:
        return None
    last = next((a for a in reversed(stream.log) if isinstance(a, ForwardLiteral)), None)
    return last.tag if last is not None else None


def _answered_already(run: Run, stream: ObservedStream) -> bool:
    tag = _waiting_tag(stream)
    return tag is not None and run.backend.tags.count(tag) >= stream.forwarded_tags().count(tag)


def _literal_left(stream: CommandStream) -> int:
    """Bytes of a client literal the stream's framer still expects (test-only peek)."""
    return int(getattr(getattr(stream, "_framer", None), "_literal_remaining", 0))


def _reply_tags(data: bytes) -> set[bytes]:
    return {line.split(b" ", 1)[0] for line in data.split(b"\r\n") if line}


@dataclass
class Run:
    """What one relay made of one client byte stream, and what the backend answered.

    ``outcome``: ``"answered"`` (the backend answered the sentinel the relay forwarded),
    ``"ended"`` (the relay ended the session: ``ended`` says why), ``"no-sentinel"`` (no
    sentinel was ever forwarded as a command), ``"unanswered"`` (the backend never answered
    the forwarded sentinel within the answer timeout), ``"stalled"`` (the relay waited for
    the backend, which sent nothing within the stall timeout), ``"deadline"`` (the run took
    longer than its deadline) or ``"exception"`` (the relay raised: ``error``).
    """

    outcome: str = ""
    ended: str | None = None
    error: str | None = None
    #: ``(tag, name)`` of every ``CommandSeen``, in order.
    seen: list[tuple[bytes, str]] = field(default_factory=list)
    #: Tags of the commands the relay forwarded (sentinel included).
    forwarded: list[bytes] = field(default_factory=list)
    sentinel: bytes | None = None
    refused: int = 0  # Refused actions
    answers: list[bool] = field(default_factory=list)
    replies: bytes = b""  # the stream's own replies (not continuations)
    to_backend: bytearray = field(default_factory=bytearray)
    backend: Responses = field(default_factory=Responses)  # what the backend sent
    client: Responses = field(default_factory=Responses)  # what the relay sent the client
    #: Client bytes fed after the stream itself (sentinels, padding of an open literal).
    tail: bytes = b""
    #: Sentinels that were fed (the sentinel tags the backend may legitimately answer).
    sentinels_fed: list[bytes] = field(default_factory=list)
    #: After a run without an answered sentinel: how the drain ended ("answered",
    #: "closed", "timeout"); "" when there was none.
    drain: str = ""
    #: Bytes of a client literal the relay still expected when the run ended.
    literal_left: int = 0
    #: When the run ended with the relay waiting for the backend's answer to a ``{n}``
    #: line: that command's tag.
    waiting_tag: bytes | None = None
    seconds: float = 0.0

    @property
    def seen_tags(self) -> set[bytes]:
        return {t for t, _ in self.seen}

    def extra_backend_tags(self) -> Counter[bytes]:
        """Tags the backend answered more often than the relay forwarded them."""
        return Counter(t for t in self.backend.tags if t != DRAIN_TAG) - Counter(self.forwarded)

    def unanswered(self) -> Counter[bytes]:
        """Forwarded tags the backend answered less often than they were forwarded."""
        return Counter(self.forwarded) - Counter(self.backend.tags)

    def key(self) -> tuple[object, ...]:
        """What must not depend on how the client's bytes were cut into chunks. When the
        session ends, how far the relay got first depends on when the backend's answers
        came (a LOGOUT's BYE, say), so only that it ended is compared."""
        if self.outcome != "answered":
            return (self.outcome,)
        return (self.outcome, tuple(sorted(self.forwarded)), tuple(sorted(self.backend.tags)),
                self.sentinel)

    def summary(self) -> str:
        return (f"outcome={self.outcome} ended={self.ended} error={self.error} "
                f"seen={[t for t, _ in self.seen]} forwarded={self.forwarded} "
                f"backend answered={self.backend.tags} "
                f"backend '+'={len(self.backend.continuations)} literal answers={self.answers}")


#: What :func:`drive` sends the backend itself when a run ends without an answered
#: sentinel: the CRLF ends a line the relay left open, the NOOP is answered after every
#: command the backend received before it.
DRAIN = b"\r\nzz9q NOOP\r\n"
DRAIN_TAG = b"zz9q"


def drive(make_relay: Callable[[], tuple[rl.Relay, ObservedStream]], backend: Backend,
          chunks: Iterable[bytes], *, answer_timeout: float = 2.0, stall_timeout: float = 5.0,
          deadline: float = 20.0, drain_timeout: float = 1.5, pause: float = 0.2) -> Run:
    """Relay ``chunks`` (the client's bytes, as the client sends them) to ``backend``; see
    the module docstring. Never raises on what the relay or the backend does. An empty
    chunk is a pause: the backend's answers (until it is quiet for ``pause`` seconds) are
    fed to the relay before the client's next chunk.

    When the run ends any other way than with an answered sentinel, the backend gets
    :data:`DRAIN` straight from here and its answers are collected (not fed to the relay)
    for up to ``drain_timeout`` seconds: whatever the relay let through before it stopped,
    the backend runs now, so a command smuggled just before the end is seen too.
    """
    run = Run()
    t0 = time.monotonic()
    try:
        _drive(run, make_relay, backend, chunks, answer_timeout, stall_timeout, t0 + deadline,
               pause)
    except Exception as e:  # noqa: BLE001 - reported as a finding, with the stream
        run.outcome = "exception"
        run.error = f"{type(e).__name__}: {e}"
    if run.outcome != "answered" and not backend.closed:
        # Ended inside a literal the backend agreed to read: the drain line only becomes
        # literal data there, so it gets no answer -- wait briefly for the answers to what
        # went before (the gateway itself closes the backend connection at this point).
        mid_literal = run.ended == "line_break_in_literal"
        _drain(run, backend, min(drain_timeout, 0.3) if mid_literal else drain_timeout)
    run.seconds = time.monotonic() - t0
    return run


def _drain(run: Run, backend: Backend, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    try:
        backend.send(DRAIN)
        while DRAIN_TAG not in run.backend.tags and not backend.closed:
            if backend.inbox:
                run.backend.feed(bytes(backend.inbox))
                backend.inbox.clear()
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not backend.wait(left):
                break
        run.backend.feed(bytes(backend.inbox))
        backend.inbox.clear()
    except (OSError, TimeoutError):
        pass
    run.drain = ("answered" if DRAIN_TAG in run.backend.tags
                 else "closed" if backend.closed else "timeout")


def _drive(run: Run, make_relay: Callable[[], tuple[rl.Relay, ObservedStream]],
           backend: Backend, chunks: Iterable[bytes], answer_timeout: float,
           stall_timeout: float, deadline: float, pause: float) -> None:
    relay, stream = make_relay()
    queue = deque(chunks)
    sentinels = deque(SENTINELS)
    tail = bytearray()

    def carry_out(actions: list[rl.RelayAction]) -> None:
        for a in actions:
            if isinstance(a, rl.ToBackend):
                run.to_backend += a.data
                backend.send(a.data)
            elif isinstance(a, rl.ToClient):
                run.client.feed(a.data)
            elif isinstance(a, rl.CommandSeen):
                run.seen.append((a.info.tag, a.info.name))
            elif isinstance(a, rl.Refused):
                run.refused += 1
            elif isinstance(a, rl.End):
                run.ended = a.reason
                if a.data:
                    run.client.feed(a.data)

    def finish(outcome: str) -> None:
        run.outcome = outcome
        run.forwarded = stream.forwarded_tags()
        run.answers = list(stream.answers)
        run.replies = stream.replies()
        run.tail = bytes(tail)
        run.literal_left = _literal_left(stream)
        run.waiting_tag = _waiting_tag(stream)

    try:
        while True:
            if time.monotonic() > deadline:
                return finish("deadline")
            if backend.inbox:
                data = bytes(backend.inbox)
                backend.inbox.clear()
                run.backend.feed(data)
                carry_out(relay.backend_data(data))
                continue
            if relay.ended is not None:
                return finish("ended")
            if backend.closed:
                carry_out(relay.backend_closed())
                continue
            if run.sentinel is not None and run.sentinel in run.backend.tags:
                return finish("answered")
            if not relay.reading_client:
                # Waiting on a command the backend has answered already: no answer can come,
                # so a short wait tells it.
                timeout = 0.3 if _answered_already(run, stream) else stall_timeout
                if not backend.wait(timeout):
                    return finish("stalled")
                continue
            if queue:
                chunk = queue.popleft()
                if chunk:
                    carry_out(relay.client_data(chunk))
                    backend.wait(0)
                elif backend.wait(pause):
                    # An empty chunk is a pause: the backend's answers to what went before
                    # arrive before the client's next bytes.
                    queue.appendleft(b"")
                continue
            if run.sentinel is None:
                forwarded = set(stream.forwarded_tags())
                run.sentinel = next((s for s in run.sentinels_fed if s in forwarded), None)
                if run.sentinel is not None:
                    continue  # its answer may be in already
            else:
                if not backend.wait(answer_timeout):
                    return finish("unanswered")
                continue
            if not sentinels:
                return finish("no-sentinel")
            s = sentinels.popleft()
            if not sentinels:
                # Still inside a literal: finish it, so the last sentinel starts a line.
                rest = _literal_left(stream)
                if 0 < rest < 1 << 20:
                    queue.append(b"x" * rest + b"\r\n")
                    tail.extend(queue[-1])
            queue.append(s + b" NOOP\r\n")
            tail.extend(queue[-1])
            run.sentinels_fed.append(s)
    finally:
        if not run.outcome:
            finish("exception")
