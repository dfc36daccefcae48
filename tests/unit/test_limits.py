"""The limiter's decisions on the in-process state, with explicit clocks.

Each test plays a scenario an operator would recognise (a brute force from one IP, a
botnet in one /24, a victim whose account is under attack) and checks what the shell
is told to do: tarpit, ban, refuse, allow.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
import trio
from pydantic import ValidationError

from gateway.limits.limiter import BanRefused, Limiter
from gateway.limits.rules import (
    InvalidAddress,
    ban_ttl,
    canonical_ip,
    covering_network_keys,
    network_key,
    normalize_network,
    subnet_of,
    tarpit_seconds,
)
from gateway.limits.state import MemoryState
from tests.support.limits import anomaly_config, limits_config

T0 = 1_700_000_000.0
ATTACKER = "203.0.113.9"


def fp(user: str, password: str) -> bytes:
    return hmac.new(b"process-secret", f"{user}\0{password}".encode(), hashlib.sha256).digest()[:8]


def limiter(**overrides) -> Limiter:
    anomaly = overrides.pop("anomaly", None) or anomaly_config()
    return Limiter(MemoryState(), limits_config(**overrides), anomaly)


def run(fn):
    return trio.run(fn)


# -- pure rules ---------------------------------------------------------------------------


def test_tarpit_doubles_per_failure_up_to_the_cap():
    assert [tarpit_seconds(n, 1.0, 10.0) for n in range(0, 7)] == [0, 1, 2, 4, 8, 10, 10]
    assert tarpit_seconds(10**9, 1.0, 10.0) == 10.0  # no overflow on absurd counts
    assert tarpit_seconds(5, 0.0, 10.0) == 0.0  # tarpit_base = 0 switches it off


def test_ban_ttl_doubles_per_offence_up_to_the_cap():
    assert [ban_ttl(k, 900, 86400) for k in range(1, 9)] == [
        900, 1800, 3600, 7200, 14400, 28800, 57600, 86400]
    assert ban_ttl(10**6, 900, 86400) == 86400


def test_subnets_and_mapped_addresses():
    assert subnet_of("192.0.2.77", 24, 64) == "192.0.2.0/24"
    assert subnet_of("2001:db8:1:2:3::9", 24, 64) == "2001:db8:1:2::/64"
    # A v4 client seen on a dual-stack socket is the same client as on a v4 socket.
    assert canonical_ip("::ffff:192.0.2.77") == "192.0.2.77"
    assert subnet_of("::ffff:192.0.2.77", 24, 64) == "192.0.2.0/24"
    with pytest.raises(InvalidAddress, match="not an IP address"):
        canonical_ip("example.org")


def test_every_covering_network_is_a_lookup_key():
    keys = covering_network_keys("10.20.30.40")
    assert len(keys) == 33 and keys[0] == network_key(normalize_network("10.20.30.40"))
    for net in ("10.20.30.40/32", "10.20.30.0/24", "10.20.0.0/16", "10.0.0.0/8", "0.0.0.0/0"):
        assert network_key(normalize_network(net)) in keys
    assert network_key(normalize_network("10.20.31.0/24")) not in keys
    v6 = covering_network_keys("2001:db8::1")
    assert len(v6) == 129 and network_key(normalize_network("2001:db8::/32")) in v6


def test_the_limiter_runs_on_the_validated_config_sections():
    lim = Limiter(MemoryState())
    assert lim.limits == limits_config() and lim.anomalies.config == anomaly_config()
    s = limits_config(fail_window="15m", ban_ttl_max="24h", tarpit_base="500ms",
                      allow_networks=["10.0.0.0/8", "2001:db8::/32"])
    assert (s.fail_window, s.ban_ttl_max, s.tarpit_base) == (900.0, 86400.0, 0.5)
    lim = Limiter(MemoryState(), s)
    assert lim.is_allow_listed("10.9.8.7") and lim.is_allow_listed("::ffff:10.9.8.7")
    assert lim.is_allow_listed("2001:db8::5") and not lim.is_allow_listed("192.0.2.1")
    # The same rules as in the file: a bare number is not a duration, a typo is no key.
    with pytest.raises(ValidationError, match="fail_window"):
        limits_config(fail_window=900)
    with pytest.raises(ValidationError, match="ip_threshold"):
        limits_config(ip_threshold=3)
    with pytest.raises(ValidationError, match="stuffing_failure_ratio"):
        anomaly_config(stuffing_failure_ratio=1.5)


# -- tarpit and bans ----------------------------------------------------------------------


def test_brute_force_from_one_ip_is_tarpitted_then_banned():
    async def main():
        lim = limiter()
        delays = []
        for i in range(9):
            out = await lim.record_failure("alice", ATTACKER, fp("alice", f"guess{i}"), T0 + i)
            delays.append(out.tarpit_seconds)
            assert out.new_bans == ()
        assert delays == [1, 2, 4, 8, 10, 10, 10, 10, 10]
        assert (await lim.check_connect(ATTACKER, T0 + 9)).allowed

        out = await lim.record_failure("alice", ATTACKER, fp("alice", "guess9"), T0 + 9)
        (ban,) = out.new_bans
        assert (ban.scope, ban.network, ban.reason, ban.source) == (
            "ip", "203.0.113.9/32", "ip_failures", "auto")
        assert ban.expires == T0 + 9 + 900

        refused = await lim.check_connect(ATTACKER, T0 + 10)
        assert not refused.allowed and refused.ban == ban and refused.reason == "banned:ip_failures"
        assert not (await lim.check_login("bob", ATTACKER, T0 + 10)).allowed
        assert (await lim.check_connect("203.0.113.10", T0 + 10)).allowed  # neighbour unaffected
        assert (await lim.check_connect(ATTACKER, ban.expires)).allowed  # ban ends on time

    run(main)


def test_repeat_offences_double_the_ban_up_to_ban_ttl_max():
    async def main():
        lim = limiter(ip_fail_threshold=3, ban_ttl="100s", ban_ttl_max="350s")
        now, ttls = T0, []
        for round_ in range(4):
            for i in range(3):
                out = await lim.record_failure("u", ATTACKER, fp("u", f"{round_}-{i}"), now)
                now += 1
            (ban,) = out.new_bans
            ttls.append(ban.expires - ban.created)
            now = ban.expires  # wait the ban out, offend again
        assert ttls == [100, 200, 350, 350]

    run(main)


def test_failures_outside_the_window_do_not_count():
    async def main():
        lim = limiter(ip_fail_threshold=3, fail_window="60s")
        await lim.record_failure("u", ATTACKER, fp("u", "a"), T0)
        await lim.record_failure("u", ATTACKER, fp("u", "b"), T0 + 1)
        out = await lim.record_failure("u", ATTACKER, fp("u", "c"), T0 + 60)  # first aged out
        assert out.new_bans == () and out.counts["ip"] == 2
        out = await lim.record_failure("u", ATTACKER, fp("u", "d"), T0 + 60.5)
        assert [b.reason for b in out.new_bans] == ["ip_failures"]

    run(main)


def test_same_wrong_password_counts_once():
    """A phone retrying a stale password must not get its owner's IP banned."""

    async def main():
        lim = limiter(ip_fail_threshold=3)
        outs = [await lim.record_failure("alice", "198.51.100.7", fp("alice", "old-pw"), T0 + i)
                for i in range(20)]
        assert [o.duplicate for o in outs[:3]] == [False, True, True]
        assert all(o.new_bans == () for o in outs)
        assert outs[-1].counts["ip"] == 1 and outs[-1].tarpit_seconds == 1.0
        assert (await lim.check_connect("198.51.100.7", T0 + 30)).allowed
        # Another password is another attempt.
        out = await lim.record_failure("alice", "198.51.100.7", fp("alice", "new"), T0 + 31)
        assert not out.duplicate and out.counts["ip"] == 2

    run(main)


