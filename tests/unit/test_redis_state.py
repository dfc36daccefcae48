"""The Redis state backend against a real redis-server (started here, stopped by PID).

What an operator running several gateways relies on: a ban made by one instance is
enforced by the others, survives a gateway restart, and every key carries a TTL so
Redis does not fill up with dead counters. The same primitive scenario is also run on
both backends, so the in-process default and Redis cannot drift apart.
"""

from __future__ import annotations

import hashlib
import itertools
import time

import pytest
import trio

from gateway.limits.decisions import Ban
from gateway.limits.fallback import FallbackState
from gateway.limits.limiter import Limiter
from gateway.limits.redis_state import RedisState, open_state
from gateway.limits.state import MemoryState, StateUnavailable
from tests.support.limits import limits_config
from tests.support.net import free_port
from tests.support.redis import RedisStartError, start_redis

T0 = 1_700_000_000.0
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis_url():
    try:
        server = start_redis()
    except RedisStartError as exc:  # a missing server must fail loudly, not skip
        pytest.fail(str(exc))
    try:
        yield server.url
    finally:
        server.stop()  # by PID: only the server this fixture started


def fp(user: str, pw: str) -> bytes:
    return hashlib.sha256(f"{user}\0{pw}".encode()).digest()[:8]


def new_prefix() -> str:
    """Each test gets its own key namespace on the shared server."""
    return f"t{next(_prefixes)}-{time.monotonic_ns()}:"


SETTINGS = limits_config(ip_fail_threshold=4, ban_ttl="2m", ban_ttl_max="8m")


def test_ban_by_one_instance_is_enforced_by_another_and_survives_restart(redis_url):
    prefix = new_prefix()

    async def two_instances():
        async with open_state(redis_url, key_prefix=prefix) as a_state, \
                open_state(redis_url, key_prefix=prefix) as b_state:
            a, b = Limiter(a_state, SETTINGS), Limiter(b_state, SETTINGS)
            # The attacker's connections land on both instances; the counts add up.
            for i, lim in enumerate([a, b, a]):
                out = await lim.record_failure("alice", "203.0.113.9", fp("alice", str(i)), T0 + i)
                assert out.new_bans == ()
            assert (await b.check_connect("203.0.113.9", T0 + 3)).allowed
            out = await b.record_failure("alice", "203.0.113.9", fp("alice", "3"), T0 + 3)
            (ban,) = out.new_bans
            assert ban.reason == "ip_failures"
            decision = await a.check_connect("203.0.113.9", T0 + 4)
            assert not decision.allowed and decision.ban == ban
            assert not (await a.check_login("bob", "203.0.113.9", T0 + 4)).allowed

            # Every key has a TTL: the ban lives as long as the ban, counters as the window.
            assert isinstance(a_state, FallbackState) and not a_state.fallback_active
            redis_a = a_state.primary
            assert isinstance(redis_a, RedisState)
            r = redis_a._r
            ban_pttl = await r.pttl(redis_a.ban_key(ban.network))
            assert 119_000 < ban_pttl <= 120_000
            keys = [k async for k in r.scan_iter(match=f"{prefix}*")]
            ttls = {k: await r.pttl(k) for k in keys}
            assert len(ttls) >= 8 and all(t > 0 for t in ttls.values()), ttls
            fail_key = redis_a.key("lim:f:ui:alice|203.0.113.9")
            assert 0 < await r.pttl(fail_key) <= 900_000
            return ban

        # (the second context closes both clients: the "gateways" stop)

    ban = trio.run(two_instances)

    async def restarted():
        async with open_state(redis_url, key_prefix=prefix) as state:
            lim = Limiter(state, SETTINGS)
            assert await lim.list_bans(T0 + 5) == [ban]
            assert not (await lim.check_connect("203.0.113.9", T0 + 5)).allowed
            # The offence is remembered: the next ban after this one lasts twice as long.
            for i in range(4):
                out = await lim.record_failure("bob", "203.0.113.9", fp("bob", str(i)),
                                               ban.expires + i)
            assert [b.expires - b.created for b in out.new_bans] == [240.0]

    trio.run(restarted)


def test_admin_bans_over_redis(redis_url):
    async def main():
        async with open_state(redis_url, key_prefix=new_prefix()) as state:
            lim = Limiter(state, SETTINGS)
            b1 = await lim.add_ban("198.18.0.0/15", T0, ttl=60)
            b2 = await lim.add_ban("2001:db8::/48", T0, ttl=30)
            assert await lim.list_bans(T0 + 1) == [b2, b1]
            assert not (await lim.check_connect("198.19.200.1", T0 + 1)).allowed
            assert not (await lim.check_connect("2001:db8:0:ffff::1", T0 + 1)).allowed
            assert await lim.list_bans(T0 + 31) == [b1]  # expiry honours the given clock
            assert await lim.remove_ban("198.18.0.0/15", T0 + 2)
            assert not await lim.remove_ban("198.18.0.0/15", T0 + 2)
            assert (await lim.check_connect("198.19.200.1", T0 + 2)).allowed

    trio.run(main)


