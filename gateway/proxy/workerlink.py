"""The line between the supervisor and one worker: a Unix socket pair, JSON lines.

What travels on it is what must be exact across the workers of one host:

* the limiter's shared state (``StateBackend``: failure windows, counters, bans, anomaly
  windows) when ``[state] redis`` is not set: the supervisor holds the one
  ``MemoryState`` and every worker uses :class:`RemoteState`, so an attacker gets no more
  attempts with N workers than with one (each operation is atomic in the supervisor, as
  each is one Lua script in Redis);
* the host's connection caps (``ConnectionTracker``: per-IP concurrency and rate, the
  global ``max_connections``), always: they bound what one host accepts, whichever
  worker the kernel hands a connection to;
* the worker's "ready" once it listens;
* the live sessions, for the admin API and the portal, which worker 0 serves: every other
  worker sends its list each second (``sessions``), worker 0 fetches the others' lists
  each second (``all_sessions``), and a kill of another worker's session goes through the
  supervisor to that worker (``kill``). The list is up to about two seconds old;
* the live feed's events, for worker 0's subscribers, when ``[state] redis`` is not set
  (``feed_watched``, ``feed_forward``, ``feed_events``: ``gateway.proxy.feedlink``).

Wire format: one JSON object per line. A call ``{"i": n, "op": ..., "a": [...]}`` gets
``{"i": n, "r": result}`` or ``{"i": n, "e": message}``; a notification has no ``"i"``
and gets no answer. The supervisor answers one worker's calls in order, each to the end
before the next (no task per call), so a batch is atomic across the workers.

Costs: one round trip over a local socket per call, about 60 microseconds of CPU on both
ends together (mostly system calls and trio's scheduling; encoding JSON is a few percent
of it, so a binary format would not pay). Hence a login makes three calls: ``admit`` at
connect (the connection caps and the bans in one), and one ``batch``
(``StateBackend.batch``) each in ``check_login`` and ``record_success``; ``authenticated`` and ``close`` are notifications, sent with whatever
else is queued. Why not ``multiprocessing.managers``: it is blocking and thread-based, and
the workers' loop is trio.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from gateway.limits.connections import ConnectionTracker
from gateway.limits.decisions import Ban, ConnectDecision, ConnectionTicket
from gateway.limits.state import BATCH_OPS, DEFAULT_CAP, MemoryState, Op, StateUnavailable
from gateway.observability.logs import get_logger
from gateway.proxy import rawio
from gateway.proxy.feedlink import FeedHub

log = get_logger()

#: A line longer than this is a broken peer, not a message (bans lists stay far below).
MAX_LINE = 64 << 20
RECEIVE_SIZE = 65536

_STATE_OPS = frozenset({
    "window_add", "window_count", "window_contains", "window_members", "counter_add",
    "incr", "set_once", "delete", "ban_put", "ban_get", "ban_delete", "ban_list", "batch",
})


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _ticket(raw: Sequence[Any]) -> ConnectionTicket:
    ip, serial, exempt = raw
    return ConnectionTicket(ip=str(ip), serial=int(serial), exempt=bool(exempt))


async def _batches(stream: trio.SocketStream) -> AsyncIterator[list[bytes]]:
    """The complete lines of each read from ``stream``, until EOF (a partial last line is
    dropped). One read often brings many (a worker's writer batches), and the supervisor
    answers a batch with one write.

    The descriptor is read directly (``gateway.proxy.rawio``'s reasoning), and after
    waiting for it rather than before: between two messages the link is almost always
    empty, so trying first would cost a failed ``recv`` per message."""
    fd = stream.socket.fileno()
    buf = b""
    while fd >= 0:  # -1: the stream was closed already
        try:
            await trio.lowlevel.wait_readable(fd)
            data = os.read(fd, RECEIVE_SIZE)
        except BlockingIOError:
            continue  # woken without data (another reader took it): wait again
        except (trio.ClosedResourceError, OSError):
            return
        if not data:
            return
        *lines, buf = (buf + data).split(b"\n")
        if len(buf) > MAX_LINE:
            raise ValueError("worker link: line too long")
        if lines:
            yield lines


#: The environment variable that makes ``imap-gateway serve`` a worker (JSON, see WorkerSpec).
WORKER_ENV = "IMAP_GATEWAY_WORKER"


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker inherits: its index, its end of the link, its sockets (fds)."""

    index: int
    count: int
    link: int
    listeners: list[list[int]]
    admin: list[int] | None = None
    web: list[int] | None = None
    auth_policy: list[int] | None = None

    def to_env(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_env(cls, text: str) -> WorkerSpec:
        return cls(**json.loads(text))

    def fds(self) -> list[int]:
        out = [self.link, *(fd for group in self.listeners for fd in group)]
        return out + [fd for fds in (self.admin, self.web, self.auth_policy) for fd in fds or []]


# -- supervisor side ----------------------------------------------------------------------------


class _Peer:
    """The supervisor's end of one worker's link; the lock keeps two writers apart."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.lock = trio.Lock()

    async def send(self, data: bytes) -> None:
        async with self.lock:
            await rawio.send_all(self.stream.socket.fileno(), data)


@dataclass
class SharedServices:
    """What the supervisor holds for all its workers (no Redis: the state too)."""

    tracker: ConnectionTracker
    state: MemoryState | None
    peers: dict[int, _Peer] = field(default_factory=dict)
    #: The last session list each worker (but 0) sent.
    sessions: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    #: The live feed's way to worker 0 (no Redis: ``gateway.proxy.feedlink``).
    feed: FeedHub = field(default_factory=FeedHub)


async def serve_worker(stream: trio.SocketStream, shared: SharedServices, index: int,
                       on_ready: Callable[[], None]) -> None:
    """Answer worker ``index`` until it closes its end; then give back the connection
    slots it still held (a worker that died cannot close its tickets itself)."""
    held: dict[int, ConnectionTicket] = {}
    peer = shared.peers[index] = _Peer(stream)
    ready = trio.Event()

    def now_ready() -> None:
        ready.set()
        on_ready()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shared.feed.serve, index, peer.send, ready)
            await _answer(stream, shared, held, index, peer, now_ready)
            nursery.cancel_scope.cancel()
    finally:
        if shared.peers.get(index) is peer:
            del shared.peers[index]
        shared.sessions.pop(index, None)
        if index == 0:
            shared.feed.watch(False)  # its subscribers are gone with it
        for ticket in held.values():
            shared.tracker.close(ticket)


async def _answer(stream: trio.SocketStream, shared: SharedServices,
                  held: dict[int, ConnectionTicket], index: int, peer: _Peer,
                  on_ready: Callable[[], None]) -> None:
    """Answer worker ``index``'s calls, in order, until its link closes."""
    async for lines in _batches(stream):
        replies = []
        for line in lines:
            msg = json.loads(line)
            op, args, ident = msg["op"], msg.get("a", []), msg.get("i")
            try:
                result = await _dispatch(shared, held, index, op, args)
            except Exception as exc:  # noqa: BLE001 - the worker gets the error as an answer
                if ident is None:
                    log.error("worker_link.failed", op=op, error=str(exc))
                    continue
                replies.append(_encode({"i": ident, "e": f"{exc.__class__.__name__}: {exc}"}))
            else:
                if op == "ready":
                    on_ready()
                if ident is not None:
                    replies.append(_encode({"i": ident, "r": result}))
        if not replies:
            continue
        try:
            await peer.send(b"".join(replies))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


async def _dispatch(shared: SharedServices, held: dict[int, ConnectionTicket], index: int,
                    op: str, args: list[Any]) -> Any:
    if op == "sessions":
        shared.sessions[index] = list(args[0])
        return None
    if op == "all_sessions":
        return [[i, views] for i, views in sorted(shared.sessions.items()) if i != index]
    if op == "kill":
        target, session_id, reason, message = args
        peer = shared.peers.get(int(target))
        if peer is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await peer.send(_encode({"op": "kill", "a": [session_id, reason, message]}))
        return None
    if op == "feed_events":
        shared.feed.put(list(args[0]))
        return None
    if op == "feed_watched":
        if index == 0:  # the one worker with subscribers
            shared.feed.watch(bool(args[0]))
        return None
    if op == "try_open":
        decision = shared.tracker.try_open(str(args[0]), float(args[1]))
        ticket = decision.ticket
        if ticket is not None:
            held[ticket.serial] = ticket
            return [True, decision.reason, [ticket.ip, ticket.serial, ticket.exempt]]
        return [False, decision.reason, None]
    if op == "authenticated":
        shared.tracker.authenticated(_ticket(args[0]))
        return None
    if op == "close":
        ticket = _ticket(args[0])
        held.pop(ticket.serial, None)
        shared.tracker.close(ticket)
        return None
    if op == "admit":
        return await _admit(shared, held, *args)
    if op == "ready":
        return None
    if op not in _STATE_OPS:
        raise ValueError(f"unknown operation {op!r}")
    state = shared.state
    if state is None:
        raise StateUnavailable("the supervisor holds no limiter state ([state] redis is set)")
    if op == "batch":
        ops = [(str(name), list(a)) for name, a in args[0]]
        results = await state.batch(ops)
        return [[ban.to_json() for ban in r] if name == "ban_get" else r
                for (name, _), r in zip(ops, results, strict=True)]
    if op == "window_add":
        return await state.window_add([(str(k), str(m)) for k, m in args[0]], *args[1:])
    if op == "ban_put":
        return await state.ban_put(Ban.from_json(args[0]), args[1])
    if op in ("ban_get", "ban_list"):
        return [ban.to_json() for ban in await getattr(state, op)(*args)]
    return await getattr(state, op)(*args)


async def _admit(shared: SharedServices, held: dict[int, ConnectionTicket], ip: str,
                 now: float, ban_keys: list[str] | None) -> list[Any]:
    """A new connection in one round trip: the host's connection caps, then (if admitted
    and ``ban_keys`` is given) the bans under those keys in the limiter's state."""
    decision = shared.tracker.try_open(str(ip), float(now))
    ticket = decision.ticket
    if ticket is None:
        return [False, decision.reason, None, None]
    held[ticket.serial] = ticket
    bans = None
    if ban_keys is not None and shared.state is not None:
        bans = [ban.to_json() for ban in await shared.state.ban_get(ban_keys, now)]
    return [True, decision.reason, [ticket.ip, ticket.serial, ticket.exempt], bans]


# -- worker side --------------------------------------------------------------------------------


class _Pending:
    __slots__ = ("done", "result", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.error: str | None = None


class WorkerLink:
    """The worker's end: many concurrent calls multiplexed on one socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        #: Called with (op, args) for what the supervisor sends unasked (``kill``).
        self.on_command: Callable[[str, list[Any]], None] | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Pending] = {}
        self._out_send, self._out_receive = trio.open_memory_channel[bytes](math.inf)
        self.closed = False

    async def call(self, op: str, *args: Any) -> Any:
        """Ask the supervisor; ``StateUnavailable`` if the link is down or the call failed
        (the limiter's callers fail open on it, as for a Redis outage)."""
        if self.closed:
            raise StateUnavailable("worker link: the supervisor is gone")
        ident = next(self._ids)
        pending = self._waiting[ident] = _Pending()
        try:
            self._out_send.send_nowait(_encode({"i": ident, "op": op, "a": list(args)}))
            await pending.done.wait()
        finally:
            self._waiting.pop(ident, None)
        if pending.error is not None:
            raise StateUnavailable(f"worker link: {op}: {pending.error}")
        return pending.result

    def notify(self, op: str, *args: Any) -> None:
        """Tell the supervisor without waiting for an answer (never blocks)."""
        if not self.closed:
            self._out_send.send_nowait(_encode({"op": op, "a": list(args)}))

    async def _write(self) -> None:
        async for first in self._out_receive:
            batch = [first]
            while True:
                try:
                    batch.append(self._out_receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await rawio.send_all(self._stream.socket.fileno(), b"".join(batch))

    async def _read(self) -> None:
        try:
            async for lines in _batches(self._stream):
                for line in lines:
                    msg = json.loads(line)
                    if "i" not in msg:
                        if self.on_command is not None:
                            self.on_command(msg["op"], msg.get("a", []))
                        continue
                    pending = self._waiting.get(msg["i"])
                    if pending is None:
                        continue
                    pending.result = msg.get("r")
                    pending.error = msg.get("e")
                    pending.done.set()
        finally:
            self._lost()

    def _lost(self) -> None:
        self.closed = True
        for pending in self._waiting.values():
            pending.error = "the supervisor is gone"
            pending.done.set()


@asynccontextmanager
async def open_link(stream: trio.SocketStream,
                    on_lost: Callable[[], None]) -> AsyncIterator[WorkerLink]:
    """Run the link's reader and writer for the body of the ``async with``; ``on_lost``
    is called when the supervisor closes its end (it died, or it is stopping)."""
    link = WorkerLink(stream)

    async def read_then_report() -> None:
        await link._read()
        on_lost()

    async def write() -> None:
        try:
            await link._write()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            link._lost()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_then_report)
            nursery.start_soon(write)
            try:
                yield link
            finally:
                nursery.cancel_scope.cancel()
    finally:
        # Outside the nursery: an await inside its cancelled scope would raise Cancelled,
        # which that scope then catches, and the body's own exception would be lost.
        await trio.aclose_forcefully(stream)


class RemoteState:
    """``StateBackend`` over the worker link: the supervisor's one ``MemoryState``."""

    def __init__(self, link: WorkerLink) -> None:
        self._link = link

    async def window_add(
        self, entries: Sequence[tuple[str, str]], now: float, window: float, cap: int = DEFAULT_CAP
    ) -> list[int]:
        return list(await self._link.call("window_add", [list(e) for e in entries], now,
                                          window, cap))

    async def window_count(self, keys: Sequence[str], now: float, window: float) -> list[int]:
        return list(await self._link.call("window_count", list(keys), now, window))

    async def window_contains(self, key: str, member: str, now: float, window: float) -> bool:
        return bool(await self._link.call("window_contains", key, member, now, window))

    async def window_members(self, key: str, now: float, window: float) -> list[str]:
        return list(await self._link.call("window_members", key, now, window))

    async def counter_add(self, key: str, amount: int, now: float, window: float) -> int:
        if amount < 0:
            raise ValueError(f"counter_add: amount must be >= 0, got {amount}")
        return int(await self._link.call("counter_add", key, amount, now, window))

    async def incr(self, key: str, now: float, ttl: float) -> int:
        return int(await self._link.call("incr", key, now, ttl))

    async def set_once(self, key: str, now: float, ttl: float) -> bool:
        return bool(await self._link.call("set_once", key, now, ttl))

    async def delete(self, keys: Sequence[str]) -> None:
        await self._link.call("delete", list(keys))

    async def batch(self, ops: Sequence[Op]) -> list[Any]:
        """One call for all of ``ops``: the supervisor runs them in order with nothing in
        between (its ``MemoryState`` never awaits), so the batch is atomic there."""
        for name, _ in ops:
            if name not in BATCH_OPS:
                raise ValueError(f"batch: {name!r} is not a batch operation")
        results = await self._link.call("batch", [[name, list(args)] for name, args in ops])
        return [[Ban.from_json(raw) for raw in r] if name == "ban_get" else r
                for (name, _), r in zip(ops, results, strict=True)]

    async def ban_put(self, ban: Ban, now: float) -> None:
        await self._link.call("ban_put", ban.to_json(), now)

    async def ban_get(self, keys: Sequence[str], now: float) -> list[Ban]:
        return [Ban.from_json(raw) for raw in await self._link.call("ban_get", list(keys), now)]

    async def ban_delete(self, network: str) -> bool:
        return bool(await self._link.call("ban_delete", network))

    async def ban_list(self, now: float) -> list[Ban]:
        return [Ban.from_json(raw) for raw in await self._link.call("ban_list", now)]


class RemoteTracker:
    """The host's ``ConnectionTracker``, held by the supervisor. ``try_open`` is a call;
    ``authenticated`` and ``close`` are notifications (safe in a ``finally``)."""

    def __init__(self, link: WorkerLink) -> None:
        self._link = link

    async def try_open(self, ip: str, now: float) -> ConnectDecision:
        """Refuses (``max_connections``) when the supervisor cannot be asked: the worker
        is then on its way out anyway."""
        try:
            allowed, reason, ticket = await self._link.call("try_open", ip, now)
        except StateUnavailable:
            return ConnectDecision(False, "max_connections")
        return ConnectDecision(bool(allowed), str(reason),
                               ticket=_ticket(ticket) if ticket is not None else None)

    async def admit(self, ip: str, now: float,
                    ban_keys: list[str] | None) -> tuple[ConnectDecision, list[Ban] | None]:
        """``try_open`` and, when admitted and ``ban_keys`` is not None, the bans under
        those keys in the supervisor's limiter state, in one round trip (for a worker
        whose state is ``RemoteState``). Refuses like ``try_open`` when the link is down."""
        try:
            allowed, reason, ticket, bans = await self._link.call("admit", ip, now, ban_keys)
        except StateUnavailable:
            return ConnectDecision(False, "max_connections"), None
        decision = ConnectDecision(bool(allowed), str(reason),
                                   ticket=_ticket(ticket) if ticket is not None else None)
        return decision, None if bans is None else [Ban.from_json(raw) for raw in bans]

    def authenticated(self, ticket: ConnectionTicket) -> None:
        self._link.notify("authenticated", [ticket.ip, ticket.serial, ticket.exempt])

    def close(self, ticket: ConnectionTicket) -> None:
        self._link.notify("close", [ticket.ip, ticket.serial, ticket.exempt])


# -- sessions of the other workers (worker 0's admin API and portal) ------------------------------


def session_record(session: Any) -> dict[str, Any]:
    """What the admin API shows of one live ``ClientSession`` (no credential), as sent."""
    return {
        "id": session.session_id, "user": session.user, "client_ip": session.client_ip,
        "client_port": session.client_port, "listener": session.listener.address,
        "started": session.started_at, "factor": session.factor,
        "app_password": session.app_password_label, "bytes_in": session.bytes_in,
        "bytes_out": session.bytes_out, "kill_reason": session.kill_reason,
        "killable": session.cancel_scope is not None,
    }


@dataclass(frozen=True)
class _Listener:
    address: str


class RemoteSession:
    """Another worker's session as worker 0's admin API sees it (``AdminSession``);
    ``kill`` asks that worker, through the supervisor, to end it."""

    def __init__(self, link: WorkerLink, worker: int, record: dict[str, Any]) -> None:
        self._link = link
        self.worker = worker
        self.session_id: str = record["id"]
        self.user: str | None = record["user"]
        self.client_ip: str = record["client_ip"]
        self.client_port: int = record["client_port"]
        self.listener = _Listener(record["listener"])
        self.started_at: float = record["started"]
        self.factor: str = record["factor"]
        self.app_password_label: str | None = record["app_password"]
        self.bytes_in: int = record["bytes_in"]
        self.bytes_out: int = record["bytes_out"]
        self.kill_reason: str | None = record["kill_reason"]
        #: Not None once the session can be killed (the admin API checks it, as for its own).
        self.cancel_scope: object | None = True if record["killable"] else None

    def kill(self, reason: str, message: str) -> None:
        self.kill_reason = reason
        self._link.notify("kill", self.worker, self.session_id, reason, message)