def test_botnet_in_one_subnet_gets_the_subnet_banned():
    async def main():
        lim = limiter(subnet_fail_threshold=30)
        out = None
        for i in range(30):  # 30 hosts, one failure each: no IP comes near its threshold
            user = f"user{i % 3}"
            out = await lim.record_failure(user, f"198.18.7.{i + 1}", fp(user, f"p{i}"), T0 + i)
            if i < 29:
                assert out.new_bans == ()
        (ban,) = out.new_bans
        assert (ban.scope, ban.network, ban.reason) == ("subnet", "198.18.7.0/24", "subnet_failures")
        decision = await lim.check_connect("198.18.7.200", T0 + 31)  # a host that never failed
        assert not decision.allowed and decision.ban.network == "198.18.7.0/24"
        assert (await lim.check_connect("198.18.8.1", T0 + 31)).allowed

    run(main)


def test_ipv6_attacker_is_grouped_by_its_64():
    async def main():
        lim = limiter(subnet_fail_threshold=4)
        for i in range(4):
            out = await lim.record_failure("u", f"2001:db8:aa:bb::{i + 1:x}", fp("u", str(i)), T0)
        assert [b.network for b in out.new_bans] == ["2001:db8:aa:bb::/64"]
        assert not (await lim.check_connect("2001:db8:aa:bb:ffff::1", T0 + 1)).allowed
        assert (await lim.check_connect("2001:db8:aa:bc::1", T0 + 1)).allowed

    run(main)


