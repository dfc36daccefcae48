"""Login policy end to end: each rule field decides real logins to Dovecot, first match
wins, no match denies; the admin's `policy check`/`explain`; reload on SIGHUP and on a
file change, a broken file keeping the last good policy, and a reload that ends a live
session. Every refusal looks the same to the client; the reason is in the log."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.support.imap import ServerClosed
from tests.support.mfa import (
    MFA_LIMITS,
    admin,
    assert_denied,
    assert_ok,
    login,
    shared_gateway,
    wait_session_end,
)

pytestmark = pytest.mark.e2e

# 127.0.0.1 and 127.0.0.2 are both loopback: the client picks one with source=.
FIELDS_POLICY = """\
[groups]
staff = ["bob"]

[networks]
lab = ["127.0.0.2/32"]

[[rule]]
name = "staff not from the lab"
groups = ["staff"]
networks = ["lab"]
action = "deny"

[[rule]]
name = "evil domain"
users = ["*@evil.test"]
action = "deny"

[[rule]]
name = "staff"
groups = ["staff"]
action = "allow"
mfa = "none"

[[rule]]
name = "alice on one address"
users = ["alice"]
networks = ["127.0.0.1/32"]
action = "allow"
mfa = "none"

[[rule]]
name = "carol outside the lab"
users = ["carol"]
networks = ["!lab"]
action = "allow"
mfa = "none"

