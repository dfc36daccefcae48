"""The supervisor-worker link over a real Unix socket pair: the limiter state a worker
sees through it is the supervisor's one MemoryState, the connection caps hold for the
host and a dead worker gives its slots back, a lost supervisor fails like a Redis outage."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from gateway.limits.connections import ConnectionTracker
from gateway.limits.decisions import Ban
from gateway.limits.limiter import Limiter
from gateway.limits.rules import covering_network_keys
from gateway.limits.state import MemoryState, StateUnavailable
from gateway.proxy.workerlink import (
    RemoteState,
    RemoteTracker,
    SharedServices,
    WorkerLink,
    open_link,
    serve_worker,
)
from tests.support.limits import anomaly_config, limits_config

T0 = 1_700_000_000.0


def _shared(**tracker: Any) -> SharedServices:
    caps = {"max_connections_per_ip": 2, "max_connections": 100,
            "max_connection_rate_per_ip": 100, **tracker}
    return SharedServices(tracker=ConnectionTracker(**caps), state=MemoryState())


def _run_with_link(shared: SharedServices,
                   body: Callable[[WorkerLink, trio.SocketStream], Awaitable[None]],
                   index: int = 1) -> list[str]:
    """Run ``body(link, supervisor_end)`` against ``serve_worker``; returns what was
    reported (ready, lost)."""
    events: list[str] = []

    async def main() -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sup = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        worker = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_worker, sup, shared, index, lambda: events.append("ready"))
            async with open_link(worker, lambda: events.append("lost")) as link:
                await body(link, sup)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return events


def test_remote_state_answers_exactly_as_the_supervisors_memory_state():
    shared = _shared()
    mirror = MemoryState()

    async def body(link: WorkerLink, _: trio.SocketStream) -> None:
        remote = RemoteState(link)
        for backend in (remote, mirror):
            assert await backend.window_add([("k", "a"), ("k", "b"), ("k", "a")], T0, 10) == [1, 2, 2]
            assert await backend.window_count(["k", "x"], T0 + 5, 10) == [2, 0]
            assert await backend.window_contains("k", "b", T0 + 5, 10)
            assert await backend.window_members("k", T0 + 5, 10) == ["b", "a"]
            assert await backend.counter_add("c", 7, T0, 100) == 7
            assert await backend.incr("i", T0, 10) == 1
            assert await backend.set_once("f", T0, 10) is True
            assert await backend.set_once("f", T0 + 1, 10) is False
            ban = Ban("ip", "192.0.2.7/32", "ip_failures", T0, T0 + 600)
            await backend.ban_put(ban, T0)
            assert await backend.ban_list(T0 + 1) == [ban]
            assert await backend.ban_delete("192.0.2.7") is True
            await backend.delete(["k"])
            assert await backend.window_count(["k"], T0 + 5, 10) == [0]
        # Everything the worker did is in the supervisor's one state, nowhere else.
        assert shared.state is not None and len(shared.state) == len(mirror)

    _run_with_link(shared, body)


def test_two_workers_limiters_share_one_failure_count():
    """The threshold counts every worker's failures: 5 from each of two workers ban."""
    shared = _shared()
    limits = limits_config(ip_fail_threshold=10, tarpit_base="0s", tarpit_max="0s")
    bans: list[Ban] = []

    async def main() -> None:
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
        async with trio.open_nursery() as nursery:
            links = []
            for i, (ours, theirs) in enumerate(pairs):
                sup = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
                nursery.start_soon(serve_worker, sup, shared, i, lambda: None)
                links.append(await _enter(nursery, trio.SocketStream(
                    trio.socket.from_stdlib_socket(theirs))))
            limiters = [Limiter(RemoteState(link), limits, anomaly_config()) for link in links]
            for n in range(10):
                result = await limiters[n % 2].record_failure(
                    "alice", "198.51.100.9", f"fp{n}".encode(), T0 + n)
                bans.extend(result.new_bans)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert [b.network for b in bans if b.scope == "ip"] == ["198.51.100.9/32"]


async def _enter(nursery: trio.Nursery, stream: trio.SocketStream) -> WorkerLink:
    """An open link that lives as long as ``nursery``."""
    ready = trio.Event()
    box: list[WorkerLink] = []

    async def hold() -> None:
        async with open_link(stream, lambda: None) as link:
            box.append(link)
            ready.set()
            await trio.sleep_forever()

    nursery.start_soon(hold)
    await ready.wait()
    return box[0]


