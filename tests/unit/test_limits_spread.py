"""Attacks spread thin: many sources, each under every per-address threshold.

What an operator relies on: a password sprayed over many accounts from many networks, a
brute force on one account from many networks, and the same done low and slow over
hours, are stopped by what does not depend on the source (the password's keyed
fingerprint, the account's unfamiliar networks), while the user's familiar networks keep
working and a second factor still passes. The limiter's clock is passed in, so hours of
attack take no time. "Reaches the backend" here is "the gate let it through": the shell
asks the backend only then.
"""

from __future__ import annotations

import hashlib
import hmac

import trio

from gateway.limits.limiter import Limiter
from gateway.limits.rules import spray_fingerprint, spray_secret
from gateway.limits.state import MemoryState
from tests.support.limits import anomaly_config, limits_config

T0 = 1_700_000_000.0
SECRET = spray_secret(b"k" * 32)


def fp(user: str, password: str) -> bytes:
    return hmac.new(b"process-secret", f"{user}\0{password}".encode(), hashlib.sha256).digest()[:8]


ANY = fp("someone", "a password")  # the attempt fingerprint where it does not matter


def limiter(**anomaly) -> Limiter:
    return Limiter(MemoryState(), limits_config(), anomaly_config(**anomaly))


def source(i: int) -> str:
    """Address number ``i``, each in its own /16 (and so its own /24)."""
    return f"10.{i // 200}.{i % 200}.7"


async def attempt(lim: Limiter, user: str, password: str, ip: str, now: float,
                  *, protocol: str = "imap"):
    """One login as the shell makes it: the gate, then (if let through) the backend's NO;
    a refusal at the gate is counted as a failure too. Returns (gate, failure outcome)."""
    key = spray_fingerprint(SECRET, password)
    gate = await lim.check_login(user, ip, now, fingerprint=fp(user, password), spray_key=key,
                                 protocol=protocol)
    out = await lim.record_failure(user, ip, fp(user, password), now, spray_key=key,
                                   protocol=protocol)
    return gate, out


def test_one_password_over_400_accounts_from_20_networks_reaches_the_backend_4_times():
    async def main():
        lim = limiter()
        await lim.record_success("legit", "192.0.2.10", T0 - 3600)  # her home network
        passed, anomalies, bans = 0, [], []
        for n in range(400):  # 20 addresses in 20 /16s, 20 attempts each, round robin
            gate, out = await attempt(lim, f"user{n:03d}", "Winter2025!", source(n % 20), T0 + n)
            passed += gate.allowed
            anomalies += [*gate.anomalies, *out.anomalies]
            bans += out.new_bans
        assert passed == 4  # spray_password_users = 5: the 5th account is refused
        sprays = [a for a in anomalies if a.kind == "password_spray"]
        # Found by the password at the 5th account, long before any address has tried 20
        # accounts (spray_distinct_users) or failed 10 times (ip_fail_threshold); past
        # those, each address is reported and banned as a source of its own as well.
        assert (sprays[0].action, sprays[0].evidence) == (
            "refused", {"scope": "password", "distinct_users": 5})
        assert all(a.evidence.get("scope") != "password" for a in sprays[1:])
        # The refusal is of that password from networks new to the account, nothing more.
        gate = await lim.check_login("user999", source(33), T0 + 500, fingerprint=ANY,
                                     spray_key=spray_fingerprint(SECRET, "own-Passw0rd"))
        assert (gate.allowed, gate.reason) == (True, "ok")
        sprayed = spray_fingerprint(SECRET, "Winter2025!")
        at_home = await lim.check_login("legit", "192.0.2.99", T0 + 500, fingerprint=ANY,
                                        spray_key=sprayed)
        assert at_home.allowed  # a familiar network: even that password still works
        away = await lim.check_login("legit", "198.51.100.1", T0 + 500, fingerprint=ANY,
                                     spray_key=sprayed)
        assert (away.allowed, away.reason, away.second_factor_passes) == (
            False, "sprayed_password", True)
        # Refused while 5 accounts were tried with it within spray_password_window (1 h).
        later = await lim.check_login("user998", source(50), T0 + 400 + 1800,
                                      fingerprint=ANY, spray_key=sprayed)
        assert later.reason == "sprayed_password"
        assert (await lim.check_login("user997", source(51), T0 + 400 + 3600 + 600,
                                      fingerprint=ANY, spray_key=sprayed)).allowed

    trio.run(main)


def test_low_and_slow_spray_one_attempt_per_address_every_five_minutes_for_three_hours():
    async def main():
        lim = limiter()
        passed = attempts = 0
        found = []
        for minute in range(0, 180, 5):
            for a in range(20):  # each address once every 5 minutes: far below every threshold
                now = T0 + minute * 60 + a * 15
                gate, out = await attempt(lim, f"user{attempts:04d}", "Welcome1", source(a), now)
                attempts += 1
                passed += gate.allowed
                found += [x.kind for x in (*gate.anomalies, *out.anomalies)]
                assert out.new_bans == ()
        assert attempts == 720 and passed == 4
        # Reported once per [anomaly] window (10 min) while it goes on, never per attempt.
        assert found.count("password_spray") == 18

    trio.run(main)