def test_allow_listed_network_is_never_banned_but_still_counted_and_reported():
    async def main():
        lim = limiter(allow_networks=("10.0.0.0/8",), ip_fail_threshold=3,
                      subnet_fail_threshold=3, anomaly=anomaly_config(spray_distinct_users=5))
        outs = [await lim.record_failure(f"user{i}", "10.1.2.3", fp(f"user{i}", "x"), T0 + i)
                for i in range(10)]
        assert all(o.new_bans == () for o in outs)
        assert outs[-1].counts["ip"] == 10  # counted
        # Each user failed once from the webmail host: no escalating delay for all of them.
        assert {o.tarpit_seconds for o in outs} == {1.0}
        spray = [a for o in outs for a in o.anomalies if a.kind == "password_spray"]
        assert len(spray) == 1 and spray[0].ip == "10.1.2.3" and spray[0].action != "banned"
        decision = await lim.check_connect("10.1.2.3", T0 + 20)
        assert decision.allowed and decision.reason == "allow_listed"
        assert await lim.list_bans(T0 + 20) == []
        with pytest.raises(BanRefused, match="allow_networks"):
            await lim.add_ban("10.1.0.0/16", T0)

    run(main)


# -- smart lockout ------------------------------------------------------------------------


def test_user_under_attack_is_blocked_only_from_unfamiliar_networks():
    async def main():
        lim = limiter(user_fail_threshold=20, ip_fail_threshold=1000, subnet_fail_threshold=1000)
        await lim.record_success("Alice", "198.51.100.7", T0)  # her home network
        found = []
        for i in range(20):  # a botnet elsewhere guesses her password
            ip = f"203.0.{113 + i // 10}.{i + 1}"
            out = await lim.record_failure("alice", ip, fp("alice", f"g{i}"), T0 + 10 + i)
            found += out.anomalies
        # Reported once, with what was done about it (each NO was delayed).
        assert [(a.kind, a.user, a.action, a.evidence) for a in found] == [
            ("distributed_brute_force", "alice", "tarpitted", {"distinct_ips": 10})]

        now = T0 + 60
        blocked = await lim.check_login("alice", "203.0.113.1", now)
        assert (blocked.allowed, blocked.reason) == (False, "user_lockout")
        assert not (await lim.check_login("ALICE", "192.0.2.50", now)).allowed  # any stranger
        home = await lim.check_login("alice", "198.51.100.99", now)  # same /24 as home
        assert (home.allowed, home.reason) == (True, "familiar_network")
        assert (await lim.check_login("bob", "203.0.113.1", now)).allowed  # only alice targeted
        # The lockout ends with the window.
        assert (await lim.check_login("alice", "203.0.113.1", T0 + 10 + 19 + 900)).allowed

    run(main)


