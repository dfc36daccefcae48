"""In-process state: window semantics, bounded memory under floods (hypothesis)."""

from __future__ import annotations

import hashlib

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.limits.decisions import Ban
from gateway.limits.limiter import Limiter
from gateway.limits.state import MemoryState
from tests.support.limits import anomaly_config, limits_config

T0 = 1_700_000_000.0


def test_window_counts_distinct_members_and_forgets_old_ones():
    async def main():
        s = MemoryState()
        assert await s.window_add([("k", "a"), ("k", "b"), ("k", "a")], T0, 10.0) == [1, 2, 2]
        assert await s.window_count(["k", "missing"], T0 + 5, 10.0) == [2, 0]
        assert await s.window_contains("k", "a", T0 + 9.9, 10.0)
        assert not await s.window_contains("k", "a", T0 + 10, 10.0)
        await s.window_add([("k", "c")], T0 + 6, 10.0)
        assert await s.window_members("k", T0 + 10.5, 10.0) == ["c"]
        # The cap keeps the most recent members.
        for i in range(10):
            n = (await s.window_add([("cap", f"m{i}")], T0 + i, 100.0, cap=4))[0]
        assert n == 4 and await s.window_members("cap", T0 + 10, 100.0) == [
            "m6", "m7", "m8", "m9"]

    trio.run(main)


def test_counter_sums_over_a_sliding_window_and_flags_expire():
    async def main():
        s = MemoryState()
        assert await s.counter_add("c", 5, T0, 100.0) == 5
        assert await s.counter_add("c", 7, T0 + 50, 100.0) == 12
        assert await s.counter_add("c", 0, T0 + 105, 100.0) == 7  # the first bucket aged out
        assert await s.incr("n", T0, 10.0) == 1 and await s.incr("n", T0 + 5, 10.0) == 2
        assert await s.incr("n", T0 + 16, 10.0) == 1  # forgotten 10 s after the last incr
        assert await s.set_once("f", T0, 10.0) and not await s.set_once("f", T0 + 9, 10.0)
        assert await s.set_once("f", T0 + 10, 10.0)

    trio.run(main)


def test_key_and_ban_memory_is_bounded():
    async def main():
        s = MemoryState(max_keys=100, max_bans=10)
        for i in range(1000):
            await s.window_add([(f"k{i}", "m")], T0, 3600.0)
            await s.ban_put(Ban("ip", f"192.0.2.{i % 250}/32", "test", T0, T0 + 60), T0)
        assert len(s) == 100 and s.ban_count == 10
        # The most recently written keys are the ones kept.
        assert await s.window_count(["k999", "k0"], T0, 3600.0) == [1, 0]

    trio.run(main)


ips = st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)).map(
    lambda t: f"10.{t[0]}.{t[1]}.{t[2]}")
v6 = st.integers(0, 2**64 - 1).map(lambda n: f"2001:db8:{n >> 48:x}::{n & 0xffff:x}")
events = st.lists(
    st.tuples(st.one_of(ips, v6), st.sampled_from(["alice", "bob", "carol", "dave"]),
              st.integers(0, 5), st.floats(0, 5), st.booleans()),
    min_size=1, max_size=120,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_random_floods_keep_memory_bounded_and_counts_sane(evs):
    """Whatever the mix of addresses, users, passwords and successes: counts are never
    negative nor above the window cap, tarpits stay within [0, tarpit_max], every ban has
    a positive lifetime, and the store never grows past its bound."""

    async def main():
        state = MemoryState(max_keys=300, max_bans=20)
        lim = Limiter(state, limits_config(ip_fail_threshold=3, subnet_fail_threshold=5),
                      anomaly_config(spray_distinct_users=3))
        now = T0
        for ip, user, pw, dt, success in evs:
            now += dt
            if success:
                await lim.record_success(user, ip, now)
                continue
            fprint = hashlib.sha256(f"{user}\0{pw}".encode()).digest()[:8]
            out = await lim.record_failure(user, ip, fprint, now)
            assert all(0 <= n <= 256 for n in out.counts.values())
            assert 0 <= out.tarpit_seconds <= 10.0
            assert all(b.expires > b.created for b in out.new_bans)
            assert len(state) <= 300 and state.ban_count <= 20
        assert all(b.active(now) for b in await lim.list_bans(now))

    trio.run(main)
