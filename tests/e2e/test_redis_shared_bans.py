"""Two gateway instances sharing ``[state] redis`` (a real redis-server): what an operator
running several gateways behind a load balancer relies on.

- a ban one instance makes is enforced by the other at connect;
- failures an attacker spreads over both instances add up;
- a ban survives a restart of the instance that made it;
- every key in Redis has a TTL, so nothing piles up forever;
- while Redis is down, the gateway counts in its own memory: wrong passwords are still
  tarpitted and banned, the fallback shows in a metric; when Redis is back the bans made
  meanwhile are written to it and counting is shared again.
"""

from __future__ import annotations

import time

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


def test_limiter_keeps_counting_while_redis_is_down_and_shares_again_after(gateway):
    try:
        server = start_redis()
    except RedisStartError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        _outage_and_recovery(gateway, server)
    finally:
        server.stop()


def _outage_and_recovery(gateway, server: RedisServer) -> None:
    gw = gateway(state={"redis": server.url},
                 limits=fast_limits(ip_fail_threshold=3, tarpit_base="10ms", tarpit_max="50ms"),
                 metrics=metrics_on())
    user, attacker, later = "127.0.3.50", "127.0.1.50", "127.0.1.51"
    assert attempt_login(gw, "alice", "alicepass", source=user).ok
    text = scrape(gw)
    assert sample_value(text, "imap_gateway_state_fallback_active") == 0
    tarpits_before = sample_value(text, "imap_gateway_tarpit_delay_seconds_count")

    server.stop_process()  # by PID: the outage
    # Wrong passwords are still counted (in the gateway's memory): tarpitted, then banned.
    for i in range(3):
        assert attempt_login(gw, "bob", f"guess-{i}", source=attacker).failed
    ban = gw.wait_for_event("ban.created", network=f"{attacker}/32")
    assert ban["ban_reason"] == "ip_failures"
    assert greeting_from(gw, attacker).startswith(b"* BYE [UNAVAILABLE]")
    event = gw.wait_for_event("state.fallback_started")
    assert "Redis" in event["error"]
    text = scrape(gw)
    assert sample_value(text, "imap_gateway_state_fallback_active") == 1
    assert sample_value(text, "imap_gateway_state_fallback_switches_total", to="memory") == 1
    assert sample_value(text, "imap_gateway_tarpit_delay_seconds_count") >= tarpits_before + 3
    assert attempt_login(gw, "alice", "alicepass", source=user).ok  # users still log in

    server.restart()  # empty: persistence is off
    deadline = time.monotonic() + 60  # the probe runs every few seconds; a loaded machine
    while True:
        text = scrape(gw)
        if sample_value(text, "imap_gateway_state_fallback_active") == 0:
            break
        assert time.monotonic() < deadline, "still on the in-process fallback"
        time.sleep(0.5)
    assert sample_value(text, "imap_gateway_state_fallback_switches_total", to="redis") == 1
    gw.wait_for_event("state.fallback_ended")
    # The ban made during the outage was written to Redis; new failures count there again.
    assert '"reason":"ip_failures"' in server.cli("GET", f"igw:ban:v4:{0x7F000132:x}/32")
    assert attempt_login(gw, "bob", "guess-9", source=later).failed
    assert server.keys(f"igw:lim:f:ip:{later}") == [f"igw:lim:f:ip:{later}"]
    assert greeting_from(gw, attacker).startswith(b"* BYE [UNAVAILABLE]")
