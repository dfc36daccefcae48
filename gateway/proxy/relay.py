"""Post-login relay: the trio pump around the sans-IO :class:`gateway.imap.relay.Relay`.

Two tasks in one nursery, one per direction; each reads its socket, hands the bytes to the
relay object and carries out the actions it returns. Every rule (what reaches the backend,
where the gateway may write its own replies, when to stop reading the client, why the
session ends) lives in the relay object; this module only moves bytes, counts them and
keeps the deadlines. When either side ends, the other is cancelled and the session closes
both sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio
from prometheus_client import Counter

from gateway.config import Config
from gateway.imap import commands as cm
from gateway.imap import relay as rl
from gateway.imap.listfilter import ListResponseFilter
from gateway.observability import metrics
from gateway.proxy import rawio
from gateway.proxy.tlsstream import TLSStream
from gateway.proxy.values import BackendLink, CapabilityView


class _HasConfig(Protocol):
    config: Config


class RelayedSession(Protocol):
    """What the relay needs from the session it serves (``gateway.proxy.session``)."""

    @property
    def ctx(self) -> _HasConfig: ...

    stream: trio.abc.Stream
    capabilities: CapabilityView | None
    command_filter: cm.CommandFilter | None
    response_filter: ListResponseFilter | None
    mailbox_scoped: bool
    bytes_in: int
    bytes_out: int
    cancel_scope: trio.CancelScope | None
    kill_reason: str | None
    kill_message: str
    draining: bool
    on_drain: Callable[[], None] | None

    async def on_expunged(self, count: int) -> None: ...

    async def on_bytes(self, count: int) -> None: ...


#: The BYE text of a session ended by the gateway's shutdown (SIGTERM drain).
SHUTDOWN_TEXT = "Server shutting down; reconnect later."

BACKEND_RECEIVE_SIZE = 1048576
CLIENT_RECEIVE_SIZE = 65536
#: How often the volume detector hears about backend→client bytes (a state round trip each).
BYTES_REPORT_INTERVAL = 1 << 20
#: The idle deadline moves only when it would move by more than this share of
#: ``limits.idle_timeout``: setting a cancel scope's deadline re-sorts trio's deadline heap,
#: and doing that for every chunk in both directions was a measurable part of a NOOP. A session
#: is therefore ended between ``idle_timeout`` and ``idle_timeout * (1 + 1/64)`` after its last
#: traffic.
IDLE_DEADLINE_SLACK = 1 / 64
#: Relayed bytes are added to the byte counters once this many have gathered (and at the end
#: of the session, and whenever the idle deadline moves): one counter update (a lock) per
#: chunk in each direction was the other per-chunk cost. Relayed commands are counted per
#: session in the same way and added with the bytes.
BYTES_METRIC_BATCH = 1 << 20

_TO_BACKEND = metrics.bytes_relayed_total.labels("client_to_backend")
_TO_CLIENT = metrics.bytes_relayed_total.labels("backend_to_client")
_command_counters: dict[str, Counter] = {}


class _Pipe(Protocol):
    """The two calls the pump makes on either side."""

    async def receive_some(self, max_bytes: int) -> bytes | bytearray: ...

    async def send_all(self, data: bytes | memoryview) -> None: ...


class _PlainSocket:
    """A plain TCP backend as the pump uses it: :mod:`gateway.proxy.rawio` on its
    descriptor, without ``trio.SocketStream``'s per-call layers; the session holds the
    ``SocketStream`` and closes it after the relay ended."""

    __slots__ = ("fd",)

    def __init__(self, stream: trio.SocketStream | rawio.PlainSocketStream) -> None:
        self.fd = stream.fd if isinstance(stream, rawio.PlainSocketStream) else stream.socket.fileno()

    async def receive_some(self, max_bytes: int) -> bytes:
        return await rawio.receive(self.fd, max_bytes)

    async def send_all(self, data: bytes | memoryview) -> None:
        # The pump's loops reach a receive after every send: that one schedules.
        await rawio.send_all(self.fd, data, schedule=False)


class _SendLock:
    """Serialises the writes to one stream (both pump loops may write to either stream).

    Not a ``trio.Lock``: that one holds a parking lot and an ordered dict from the start,
    and every idle session held two. Here the ``trio.Event`` a waiting writer needs exists
    only while one waits; uncontended -- nearly always -- a send costs no scheduling round
    trip of its own (``send_all`` checkpoints anyway). With two writers at most, a waiter
    wakes when the send in progress ended and takes the lock before anyone else can run.
    """

    __slots__ = ("held", "free")

    def __init__(self) -> None:
        self.held = False
        self.free: trio.Event | None = None

    async def send(self, stream: _Pipe, data: bytes | memoryview) -> None:
        while self.held:
            if self.free is None:
                self.free = trio.Event()
            await self.free.wait()
        self.held = True
        try:
            if type(stream) is TLSStream:
                # The pump's loops reach a receive after every send: that one schedules.
                await stream.send_all(data, schedule=False)
            else:
                await stream.send_all(data)
        finally:
            self.held = False
            free, self.free = self.free, None
            if free is not None:
                free.set()


def _count_commands(counts: dict[str, int]) -> None:
    for name, n in counts.items():
        counter = _command_counters.get(name)
        if counter is None:
            counter = metrics.commands_relayed_total.labels(metrics.command_label(name))
            if len(_command_counters) < 1024:
                _command_counters[name] = counter
        counter.inc(n)


async def relay(session: RelayedSession, backend: BackendLink, leftover: bytes) -> str:
    """Relay until either side closes, the idle deadline passes or the session is cancelled.

    ``leftover``: client bytes that arrived with the login. Returns the end reason for the
    session log.
    """
    config = session.ctx.config
    assert session.capabilities is not None
    stream = cm.CommandStream(
        capability_line=session.capabilities.line,
        command_filter=session.command_filter,
        known_commands=session.capabilities.known_commands,
        allow_catenate=not session.mailbox_scoped,
    )
    # Report volume at least every MiB, and often enough that a low threshold is seen
    # within one session; the remainder is reported when the session ends.
    report_every = min(BYTES_REPORT_INTERVAL,
                       max(4096, config.anomaly.high_volume_fetch_bytes // 4))
    engine = rl.Relay(stream, response_filter=session.response_filter, report_every=report_every)
    pump = _Pump(session, backend, engine, config.limits.idle_timeout)
    try:
        async with trio.open_nursery() as nursery:
            # The nursery's scope is the session's only one: the idle deadline moves on it,
            # kill() cancels it, and the pump cancels it when the session ends (one scope
            # less per session than an idle scope around the nursery).
            scope = pump.idle = nursery.cancel_scope
            scope.deadline = trio.current_time() + pump.idle_timeout
            session.cancel_scope = scope
            if session.kill_reason is not None:  # killed between the login and here
                scope.cancel()
            nursery.start_soon(pump.backend_to_client, scope)

            pump.nursery = nursery
            session.on_drain = pump  # calling it starts the drain
            if session.draining:  # the drain began between login and relay
                pump()
            # In the nursery's own task rather than a third one: a task (and its frames)
            # less for every logged-in session.
            await pump.client_to_backend(leftover, scope)
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pump.reason = "connection_lost"
    finally:
        session.on_drain = None
        pump.flush_metrics()
    reason = pump.reason
    unreported = engine.take_unreported()
    if unreported:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await session.on_bytes(unreported)
    if pump.idle.cancelled_caught and not pump.ended:
        if session.kill_reason:
            reason = session.kill_reason
            bye = rl.bye(session.kill_message)
        else:
            reason = "idle_timeout"
            bye = rl.bye("Autologout; idle for too long.")
        with trio.move_on_after(1):
            try:
                await pump.client.send_all(bye)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
    return reason


class _Pump:
    """The two pump loops of one relayed session and the state they share. An object with
    slots rather than closures: every logged-in session holds one while it waits."""

    __slots__ = (
        "session", "backend", "engine", "client", "backend_io", "backend_fd", "to_backend_lock",
        "to_client_lock", "resume", "reason", "unmetered_out", "unmetered_in", "idle",
        "idle_timeout", "slack", "nursery", "commands", "ended",
    )

    #: The relay's nursery scope (set when the relay starts), whose deadline is the idle one.
    idle: trio.CancelScope

    def __init__(self, session: RelayedSession, backend: BackendLink, engine: rl.Relay,
                 idle_timeout: float) -> None:
        self.session = session
        self.backend = backend
        self.engine = engine
        self.client: _Pipe = session.stream
        self.backend_io: _Pipe = (
            _PlainSocket(backend.stream)
            if isinstance(backend.stream, (trio.SocketStream, rawio.PlainSocketStream))
            else backend.stream)
        #: The plain backend's descriptor, read without a wrapper (-1: a TLS backend).
        self.backend_fd = (self.backend_io.fd if isinstance(self.backend_io, _PlainSocket)
                           else -1)
        # Both tasks may write to either socket (a backend answer can release client bytes).
        self.to_backend_lock, self.to_client_lock = _SendLock(), _SendLock()
        #: Exists while the client reader waits; set when the client may be read again.
        self.resume: trio.Event | None = None
        self.nursery: trio.Nursery | None = None  # set once the relay's nursery is open
        #: Commands relayed and not yet added to the counter, by name (None: none).
        self.commands: dict[str, int] | None = None
        self.reason = "client_closed"
        # Bytes relayed and not yet added to the counters.
        self.unmetered_out = 0  # client -> backend
        self.unmetered_in = 0  # backend -> client
        self.idle_timeout = idle_timeout
        self.slack = idle_timeout * IDLE_DEADLINE_SLACK
        #: The session ended by its own course (an End action), not by kill() or the idle
        #: deadline, which cancel the same scope.
        self.ended = False

    def __call__(self) -> None:
        """The session's ``on_drain``: end the session right after the response in flight
        (the engine decides when)."""
        assert self.nursery is not None
        self.nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        assert self.nursery is not None
        bye = rl.bye(self.session.kill_message or SHUTDOWN_TEXT)
        await self.carry_out(self.engine.drain(bye), self.nursery.cancel_scope)

    def flush_metrics(self) -> None:
        if self.unmetered_out:
            _TO_BACKEND.inc(self.unmetered_out)
            self.unmetered_out = 0
        if self.unmetered_in:
            _TO_CLIENT.inc(self.unmetered_in)
            self.unmetered_in = 0
        if self.commands is not None:
            _count_commands(self.commands)
            self.commands = None

    def traffic(self) -> None:
        """Called for every chunk read, in either direction: moves the idle deadline when
        it is more than ``slack`` behind."""
        deadline = trio.current_time() + self.idle_timeout
        if deadline - self.idle.deadline > self.slack:
            self.idle.deadline = deadline
            self.flush_metrics()

    async def carry_out(self, actions: list[rl.RelayAction], cancel: trio.CancelScope) -> None:
        session = self.session
        for action in actions:
            if isinstance(action, rl.ToBackend):
                await self.to_backend_lock.send(self.backend_io, action.data)
                self.unmetered_out += len(action.data)
                if self.unmetered_out >= BYTES_METRIC_BATCH:
                    self.flush_metrics()
            elif isinstance(action, rl.ToClient):
                await self.to_client_lock.send(self.client, action.data)
                session.bytes_out += len(action.data)
            elif isinstance(action, rl.CommandSeen):
                counts = self.commands
                if counts is None:
                    counts = self.commands = {}
                name = action.info.name
                counts[name] = counts.get(name, 0) + 1
            elif isinstance(action, rl.Refused):
                metrics.commands_refused_total.labels(action.kind).inc()
            elif isinstance(action, rl.Expunged):
                await session.on_expunged(action.count)
            elif isinstance(action, rl.BytesSeen):
                await session.on_bytes(action.count)
            elif isinstance(action, rl.End):
                self.reason = action.reason
                self.ended = True
                if action.data:
                    await self.to_client_lock.send(self.client, action.data)
                cancel.cancel()
                return
        resume = self.resume
        if resume is not None and self.engine.reading_client:
            self.resume = None
            resume.set()

    async def client_to_backend(self, leftover: bytes, cancel: trio.CancelScope) -> None:
        engine, client, session = self.engine, self.client, self.session
        tls = client if isinstance(client, TLSStream) else None
        data = leftover
        while True:
            if data:
                session.bytes_in += len(data)
                await self.carry_out(engine.client_data(data), cancel)
            while not engine.reading_client:
                self.resume = resume = trio.Event()
                await resume.wait()
            # receive_some is typed bytes | bytearray; sockets and SSL give bytes, and
            # bytes(b) is b then (no copy). The core keeps memoryviews of what it is fed,
            # so it must get an immutable object.
            if tls is not None:  # the client nearly always has nothing more to say yet
                data = await tls.receive_some(CLIENT_RECEIVE_SIZE, wait_first=True)
            else:
                data = bytes(await client.receive_some(CLIENT_RECEIVE_SIZE))
            self.traffic()
            if not data:
                await self.carry_out(engine.client_closed(), cancel)
                return

    async def backend_to_client(self, cancel: trio.CancelScope) -> None:
        engine, backend_io, fd = self.engine, self.backend_io, self.backend_fd
        # Responses that came with the login's tagged OK.
        pending = self.backend.take_buffered()
        if pending:
            await self.carry_out(engine.backend_data(pending), cancel)
        while True:
            # A plain backend is read here directly: one coroutine frame less that every idle
            # session keeps while it waits.
            if fd >= 0:
                data = await rawio.receive(fd, BACKEND_RECEIVE_SIZE, wait_first=True)
            else:
                data = bytes(await backend_io.receive_some(BACKEND_RECEIVE_SIZE))  # see above
            if not data:
                await self.carry_out(engine.backend_closed(), cancel)
                return
            self.traffic()
            self.unmetered_in += len(data)
            if self.unmetered_in >= BYTES_METRIC_BATCH:
                self.flush_metrics()
            await self.carry_out(engine.backend_data(data), cancel)