def test_connection_caps_hold_for_the_host_and_a_dead_worker_gives_its_slots_back():
    shared = _shared(max_connections_per_ip=2)

    async def body(link: WorkerLink, _: trio.SocketStream) -> None:
        tracker = RemoteTracker(link)
        first = await tracker.try_open("203.0.113.5", T0)
        second = await tracker.try_open("203.0.113.5", T0)
        third = await tracker.try_open("203.0.113.5", T0)
        assert (first.allowed, second.allowed, third.allowed) == (True, True, False)
        assert third.reason == "max_connections_per_ip"
        assert first.ticket is not None
        tracker.close(first.ticket)
        assert (await tracker.try_open("203.0.113.5", T0 + 1)).allowed
        assert shared.tracker.total == 2

    _run_with_link(shared, body)
    # The link closed with two connections open (the worker died): the supervisor freed them.
    assert shared.tracker.total == 0 and shared.tracker.active("203.0.113.5") == 0


def test_a_lost_supervisor_is_a_state_outage_and_refuses_connections():
    shared = _shared()

    async def body(link: WorkerLink, sup: trio.SocketStream) -> None:
        await sup.aclose()  # the supervisor's end goes away
        with trio.fail_after(10):
            while not link.closed:
                await trio.sleep(0.01)
        with pytest.raises(StateUnavailable):
            await RemoteState(link).incr("k", T0, 10)
        decision = await RemoteTracker(link).try_open("192.0.2.1", T0)
        assert not decision.allowed

    events = _run_with_link(shared, body)
    assert events == ["lost"]


def test_ready_is_reported_and_session_lists_reach_the_other_workers():
    shared = _shared()

    async def body(link: WorkerLink, _: trio.SocketStream) -> None:
        link.notify("ready")
        link.notify("sessions", [{"id": "s1"}])
        assert await link.call("all_sessions") == []  # a worker never gets its own
        shared.sessions[0] = [{"id": "s0"}]
        assert await link.call("all_sessions") == [[0, [{"id": "s0"}]]]
        assert shared.sessions[1] == [{"id": "s1"}]

    events = _run_with_link(shared, body)
    assert events[0] == "ready"
    assert 1 not in shared.sessions  # dropped with its link


def test_a_batch_over_the_link_is_run_by_the_supervisors_state_in_order():
    shared = _shared()
    mirror = MemoryState()
    ban = Ban("ip", "192.0.2.7/32", "ip_failures", T0, T0 + 600)
    ops = [
        ("window_members", ("fam", T0, 100.0)),
        ("window_add", ([("fam", "n1")], T0, 100.0, 64)),
        ("window_contains", ("fam", "n1", T0, 100.0)),
        ("ban_get", (covering_network_keys("192.0.2.7"), T0 + 1)),
        ("delete", (["fam"],)),
        ("window_count", (["fam"], T0, 100.0)),
    ]

    async def body(link: WorkerLink, _: trio.SocketStream) -> None:
        remote = RemoteState(link)
        for backend in (remote, mirror):
            await backend.ban_put(ban, T0)
            assert await backend.batch(ops) == [[], [1], True, [ban], None, [0]]
        with pytest.raises(ValueError, match="ban_list"):
            await remote.batch([("ban_list", (T0,))])

    _run_with_link(shared, body)


def test_admit_checks_caps_and_bans_in_one_call_and_a_refused_ban_gives_its_slot_back():
    shared = _shared(max_connections_per_ip=1)
    limiter = Limiter(MemoryState(), limits_config(), anomaly_config())
    banned_ip, other_ip = "198.51.100.7", "203.0.113.5"

    async def body(link: WorkerLink, _: trio.SocketStream) -> None:
        assert shared.state is not None
        await shared.state.ban_put(Ban("ip", f"{banned_ip}/32", "ip_failures", T0, T0 + 600), T0)
        tracker = RemoteTracker(link)
        decision, bans = await tracker.admit(banned_ip, T0, limiter.connect_ban_keys(banned_ip))
        assert decision.allowed and decision.ticket is not None
        refused = limiter.connect_decision(banned_ip, bans or [])
        assert not refused.allowed and refused.reason == "banned:ip_failures"
        tracker.close(decision.ticket)  # the gateway refuses and closes the connection
        decision, bans = await tracker.admit(other_ip, T0, limiter.connect_ban_keys(other_ip))
        assert decision.allowed and bans == []
        # The per-IP cap still holds (one connection of other_ip is open).
        decision, bans = await tracker.admit(other_ip, T0, limiter.connect_ban_keys(other_ip))
        assert not decision.allowed and decision.reason == "max_connections_per_ip"
        assert bans is None
        # The banned address's slot was given back by the close notification.
        again, _ = await tracker.admit(banned_ip, T0 + 1, None)
        assert again.allowed

    _run_with_link(shared, body)


def test_an_error_in_the_body_of_open_link_is_not_swallowed():
    """Closing the stream on the way out must not turn the body's error into a quiet
    exit (a worker whose serve loop fails must fail, not exit as if stopped)."""

    async def main() -> None:
        _, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        async with open_link(trio.SocketStream(trio.socket.from_stdlib_socket(theirs)),
                             lambda: None):
            await trio.sleep(0)
            raise LookupError("from the body")

    with pytest.RaisesGroup(LookupError, flatten_subgroups=True):
        trio.run(main)
