"""Property tests for the matcher: it agrees with ``ipaddress`` and never raises."""

from __future__ import annotations

import ipaddress
import tempfile
from pathlib import Path

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.policy import LoginContext, Policy, load_policy
from gateway.policy.model import FACTORS

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = load_policy(REPO / "policies" / "examples")
V4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def as_client(addr):
    """What the matcher compares: IPv4-mapped clients are their IPv4 address."""
    mapped = getattr(addr, "ipv4_mapped", None)
    return mapped if mapped is not None else addr


def policy_from(text: str) -> Policy:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "10.toml").write_text(text)
        return load_policy(Path(d))


@st.composite
def network_and_address(draw):
    """A network plus an address that is inside it about half the time."""
    version = draw(st.sampled_from([4, 6]))
    bits = 32 if version == 4 else 128
    base = draw(st.ip_addresses(v=version))
    net = ipaddress.ip_network((base, draw(st.integers(0, bits))), strict=False)
    assume(not (version == 6 and net.subnet_of(V4_MAPPED)))  # refused by the loader (tested elsewhere)
    if draw(st.booleans()):
        addr = net.network_address + draw(st.integers(0, net.num_addresses - 1))
    else:
        addr = draw(st.ip_addresses())
    return net, addr


@settings(max_examples=150, deadline=None)
@given(network_and_address())
def test_cidr_rule_matches_exactly_the_addresses_ipaddress_puts_in_it(case):
    net, addr = case
    p = policy_from(f'[[rule]]\nname = "r"\nnetworks = ["{net}"]\naction = "allow"\nmfa = "none"\n')
    assert p.decide(LoginContext("u", addr)).allowed == (as_client(addr) in net)


@settings(max_examples=150, deadline=None)
@given(network_and_address())
def test_negated_cidr_is_the_complement(case):
    net, addr = case
    p = policy_from(f'[[rule]]\nname = "r"\nnetworks = ["!{net}"]\naction = "allow"\nmfa = "none"\n')
    assert p.decide(LoginContext("u", addr)).allowed == (as_client(addr) not in net)


@settings(max_examples=100, deadline=None)
@given(st.ip_addresses(v=4))
def test_ipv4_mapped_address_is_decided_like_the_ipv4_address(addr):
    mapped = ipaddress.IPv6Address(f"::ffff:{addr}")
    for user in ["alice", "carol@example.net", "mallory"]:
        assert EXAMPLES.decide(LoginContext(user, mapped)) == EXAMPLES.decide(LoginContext(user, addr))


@settings(max_examples=300, deadline=None)
@given(st.text(), st.ip_addresses(), st.sampled_from(FACTORS))
def test_decide_never_raises_and_explain_agrees_with_decide(user, addr, factor):
    ctx = LoginContext(user, addr, factor)
    decision = EXAMPLES.decide(ctx)
    assert decision.reason == "ok" if decision.allowed else decision.reason != "ok"
    assert EXAMPLES.explain(ctx).decision == decision
    requirement = EXAMPLES.requirement_for(user, addr)
    assert requirement.rule == decision.rule


DOMAIN_POLICY = policy_from(
    '[[rule]]\nname = "d"\nusers = ["*@staff.example.com"]\naction = "allow"\nmfa = "none"\n'
)


@settings(max_examples=200, deadline=None)
@given(st.text(), st.sampled_from(["example.com", "staff.example.com"]))
def test_domain_pattern_matches_any_nonempty_local_part(local, domain):
    p = DOMAIN_POLICY
    user = f"{local}@{domain}"
    expected = bool(local) and domain == "staff.example.com"
    assert p.decide(LoginContext(user, ipaddress.ip_address("192.0.2.1"))).allowed == expected
