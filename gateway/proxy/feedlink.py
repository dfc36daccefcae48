"""The live event feed across the workers of one host, over the worker link.

Worker 0 serves the admin API and the portal, so the feed's subscribers are all there;
the logins and bans happen in every worker. With ``[state] redis`` each worker's Redis
relay (``gateway.observability.events_relay``) already carries its events to the others.
Without it, this module carries them over the link each worker has to the supervisor
(``gateway.proxy.workerlink``):

1. Only while somebody watches. Worker 0 tells the supervisor when its first
   subscription opens and when its last one ends (``feed_watched``, a notification);
   the supervisor tells every other worker (``feed_forward``), and tells a worker that
   starts while somebody watches as soon as it reports ready (it takes commands from
   then on). A worker that is not told to forward sends nothing: ``EventFeed.publish``
   returns before it even builds the event.
2. Never in the logging path. A forwarding worker's ``EventFeed.forward`` puts the
   event's JSON text in a bounded outbox (``OUTBOX_SIZE``); a task sends what has
   gathered there as one call (``feed_events``, up to ``MAX_BATCH`` events). One call at
   a time: while the supervisor does not answer, the outbox fills and the newest events
   are dropped and counted (``feed.forward_dropping``), so a login never waits for the
   feed and memory stays bounded. (A notification would save the answer, but the link
   queues notifications without bound: the answer is what bounds the worker's side.)
3. The supervisor relays, it does not wait. It puts the texts in its own bounded queue
   to worker 0 and answers at once; one task per worker 0 link sends them on as one
   ``feed_events`` notification per batch. A worker 0 that reads slowly costs dropped
   events (counted, ``feed.relay_dropping``), never another worker's limiter calls.
4. Worker 0 hands each event to its subscriptions as another instance's
   (``EventFeed.deliver_remote``). The event is the forwarding worker's own: redacted
   there (it passed the log pipeline's ``redact_secrets``), with that worker's
   ``instance`` (``host:pid``) and its ``worker`` index (every line a worker logs has one).

Restarts: when worker 0's link ends, the supervisor tells the others to stop (nobody
watches a new worker 0); a restarted worker is told the current state once it is ready;
when the supervisor goes, every worker drains anyway and a forwarding worker's
pending events are dropped with its link.

Costs: nothing per event while nobody watches. While somebody does, a worker's event
costs one ``send_nowait`` in the logging path, and the link a share of one call per batch
(the link's costs are in ``gateway.proxy.workerlink``); a login does not wait on any of it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from gateway.limits.state import StateUnavailable
from gateway.observability.events import KINDS, EventFeed, FeedEvent
from gateway.observability.logs import get_logger

__all__ = ["MAX_BATCH", "OUTBOX_SIZE", "FeedHub", "FeedSender", "WorkerZeroFeed"]

log = get_logger()

#: Events one forwarding worker, and the supervisor for worker 0, hold before dropping.
OUTBOX_SIZE = 1024
#: Events sent in one message at most.
MAX_BATCH = 256
#: An event text longer than this is not one of ours: ignored (the log line it came
#: from is far shorter).
MAX_EVENT_CHARS = 64 * 1024


class _Link(Protocol):
    """What this module uses of ``workerlink.WorkerLink``."""

    closed: bool

    async def call(self, op: str, *args: Any) -> Any: ...

    def notify(self, op: str, *args: Any) -> None: ...


def _drain(first: str, receive: trio.MemoryReceiveChannel[str]) -> list[str]:
    """``first`` and whatever else waits in ``receive``, up to ``MAX_BATCH``."""
    batch = [first]
    while len(batch) < MAX_BATCH:
        try:
            batch.append(receive.receive_nowait())
        except trio.WouldBlock:
            break
    return batch


class _Drops:
    """Dropped events: one warning when dropping starts, one line when it stops."""

    def __init__(self, dropping: str, recovered: str) -> None:
        self._events = (dropping, recovered)
        self.total = 0
        self._seen = 0
        self._dropping = False

    def add(self, n: int = 1) -> None:
        self.total += n

    def settle(self) -> None:
        """After a batch went out: log whether dropping started or stopped since the last."""
        new, self._seen = self.total - self._seen, self.total
        if new and not self._dropping:
            self._dropping = True
            log.warning(self._events[0], dropped=new)
        elif not new and self._dropping:
            self._dropping = False
            log.info(self._events[1], dropped_total=self.total)


# -- supervisor ---------------------------------------------------------------------------


class FeedHub:
    """The supervisor's part: whether worker 0 has subscribers, and the events on their
    way to it. Lives in ``SharedServices``; ``serve`` runs beside each worker's link."""

    def __init__(self) -> None:
        self.watched = False
        self._changed = trio.Event()
        self._send, self._receive = trio.open_memory_channel[str](OUTBOX_SIZE)
        self.dropped = _Drops("feed.relay_dropping", "feed.relay_recovered")

    def watch(self, on: bool) -> None:
        """Worker 0's subscribers came (True) or all went (False); its link ended (False)."""
        if on != self.watched:
            self.watched = on
            self._changed.set()
            self._changed = trio.Event()

    def put(self, texts: list[Any]) -> None:
        """Events from a worker, for worker 0 (never waits; dropped if nobody watches)."""
        if not self.watched:
            return
        for text in texts:
            if not isinstance(text, str):
                continue
            try:
                self._send.send_nowait(text)
            except trio.WouldBlock:
                self.dropped.add()

    async def serve(self, index: int, send: Callable[[bytes], Awaitable[None]],
                    ready: trio.Event) -> None:
        """For worker ``index``'s link, while it lasts: worker 0 gets the events, every
        other worker whether to forward, once it is ``ready`` (it has said so: it takes
        commands from then on). Returns when the link breaks."""
        try:
            if index == 0:
                await self._to_worker_zero(send)
            else:
                await ready.wait()
                await self._tell(send)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def _to_worker_zero(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        async for first in self._receive:
            batch = _drain(first, self._receive)
            await send(_message("feed_events", batch))
            self.dropped.settle()

    async def _tell(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        told = False  # a worker starts not forwarding
        while True:
            changed, wanted = self._changed, self.watched
            if wanted != told:
                await send(_message("feed_forward", wanted))
                told = wanted
                continue  # it may have changed again while we sent
            await changed.wait()


def _message(op: str, arg: Any) -> bytes:
    return json.dumps({"op": op, "a": [arg]}, separators=(",", ":")).encode() + b"\n"


# -- workers ------------------------------------------------------------------------------


class FeedSender:
    """A worker other than 0: its feed's events, to worker 0, while the supervisor says
    somebody watches. ``command`` takes the supervisor's word; ``run`` sends."""

    def __init__(self, feed: EventFeed, link: _Link) -> None:
        self.feed = feed
        self.link = link
        self._send, self._outbox = trio.open_memory_channel[str](OUTBOX_SIZE)
        self.dropped = _Drops("feed.forward_dropping", "feed.forward_recovered")

    def command(self, op: str, args: list[Any]) -> bool:
        """Handle ``feed_forward`` from the supervisor; False for any other operation."""
        if op != "feed_forward":
            return False
        on = bool(args and args[0] is True)
        if on != (self.feed.forward is not None):
            self.feed.forward = self.forward if on else None
            log.info("feed.forwarding", active=on, dropped=self.dropped.total)
        return True

    def forward(self, event: FeedEvent) -> None:
        """``EventFeed.forward``: queue a local event for worker 0 (trio thread; never
        blocks)."""
        try:
            self._send.send_nowait(event.text)
        except trio.WouldBlock:
            self.dropped.add()

    async def run(self) -> None:
        """Send the outbox, one call at a time, until the link is gone."""
        async for first in self._outbox:
            batch = _drain(first, self._outbox)
            try:
                await self.link.call("feed_events", batch)
            except StateUnavailable:
                self.dropped.add(len(batch))
                if self.link.closed:
                    self.feed.forward = None
                    return
            else:
                self.dropped.settle()


class WorkerZeroFeed:
    """Worker 0: tells the supervisor whether its feed has subscribers, and hands the
    other workers' events to them."""

    def __init__(self, feed: EventFeed, link: _Link) -> None:
        self.feed = feed
        self.link = link
        feed.on_watched = self._watched

    def _watched(self, on: bool) -> None:
        self.link.notify("feed_watched", on)

    def command(self, op: str, args: list[Any]) -> bool:
        """Handle ``feed_events`` from the supervisor; False for any other operation.
        Never raises: this runs in the link's reader, which a bad event must not end."""
        if op != "feed_events":
            return False
        if not self.feed.subscribers or not args or not isinstance(args[0], list):
            return True  # the last subscriber left while these were on their way
        for text in args[0]:
            event = _event_of(text)
            if event is not None:
                self.feed.deliver_remote(event)
        return True


def _event_of(text: object) -> FeedEvent | None:
    """The ``FeedEvent`` another worker sent as its JSON text, or None for anything that
    is not one (its text is reused as sent: the worker encoded it as a FeedEvent)."""
    if not isinstance(text, str) or len(text) > MAX_EVENT_CHARS:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
        return None
    if (not isinstance(data, dict) or data.get("kind") not in KINDS
            or not isinstance(data.get("instance"), str)):
        return None
    return FeedEvent(data, text)
