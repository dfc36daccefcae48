"""Attacks spread over many networks, through the gateway and the real Dovecot.

What an operator relies on: a password sprayed over many accounts from many networks
(each source in its own /16, so no per-address or per-subnet counter gets anywhere) and
a brute force on one account from many networks are stopped before Dovecot after a few
attempts, the right anomaly is logged, and the accounts' owners still get in: from their
familiar networks with the password, from anywhere with a second factor (an app password,
a TOTP code). Dovecot's own log is the ground truth for "reached Dovecot": the gateway
opens one backend connection per login it lets through, and sends the client address in
ID (``x-originating-ip``).
"""

from __future__ import annotations

import re

import pytest

from tests.support.attack import attempt_all, attempt_login, fast_limits, quiet_anomalies
from tests.support.mfa import (
    ALICE_STRONG_POLICY,
    admin_json,
    assert_denied,
    assert_ok,
    code_at,
    enroll_totp,
    login,
    master_backend,
)

pytestmark = pytest.mark.e2e


def spread(n: int, base: int) -> list[str]:
    """``n`` loopback addresses, each in its own /16 (127.A.B.C, distinct A.B)."""
    return [f"127.{base + i // 100}.{i % 100 + 1}.9" for i in range(n)]


def reached_dovecot(log: str, sources: list[str]) -> int:
    """Backend connections Dovecot logged for these client addresses."""
    found = re.findall(r"x-originating-ip=([0-9.]+),", log)
    wanted = set(sources)
    return sum(1 for ip in found if ip in wanted)


def test_one_password_sprayed_from_40_networks_reaches_dovecot_4_times(gateway, dovecot):
    gw = gateway(limits=fast_limits(), anomaly=quiet_anomalies())  # spray_password_users = 5
    home = "127.0.2.20"
    assert attempt_login(gw, "alice", "alicepass", source=home).ok  # her familiar network
    attackers = spread(40, 40)
    mark = dovecot.mark()
    tries = attempt_all(gw, [(f"sprayed{i:02d}", "Winter2025!", ip)
                             for i, ip in enumerate(attackers)]
                        + [("alice", "Winter2025!", "127.60.1.9")])
    assert all(t.failed for t in tries), tries
    assert reached_dovecot(dovecot.log_since(mark), [*attackers, "127.60.1.9"]) == 4
    spray = gw.wait_for_event("anomaly", kind="password_spray")
    assert (spray["evidence_scope"], spray["evidence_distinct_users"], spray["action"],
            spray["protocol"]) == ("password", 5, "refused", "imap")
    assert spray["ip"] is None and spray["user"] is None  # no source to name: all of them
    assert "Winter2025" not in gw.log_path.read_text()
    refused = gw.events("login.denied", reason="sprayed_password")
    assert len(refused) == 37

    # Everyone else is untouched: other passwords from new networks, and the owner of a
    # sprayed account from her familiar network.
    assert attempt_login(gw, "bob", "bobpass", source="127.61.1.9").ok
    assert attempt_login(gw, "alice", "alicepass", source=home).ok
    assert gw.events("ban.created") == []


def test_brute_force_from_12_networks_locks_out_only_password_logins_from_new_networks(
        gateway, dovecot, tmp_path):
    gw = gateway(limits=fast_limits(), anomaly=quiet_anomalies(),
                 policies={"10-ap.toml": ALICE_STRONG_POLICY,
                           "20-rest.toml": '[[rule]]\nname = "rest"\naction = "allow"\n'
                                           'mfa = "none"\n'},
                 backend=master_backend(tmp_path))
    home = "127.0.2.30"
    assert attempt_login(gw, "carol", "carolpass", source=home).ok
    secret, step = enroll_totp(gw, "carol")
    attackers = spread(12, 70)
    mark = dovecot.mark()
    tries = attempt_all(gw, [("carol", f"guess-{i}", ip) for i, ip in enumerate(attackers)])
    assert all(t.failed for t in tries), tries
    assert reached_dovecot(dovecot.log_since(mark), attackers) == 4  # user_fail_networks = 5
    dbf = gw.wait_for_event("anomaly", kind="distributed_brute_force")
    assert (dbf["user"], dbf["evidence_distinct_networks"], dbf["action"]) == ("carol", 5,
                                                                               "refused")

    # A traveller on a new network: the password alone is refused before Dovecot ...
    traveller = "127.90.1.9"
    mark = dovecot.mark()
    assert_denied(login(gw, "carol", "carolpass", source=traveller), "user_networks")
    assert reached_dovecot(dovecot.log_since(mark), [traveller]) == 0
    # ... with her TOTP code after the password she gets in (the policy asks for none) ...
    assert_ok(login(gw, "carol", f"carolpass${code_at(secret, step + 1)}", source=traveller),
              "totp")
    # ... and at home the password alone still works.
    assert_ok(login(gw, "carol", "carolpass", source=home), "none")

    # An app password passes such a lockout too (alice: a strong factor everywhere).
    reasons = [login(gw, "alice", "alicepass", source=ip).reason for ip in spread(6, 95)]
    assert reasons == ["totp_not_enrolled"] * 4 + ["user_networks"] * 2
    assert_denied(login(gw, "alice", "alicepass", source="127.99.1.9"), "user_networks")
    made = admin_json(gw, "app-password", "create", "alice", "--label", "phone")
    assert_ok(login(gw, "alice", made["password"], source="127.99.1.9"), "app-password")
