"""The loaded policy and its three questions: decide, requirement_for, explain.

Theory of operation: rules are tried in load order (file name order, then order in
the file); the first rule whose user condition AND network condition hold decides.
No rule matching is a deny: the engine fails closed. An allow rule still denies a
login whose presented factor does not meet the rule's ``mfa``; a deny rule denies
whatever the factor, so a stolen TOTP cannot open a blocked network.

All three methods are pure and never raise for any user string or IP address; they
cost O(rules x entries) and allocate nothing on the decide() path beyond the result.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from gateway.netaddr import unmap_ipv4

from .explain import Explanation, RuleTrace, explain_network, explain_user
from .model import (
    Decision,
    IPAddress,
    IPNetwork,
    LoginContext,
    Rule,
    UserPattern,
    factor_satisfies,
)


@dataclass(frozen=True)
class Policy:
    """An immutable, validated policy. Build it with ``load_policy(dir)``.

    ``fingerprint`` is a short hash of the loaded files' names and bytes: log it on
    every (re)load so an operator can tell which version decided a login.
    """

    rules: tuple[Rule, ...]
    groups: dict[str, tuple[UserPattern, ...]] = field(hash=False)
    networks: dict[str, tuple[IPNetwork, ...]] = field(hash=False)
    files: tuple[str, ...]
    fingerprint: str

    def _first_match(self, user: str, ip: IPAddress) -> Rule | None:
        # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; unmapped, an IPv4
        # deny rule stops them. So an IPv4 client is matched by IPv4 entries only (``::/0``
        # does not cover it; the loader refuses mapped CIDRs).
        ip = unmap_ipv4(ip)
        for rule in self.rules:
            if rule.matches(user, ip):
                return rule
        return None

    def requirement_for(self, user: str, ip: IPAddress) -> Decision:
        """What the first matching rule asks of a login, before its factor is known.

        The shell calls this right after LOGIN/AUTHENTICATE arrives to know whether to
        split ``password$123456`` (``totp_suffix``) or expect an app password.
        ``allowed`` is True when an allow rule matched, i.e. the login *can* succeed
        once ``required_mfa`` is met; ``reason`` is then ``"ok"`` (mfa none) or
        ``"mfa_required:<level>"``. Deny and no-match are final, as in decide().
        The client must not learn any of this (uniform failures): run the normal
        credential check anyway and answer with the generic failure.
        """
        if isinstance(ip, str):
            ip = parse_ip(ip)
        rule = self._first_match(user, ip)
        if rule is None:
            return Decision(False, None, "no_rule_matched")
        if rule.action == "deny":
            return Decision(False, rule.label, f"policy_denied:{rule.label}")
        return Decision(
            True,
            rule.label,
            "ok" if rule.mfa == "none" else f"mfa_required:{rule.mfa}",
            required_mfa=rule.mfa,
            remember_device=rule.remember_device,
            totp_suffix=rule.totp_suffix,
        )

    def decide(self, ctx: LoginContext) -> Decision:
        """Final verdict for a login whose password and factor were already verified."""
        return self._decide(self._first_match(ctx.user, ctx.ip), ctx.factor)

    @staticmethod
    def _decide(rule: Rule | None, factor: str) -> Decision:
        if rule is None:
            return Decision(False, None, "no_rule_matched")
        if rule.action == "deny":
            return Decision(False, rule.label, f"policy_denied:{rule.label}")
        ok = factor_satisfies(rule.mfa, factor, rule.remember_device)
        return Decision(
            ok,
            rule.label,
            "ok" if ok else f"mfa_required:{rule.mfa}",
            required_mfa=rule.mfa,
            remember_device=rule.remember_device,
            totp_suffix=rule.totp_suffix,
        )

    def explain(self, ctx: LoginContext) -> Explanation:
        """Every rule in order, matched or why not, then the decision decide() gives."""
        ip = unmap_ipv4(ctx.ip)
        traces = []
        first: Rule | None = None
        for pos, rule in enumerate(self.rules, start=1):
            u_ok, u_why = explain_user(rule, ctx.user)
            n_ok, n_why = explain_network(rule, ip)
            matched = u_ok and n_ok
            is_first = matched and first is None
            if is_first:
                first = rule
            traces.append(
                RuleTrace(
                    pos, rule.label, rule.file, rule.action,
                    None if rule.action == "deny" else rule.mfa,
                    matched, is_first, u_why, n_why,
                )
            )
        shown_ip = str(ip) if ip == ctx.ip else f"{ctx.ip} (= {ip})"
        return Explanation(
            user=ctx.user,
            ip=shown_ip,
            factor=ctx.factor,
            fingerprint=self.fingerprint,
            files=self.files,
            traces=tuple(traces),
            decision=self._decide(first, ctx.factor),
        )


def parse_ip(text: str) -> IPAddress:
    """Parse a CLI ``--ip``; raises ValueError with ipaddress's explanation."""
    return ipaddress.ip_address(text.strip())
