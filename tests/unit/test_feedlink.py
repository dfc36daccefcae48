"""The live feed across workers over real Unix socket pairs and the supervisor's real
``serve_worker``: worker 1's events reach worker 0's subscribers, with their fields, only
while somebody watches; restarts on either side; bounded queues that drop and count."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from gateway.limits.connections import ConnectionTracker
from gateway.limits.state import MemoryState
from gateway.observability.events import EventFeed, FeedEvent
from gateway.proxy.feedlink import MAX_BATCH, OUTBOX_SIZE, FeedHub, FeedSender, WorkerZeroFeed
from gateway.proxy.workerlink import SharedServices, WorkerLink, open_link, serve_worker

LOGIN = {"event": "login.ok", "user": "alice", "client_ip": "192.0.2.7", "session_id": "s1",
         "ts": "2026-01-01T00:00:00.000000Z", "level": "info", "worker": 1}


def _shared() -> SharedServices:
    return SharedServices(tracker=ConnectionTracker(
        max_connections_per_ip=10, max_connections=100, max_connection_rate_per_ip=100),
        state=MemoryState())


@asynccontextmanager
async def _worker(nursery: trio.Nursery, shared: SharedServices, index: int,
                  feed: EventFeed) -> AsyncIterator[tuple[WorkerLink, Any]]:
    """Worker ``index`` as ``server._run`` wires it: its link, its feed's side of it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sup = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    nursery.start_soon(serve_worker, sup, shared, index, lambda: None)
    async with open_link(trio.SocketStream(trio.socket.from_stdlib_socket(theirs)),
                         lambda: None) as link, trio.open_nursery() as tasks:
        side: FeedSender | WorkerZeroFeed
        if index == 0:
            side = WorkerZeroFeed(feed, link)
        else:
            side = FeedSender(feed, link)
            tasks.start_soon(side.run)
        link.on_command = lambda op, args: side.command(op, args)
        link.notify("ready")
        try:
            yield link, side
        finally:
            tasks.cancel_scope.cancel()


async def _until(condition: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.005)


def test_another_workers_events_reach_worker_zeros_subscribers_only_while_watched():
    shared = _shared()
    zero, one = EventFeed("gw:100"), EventFeed("gw:101")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            async with _worker(nursery, shared, 0, zero), _worker(nursery, shared, 1, one) \
                    as (_, sender):
                await trio.sleep(0.05)
                assert one.forward is None and not one.wanted()  # nobody watches: not built
                one.publish(LOGIN)

                with zero.subscribe() as sub:
                    await _until(lambda: one.forward is not None)
                    one.publish(LOGIN)
                    one.publish({**LOGIN, "event": "session.end"})  # not a feed event
                    one.publish({"event": "ban.created", "network": "192.0.2.0/24",
                                 "worker": 1})
                    with trio.fail_after(5):
                        login, ban = await sub.receive(), await sub.receive()
                    assert dict(login.data) == {**LOGIN, "kind": "login", "instance": "gw:101"}
                    assert ban.data["kind"] == "ban" and ban.data["worker"] == 1
                    assert login.text == FeedEvent.of(login.data).text
                    await trio.sleep(0.05)
                    assert sub.pending() == 0  # the one before subscribing never went out

                await _until(lambda: one.forward is None)
                assert not shared.feed.watched and sender.dropped.total == 0
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_worker_zero_gone_stops_the_others_and_a_new_worker_is_told_at_once():
    shared = _shared()
    zero, one, two = EventFeed("gw:100"), EventFeed("gw:101"), EventFeed("gw:102")

    async def main() -> None:
        async with trio.open_nursery() as nursery, _worker(nursery, shared, 1, one):
            worker_zero = _worker(nursery, shared, 0, zero)
            await worker_zero.__aenter__()
            with zero.subscribe() as sub:
                await _until(lambda: one.forward is not None)
                # worker 2 starts (or restarts) while somebody watches: told at once
                async with _worker(nursery, shared, 2, two):
                    await _until(lambda: two.forward is not None)
                    two.publish({**LOGIN, "worker": 2})
                    with trio.fail_after(5):
                        assert (await sub.receive()).data["instance"] == "gw:102"
                # worker 0's link ends while its subscription is open (it died): the
                # others stop, as nobody watches a new worker 0
                await worker_zero.__aexit__(None, None, None)
                await _until(lambda: one.forward is None)
                assert not shared.feed.watched
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_forwarding_worker_never_waits_and_drops_past_its_outbox():
    """The supervisor does not answer (its end is never read): publishing still returns
    at once, the outbox holds OUTBOX_SIZE events and the rest are counted."""

    async def main() -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        feed = EventFeed("gw:101")
        async with open_link(trio.SocketStream(trio.socket.from_stdlib_socket(theirs)),
                             lambda: None) as link, trio.open_nursery() as nursery:
            sender = FeedSender(feed, link)
            nursery.start_soon(sender.run)
            assert sender.command("feed_forward", [True])
            for n in range(3000):  # publish is synchronous: it returns, whatever waits
                feed.publish({**LOGIN, "session_id": f"s{n}"})
            assert sender.dropped.total == 3000 - OUTBOX_SIZE
            await trio.sleep(0.05)  # the first batch is taken and sent; its answer never comes
            for _ in range(MAX_BATCH):
                feed.publish(LOGIN)
            assert sender.dropped.total == 3000 - OUTBOX_SIZE
            nursery.cancel_scope.cancel()
        ours.close()

    trio.run(main)


def test_the_supervisor_drops_past_its_queue_to_worker_zero_and_only_while_watched():
    hub = FeedHub()
    hub.put(["{}"] * 10)
    assert hub.dropped.total == 0  # nobody watches: not queued, not counted
    hub.watch(True)
    hub.put(["{}"] * (OUTBOX_SIZE + 5) + [7])  # nobody reads: the queue fills
    assert hub.dropped.total == 5


def test_worker_zero_skips_what_is_not_an_event_and_never_raises():
    feed = EventFeed("gw:100")
    side = WorkerZeroFeed.__new__(WorkerZeroFeed)
    side.feed = feed
    good = FeedEvent.of({"event": "login.ok", "kind": "login", "instance": "gw:101"}).text
    with feed.subscribe() as sub:
        assert side.command("feed_events", [["not json", "[]", "{}", 5, None,
                                             '{"kind": "nope", "instance": "x"}',
                                             '{"kind": "login", "instance": 5}',
                                             "x" * 100_000, "[" * 60_000, good]])
        assert side.command("feed_events", [])
        assert side.command("feed_events", ["not a list"])
        assert not side.command("kill", ["s1", "admin_kill", "bye"])
        item = sub.get_nowait()
        assert item is not None and item.text == good
        assert sub.get_nowait() is None