async def _primitive_scenario(s) -> list:
    """One script of every primitive; both backends must give the same answers.
    (Per key, the clock only moves forward, as it does in a gateway.)"""
    out = []
    out.append(await s.window_add([("w", "a"), ("w", "b"), ("w", "a"), ("x", "a")], T0, 10.0))
    out.append(await s.window_count(["w", "x", "none"], T0 + 5, 10.0))
    out.append(await s.window_add([("w", "c")], T0 + 6, 10.0))
    out.append(await s.window_contains("w", "b", T0 + 9.5, 10.0))
    out.append(await s.window_contains("w", "b", T0 + 10.0, 10.0))
    out.append(await s.window_members("w", T0 + 10.5, 10.0))
    for i in range(6):
        await s.window_add([("cap", f"m{i}")], T0 + i, 100.0, 3)
    out.append(await s.window_members("cap", T0 + 6, 100.0))
    out.append([await s.counter_add("c", n, T0 + t, 100.0)
                for n, t in [(5, 0), (7, 50), (0, 105), (2**31, 106)]])
    out.append([await s.incr("n", T0, 10.0), await s.incr("n", T0 + 1, 10.0)])
    out.append([await s.set_once("f", T0, 10.0), await s.set_once("f", T0 + 1, 10.0)])
    await s.delete(["w", "n"])
    out.append([await s.window_count(["w"], T0 + 10.5, 10.0), await s.incr("n", T0 + 2, 10.0)])
    ban = Ban("subnet", "192.0.2.0/24", "test", T0, T0 + 50, "admin")
    await s.ban_put(ban, T0)
    from gateway.limits.rules import covering_network_keys

    out.append(await s.ban_get(covering_network_keys("192.0.2.9"), T0 + 1))
    out.append(await s.ban_get(covering_network_keys("192.0.3.9"), T0 + 1))
    out.append([await s.ban_delete("192.0.2.0/24"), await s.ban_delete("192.0.2.0/24")])
    out.append(await s.ban_get(covering_network_keys("192.0.2.9"), T0 + 2))
    await s.ban_put(ban, T0)
    out.append(await s.ban_get(covering_network_keys("192.0.2.9"), T0 + 50))  # expired
    return out


def test_redis_and_in_process_backends_agree(redis_url):
    async def main():
        expected = await _primitive_scenario(MemoryState())
        async with open_state(redis_url, key_prefix=new_prefix()) as state:
            assert await _primitive_scenario(state) == expected
        return expected

    result = trio.run(main)
    assert result[0] == [1, 2, 2, 1] and result[2] == [3] and result[5] == ["c"]
    assert result[6] == ["m3", "m4", "m5"] and result[7] == [5, 12, 7, 7 + 2**31]
    assert result[11][0].network == "192.0.2.0/24" and result[12] == [] and result[14] == []


def test_unreachable_redis_fails_at_startup_without_leaking_the_password():
    port = free_port()  # nothing listens here

    async def main():
        async with open_state(f"redis://:hunter2secret@127.0.0.1:{port}/0", timeout=0.5):
            pass

    with pytest.raises(StateUnavailable) as err:
        trio.run(main)
    assert "[state] redis" in str(err.value) and "hunter2secret" not in str(err.value)
    with pytest.raises(StateUnavailable, match="redis://"):
        trio.run(lambda: open_state("http://x").__aenter__())


async def _batch_scenario(s) -> list:
    """A login's worth of operations as batches (one round trip each); every backend's
    ``batch`` must answer as its single calls do, in order within the batch."""
    from gateway.limits.rules import covering_network_keys

    ban = Ban("ip", "192.0.2.9/32", "ip_failures", T0, T0 + 50)
    await s.ban_put(ban, T0)
    return [
        await s.batch([]),
        await s.batch([
            ("window_members", ("fam", T0, 100.0)),
            ("window_add", ([("fam", "n1"), ("fam", "n2")], T0, 100.0, 64)),
            ("window_add", ([], T0, 100.0)),
            ("window_count", (["fam", "none"], T0, 100.0)),
            ("window_contains", ("fam", "n1", T0 + 1, 100.0)),
            ("counter_add", ("c", 3, T0, 100.0)),
            ("incr", ("n", T0, 10.0)),
            ("set_once", ("f", T0, 10.0)),
            ("set_once", ("f", T0, 10.0)),
            ("ban_get", (covering_network_keys("192.0.2.9"), T0 + 1)),
            ("ban_get", ([], T0 + 1)),
        ]),
        # A delete in a batch takes effect for the operations after it, not before.
        await s.batch([
            ("window_members", ("fam", T0 + 2, 100.0)),
            ("delete", (["fam", "n"],)),
            ("window_members", ("fam", T0 + 2, 100.0)),
            ("delete", ([],)),
            ("incr", ("n", T0 + 2, 10.0)),
        ]),
    ]


def test_batches_answer_as_single_calls_on_every_backend(redis_url):
    async def main():
        expected = await _batch_scenario(MemoryState())
        async with open_state(redis_url, key_prefix=new_prefix()) as state:
            assert await _batch_scenario(state) == expected
            with pytest.raises(ValueError, match="ban_put"):
                await state.batch([("ban_put", ())])
        return expected

    result = trio.run(main)
    ban = Ban("ip", "192.0.2.9/32", "ip_failures", T0, T0 + 50)
    assert result[0] == []
    assert result[1] == [[], [1, 2], [], [2, 0], True, 3, 1, True, False, [ban], []]
    assert result[2] == [["n1", "n2"], None, [], None, 1]
