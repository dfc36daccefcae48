"""``imap-gateway policy check`` and ``policy explain``, minus argument parsing.

Each returns ``(exit_code, text)`` so the CLI only prints and exits, and tests need
no subprocess. Exit codes: 0 success, 1 the policy does not load (text says where
and why), 2 a bad argument (``--ip``, ``--factor``).
"""

from __future__ import annotations

import json
from pathlib import Path

from .engine import Policy, parse_ip
from .errors import PolicyError
from .explain import format_duration
from .loader import load_policy
from .model import FACTORS, LoginContext

EXIT_OK = 0
EXIT_INVALID_POLICY = 1
EXIT_USAGE = 2


def _error_dict(err: PolicyError) -> dict[str, str | None]:
    return {"file": err.file, "rule": err.rule, "key": err.key, "message": err.message, "text": str(err)}


def policy_warnings(policy: Policy) -> list[str]:
    """Things that load fine but are probably mistakes (unused definitions)."""
    used_groups = {g for r in policy.rules for g in (r.groups or ())}
    used_nets = {e.name for r in policy.rules for e in (r.networks or ()) if e.name}
    out = [f"group '{g}' is defined but no rule uses it" for g in sorted(set(policy.groups) - used_groups)]
    out += [f"network '{n}' is defined but no rule uses it" for n in sorted(set(policy.networks) - used_nets)]
    return out


def check_command(dir: Path) -> tuple[int, str]:
    """Validate a policy directory; on success list the rules in the order they are tried."""
    try:
        policy = load_policy(Path(dir))
    except PolicyError as err:
        return EXIT_INVALID_POLICY, f"policy INVALID (nothing loaded): {err}"
    lines = [
        f"policy OK: {len(policy.rules)} rule(s) from {len(policy.files)} file(s) "
        f"({', '.join(policy.files)}), fingerprint {policy.fingerprint}",
        "rules, first match wins (no match = deny):",
    ]
    for pos, r in enumerate(policy.rules, start=1):
        who = []
        if r.users is not None:
            who.append("users " + ", ".join(p.text for p in r.users))
        if r.groups is not None:
            who.append("groups " + ", ".join(r.groups))
        where = "networks " + ", ".join(e.text for e in r.networks) if r.networks is not None else "anywhere"
        what = r.action if r.action == "deny" else f"allow mfa={r.mfa}"
        if r.action == "allow" and r.remember_device > 0:
            what += f" remember_device={format_duration(r.remember_device)}"
        if r.action == "allow" and r.totp_suffix != "separator":
            what += f" totp_suffix={r.totp_suffix}"
        lines.append(f"{pos:3d}. {r.label} [{r.file}]: {' or '.join(who) or 'everyone'}; {where} -> {what}")
    lines += [f"warning: {w}" for w in policy_warnings(policy)]
    return EXIT_OK, "\n".join(lines)


def explain_command(dir: Path, user: str, ip: str, factor: str = "none", as_json: bool = False) -> tuple[int, str]:
    """Explain the decision for ``user`` from ``ip`` presenting ``factor``."""

    def fail(code: int, message: str, err: PolicyError | None = None) -> tuple[int, str]:
        if as_json:
            body = _error_dict(err) if err is not None else {"message": message}
            return code, json.dumps({"error": body}, indent=2)
        return code, f"error: {message}"

    try:
        addr = parse_ip(ip)
    except ValueError as exc:
        return fail(EXIT_USAGE, f"--ip: {exc}")
    if factor not in FACTORS:
        return fail(EXIT_USAGE, f"--factor: {factor!r} is not one of {', '.join(FACTORS)}")
    try:
        policy = load_policy(Path(dir))
    except PolicyError as err:
        return fail(EXIT_INVALID_POLICY, f"policy INVALID (nothing loaded): {err}", err)
    explanation = policy.explain(LoginContext(user=user, ip=addr, factor=factor))
    if as_json:
        return EXIT_OK, json.dumps(explanation.to_dict(), indent=2)
    return EXIT_OK, explanation.render()
