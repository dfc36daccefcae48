"""Why a login was (or would be) allowed: every rule in order, matched or why not.

This is what ``imap-gateway policy explain`` prints. It re-walks the rules with the
same primitives decide() uses (Rule.user_matches / network_matches) and only adds
words, so an explanation cannot disagree with a decision. It walks *all* rules, not
just up to the first match, so an operator also sees rules that would have matched
but were shadowed by an earlier one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .model import Decision, IPAddress, Rule


@dataclass(frozen=True)
class RuleTrace:
    """One rule's verdict for one login."""

    position: int  # 1-based, across all files in load order
    label: str
    file: str
    action: str
    mfa: str | None  # None for deny rules: they deny whatever the factor
    matched: bool
    first_match: bool
    user_reason: str
    network_reason: str

    @property
    def status(self) -> str:
        if self.first_match:
            return "MATCH (first match: decides)"
        if self.matched:
            return "would match, but an earlier rule matched first"
        return "no match"


@dataclass(frozen=True)
class Explanation:
    user: str
    ip: str
    factor: str
    fingerprint: str
    files: tuple[str, ...]
    traces: tuple[RuleTrace, ...]
    decision: Decision

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``policy explain --json``; keys are stable."""
        return {
            "user": self.user,
            "ip": self.ip,
            "factor": self.factor,
            "policy": {"fingerprint": self.fingerprint, "files": list(self.files)},
            "rules": [
                {**asdict(t), "status": t.status} for t in self.traces
            ],
            "decision": asdict(self.decision),
        }

    def render(self) -> str:
        d = self.decision
        lines = [
            f"policy {self.fingerprint} ({len(self.files)} file(s): {', '.join(self.files)})",
            f"login: user {self.user!r} from {self.ip}, factor {self.factor}",
            "",
        ]
        for t in self.traces:
            what = t.action if t.mfa is None else f"{t.action} mfa={t.mfa}"
            lines.append(f"{t.position:3d}. {t.label} [{t.file}] {what}: {t.status}")
            lines.append(f"       user:    {t.user_reason}")
            lines.append(f"       network: {t.network_reason}")
        lines.append("")
        verdict = "ALLOWED" if d.allowed else "DENIED"
        by = f" by rule {d.rule!r}" if d.rule is not None else ""
        lines.append(f"decision: {verdict} ({d.reason}){by}")
        if d.allowed or d.reason.startswith("mfa_required:"):
            lines.append(
                f"  required mfa: {d.required_mfa}; remember device: "
                f"{format_duration(d.remember_device)}; totp suffix: {d.totp_suffix}"
            )
        return "\n".join(lines)


def format_duration(seconds: float) -> str:
    if seconds <= 0:
        return "off"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _list(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


def explain_user(rule: Rule, user: str) -> tuple[bool, str]:
    if rule.users is None and rule.groups is None:
        return True, "any user (no users/groups condition)"
    if rule.users is not None:
        for p in rule.users:
            if p.matches(user):
                return True, f"{user!r} matches users entry {p.text!r}"
    for group, members in zip(rule.groups or (), rule.group_members, strict=True):
        for p in members:
            if p.matches(user):
                return True, f"{user!r} is in group {group!r} (member {p.text!r})"
    parts = []
    if rule.users is not None:
        parts.append("users " + _list([repr(p.text) for p in rule.users]))
    if rule.groups is not None:
        parts.append("groups " + _list(list(rule.groups)))
    return False, f"{user!r} is not in " + " nor ".join(parts)


def explain_network(rule: Rule, ip: IPAddress) -> tuple[bool, str]:
    """``ip`` must already be normalized."""
    if rule.networks is None:
        return True, "any address (no networks condition)"
    positives = [e for e in rule.networks if not e.negated]
    hit = None
    if positives:
        hit = next((e for e in positives if e.contains(ip)), None)
        if hit is None:
            return False, f"{ip} is in none of " + _list([e.text for e in positives])
    for e in rule.networks:
        if e.negated and e.contains(ip):
            return False, f"{ip} is in {e.which(ip)}, excluded by {e.text!r}"
    if hit is not None:
        where = f" ({hit.which(ip)})" if hit.name is not None else ""
        return True, f"{ip} is in {hit.text!r}{where}"
    negs = _list([e.text for e in rule.networks if e.negated])
    return True, f"{ip} is outside every excluded network {negs}"
