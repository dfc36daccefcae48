"""Policy decisions: each rule field, first-match order, factors, explain, CLI helpers.

Policies are real TOML files in a temporary directory loaded by load_policy().
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest

from gateway.policy import (
    Decision,
    LoginContext,
    Policy,
    check_command,
    explain_command,
    load_policy,
)

REPO = Path(__file__).resolve().parents[2]

GROUPS_AND_NETS = """
[groups]
staff = ["alice", "bob", "*@staff.example.com"]
contractors = ["carol@example.net"]

[networks]
office = ["192.0.2.0/24", "2001:db8:1::/48"]
vpn = ["198.51.100.0/24"]
blocked = ["203.0.113.0/24"]
"""


def make_policy(tmp_path: Path, rules: str, extra: str = GROUPS_AND_NETS) -> Policy:
    (tmp_path / "10-test.toml").write_text(textwrap.dedent(extra) + textwrap.dedent(rules))
    return load_policy(tmp_path)


def decide(policy: Policy, user: str, ip: str, factor: str = "none") -> Decision:
    return policy.decide(LoginContext(user=user, ip=ipaddress.ip_address(ip), factor=factor))


# -- user conditions ------------------------------------------------------------


def test_users_exact_name_matches_only_that_user_case_insensitively(tmp_path):
    p = make_policy(tmp_path, '[[rule]]\nname = "a"\nusers = ["alice"]\naction = "allow"\nmfa = "none"\n')
    assert decide(p, "alice", "8.8.8.8") == Decision(True, "a", "ok", "none", 0.0, "separator")
    assert decide(p, "ALICE", "8.8.8.8").allowed
    assert decide(p, "alice2", "8.8.8.8") == Decision(False, None, "no_rule_matched")
    assert not decide(p, "alice@example.com", "8.8.8.8").allowed


def test_case_folding_is_ascii_only_so_lookalike_letters_do_not_borrow_a_rule(tmp_path):
    p = make_policy(tmp_path, '[[rule]]\nname = "k"\nusers = ["kelly"]\naction = "allow"\nmfa = "none"\n')
    assert decide(p, "Kelly", "8.8.8.8").allowed
    assert not decide(p, "\u212aelly", "8.8.8.8").allowed  # KELVIN SIGN casefolds to "k"


def test_users_domain_wildcard_uses_the_last_at_sign(tmp_path):
    p = make_policy(tmp_path, '[[rule]]\nname = "d"\nusers = ["*@example.com"]\naction = "allow"\nmfa = "none"\n')
    assert decide(p, "bob@example.com", "8.8.8.8").allowed
    assert decide(p, "Bob@EXAMPLE.com", "8.8.8.8").allowed
    assert not decide(p, "bob@sub.example.com", "8.8.8.8").allowed
    assert not decide(p, "bob@example.com@evil.test", "8.8.8.8").allowed
    assert not decide(p, "example.com", "8.8.8.8").allowed
    assert not decide(p, "@example.com", "8.8.8.8").allowed


def test_users_star_matches_any_user_string(tmp_path):
    p = make_policy(tmp_path, '[[rule]]\nname = "all"\nusers = ["*"]\naction = "deny"\n')
    for user in ["", "x", "a@b", "\x00\r\n", "ü" * 300]:
        assert decide(p, user, "8.8.8.8") == Decision(False, "all", "policy_denied:all")


def test_groups_match_members_and_users_or_groups_either_suffices(tmp_path):
    p = make_policy(
        tmp_path,
        """
        [[rule]]
        name = "staff or dave"
        users = ["dave"]
        groups = ["staff"]
        action = "allow"
        mfa = "none"
        """,
    )
    for user in ["alice", "bob", "eve@staff.example.com", "dave"]:
        assert decide(p, user, "8.8.8.8").rule == "staff or dave", user
    for user in ["carol@example.net", "mallory", "eve@example.com"]:
        assert decide(p, user, "8.8.8.8").reason == "no_rule_matched", user


# -- network conditions ---------------------------------------------------------


def test_networks_by_name_and_by_cidr(tmp_path):
    p = make_policy(
        tmp_path,
        '[[rule]]\nname = "n"\nnetworks = ["office", "10.1.0.0/16"]\naction = "allow"\nmfa = "none"\n',
    )
    assert decide(p, "x", "192.0.2.77").allowed
    assert decide(p, "x", "10.1.200.3").allowed
    assert not decide(p, "x", "10.2.0.1").allowed
    assert not decide(p, "x", "192.0.3.1").allowed


def test_ipv6_named_and_literal_networks(tmp_path):
    p = make_policy(
        tmp_path,
        '[[rule]]\nname = "v6"\nnetworks = ["office", "2001:db8:ff::/64"]\naction = "allow"\nmfa = "none"\n',
    )
    assert decide(p, "x", "2001:db8:1:abcd::1").allowed
    assert decide(p, "x", "2001:db8:ff::9").allowed
    assert not decide(p, "x", "2001:db8:2::1").allowed
    assert not decide(p, "x", "::1").allowed


def test_ipv4_mapped_ipv6_client_is_treated_as_its_ipv4_address(tmp_path):
    """A dual-stack listener reports ::ffff:203.0.113.9; the IPv4 deny must still apply."""
    p = make_policy(
        tmp_path,
        """
        [[rule]]
        name = "block"
        networks = ["blocked"]
        action = "deny"
        [[rule]]
        name = "rest"
        action = "allow"
        mfa = "none"
        """,
    )
    assert decide(p, "x", "::ffff:203.0.113.9").reason == "policy_denied:block"
    assert decide(p, "x", "::ffff:8.8.8.8").allowed


def test_negated_network_excludes_and_positive_list_still_required(tmp_path):
    p = make_policy(
        tmp_path,
        """
        [[rule]]
        name = "office but not printers"
        networks = ["office", "!192.0.2.128/25"]
        action = "allow"
        mfa = "none"
        [[rule]]
        name = "anywhere but blocked"
        users = ["bob"]
        networks = ["!blocked"]
        action = "allow"
        mfa = "none"
        """,
    )
    assert decide(p, "x", "192.0.2.5").rule == "office but not printers"
    assert decide(p, "x", "192.0.2.200").reason == "no_rule_matched"
    assert decide(p, "x", "8.8.8.8").reason == "no_rule_matched"
    # Only negated entries: any address outside them.
    assert decide(p, "bob", "8.8.8.8").rule == "anywhere but blocked"
    assert decide(p, "bob", "2001:db8::1").rule == "anywhere but blocked"
    assert decide(p, "bob", "203.0.113.1").reason == "no_rule_matched"


# -- order, deny, factors ---------------------------------------------------------


def test_first_match_wins_across_files_in_name_order(tmp_path):
    (tmp_path / "20-second.toml").write_text('[[rule]]\nname = "second"\naction = "allow"\nmfa = "none"\n')
    (tmp_path / "10-first.toml").write_text(
        '[[rule]]\nname = "first"\nusers = ["mallory"]\naction = "deny"\n'
    )
    p = load_policy(tmp_path)
    assert [r.label for r in p.rules] == ["first", "second"]
    assert decide(p, "mallory", "8.8.8.8") == Decision(False, "first", "policy_denied:first")
    assert decide(p, "alice", "8.8.8.8").rule == "second"


def test_no_rule_matched_denies(tmp_path):
    p = make_policy(tmp_path, '[[rule]]\nname = "a"\nusers = ["alice"]\naction = "allow"\nmfa = "none"\n')
    d = decide(p, "bob", "192.0.2.1", factor="totp")
    assert d == Decision(False, None, "no_rule_matched")
    # A caller that ignores .allowed still sees the strongest requirement, never "none".
    assert (d.required_mfa, d.remember_device) == ("strong", 0.0)


def test_deny_rule_denies_whatever_the_factor(tmp_path):
    p = make_policy(tmp_path, '[[rule]]\nname = "nope"\nnetworks = ["blocked"]\naction = "deny"\n')
    for factor in ["none", "totp", "app-password", "remembered-device"]:
        assert decide(p, "alice", "203.0.113.4", factor) == Decision(False, "nope", "policy_denied:nope")


@pytest.mark.parametrize(
    ("mfa", "remember", "factor", "allowed"),
    [
        ("none", None, "none", True),
        ("none", None, "app-password", True),
        ("totp", None, "none", False),
        ("totp", None, "totp", True),
        ("totp", None, "app-password", False),
        ("totp", '"14d"', "remembered-device", True),
        ("totp", None, "remembered-device", False),  # remember_device off: device does not count
        ("totp", '"0"', "remembered-device", False),
        ("app-password", None, "app-password", True),
        ("app-password", None, "totp", False),
        ("app-password", None, "none", False),
        ("strong", None, "totp", True),
        ("strong", None, "app-password", True),
        ("strong", '"12h"', "remembered-device", True),
        ("strong", None, "none", False),
    ],
)
def test_factor_satisfaction(tmp_path, mfa, remember, factor, allowed):
    extra = f"remember_device = {remember}\n" if remember else ""
    p = make_policy(tmp_path, f'[[rule]]\nname = "r"\naction = "allow"\nmfa = "{mfa}"\n{extra}')
    d = decide(p, "alice", "192.0.2.1", factor)
    assert d.allowed is allowed
    assert d.reason == ("ok" if allowed else f"mfa_required:{mfa}")
    assert d.required_mfa == mfa


def test_allow_rule_without_mfa_key_requires_strong(tmp_path):
    p = make_policy(tmp_path, '[[rule]]\nname = "r"\naction = "allow"\n')
    assert decide(p, "alice", "192.0.2.1").reason == "mfa_required:strong"
    assert decide(p, "alice", "192.0.2.1", "app-password").allowed


def test_decision_carries_remember_device_seconds_and_totp_suffix(tmp_path):
    p = make_policy(
        tmp_path,
        '[[rule]]\nname = "r"\naction = "allow"\nmfa = "totp"\nremember_device = "14d"\ntotp_suffix = "plain"\n',
    )
    d = decide(p, "alice", "192.0.2.1", "totp")
    assert (d.remember_device, d.totp_suffix) == (14 * 86400.0, "plain")


def test_requirement_for_tells_the_shell_what_to_expect_before_the_factor_is_known(tmp_path):
    p = make_policy(
        tmp_path,
        """
        [[rule]]
        name = "block"
        networks = ["blocked"]
        action = "deny"
        [[rule]]
        name = "office"
        networks = ["office"]
        action = "allow"
        mfa = "none"
        [[rule]]
        name = "contractors"
        groups = ["contractors"]
        action = "allow"
        mfa = "totp"
        totp_suffix = "plain"
        """,
    )
    ip = ipaddress.ip_address
    r = p.requirement_for("carol@example.net", ip("8.8.8.8"))
    assert (r.allowed, r.reason, r.required_mfa, r.totp_suffix) == (True, "mfa_required:totp", "totp", "plain")
    assert p.requirement_for("x", ip("192.0.2.1")) == Decision(True, "office", "ok", "none", 0.0, "separator")
    assert p.requirement_for("x", ip("203.0.113.1")) == Decision(False, "block", "policy_denied:block")
    assert p.requirement_for("x", ip("8.8.8.8")) == Decision(False, None, "no_rule_matched")


def test_unnamed_rule_is_labelled_by_file_and_index(tmp_path):
    p = make_policy(tmp_path, '[[rule]]\nusers = ["a"]\naction = "deny"\n[[rule]]\nusers = ["b"]\naction = "deny"\n')
    assert decide(p, "b", "8.8.8.8").reason == "policy_denied:10-test.toml#2"


def test_login_context_parses_string_ip_and_rejects_unknown_factor():
    assert LoginContext("a", "192.0.2.1").ip == ipaddress.IPv4Address("192.0.2.1")
    with pytest.raises(ValueError, match="factor"):
        LoginContext("a", ipaddress.ip_address("192.0.2.1"), factor="sms")


# -- the shipped files --------------------------------------------------------------


def test_shipped_default_requires_strong_mfa_from_anywhere():
    p = load_policy(REPO / "policies")
    for ip in ["192.0.2.1", "2001:db8::1", "8.8.8.8"]:
        assert decide(p, "alice", ip, "none").reason == "mfa_required:strong"
        assert decide(p, "alice", ip, "totp").allowed
        assert decide(p, "alice", ip, "app-password").allowed


def test_a_policy_file_added_next_to_the_shipped_default_applies(tmp_path):
    """What the README tells an administrator to do: copy policies/ and add a 10-*.toml.
    The shipped catch-all sorts last, so the added rule is tried first."""
    shutil.copytree(REPO / "policies", tmp_path / "policies", ignore=shutil.ignore_patterns("examples"))
    (tmp_path / "policies" / "10-office.toml").write_text(
        '[[rule]]\nname = "office"\nnetworks = ["192.0.2.0/24"]\naction = "allow"\nmfa = "none"\n')
    p = load_policy(tmp_path / "policies")
    assert p.files[-1] == "99-default.toml"
    assert decide(p, "alice", "192.0.2.7", "none").allowed
    assert decide(p, "alice", "198.51.100.7", "none").reason == "mfa_required:strong"


def test_shipped_default_commented_examples_are_valid_when_uncommented(tmp_path):
    text = (REPO / "policies" / "99-default.toml").read_text()
    uncommented = "\n".join(
        line[2:] if re.match(r"# (\[|[a-z_]+ = )", line) else line for line in text.splitlines()
    )
    (tmp_path / "00-default.toml").write_text(uncommented)
    p = load_policy(tmp_path)
    assert len(p.rules) == 5
    assert decide(p, "alice", "203.0.113.5", "totp").reason == "policy_denied:blocked ranges"
    assert decide(p, "alice", "192.0.2.5").allowed
    assert decide(p, "carol@example.net", "8.8.8.8", "totp").reason == "policy_denied:contractors elsewhere"
    assert decide(p, "carol@example.net", "198.51.100.3", "totp").allowed


def test_shipped_example_directory_loads_and_decides():
    p = load_policy(REPO / "policies" / "examples")
    assert decide(p, "bob", "2001:db8:1::7").rule == "office staff"
    assert decide(p, "carol@example.net", "198.51.100.9", "remembered-device").allowed
    assert not decide(p, "carol@example.net", "198.51.100.9").allowed


# -- explain and the CLI helpers ------------------------------------------------------


def _explain_policy(tmp_path: Path) -> Path:
    make_policy(
        tmp_path,
        """
        [[rule]]
        name = "office staff"
        groups = ["staff"]
        networks = ["office"]
        action = "allow"
        mfa = "none"
        [[rule]]
        name = "no blocked"
        networks = ["blocked", "!203.0.113.9"]
        action = "deny"
        [[rule]]
        name = "default"
        action = "allow"
        mfa = "strong"
        """,
    )
    return tmp_path


def test_explain_says_why_earlier_rules_did_not_match(tmp_path):
    d = _explain_policy(tmp_path)
    code, text = explain_command(d, "carol@example.net", "203.0.113.9", "none", False)
    assert code == 0
    assert "'carol@example.net' is not in groups [staff]" in text
    assert "203.0.113.9 is in none of [office]" in text
    assert "203.0.113.9 is in 203.0.113.9/32, excluded by '!203.0.113.9'" in text
    assert "MATCH (first match: decides)" in text
    assert text.rstrip().splitlines()[-2] == "decision: DENIED (mfa_required:strong) by rule 'default'"


def test_explain_shows_shadowed_rules_and_agrees_with_decide(tmp_path):
    d = _explain_policy(tmp_path)
    p = load_policy(d)
    ctx = LoginContext("alice", ipaddress.ip_address("192.0.2.3"), "none")
    ex = p.explain(ctx)
    assert ex.decision == p.decide(ctx) == Decision(True, "office staff", "ok", "none", 0.0, "separator")
    assert [t.status for t in ex.traces] == [
        "MATCH (first match: decides)",
        "no match",
        "would match, but an earlier rule matched first",
    ]


def test_explain_json_is_machine_readable(tmp_path):
    d = _explain_policy(tmp_path)
    code, text = explain_command(d, "bob", "203.0.113.50", "app-password", True)
    data = json.loads(text)
    assert code == 0
    assert data["decision"] == {
        "allowed": False, "rule": "no blocked", "reason": "policy_denied:no blocked",
        "required_mfa": "strong", "remember_device": 0.0, "totp_suffix": "separator",
    }
    assert [r["matched"] for r in data["rules"]] == [False, True, True]
    assert data["rules"][0]["network_reason"] == "203.0.113.50 is in none of [office]"
    assert data["policy"]["files"] == ["10-test.toml"]


def test_explain_command_usage_and_policy_errors(tmp_path):
    d = _explain_policy(tmp_path)
    code, text = explain_command(d, "bob", "300.1.1.1", "none", False)
    assert code == 2 and text.startswith("error: --ip:")
    code, text = explain_command(d, "bob", "192.0.2.1", "sms", False)
    assert code == 2 and "--factor" in text
    (d / "20-bad.toml").write_text("[[rule]]\naction = 'allo'\n")
    code, text = explain_command(d, "bob", "192.0.2.1", "none", True)
    assert code == 1
    assert json.loads(text)["error"]["key"] == "action"


def test_check_command_reports_ok_with_rules_in_order_and_unused_definitions(tmp_path):
    d = _explain_policy(tmp_path)
    code, text = check_command(d)
    assert code == 0
    assert text.startswith("policy OK: 3 rule(s) from 1 file(s)")
    assert text.index("office staff") < text.index("no blocked") < text.index("default")
    assert "warning: group 'contractors' is defined but no rule uses it" in text
    assert "warning: network 'vpn' is defined but no rule uses it" in text


def test_check_command_fails_with_the_error_location(tmp_path):
    (tmp_path / "10-office.toml").write_text(
        '[networks]\noffice = ["192.0.2.0/24"]\n[[rule]]\nname = "office staff"\nnetworks = ["ofice"]\naction = "deny"\n'
    )
    code, text = check_command(tmp_path)
    assert code == 1
    assert f"{tmp_path}/10-office.toml: rule \"office staff\": networks: unknown network name 'ofice'" in text
    assert "did you mean 'office'?" in text


def test_oauth_token_with_mfa_meets_strong_and_one_without_does_not(tmp_path):
    d = tmp_path / "policies"
    d.mkdir()
    (d / "10-test.toml").write_text(textwrap.dedent("""\
        [[rule]]
        name = "everyone strong"
        users = ["*"]
        action = "allow"
        mfa = "strong"
        """))
    code, text = explain_command(d, "alice", "192.0.2.1", "oauth-mfa", True)
    assert code == 0 and json.loads(text)["decision"]["allowed"] is True
    code, text = explain_command(d, "alice", "192.0.2.1", "oauth", True)
    data = json.loads(text)
    assert data["factor"] == "oauth" and data["decision"]["allowed"] is False
