"""Login anomalies through the real gateway: each kind is provoked the way an attack (or
a roaming user) would provoke it, and must appear as one ``anomaly`` log event with who,
where, the evidence counts and the action, and in ``imap_gateway_anomalies_total``.

Each test lowers only its own detector's thresholds (``quiet_anomalies``), so the event
it sees cannot be a side effect of another detector.
"""

from __future__ import annotations

import pytest

from tests.support.attack import (
    attempt_all,
    attempt_login,
    fast_limits,
    greeting_from,
    metrics_on,
    quiet_anomalies,
)
from tests.support.imap import LineClient
from tests.support.scrape import anomalies_counted

pytestmark = pytest.mark.e2e


def _only_anomaly(gw, kind: str) -> dict:
    event = gw.wait_for_event("anomaly", kind=kind)
    assert len(gw.events("anomaly", kind=kind)) == 1, gw.events("anomaly")
    return event


def test_password_spray_from_one_ip_is_reported_and_banned(gateway, dovecot):
    gw = gateway(limits=fast_limits(), anomaly=quiet_anomalies(spray_distinct_users=3),
                 metrics=metrics_on())
    assert anomalies_counted(gw, "password_spray") == 0
    sprayer = "127.0.1.40"
    results = attempt_all(gw, [(user, "Winter2024!", sprayer) for user in ("alice", "bob", "carol")])
    assert all(r.failed for r in results), results

    event = _only_anomaly(gw, "password_spray")
    assert event["ip"] == sprayer and event["subnet"] == "127.0.1.0/24"
    assert event["user"] is None  # many users: the subject is the source
    assert event["evidence_distinct_users"] == 3
    assert event["action"] == "banned"
    ban = gw.wait_for_event("ban.created", network=f"{sprayer}/32")
    assert ban["ban_reason"] == "password_spray" and ban["scope"] == "ip"
    assert anomalies_counted(gw, "password_spray") == 1

    mark = dovecot.mark()
    assert greeting_from(gw, sprayer).startswith(b"* BYE [UNAVAILABLE]")
    assert attempt_login(gw, "alice", "alicepass", source="127.0.2.40").ok
    dovecot.wait_for_log(r"Login: user=<alice>.*rip=127\.0\.2\.40\b", since=mark)
    assert sprayer not in dovecot.log_since(mark)


def test_credential_stuffing_many_ips_many_users_mostly_failing(gateway):
    gw = gateway(limits=fast_limits(tarpit_base="50ms", tarpit_max="50ms"),
                 anomaly=quiet_anomalies(stuffing_distinct_ips=3, stuffing_distinct_users=3,
                                         stuffing_failure_ratio=0.7),
                 metrics=metrics_on())
    # one leaked (user, password) pair per address, as a stuffing list replays them
    pairs = [("alice", "leaked-1", "127.0.1.51"), ("bob", "leaked-2", "127.0.1.52"),
             ("carol", "leaked-3", "127.0.1.53")]
    assert all(r.failed for r in attempt_all(gw, pairs))

    event = _only_anomaly(gw, "credential_stuffing")
    assert event["user"] is None and event["ip"] is None  # gateway-wide pattern
    assert event["evidence_distinct_ips"] == 3
    assert event["evidence_distinct_users"] == 3
    assert event["evidence_failures"] == 3 and event["evidence_successes"] == 0
    assert event["evidence_failure_ratio"] == 1.0
    assert event["action"] == "tarpitted"
    assert gw.events("ban.created") == []  # stuffing is reported, not banned
    assert anomalies_counted(gw, "credential_stuffing") == 1


def test_credential_stuffing_needs_a_high_failure_ratio(gateway):
    """Control: the same spread of failures among mostly successful logins (a busy
    morning) is not stuffing."""
    gw = gateway(limits=fast_limits(),
                 anomaly=quiet_anomalies(stuffing_distinct_ips=3, stuffing_distinct_users=3,
                                         stuffing_failure_ratio=0.7),
                 metrics=metrics_on())
    good = [(u, f"{u}pass", f"127.0.2.5{i}") for i, u in enumerate(("alice", "bob", "carol"))
            for _ in range(3)]
    assert all(r.ok for r in attempt_all(gw, good))
    bad = [("alice", "typo-1", "127.0.1.54"), ("bob", "typo-2", "127.0.1.55"),
           ("carol", "typo-3", "127.0.1.56")]
    assert all(r.failed for r in attempt_all(gw, bad))
    assert len(gw.events("login.denied")) == 3
    assert gw.events("anomaly") == []
    assert anomalies_counted(gw, "credential_stuffing") == 0


def test_distributed_brute_force_one_user_many_ips(gateway):
    gw = gateway(limits=fast_limits(),
                 anomaly=quiet_anomalies(distributed_brute_force_ips=3), metrics=metrics_on())
    botnet = [("Alice", f"guess-{i}", f"127.0.1.6{i}") for i in range(3)]
    assert all(r.failed for r in attempt_all(gw, botnet))

    event = _only_anomaly(gw, "distributed_brute_force")
    assert event["user"] == "alice"  # case-folded: "Alice" and "alice" are one account
    assert event["evidence_distinct_ips"] == 3
    assert event["action"] == "logged"  # tarpit off in this config: nothing else done
    assert gw.events("ban.created") == []
    assert anomalies_counted(gw, "distributed_brute_force") == 1


def test_new_network_for_user_lists_the_previous_networks(gateway):
    gw = gateway(limits=fast_limits(), anomaly=quiet_anomalies(), metrics=metrics_on())
    assert attempt_login(gw, "bob", "bobpass", source="127.0.2.70").ok
    assert attempt_login(gw, "bob", "bobpass", source="127.0.2.71").ok  # same /24: familiar
    assert gw.events("anomaly") == []  # a first-ever login is not an anomaly
    assert attempt_login(gw, "bob", "bobpass", source="127.0.3.70").ok

    event = _only_anomaly(gw, "new_network_for_user")
    assert event["user"] == "bob"
    assert event["ip"] == "127.0.3.70" and event["subnet"] == "127.0.3.0/24"
    assert event["evidence_previous_networks"] == ["127.0.2.0/24"]
    assert event["evidence_previous_network_count"] == 1
    assert event["action"] == "logged"
    assert anomalies_counted(gw, "new_network_for_user") == 1
    # the new network is familiar from now on: no second event for it
    assert attempt_login(gw, "bob", "bobpass", source="127.0.3.71").ok
    assert len(gw.events("anomaly")) == 1


def test_plaintext_login_attempt_on_the_starttls_listener(gateway, dovecot):
    gw = gateway(limits=fast_limits(), anomaly=quiet_anomalies(), metrics=metrics_on())
    mark = dovecot.mark()
    with LineClient.plain(gw, source="127.0.1.80") as c:
        assert c.greeting.startswith(b"* OK")
        answer = c.command("a", "LOGIN alice alicepass")[-1]
    assert answer.startswith(b"a NO [PRIVACYREQUIRED]"), answer

    event = _only_anomaly(gw, "plaintext_login_attempt")
    assert event["ip"] == "127.0.1.80" and event["subnet"] == "127.0.1.0/24"
    assert event["evidence_attempts"] == 1
    assert event["action"] == "logged"
    assert anomalies_counted(gw, "plaintext_login_attempt") == 1
    # the credentials never went anywhere, and never into the log
    assert "alicepass" not in gw.log_text()
    assert "127.0.1.80" not in dovecot.log_since(mark)
