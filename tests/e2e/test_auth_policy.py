"""Dovecot asks the gateway's auth-policy server: one limiter for every login path.

What an administrator relies on: an attacker guessing passwords over POP3 (or SMTP AUTH,
ManageSieve: anything Dovecot authenticates) is shut out of every path, IMAP through the
gateway included; an address the gateway banned for IMAP guesses cannot go on over POP3;
the gateway's own IMAP logins are not counted a second time when Dovecot reports them;
and a policy server that is down never stops Dovecot from logging users in.

Against the real Dovecot 2.3 with its POP3 service (``tests/support/authpolicy.py``); the
gateway reaches Dovecot from 127.0.0.1, POP3 clients come from 127.0.5.x.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.attack import attempt_login, fast_limits, metrics_on
from tests.support.authpolicy import PolicyRig, pop3_login, start_policy_rig
from tests.support.certs import Certs
from tests.support.dovecot import RigError
from tests.support.gatewayproc import GatewayFactory, GatewayProcess
from tests.support.net import free_port, wait_until
from tests.support.scrape import sample_value, scrape

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def policy_rig() -> Iterator[PolicyRig]:
    """A Dovecot with POP3 whose auth policy points at a port the test gateways serve."""
    try:
        rig = start_policy_rig(f"127.0.0.1:{free_port()}", secrets.token_hex(32))
    except RigError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield rig
    finally:
        rig.dovecot.stop()
        if not os.environ.get("IGW_KEEP_RIG"):
            shutil.rmtree(rig.dovecot.dir, ignore_errors=True)


@pytest.fixture
def policy_gateway(request: pytest.FixtureRequest, tmp_path: Path, certs: Certs,
                   policy_rig: PolicyRig) -> Iterator[Callable[..., GatewayProcess]]:
    """Factory: a gateway in front of ``policy_rig`` serving ``[auth_policy]`` where that
    Dovecot asks, with the token Dovecot sends."""
    token_file = tmp_path / "auth-policy.token"
    token_file.write_text(policy_rig.token + "\n")
    token_file.chmod(0o600)
    factory = GatewayFactory(tmp_path, certs, f"127.0.0.1:{policy_rig.dovecot.imap_port}")

    def make(**overrides) -> GatewayProcess:
        auth_policy = {"address": policy_rig.policy_address, "token_file": str(token_file),
                       **overrides.pop("auth_policy", {})}
        return factory(auth_policy=auth_policy, **overrides)

    try:
        yield make
    finally:
        factory.stop_all()
        if any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False)
               for w in ("setup", "call")):
            for gw in factory.started:
                print(f"\n=== gateway {gw.dir} ===\n{gw.tail(40)}")
            print("\n=== dovecot log tail ===\n"
                  + "\n".join(policy_rig.dovecot.log_since(0).splitlines()[-30:]))


def test_pop3_guesses_get_the_address_refused_by_dovecot_and_by_the_gateway(
        policy_gateway, policy_rig):
    gw = policy_gateway(limits=fast_limits(ip_fail_threshold=3), metrics=metrics_on())
    attacker, user_net = "127.0.5.1", "127.0.5.2"

    for i in range(3):
        answer = pop3_login(policy_rig, "alice", f"guess-{i}", source=attacker)
        assert answer.startswith(b"-ERR"), answer
    ban = gw.wait_for_event("ban.created", network=f"{attacker}/32")
    assert ban["ban_reason"] == "ip_failures"
    assert ban["via"] == "auth_policy" and ban["protocol"] == "pop3"

    # The right password from the banned address: Dovecot refuses it on the policy's word.
    mark = policy_rig.dovecot.mark()
    refused = pop3_login(policy_rig, "alice", "alicepass", source=attacker)
    assert refused.startswith(b"-ERR"), refused
    assert refused == b"-ERR [AUTH] Authentication failed."  # like any wrong password
    policy_rig.dovecot.wait_for_log(
        r"policy\(alice,127\.0\.5\.1,.*Authentication failure due to policy server refusal",
        since=mark)
    # ... and the gateway refuses the same address for IMAP.
    assert attempt_login(gw, "alice", "alicepass", source=attacker).refused_at_connect
    # Another address is not affected.
    assert pop3_login(policy_rig, "alice", "alicepass", source=user_net).startswith(b"+OK")

    text = scrape(gw)
    assert sample_value(text, "imap_gateway_auth_policy_reports_total",
                        protocol="pop3", result="failure") == 3
    assert sample_value(text, "imap_gateway_auth_policy_requests_total",
                        protocol="pop3", command="allow", decision="reject") >= 1
    assert sample_value(text, "imap_gateway_bans_created_total",
                        scope="ip", reason="ip_failures") == 1
    assert "guess-" not in gw.log_text()  # passwords never reach the policy server's log


def test_a_ban_for_imap_guesses_at_the_gateway_refuses_pop3(policy_gateway, policy_rig):
    gw = policy_gateway(limits=fast_limits(ip_fail_threshold=3), metrics=metrics_on())
    attacker = "127.0.5.3"
    # Before the ban, POP3 from the address works (so the refusal below is the ban's).
    assert pop3_login(policy_rig, "bob", "bobpass", source=attacker).startswith(b"+OK")

    tries = [attempt_login(gw, "alice", f"guess-{i}", source=attacker) for i in range(3)]
    assert all(t.failed for t in tries), [t.answer for t in tries]
    ban = gw.wait_for_event("ban.created", network=f"{attacker}/32")
    assert "via" not in ban  # made by the gateway's own IMAP path

    refused = pop3_login(policy_rig, "bob", "bobpass", source=attacker)
    assert refused.startswith(b"-ERR"), refused

    # The three guesses reached Dovecot through the gateway, and Dovecot reported them:
    # recognised as the gateway's relays, not counted a second time.
    text = scrape(gw)
    assert sample_value(text, "imap_gateway_auth_policy_reports_total",
                        protocol="imap", result="gateway_relay") == 3
    assert sample_value(text, "imap_gateway_auth_policy_reports_total",
                        protocol="imap", result="failure") == 0
    assert sample_value(text, "imap_gateway_bans_created_total",
                        scope="ip", reason="ip_failures") == 1


def test_relayed_imap_logins_are_not_counted_twice(policy_gateway, policy_rig):
    """With a threshold of 4, three wrong IMAP passwords through the gateway leave the
    address unbanned: counted twice (gateway + Dovecot's report) they would be 6."""
    gw = policy_gateway(limits=fast_limits(ip_fail_threshold=4))
    source = "127.0.5.4"
    tries = [attempt_login(gw, "carol", f"typo-{i}", source=source) for i in range(3)]
    assert all(t.failed for t in tries), [t.answer for t in tries]
    assert attempt_login(gw, "carol", "carolpass", source=source).ok
    assert pop3_login(policy_rig, "carol", "carolpass", source=source).startswith(b"+OK")
    assert gw.events("ban.created") == []


def test_dovecot_keeps_answering_when_the_policy_server_is_down(policy_rig):
    """No gateway serves the policy address: Dovecot logs the failed policy request and
    decides by the password alone (auth_policy_reject_on_fail = no)."""
    mark = policy_rig.dovecot.mark()
    assert pop3_login(policy_rig, "alice", "alicepass", source="127.0.5.5").startswith(b"+OK")
    assert pop3_login(policy_rig, "alice", "wrong", source="127.0.5.5").startswith(b"-ERR")
    policy_rig.dovecot.wait_for_log(r"Policy server HTTP error", since=mark)


def test_a_wrong_api_key_is_refused_and_dovecot_goes_on(policy_gateway, policy_rig, tmp_path):
    other = tmp_path / "other.token"
    other.write_text(secrets.token_hex(32))
    other.chmod(0o600)
    gw = policy_gateway(auth_policy={"token_file": str(other)}, metrics=metrics_on())
    mark = policy_rig.dovecot.mark()
    assert pop3_login(policy_rig, "alice", "alicepass", source="127.0.5.6").startswith(b"+OK")
    policy_rig.dovecot.wait_for_log(r"Policy server HTTP error: 401", since=mark)
    gw.wait_for_event("auth_policy.unauthorized")
    assert sample_value(scrape(gw), "imap_gateway_auth_policy_unauthorized_total") >= 1
    assert policy_rig.token not in gw.log_text()


def test_a_password_spray_over_pop3_is_an_anomaly_that_names_pop3(policy_gateway, policy_rig):
    gw = policy_gateway(limits=fast_limits(),
                        anomaly={"spray_distinct_users": 3, "spray_action": "log"})
    sprayer = "127.0.5.7"
    for user in ("alice", "bob", "carol"):
        answer = pop3_login(policy_rig, user, "Summer2026!", source=sprayer)
        assert answer.startswith(b"-ERR"), answer
    anomaly = gw.wait_for_event("anomaly", kind="password_spray")
    assert anomaly["protocol"] == "pop3" and anomaly["via"] == "auth_policy"
    assert anomaly["ip"] == sprayer
    assert anomaly["action"] == "logged"


def test_dovecot_reuses_an_idle_connection_and_is_answered(policy_gateway, policy_rig):
    """Dovecot keeps an idle connection to the policy server for 10 s. Had the gateway
    closed it earlier (Hypercorn's 5 s default), Dovecot would send its next request on the
    dead connection, wait out its timeout and let that login go unchecked."""
    gw = policy_gateway()
    source = "127.0.5.8"
    assert pop3_login(policy_rig, "bob", "bobpass", source=source).startswith(b"+OK")
    time.sleep(7)  # past Hypercorn's default, short of Dovecot's idle limit
    mark = policy_rig.dovecot.mark()
    assert pop3_login(policy_rig, "bob", "bobpass", source=source).startswith(b"+OK")
    policy_rig.dovecot.wait_for_log(r"pop3-login: Info: Login: user=<bob>.*rip=127\.0\.5\.8",
                                    since=mark)
    assert "Policy server HTTP error" not in policy_rig.dovecot.log_since(mark)
    wait_until(lambda: len(gw.events("auth_policy.login", client_ip=source)) == 2, 10,
               what="both logins reported to the gateway")