def test_own_failures_at_a_familiar_network_do_not_lock_the_user_out_elsewhere():
    async def main():
        lim = limiter(user_fail_threshold=3, user_ip_fail_threshold=3, ip_fail_threshold=100)
        await lim.record_success("alice", "198.51.100.7", T0)
        for i in range(6):
            out = await lim.record_failure("alice", "198.51.100.7", fp("alice", f"typo{i}"), T0 + i)
        assert out.counts["user"] == 0 and out.counts["user_ip"] == 6
        assert (await lim.check_login("alice", "198.51.100.7", T0 + 10)).allowed
        assert (await lim.check_login("alice", "192.0.2.1", T0 + 10)).allowed  # travelling

    run(main)


def test_user_ip_threshold_blocks_that_pair_until_a_success_clears_it():
    async def main():
        lim = limiter(user_ip_fail_threshold=5)
        for i in range(5):
            await lim.record_failure("bob", ATTACKER, fp("bob", f"g{i}"), T0 + i)
        gate = await lim.check_login("bob", ATTACKER, T0 + 6)
        assert (gate.allowed, gate.reason) == (False, "user_ip_failures")
        assert (await lim.check_login("carol", ATTACKER, T0 + 6)).allowed
        assert (await lim.check_login("bob", "192.0.2.8", T0 + 6)).allowed

        lim2 = limiter(user_ip_fail_threshold=2)
        await lim2.record_failure("bob", "192.0.2.8", fp("bob", "a"), T0)
        await lim2.record_success("bob", "192.0.2.8", T0 + 1)
        out = await lim2.record_failure("bob", "192.0.2.8", fp("bob", "b"), T0 + 2)
        assert out.counts["user_ip"] == 1

    run(main)


def test_new_network_for_user_lists_previous_networks_once_per_window():
    async def main():
        lim = limiter()
        first = await lim.record_success("alice", "198.51.100.7", T0)
        assert first.anomalies == () and first.new_network  # first login: nothing to compare
        again = await lim.record_success("alice", "198.51.100.8", T0 + 5)
        assert again.anomalies == () and not again.new_network
        moved = await lim.record_success("alice", "192.0.2.44", T0 + 10)
        (a,) = moved.anomalies
        assert (a.kind, a.user, a.ip, a.subnet) == (
            "new_network_for_user", "alice", "192.0.2.44", "192.0.2.0/24")
        assert a.evidence["previous_networks"] == ["198.51.100.0/24"]
        assert (await lim.record_success("alice", "192.0.2.44", T0 + 20)).anomalies == ()

    run(main)


# -- anomalies that act -------------------------------------------------------------------


def test_password_spray_from_one_ip_bans_it():
    async def main():
        lim = limiter(ip_fail_threshold=1000, anomaly=anomaly_config(spray_distinct_users=20))
        outs = [await lim.record_failure(f"user{i}", ATTACKER, fp(f"user{i}", "Summer2024!"), T0 + i)
                for i in range(20)]
        assert all(o.anomalies == () for o in outs[:19])
        (a,) = outs[19].anomalies
        assert (a.kind, a.ip, a.action, a.evidence) == (
            "password_spray", ATTACKER, "banned", {"distinct_users": 20})
        (ban,) = outs[19].new_bans
        assert (ban.network, ban.reason) == ("203.0.113.9/32", "password_spray")
        assert not (await lim.check_connect(ATTACKER, T0 + 21)).allowed

    run(main)


