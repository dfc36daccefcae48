"""Read and validate a policy directory into a Policy, all files or nothing.

Rules of this module:
1. The only I/O is listing one directory and reading its ``*.toml`` files; every
   check runs on the bytes read, so a file edited mid-load cannot leave half a policy.
2. Anything surprising is an error, never a guess: unknown keys, empty lists, a key
   that has no effect on its rule (``mfa`` on a deny rule), a rule that can never
   match. A policy typo must not silently fail open.
3. Every error names file, rule (name or ``#index``) and key, and says what to do.

Format (see policies/99-default.toml): top-level ``[groups]``, ``[networks]`` and
``[[rule]]`` tables. Files load in name order (hidden files skipped); groups and
networks are global across files (a name may be defined once); rules keep file
order then in-file order, and the first matching rule wins.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import durations

from .engine import Policy
from .errors import PolicyError
from .model import (
    ACTIONS,
    MFA_LEVELS,
    TOTP_SUFFIXES,
    IPNetwork,
    NetworkEntry,
    Rule,
    UserPattern,
    fold,
)

TOP_LEVEL_KEYS = ("groups", "networks", "rule")
RULE_KEYS = ("name", "users", "groups", "networks", "action", "mfa", "remember_device", "totp_suffix")

# Group and network names start with a letter and never contain ':' or '/', so a
# rule's networks entry is unambiguously a name or an address/CIDR.
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
# A remembered device is a bearer token that skips the second factor; past a year it
# is no longer "remembering", it is turning MFA off.
MAX_REMEMBER_DEVICE = 366 * 86400
_BAD_CHARS_RE = re.compile(r"[\s\x00-\x1f\x7f]")


@dataclass
class _RawRule:
    path: str
    file: str
    index: int
    table: dict[str, Any]

    @property
    def ref(self) -> str:
        name = self.table.get("name")
        return f'"{name}"' if isinstance(name, str) and name else f"#{self.index}"

    def error(self, key: str | None, message: str) -> PolicyError:
        return PolicyError(message, file=self.path, rule=self.ref, key=key)


def _suggest(word: str, known: list[str], what: str) -> str:
    if not known:
        return f" (no {what} are defined; add a [{what}] table)"
    close = difflib.get_close_matches(word, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f" (defined: {', '.join(sorted(known))}{hint})"


def parse_duration(text: Any) -> float:
    """``"14d"`` -> 1209600.0; ``"0"`` -> 0.0 (off). Units s, m, h, d, w. Raises ValueError."""
    if not isinstance(text, str):
        raise ValueError(f"must be a string like \"14d\" or \"12h\" (or \"0\" for off), got {text!r}")
    if text == "0":
        return 0.0
    try:
        seconds = durations.parse_duration(text)
    except durations.DurationError:
        raise ValueError(f"bad duration {text!r}: write a number and a unit s/m/h/d/w, e.g. \"14d\", or \"0\" for off") from None
    if seconds > MAX_REMEMBER_DEVICE:
        raise ValueError(f"{text!r} is longer than the 366d maximum")
    return seconds


def parse_user_pattern(text: Any) -> UserPattern:
    """``"alice"``, ``"*@example.com"`` or ``"*"``. Raises ValueError."""
    if not isinstance(text, str):
        raise ValueError(f"entries must be strings, got {text!r}")
    if text == "*":
        return UserPattern("any", "", text)
    if not text or _BAD_CHARS_RE.search(text):
        raise ValueError(f"bad user {text!r}: empty or contains whitespace/control characters")
    if text.startswith("*@"):
        domain = text[2:]
        if not domain or "@" in domain or "*" in domain:
            raise ValueError(f"bad user pattern {text!r}: write '*@example.com'")
        return UserPattern("domain", fold(domain), text)
    if "*" in text:
        raise ValueError(
            f"bad user pattern {text!r}: only a plain user name, '*@domain' or '*' are supported"
        )
    return UserPattern("exact", fold(text), text)


_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_cidr(text: str) -> IPNetwork:
    """An address or CIDR; host bits must be zero. Raises ValueError with a fix.

    IPv4-mapped IPv6 CIDRs (``::ffff:203.0.113.0/120``) are refused: clients are
    matched by their IPv4 address (see ``gateway.netaddr``), so such an entry could
    never match and a deny rule using it would silently fail open.
    """
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            fixed = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"bad CIDR {text!r}: {exc}") from None
        raise ValueError(f"bad CIDR {text!r}: host bits are set; did you mean '{fixed}'?") from None
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_V4_MAPPED):
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None  # every address in ::ffff:0:0/96 maps to one
        v4 = ipaddress.ip_network((mapped, net.prefixlen - 96))
        raise ValueError(f"bad CIDR {text!r}: IPv4-mapped clients are matched as IPv4; write '{v4}'")
    return net


def _string_list(value: Any, where: _RawRule | None, key: str, path: str) -> list[str]:
    def err(msg: str) -> PolicyError:
        return where.error(key, msg) if where else PolicyError(msg, file=path, key=key)

    if not isinstance(value, list):
        raise err(f"must be a list of strings, got {type(value).__name__}")
    if not value:
        raise err("empty list: remove the key to match everyone/everywhere, or add entries")
    for item in value:
        if not isinstance(item, str):
            raise err(f"entries must be strings, got {item!r}")
    return value


class _Loader:
    def __init__(self) -> None:
        self.groups: dict[str, tuple[UserPattern, ...]] = {}
        self.group_file: dict[str, str] = {}
        self.networks: dict[str, tuple[IPNetwork, ...]] = {}
        self.network_file: dict[str, str] = {}
        self.raw_rules: list[_RawRule] = []

    def add_file(self, path: Path, doc: dict[str, Any]) -> None:
        p = str(path)
        for key in doc:
            if key not in TOP_LEVEL_KEYS:
                hint = " (did you write [rule] instead of [[rule]]?)" if key == "rules" else ""
                raise PolicyError(
                    f"unknown top-level key; allowed: [groups], [networks], [[rule]]{hint}", file=p, key=key
                )
        groups = doc.get("groups", {})
        if not isinstance(groups, dict):
            raise PolicyError("must be a table: [groups] name = [\"alice\", \"*@example.com\"]", file=p, key="groups")
        for name, members in groups.items():
            key = f"groups.{name}"
            if not _NAME_RE.fullmatch(name):
                raise PolicyError("bad group name: start with a letter; letters, digits, _ . - only", file=p, key=key)
            if name in self.groups:
                raise PolicyError(f"group defined twice (also in {self.group_file[name]}); merge the lists", file=p, key=key)
            entries = _string_list(members, None, key, p)
            try:
                self.groups[name] = tuple(parse_user_pattern(m) for m in entries)
            except ValueError as exc:
                raise PolicyError(str(exc), file=p, key=key) from None
            self.group_file[name] = p
        networks = doc.get("networks", {})
        if not isinstance(networks, dict):
            raise PolicyError("must be a table: [networks] office = [\"192.0.2.0/24\"]", file=p, key="networks")
        for name, cidrs in networks.items():
            key = f"networks.{name}"
            if not _NAME_RE.fullmatch(name):
                raise PolicyError("bad network name: start with a letter; letters, digits, _ . - only", file=p, key=key)
            if name in self.networks:
                raise PolicyError(f"network defined twice (also in {self.network_file[name]}); merge the lists", file=p, key=key)
            entries = _string_list(cidrs, None, key, p)
            try:
                self.networks[name] = tuple(parse_cidr(c) for c in entries)
            except ValueError as exc:
                raise PolicyError(f"{exc} (named networks hold addresses/CIDRs only)", file=p, key=key) from None
            self.network_file[name] = p
        rules = doc.get("rule", [])
        if not isinstance(rules, list):
            raise PolicyError("write each rule as a [[rule]] table (double brackets)", file=p, key="rule")
        for i, table in enumerate(rules, start=1):
            if not isinstance(table, dict):
                raise PolicyError(f"rule #{i} is not a table; write [[rule]]", file=p, key="rule")
            self.raw_rules.append(_RawRule(p, path.name, i, table))

    def build_rule(self, raw: _RawRule) -> Rule:
        t = raw.table
        for key in t:
            if key not in RULE_KEYS:
                close = difflib.get_close_matches(key, RULE_KEYS, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise raw.error(key, f"unknown key (allowed: {', '.join(RULE_KEYS)}){hint}")
        name = t.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip() or re.search(r"[\x00-\x1f\x7f]", name)):
            raise raw.error("name", "must be a non-empty one-line string")
        if name is not None and len(name) > 100:
            raise raw.error("name", "too long (100 characters maximum)")

        action = t.get("action")
        if action is None:
            raise raw.error("action", 'missing: add action = "allow" or action = "deny"')
        if action not in ACTIONS:
            raise raw.error("action", f"bad value {action!r}: must be one of {', '.join(ACTIONS)}")

        if action == "deny":
            for key in ("mfa", "remember_device", "totp_suffix"):
                if key in t:
                    raise raw.error(key, "has no effect on a deny rule (a deny rule denies whatever the factor); remove it")
            mfa, remember, suffix = "none", 0.0, "separator"
        else:
            # No mfa key on an allow rule means the secure default, not "none".
            mfa = t.get("mfa", "strong")
            if mfa not in MFA_LEVELS:
                raise raw.error("mfa", f"bad value {mfa!r}: must be one of {', '.join(MFA_LEVELS)}")
            takes_totp = mfa in ("totp", "strong")
            remember = 0.0
            if "remember_device" in t:
                if not takes_totp:
                    raise raw.error("remember_device", f'only applies to mfa = "totp" or "strong", not {mfa!r}; remove it')
                try:
                    remember = parse_duration(t["remember_device"])
                except ValueError as exc:
                    raise raw.error("remember_device", str(exc)) from None
            suffix = t.get("totp_suffix", "separator")
            if "totp_suffix" in t:
                if not takes_totp:
                    raise raw.error("totp_suffix", f'only applies to mfa = "totp" or "strong", not {mfa!r}; remove it')
                if suffix not in TOTP_SUFFIXES:
                    raise raw.error("totp_suffix", f"bad value {suffix!r}: must be one of {', '.join(TOTP_SUFFIXES)}")

        users = None
        if "users" in t:
            try:
                users = tuple(parse_user_pattern(u) for u in _string_list(t["users"], raw, "users", raw.path))
            except ValueError as exc:
                raise raw.error("users", str(exc)) from None

        groups = None
        members: tuple[tuple[UserPattern, ...], ...] = ()
        if "groups" in t:
            groups = tuple(_string_list(t["groups"], raw, "groups", raw.path))
            for g in groups:
                if g not in self.groups:
                    raise raw.error("groups", f"unknown group name '{g}'" + _suggest(g, list(self.groups), "groups"))
            members = tuple(self.groups[g] for g in groups)

        nets = None
        if "networks" in t:
            nets = tuple(self._network_entry(raw, e) for e in _string_list(t["networks"], raw, "networks", raw.path))

        return Rule(
            name=name,
            file=raw.file,
            index=raw.index,
            action=action,
            mfa=mfa,
            remember_device=remember,
            totp_suffix=suffix,
            users=users,
            groups=groups,
            group_members=members,
            networks=nets,
        )

    def _network_entry(self, raw: _RawRule, text: str) -> NetworkEntry:
        negated = text.startswith("!")
        body = text[1:] if negated else text
        if _NAME_RE.fullmatch(body):
            if body not in self.networks:
                raise raw.error(
                    "networks", f"unknown network name '{body}'" + _suggest(body, list(self.networks), "networks")
                )
            return NetworkEntry(text, negated, self.networks[body], name=body)
        try:
            return NetworkEntry(text, negated, (parse_cidr(body),))
        except ValueError as exc:
            raise raw.error("networks", f"{exc} (entries are network names, addresses or CIDRs; '!' negates)") from None


def policy_files(dir: Path) -> list[Path]:
    """The files a load reads, in load order: ``*.toml`` directly in ``dir``, by name.

    Hidden files are skipped (editor lock/swap files such as ``.#10-office.toml``);
    subdirectories (e.g. ``examples/``) are not read.
    """
    dir = Path(dir)
    if not dir.exists():
        raise PolicyError("policy directory does not exist; create it or fix [policy] dir in the config", file=str(dir))
    if not dir.is_dir():
        raise PolicyError("not a directory; [policy] dir must name a directory of *.toml files", file=str(dir))
    files = [p for p in dir.iterdir() if p.name.endswith(".toml") and not p.name.startswith(".") and p.is_file()]
    return sorted(files, key=lambda p: p.name)


def load_policy(dir: Path) -> Policy:
    """Load every ``*.toml`` in ``dir`` (name order) into one validated Policy.

    Atomic: any problem in any file raises PolicyError and nothing is returned, so a
    caller that keeps its previous Policy on error never runs half a policy.
    """
    dir = Path(dir)
    files = policy_files(dir)
    if not files:
        raise PolicyError(
            "no *.toml policy files: every login would be denied; copy policies/99-default.toml here", file=str(dir)
        )
    digest = hashlib.sha256()
    loader = _Loader()
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PolicyError(f"cannot read: {exc.strerror}", file=str(path)) from None
        digest.update(f"{path.name}\0{len(data)}\0".encode())
        digest.update(data)
        try:
            doc = tomllib.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise PolicyError(f"not UTF-8 (byte {exc.start}); save the file as UTF-8", file=str(path)) from None
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"TOML syntax error: {exc}", file=str(path)) from None
        loader.add_file(path, doc)

    if not loader.raw_rules:
        raise PolicyError("no [[rule]] in any policy file: every login would be denied; add a rule", file=str(dir))
    rules = [loader.build_rule(raw) for raw in loader.raw_rules]

    seen: dict[str, _RawRule] = {}
    for raw, rule in zip(loader.raw_rules, rules, strict=True):
        if rule.name is None:
            continue
        if rule.name in seen:
            first = seen[rule.name]
            raise raw.error("name", f"duplicate rule name (first used in {first.path} rule #{first.index}); rename one")
        seen[rule.name] = raw

    # First match wins, so a rule after a match-everything rule is dead code; if it
    # was a deny rule, the policy silently fails open. Refuse it.
    for i, rule in enumerate(rules):
        if rule.matches_everything() and i + 1 < len(rules):
            dead_raw = loader.raw_rules[i + 1]
            raise dead_raw.error(
                None,
                f"can never match: rule {rule.ref} in {loader.raw_rules[i].path} comes first and matches every "
                "user from every address. Put it last (e.g. rename its file to 99-default.toml) or narrow it.",
            )

    return Policy(
        rules=tuple(rules),
        groups=dict(loader.groups),
        networks=dict(loader.networks),
        files=tuple(p.name for p in files),
        fingerprint=digest.hexdigest()[:16],
    )
