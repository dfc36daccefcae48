"""Two gateway instances sharing ``[state] redis`` (a real redis-server): what an operator
running several gateways behind a load balancer relies on.

- a ban one instance makes is enforced by the other at connect;
- failures an attacker spreads over both instances add up;
- a ban survives a restart of the instance that made it;
- every key in Redis has a TTL, so nothing piles up forever;
- while Redis is down, logins go on without the limiter (fail open), and the outage is
  logged and counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support.attack import (
    attempt_all,
    attempt_login,
    fast_limits,
    greeting_from,
    metrics_on,
)
from tests.support.redis import RedisServer, RedisStartError, start_redis
from tests.support.scrape import sample_value, scrape

pytestmark = pytest.mark.e2e

BAN_TTL = 600.0  # fast_limits' ban_ttl = "10m"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    try:
        server = start_redis()
    except RedisStartError as e:  # a missing server is a failure, not a skip
        pytest.fail(str(e), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def test_ban_is_shared_by_two_instances_and_survives_a_restart(gateway, redis_server):
    shared = {"redis": redis_server.url}
    limits = fast_limits(ip_fail_threshold=3)
    gw_a = gateway(state=shared, limits=limits)
    gw_b = gateway(state=shared, limits=limits)
    attacker, roamer, user = "127.0.1.100", "127.0.1.101", "127.0.2.100"
    assert greeting_from(gw_b, attacker).startswith(b"* OK")

    # attacker: every guess through A. roamer: guesses spread over A and B, none of which
    # alone reaches the threshold.
    tries = attempt_all(gw_a, [("alice", f"guess-{i}", attacker) for i in range(3)]
                        + [("bob", f"guess-{i}", roamer) for i in range(2)])
    tries.append(attempt_login(gw_b, "bob", "guess-2", source=roamer))
    assert all(t.failed for t in tries), tries
    ban = gw_a.wait_for_event("ban.created", network=f"{attacker}/32")
    assert ban["ban_reason"] == "ip_failures"
    gw_b.wait_for_event("ban.created", network=f"{roamer}/32")  # B saw the third failure

    for ip in (attacker, roamer):
        assert greeting_from(gw_b, ip).startswith(b"* BYE [UNAVAILABLE]"), ip
        assert gw_b.wait_for_event("connection.refused", client_ip=ip)["reason"] \
            == "banned:ip_failures"
    assert attempt_login(gw_b, "alice", "alicepass", source=user).ok

    # restart A: it keeps no bans in memory, so a refusal now comes from Redis
    gw_a.stop()
    gw_a.start()
    gw_a.wait_ready()
    refused_before = len(gw_a.events("connection.refused", client_ip=attacker))
    assert greeting_from(gw_a, attacker).startswith(b"* BYE [UNAVAILABLE]")
    gw_a.wait_for_event("connection.refused", client_ip=attacker)
    assert len(gw_a.events("connection.refused", client_ip=attacker)) == refused_before + 1
    assert attempt_login(gw_a, "alice", "alicepass", source=user).ok

    # every key expires on its own; the bans with their ban_ttl
    keys = redis_server.keys("igw:*")
    assert keys, "no gateway state in Redis at all"
    no_ttl = [k for k in keys if redis_server.pttl(k) < 0]
    assert no_ttl == [], f"keys without a TTL: {no_ttl}"
    ban_keys = [k for k in keys if k.startswith("igw:ban:v4:")]
    assert len(ban_keys) == 2, keys
    for k in ban_keys:
        ttl = int(redis_server.cli("TTL", k))
        assert BAN_TTL - 120 < ttl <= BAN_TTL, (k, ttl)
    ban_record = redis_server.cli("GET", f"igw:ban:v4:{0x7F000164:x}/32")  # 127.0.1.100
    assert '"reason":"ip_failures"' in ban_record and '"network":"127.0.1.100/32"' in ban_record
    assert time.time() < ban["expires"]


def test_logins_fail_open_while_redis_is_down(gateway):
    try:
        server = start_redis()
    except RedisStartError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        gw = gateway(state={"redis": server.url}, limits=fast_limits(ip_fail_threshold=2),
                     metrics=metrics_on())
    finally:
        server.stop()
    user, attacker = "127.0.3.50", "127.0.1.50"
    assert attempt_login(gw, "alice", "alicepass", source=user).ok
    # Wrong passwords still fail; nothing counts them, so the threshold bans nobody.
    for i in range(3):
        assert attempt_login(gw, "bob", f"guess-{i}", source=attacker).failed
    assert greeting_from(gw, attacker).startswith(b"* OK")
    text = scrape(gw)
    for operation in ("check_connect", "check_login", "record_failure", "record_success"):
        event = gw.wait_for_event("limiter.unavailable", operation=operation)
        assert "Redis" in event["error"]
        assert sample_value(text, "imap_gateway_state_unavailable_total",
                            operation=operation) >= 1, operation
    assert not gw.events("ban.created")
