"""Security invariant: every failed login looks the same to the client and is answered no
sooner than [limits] auth_failure_delay, whatever failed (so timing does not tell a denied
network or an unknown user from a wrong password). This is a lower bound the gateway
enforces, not a performance measurement."""

from __future__ import annotations

import pytest

from tests.support.attack import attempt_login, fast_limits

pytestmark = pytest.mark.e2e

POLICY = """\
[[rule]]
name = "blocked range"
networks = ["127.0.3.0/24"]
action = "deny"

[[rule]]
name = "totp for carol"
users = ["carol"]
action = "allow"
mfa = "totp"

[[rule]]
name = "password elsewhere"
users = ["*"]
action = "allow"
mfa = "none"
"""

FAILED = b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
DELAY = 1.0


def test_every_failure_looks_and_takes_the_same(gateway):
    gw = gateway(limits=fast_limits(auth_failure_delay=f"{int(DELAY * 1000)}ms"),
                 policies={"00-test.toml": POLICY})
    cases = {
        "policy_denied:blocked range": attempt_login(gw, "alice", "alicepass", source="127.0.3.1"),
        "backend_rejected": attempt_login(gw, "alice", "wrong", source="127.0.4.1"),
        "unknown user": attempt_login(gw, "nosuchuser", "whatever", source="127.0.4.2"),
        "totp_not_enrolled": attempt_login(gw, "carol", "carolpass$123456", source="127.0.4.3"),
    }
    for what, attempt in cases.items():
        assert attempt.answer == FAILED, (what, attempt.answer)
        assert attempt.seconds >= DELAY - 0.02, (what, attempt.seconds)
    reasons = {e["reason"] for e in gw.events("login.denied")}
    assert {"policy_denied:blocked range", "backend_rejected", "totp_not_enrolled"} <= reasons
    # A success is not slowed down by the failure delay.
    assert attempt_login(gw, "alice", "alicepass", source="127.0.4.4").ok