def test_password_spray_across_a_subnet_bans_the_subnet():
    async def main():
        lim = limiter(subnet_fail_threshold=1000, anomaly=anomaly_config(spray_distinct_users=20))
        out = None
        for i in range(20):
            out = await lim.record_failure(f"user{i}", f"198.18.3.{i + 1}", fp(f"user{i}", "x"), T0)
        (a,) = [a for a in out.anomalies if a.kind == "password_spray"]
        assert (a.ip, a.subnet, a.action) == (None, "198.18.3.0/24", "banned")
        assert [(b.scope, b.network, b.reason) for b in out.new_bans] == [
            ("subnet", "198.18.3.0/24", "password_spray")]

    run(main)


def test_spray_action_log_only_reports():
    async def main():
        lim = limiter(ip_fail_threshold=1000, tarpit_base="0s",
                      anomaly=anomaly_config(spray_distinct_users=3, spray_action="log"))
        for i in range(3):
            out = await lim.record_failure(f"u{i}", ATTACKER, fp(f"u{i}", "x"), T0)
        assert [(a.kind, a.action) for a in out.anomalies] == [("password_spray", "logged")]
        assert out.new_bans == () and (await lim.check_connect(ATTACKER, T0)).allowed

    run(main)


# -- ban administration ---------------------------------------------------------------------


def test_admin_bans_list_add_remove():
    async def main():
        lim = limiter()
        net = await lim.add_ban("192.0.77.7/16", T0, ttl=3600)
        host = await lim.add_ban("2001:db8::5", T0, ttl=60, reason="abuse report")
        assert (net.scope, net.network, net.source) == ("subnet", "192.0.0.0/16", "admin")
        assert (host.scope, host.network, host.reason) == ("ip", "2001:db8::5/128", "abuse report")
        assert await lim.list_bans(T0 + 1) == [host, net]  # soonest expiry first
        assert not (await lim.check_connect("192.0.250.1", T0 + 1)).allowed
        assert not (await lim.check_connect("2001:db8:0:0::5", T0 + 1)).allowed
        assert await lim.list_bans(T0 + 61) == [net]  # expired bans drop out

        assert await lim.remove_ban("192.0.0.0/16", T0 + 2)
        assert not await lim.remove_ban("192.0.0.0/16", T0 + 2)
        assert (await lim.check_connect("192.0.250.1", T0 + 2)).allowed
        with pytest.raises(InvalidAddress, match="192.0.2.7"):
            await lim.add_ban("mail.example.org", T0)

    run(main)


def test_admin_cannot_ban_the_whole_internet_and_mapped_networks_are_ipv4():
    lim = limiter()

    async def main():
        for too_wide in ("0.0.0.0/0", "::/0", "10.0.0.0/7", "2001::/15"):
            with pytest.raises(BanRefused, match="wider than"):
                await lim.add_ban(too_wide, T0)
        ban = await lim.add_ban("::ffff:192.0.2.0/120", T0)
        assert ban.network == "192.0.2.0/24"
        assert not (await lim.check_connect("192.0.2.7", T0 + 1)).allowed

    run(main)


def test_admin_ban_ttl_is_capped_at_ban_ttl_max():
    lim = limiter(ban_ttl_max="2h")

    async def main():
        ban = await lim.add_ban("192.0.2.7", T0, ttl=99999999 * 86400.0)
        assert ban.expires - ban.created == 7200
        assert lim.ban_ttl_for(99999999 * 86400.0) == (7200, True)
        assert lim.ban_ttl_for(60) == (60, False)
        assert lim.ban_ttl_for(None) == (7200, False)
        assert (await lim.check_connect("192.0.2.7", T0 + 7199)).allowed is False
        assert (await lim.check_connect("192.0.2.7", T0 + 7200)).allowed is True
        for bad in (0, -5, float("nan")):
            with pytest.raises(ValueError, match="ttl must be > 0"):
                await lim.add_ban("192.0.2.8", T0, ttl=bad)

    run(main)