[[rule]]
name = "good domain"
users = ["*@good.test"]
action = "allow"
mfa = "none"
"""

ALLOW_ALICE = """\
[[rule]]
name = "alice with password"
users = ["alice"]
action = "allow"
mfa = "none"
"""

DENY_ALICE = """\
[[rule]]
name = "alice locked out"
users = ["alice"]
action = "deny"
"""


@pytest.fixture(scope="module")
def fields_gw(tmp_path_factory, certs, dovecot):
    """Shared by the rule-field tests: they only log in, and change nothing."""
    with shared_gateway(tmp_path_factory.mktemp("fields"), certs, dovecot,
                        policies={"10-fields.toml": FIELDS_POLICY}, limits=MFA_LIMITS) as gw:
        yield gw


def test_group_rule_allows_and_a_deny_by_named_network_comes_first(fields_gw):
    gw = fields_gw
    assert_ok(login(gw, "bob", "bobpass", source="127.0.0.1"), "none")
    # first match wins: "staff not from the lab" (deny) precedes "staff" (allow)
    assert_denied(login(gw, "bob", "bobpass", source="127.0.0.2"),
                  "policy_denied:staff not from the lab")


def test_user_rule_with_cidr_and_no_match_denies(fields_gw):
    gw = fields_gw
    assert_ok(login(gw, "alice", "alicepass", source="127.0.0.1"), "none")
    # alice's only rule is for 127.0.0.1/32: from .2 no rule matches, the right password
    # notwithstanding
    assert_denied(login(gw, "alice", "alicepass", source="127.0.0.2"), "no_rule_matched")


def test_negated_network_excludes_the_lab(fields_gw):
    gw = fields_gw
    assert_ok(login(gw, "carol", "carolpass", source="127.0.0.1"), "none")
    assert_denied(login(gw, "carol", "carolpass", source="127.0.0.2"), "no_rule_matched")


def test_domain_patterns(fields_gw, dovecot):
    """The rig has no users with a domain, so "*@domain" shows in the reason: a denied
    domain never reaches Dovecot, an allowed one does (and Dovecot rejects the unknown user)."""
    gw = fields_gw
    mark = dovecot.mark()
    assert_denied(login(gw, "mallory@evil.test", "x"), "policy_denied:evil domain")
    assert_denied(login(gw, "MALLORY@Evil.Test", "x"), "policy_denied:evil domain")
    assert_denied(login(gw, "dave@good.test", "x"), "backend_rejected")
    log = dovecot.log_since(mark)
    assert "dave@good.test" in log, log
    assert "evil.test" not in log.lower(), log


def test_policy_check_and_explain_cli(gateway):
    gw = gateway(policies={"10-fields.toml": FIELDS_POLICY})
    ok = admin(gw, "policy", "check")
    assert "6 rule(s)" in ok.stdout, ok.stdout

    explained = admin(gw, "policy", "explain", "--user", "bob", "--ip", "127.0.0.2", "--json")
    d = json.loads(explained.stdout)
    assert d["decision"]["allowed"] is False
    assert d["decision"]["rule"] == "staff not from the lab"
    explained = admin(gw, "policy", "explain", "--user", "alice", "--ip", "203.0.113.9", "--json")
    d = json.loads(explained.stdout)
    assert d["decision"]["allowed"] is False and d["decision"]["reason"] == "no_rule_matched", d
    # the trace says why each earlier rule did not match
    assert [r["matched"] for r in d["rules"]] == [False] * 6, d["rules"]

    (gw.dir / "policies" / "20-bad.toml").write_text(
        '[[rule]]\nname = "typo"\naction = "allow"\nmfa = "totpp"\n')
    bad = admin(gw, "policy", "check", check=False)
    assert bad.returncode != 0
    assert "20-bad.toml" in bad.stderr and '"typo"' in bad.stderr and "mfa" in bad.stderr, bad.stderr


def _fingerprint(gw) -> str:
    return admin(gw, "policy", "check").stdout.split("fingerprint ")[1].split()[0]


def test_sighup_reloads_the_policy(gateway):
    gw = gateway(policies={"10-alice.toml": ALLOW_ALICE}, limits=MFA_LIMITS)
    assert_ok(login(gw, "alice", "alicepass"), "none")
    (gw.dir / "policies" / "10-alice.toml").write_text(DENY_ALICE)
    fingerprint = _fingerprint(gw)
    os.kill(gw.pid, signal.SIGHUP)
    gw.wait_for_event("policy.reloaded", 3, fingerprint=fingerprint)
    assert_denied(login(gw, "alice", "alicepass"), "policy_denied:alice locked out")


def test_file_change_is_picked_up_within_3s(gateway):
    gw = gateway(policies={"10-alice.toml": DENY_ALICE}, limits=MFA_LIMITS)
    assert_denied(login(gw, "alice", "alicepass"), "policy_denied:alice locked out")
    (gw.dir / "policies" / "10-alice.toml").write_text(ALLOW_ALICE)
    gw.wait_for_event("policy.reloaded", 3.5, fingerprint=_fingerprint(gw))
    assert_ok(login(gw, "alice", "alicepass"), "none")


def test_broken_file_keeps_the_previous_policy(gateway):
    gw = gateway(policies={"10-alice.toml": ALLOW_ALICE}, limits=MFA_LIMITS)
    reloads = len(gw.events("policy.reloaded"))
    # a deny for alice in a file that does not parse must not take effect, nor must the
    # broken file drop the allow rule
    (gw.dir / "policies" / "05-broken.toml").write_text(DENY_ALICE + "action = \n")
    os.kill(gw.pid, signal.SIGHUP)
    failed = gw.wait_for_event("policy.reload_failed", 3)
    assert "05-broken.toml" in failed["error"], failed
    assert_ok(login(gw, "alice", "alicepass"), "none")
    assert len(gw.events("policy.reloaded")) == reloads, gw.tail()


def test_reload_that_denies_a_live_session_closes_it(gateway):
    gw = gateway(policies={"10-alice.toml": ALLOW_ALICE}, limits=MFA_LIMITS)
    a = login(gw, "alice", "alicepass", keep=True)
    assert_ok(a, "none")
    c = a.client
    sid = a.event["session_id"]
    try:
        assert c.command("s", "SELECT INBOX")[-1].startswith(b"s OK")
        (gw.dir / "policies" / "10-alice.toml").write_text(DENY_ALICE)
        os.kill(gw.pid, signal.SIGHUP)
        rest = c.expect_close(timeout=5)
    except ServerClosed:
        rest = b""
    finally:
        c.close()
    assert b"* BYE" in rest, rest
    assert wait_session_end(gw, sid)["reason"] == "policy_revoked"
