"""Anomaly detectors on the in-process state: thresholds, windows, de-duplication."""

from __future__ import annotations

import trio

from gateway.anomaly.detectors import AnomalyDetector
from gateway.anomaly.model import ANOMALY_KINDS, Anomaly
from gateway.limits.state import MemoryState
from tests.support.limits import anomaly_config

T0 = 1_700_000_000.0


def detector(**overrides) -> AnomalyDetector:
    return AnomalyDetector(MemoryState(), anomaly_config(**overrides))


def kinds(found: list[Anomaly]) -> list[str]:
    return [a.kind for a in found]


def test_password_spray_fires_at_the_threshold_once_per_window():
    async def main():
        d = detector(spray_distinct_users=5, window="10m")
        ip, net = "203.0.113.9", "203.0.113.0/24"
        fired = [await d.observe_login_failure(f"user{i}", ip, net, T0 + i) for i in range(12)]
        assert [i for i, f in enumerate(fired) if "password_spray" in kinds(f)] == [4]
        # The same user failing again and again is not a spray.
        d2 = detector(spray_distinct_users=5)
        for i in range(10):
            assert await d2.observe_login_failure("alice", ip, net, T0 + i) == []
        # After a window of quiet-for-reporting, a continuing spray is reported again.
        later = await d.observe_login_failure("user99", ip, net, T0 + 11 + 600)
        assert kinds(later) == []  # counts restarted: one user in the new window
        later = [await d.observe_login_failure(f"late{i}", ip, net, T0 + 700 + i)
                 for i in range(5)]
        # user99 and late0..late3 are 5 distinct users in the window ending at T0 + 703.
        assert [kinds(f) for f in later] == [[], [], [], ["password_spray"], []]

    trio.run(main)


def test_credential_stuffing_needs_many_ips_many_users_and_mostly_failures():
    async def main():
        d = detector(stuffing_distinct_ips=10, stuffing_distinct_users=10,
                     stuffing_failure_ratio=0.8, spray_distinct_users=1000,
                     distributed_brute_force_ips=1000)
        found = []
        for i in range(10):  # each leaked pair tried once, from its own bot
            found += await d.observe_login_failure(f"user{i}", f"198.18.{i}.1", f"198.18.{i}.0/24",
                                                   T0 + i)
        (a,) = found
        assert a.kind == "credential_stuffing" and a.user is None and a.ip is None
        assert a.evidence["distinct_ips"] == 10 and a.evidence["distinct_users"] == 10
        assert a.evidence["failure_ratio"] == 1.0

        # Same failures on a busy day with many good logins: ratio below 0.8, no event.
        busy = detector(stuffing_distinct_ips=10, stuffing_distinct_users=10,
                        stuffing_failure_ratio=0.8, spray_distinct_users=1000)
        for i in range(5):
            await busy.observe_login_success(f"ok{i}", "192.0.2.1", T0, subnet="192.0.2.0/24",
                                             previous_networks=[])
        out = []
        for i in range(10):
            out += await busy.observe_login_failure(f"user{i}", f"198.18.{i}.1",
                                                    f"198.18.{i}.0/24", T0 + i)
        assert "credential_stuffing" not in kinds(out)  # 10 / 15 = 0.67

    trio.run(main)


def test_distributed_brute_force_on_one_user():
    async def main():
        d = detector(distributed_brute_force_ips=10, stuffing_distinct_ips=1000)
        out = []
        for i in range(9):
            out += await d.observe_login_failure("ceo", f"198.18.{i}.1", f"198.18.{i}.0/24", T0)
        assert out == []
        (a,) = await d.observe_login_failure("ceo", "198.18.9.1", "198.18.9.0/24", T0 + 1)
        assert (a.kind, a.user, a.evidence) == ("distributed_brute_force", "ceo",
                                                {"distinct_ips": 10})
        assert await d.observe_login_failure("ceo", "198.18.10.1", "198.18.10.0/24", T0 + 2) == []

    trio.run(main)


def test_plaintext_attempt_reported_once_per_ip_per_window():
    async def main():
        d = detector(window="1m")
        (a,) = await d.observe_plaintext_attempt("192.0.2.5", T0, user="alice")
        assert (a.kind, a.ip, a.user, a.evidence) == (
            "plaintext_login_attempt", "192.0.2.5", "alice", {"attempts": 1})
        assert await d.observe_plaintext_attempt("192.0.2.5", T0 + 1) == []
        assert kinds(await d.observe_plaintext_attempt("192.0.2.6", T0 + 1)) == [
            "plaintext_login_attempt"]
        (again,) = await d.observe_plaintext_attempt("192.0.2.5", T0 + 61)
        assert again.evidence["attempts"] >= 1

    trio.run(main)


def test_high_volume_fetch_per_session_and_per_user():
    async def main():
        d = detector(high_volume_fetch_bytes=1000, window="10m")
        assert await d.observe_bytes("s1", "alice", 600, T0) == []
        # A second session of the same user: the user total is over, no session total is.
        (a,) = await d.observe_bytes("s2", "alice", 400, T0 + 1)
        assert a.kind == "high_volume_fetch" and a.user == "alice"
        assert a.evidence == {"scope": "user", "bytes": 1000}
        (b,) = await d.observe_bytes("s1", "alice", 400, T0 + 2)
        assert b.evidence == {"scope": "session", "session_id": "s1", "bytes": 1000}
        assert await d.observe_bytes("s1", "alice", 5000, T0 + 3) == []  # de-duplicated
        assert await d.observe_bytes("s3", "bob", 999, T0 + 3) == []

    trio.run(main)


def test_high_volume_fetch_window_forgets_old_bytes():
    async def main():
        d = detector(high_volume_fetch_bytes=1000, window="10m")
        await d.observe_bytes("s1", "alice", 900, T0)
        assert await d.observe_bytes("s1", "alice", 200, T0 + 700) == []

    trio.run(main)


def test_mass_delete():
    async def main():
        d = detector(mass_delete_messages=500, window="10m")
        assert await d.observe_expunge("alice", 300, T0) == []
        assert await d.observe_expunge("alice", 199, T0 + 10) == []
        (a,) = await d.observe_expunge("alice", 1, T0 + 20, ip="192.0.2.3")
        assert (a.kind, a.user, a.ip, a.evidence) == ("mass_delete", "alice", "192.0.2.3",
                                                      {"messages": 500})
        assert await d.observe_expunge("alice", 1000, T0 + 30) == []  # one event per window
        # A slow clean-up over hours is not a mass delete.
        slow = detector(mass_delete_messages=500, window="10m")
        for h in range(10):
            assert await slow.observe_expunge("bob", 100, T0 + h * 3600) == []

    trio.run(main)


def test_event_fields_are_counts_not_secrets():
    a = Anomaly("password_spray", ip="192.0.2.1", subnet="192.0.2.0/24",
                evidence={"distinct_users": 20}, action="banned")
    assert a.as_event() == {"kind": "password_spray", "user": None, "ip": "192.0.2.1",
                            "subnet": "192.0.2.0/24", "action": "banned", "protocol": None,
                            "evidence_distinct_users": 20}
    pop3 = Anomaly("distributed_brute_force", user="ceo", protocol="pop3")
    assert pop3.as_event()["protocol"] == "pop3"
    assert set(ANOMALY_KINDS) == {
        "password_spray", "credential_stuffing", "distributed_brute_force",
        "new_network_for_user", "plaintext_login_attempt", "high_volume_fetch", "mass_delete"}