def test_brute_force_on_one_account_from_60_networks_is_stopped_after_4():
    async def main():
        lim = limiter()
        await lim.record_success("ceo", "192.0.2.10", T0 - 60)  # her office
        passed, kinds = 0, []
        for n in range(300):  # 60 addresses in 60 networks, 5 guesses each
            gate, out = await attempt(lim, "ceo", f"guess-{n}", source(n % 60), T0 + n)
            passed += gate.allowed
            kinds += [a.kind for a in (*gate.anomalies, *out.anomalies)]
            assert gate.allowed or (gate.reason, gate.second_factor_passes) == (
                "user_networks", True) or gate.reason == "user_lockout"
        assert passed == 4  # user_fail_networks = 5
        assert kinds.count("distributed_brute_force") == 1
        office = await lim.check_login("ceo", "192.0.2.77", T0 + 301, fingerprint=ANY)
        assert office.allowed  # her familiar network keeps working
        assert (await lim.check_login("cfo", source(7), T0 + 301, fingerprint=ANY)).allowed

    trio.run(main)


def test_networks_where_the_user_then_logged_in_do_not_count():
    async def main():
        lim = limiter()
        for n in range(4):  # a traveller mistypes once at each of 4 hotels, then gets in
            gate, _ = await attempt(lim, "amy", f"typo{n}", source(n), T0 + n * 60)
            assert gate.allowed
            await lim.record_success("amy", source(n), T0 + n * 60 + 10)
        gate, _ = await attempt(lim, "amy", "typo9", source(9), T0 + 600)
        assert gate.allowed  # 5 networks tried, but 4 of them are hers now
        for n in range(10, 14):
            gate, _ = await attempt(lim, "amy", f"guess{n}", source(n), T0 + 700 + n)
        assert (gate.allowed, gate.reason) == (False, "user_networks")

    trio.run(main)


def test_failures_reported_without_the_gate_still_find_the_spray():
    """Dovecot's auth policy reports failures of other protocols; where it has a spray key
    the spray is found from those reports alone, and named with their protocol."""
    async def main():
        lim = limiter()
        key = spray_fingerprint(SECRET, "Summer2024")
        found = []
        for n in range(5):
            out = await lim.record_failure(f"u{n}", source(n), fp(f"u{n}", "Summer2024"),
                                           T0 + n, spray_key=key, protocol="pop3")
            found += out.anomalies
        (spray,) = [a for a in found if a.kind == "password_spray"]
        assert spray.protocol == "pop3" and spray.as_event()["protocol"] == "pop3"
        assert "fingerprint" not in str(spray.as_event()) and key.hex() not in str(spray)
        gate = await lim.check_login("u9", source(9), T0 + 10, spray_key=key)
        assert gate.reason == "sprayed_password"

    trio.run(main)


def test_many_unknown_accounts_failing_from_anywhere_is_credential_stuffing():
    async def main():
        lim = limiter(stuffing_unknown_users=30)
        for n in range(40):  # known users failing do not count toward it
            await lim.record_success(f"known{n}", "192.0.2.1", T0)
            await lim.record_failure(f"known{n}", source(n), fp(f"known{n}", "x"), T0 + 1)
        kinds = []
        for n in range(30):  # a list of names, each with its own password, 30 networks
            out = await lim.record_failure(f"nobody{n}", source(100 + n),
                                           fp(f"nobody{n}", f"pw{n}"), T0 + 2 + n)
            kinds += [(a.kind, a.evidence.get("scope")) for a in out.anomalies]
        assert kinds == [("credential_stuffing", "unknown_accounts")]

    trio.run(main)


def test_a_burst_in_flight_is_cut_at_the_gate_before_any_failure_is_counted():
    """Attempts sent in parallel all ask the gate before the first backend answer: the gate
    itself counts them, from one address (16 connections) or from 60 networks."""
    async def main():
        lim = limiter()
        await lim.record_success("victim", "192.0.2.10", T0 - 60)
        one_address = [await lim.check_login("victim", "203.0.113.9", T0,
                                             fingerprint=fp("victim", f"guess{n}"))
                       for n in range(16)]
        assert sum(g.allowed for g in one_address) == 5  # user_ip_fail_threshold = 5
        assert {g.reason for g in one_address[5:]} == {"user_ip_failures"}
        assert all(g.second_factor_passes for g in one_address[5:])
        many = [await lim.check_login("boss", source(n), T0, fingerprint=fp("boss", f"g{n}"))
                for n in range(60)]
        assert sum(g.allowed for g in many) == 4  # user_fail_networks = 5
        # The same password again (a mail client retrying) does not count twice.
        again = [await lim.check_login("amy", "198.51.100.4", T0 + n, fingerprint=fp("amy", "pw"))
                 for n in range(20)]
        assert all(g.allowed for g in again)
        assert (await lim.check_login("victim", "192.0.2.11", T0 + 1,
                                      fingerprint=fp("victim", "right"))).allowed  # home

    trio.run(main)
