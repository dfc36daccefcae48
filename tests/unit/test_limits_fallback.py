"""The limiter keeps limiting while Redis is down, and shares again when it is back.

A real redis-server is stopped by PID in the middle of an attack and started again on
the same port: what an operator relies on when ``[state] redis`` fails (see
``gateway.limits.fallback``). The limiter's clock is passed in; the probe interval is 0,
so the first call after Redis is back finds it.
"""

from __future__ import annotations

import hashlib
import itertools
import time

import pytest
import trio

from gateway.limits.fallback import FallbackState
from gateway.limits.limiter import Limiter
from gateway.limits.redis_state import RedisState, open_state
from gateway.limits.rules import covering_network_keys
from gateway.limits.state import StateUnavailable
from gateway.observability.metrics import REGISTRY
from tests.support.limits import limits_config
from tests.support.redis import RedisServer, RedisStartError, start_redis

T0 = 1_700_000_000.0
ATTACKER = "203.0.113.9"
_prefixes = itertools.count()


@pytest.fixture
def redis_server():
    try:
        server = start_redis()
    except RedisStartError as exc:  # a missing server must fail loudly, not skip
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()  # by PID: only the server this fixture started


def fp(user: str, pw: str) -> bytes:
    return hashlib.sha256(f"{user}\0{pw}".encode()).digest()[:8]


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_wrong_passwords_are_tarpitted_and_banned_while_redis_is_down(redis_server: RedisServer):
    prefix = f"fb{next(_prefixes)}-{time.monotonic_ns()}:"
    settings = limits_config(ip_fail_threshold=3, ban_ttl="2m", tarpit_base="1s")
    to_memory = sample("imap_gateway_state_fallback_switches_total", to="memory")
    to_redis = sample("imap_gateway_state_fallback_switches_total", to="redis")

    async def main():
        async with open_state(redis_server.url, key_prefix=prefix, timeout=1.0,
                              probe_interval=0.0) as state:
            assert isinstance(state, FallbackState)
            redis = state.primary
            assert isinstance(redis, RedisState)
            lim = Limiter(state, settings)
            # A ban made before the outage (the bans gauge lists them: a local copy).
            old = await lim.add_ban("198.51.100.7", T0, ttl=600)
            await lim.list_bans(T0)
            assert sample("imap_gateway_state_fallback_active") == 0

            redis_server.stop_process()
            tarpits = []
            for i in range(3):
                out = await lim.record_failure("alice", ATTACKER, fp("alice", str(i)), T0 + i)
                tarpits.append(out.tarpit_seconds)
            assert state.fallback_active
            assert sample("imap_gateway_state_fallback_active") == 1
            assert sample("imap_gateway_state_fallback_switches_total",
                          to="memory") == to_memory + 1
            assert tarpits == [1.0, 2.0, 4.0]  # the tarpit still grows
            (ban,) = out.new_bans  # and the threshold still bans
            assert ban.reason == "ip_failures"
            assert not (await lim.check_connect(ATTACKER, T0 + 4)).allowed
            assert not (await lim.check_connect("198.51.100.7", T0 + 4)).allowed  # the old ban
            assert (await lim.check_connect("192.0.2.1", T0 + 4)).allowed
            # Ban administration does not pretend: it needs the shared state.
            with pytest.raises(StateUnavailable):
                await lim.list_bans(T0 + 4)
            with pytest.raises(StateUnavailable):
                await lim.add_ban("192.0.2.0/24", T0 + 4)

            redis_server.restart()  # empty: persistence is off
            assert not (await lim.check_connect(ATTACKER, T0 + 5)).allowed
            assert not state.fallback_active
            assert sample("imap_gateway_state_fallback_active") == 0
            assert sample("imap_gateway_state_fallback_switches_total",
                          to="redis") == to_redis + 1
            # The ban made during the outage was written to Redis, for every instance.
            assert [b.network for b in await redis.ban_get(
                covering_network_keys(ATTACKER), T0 + 5)] == [f"{ATTACKER}/32"]
            assert [b.network for b in await lim.list_bans(T0 + 5)] == [f"{ATTACKER}/32"]
            # Counting goes to Redis again.
            await lim.record_failure("bob", "192.0.2.50", fp("bob", "x"), T0 + 6)
            assert redis_server.keys(f"{prefix}lim:f:ip:192.0.2.50") == [
                f"{prefix}lim:f:ip:192.0.2.50"]
            return old

    trio.run(main)
