"""Values of the policy engine: what a login presents, what a rule says, what we decide.

Rules of this module:
1. Everything here is pure and immutable: no files, no clock, no trio. The loader
   builds these values; the engine only reads them.
2. Matching never raises on attacker-controlled input. A user name is any ``str``
   (control characters, ``@@``, empty...) and an IP is any ``ipaddress`` address;
   the worst outcome of odd input is "this rule does not match".
3. A missing condition means "everyone"/"everywhere"; an empty list is refused by
   the loader, because "match nobody" and "match everybody" are both plausible
   readings of ``users = []`` and guessing wrong fails open.
"""

from __future__ import annotations

import ipaddress
import string
from dataclasses import dataclass, field
from typing import Literal

from gateway.netaddr import IPAddress, IPNetwork

ACTIONS = ("allow", "deny")
MFA_LEVELS = ("none", "totp", "app-password", "strong")
# "oauth": an OAuth token whose amr shows no MFA; "oauth-mfa": one whose amr holds one of
# [oauth] mfa_claims (the identity provider enforced the second factor).
FACTORS = ("none", "totp", "app-password", "remembered-device", "oauth", "oauth-mfa")
TOTP_SUFFIXES = ("separator", "plain")

# Which presented factor satisfies which required level. "remembered-device" is
# further gated by the rule's remember_device lifetime (see factor_satisfies).
_SATISFIES: dict[str, frozenset[str]] = {
    "none": frozenset(FACTORS),
    "totp": frozenset({"totp", "remembered-device"}),
    "app-password": frozenset({"app-password"}),
    "strong": frozenset({"totp", "remembered-device", "app-password", "oauth-mfa"}),
}

# ASCII-only case folding: user names and domains are compared case-insensitively
# (Dovecot setups usually are, and a deny rule for "mallory" must also stop
# "Mallory"), but Unicode folding is avoided on purpose: it maps distinct code
# points together (KELVIN SIGN -> "k"), which would let one name borrow another's rule.
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def fold(text: str) -> str:
    """Lower-case ASCII letters only; see _ASCII_LOWER for why not ``str.casefold``."""
    return text.translate(_ASCII_LOWER)


def factor_satisfies(mfa: str, factor: str, remember_device: float) -> bool:
    """Does a login that presented ``factor`` meet a rule requiring ``mfa``?

    A remembered device only counts when the rule turns remembered devices on
    (``remember_device`` > 0): setting ``remember_device = "0"`` must stop logins
    that skip the code, not merely stop offering to remember new devices.
    """
    if factor == "remembered-device" and mfa != "none" and remember_device <= 0:
        return False
    return factor in _SATISFIES.get(mfa, frozenset())


@dataclass(frozen=True)
class LoginContext:
    """Who is logging in, from where, with which strong factor.

    ``factor`` is the factor the login *presented* (already verified by the auth
    layer): "none" | "totp" | "app-password" | "remembered-device". An ``ip`` given
    as a string is parsed, so the shell can pass ``getpeername()[0]`` as is.
    """

    user: str
    ip: IPAddress
    factor: str = "none"

    def __post_init__(self) -> None:
        if isinstance(self.ip, str):
            object.__setattr__(self, "ip", ipaddress.ip_address(self.ip))
        if not isinstance(self.ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise TypeError(f"LoginContext.ip must be an ipaddress address, got {type(self.ip).__name__}")
        if self.factor not in FACTORS:
            raise ValueError(f"LoginContext.factor must be one of {', '.join(FACTORS)}; got {self.factor!r}")


@dataclass(frozen=True)
class Decision:
    """The engine's answer, with the reason the shell logs and counts.

    ``reason`` is one of ``"ok"``, ``"no_rule_matched"``, ``"policy_denied:<rule>"``,
    ``"mfa_required:<level>"``. ``required_mfa``, ``remember_device`` (seconds, 0 =
    off) and ``totp_suffix`` come from the matched allow rule, so the shell knows how
    to split ``password$123456`` and how long a device may be remembered. For a deny
    or no match they keep secure defaults (``required_mfa="strong"``, no remembered
    device), so a caller that forgets to look at ``allowed`` still asks for the
    strongest factor rather than none.
    """

    allowed: bool
    rule: str | None
    reason: str
    required_mfa: str = "strong"
    remember_device: float = 0.0
    totp_suffix: str = "separator"


@dataclass(frozen=True)
class UserPattern:
    """One entry of ``users``/a group: ``name``, ``*@domain`` or ``*``."""

    kind: Literal["exact", "domain", "any"]
    value: str  # folded name or domain; "" for "any"
    text: str  # as written, for explanations

    def matches(self, user: str) -> bool:
        if self.kind == "any":
            return True
        folded = fold(user)
        if self.kind == "exact":
            return folded == self.value
        # The domain is what follows the LAST "@": "a@example.com@evil.test" is in evil.test.
        local, at, domain = folded.rpartition("@")
        return bool(at) and bool(local) and domain == self.value


@dataclass(frozen=True)
class NetworkEntry:
    """One entry of a rule's ``networks``: a name or CIDR, maybe negated with ``!``."""

    text: str  # as written, e.g. "!office" or "198.51.100.0/24"
    negated: bool
    networks: tuple[IPNetwork, ...]
    name: str | None = None  # the [networks] name when the entry is one

    def contains(self, ip: IPAddress) -> bool:
        # ``in`` is False (not an error) across IP versions.
        return any(ip in net for net in self.networks)

    def which(self, ip: IPAddress) -> IPNetwork | None:
        for net in self.networks:
            if ip in net:
                return net
        return None


@dataclass(frozen=True)
class Rule:
    """One ``[[rule]]`` after validation; names and groups already resolved."""

    name: str | None
    file: str  # file name (not path), e.g. "10-office.toml"
    index: int  # 1-based position among the [[rule]] tables of its file
    action: str
    mfa: str
    remember_device: float
    totp_suffix: str
    users: tuple[UserPattern, ...] | None = None
    groups: tuple[str, ...] | None = None
    # Resolved members of ``groups``, same order; kept apart so explain can name the group.
    group_members: tuple[tuple[UserPattern, ...], ...] = field(default=(), repr=False)
    networks: tuple[NetworkEntry, ...] | None = None

    @property
    def label(self) -> str:
        """The name used in reasons and logs: the rule name, else ``file#index``."""
        return self.name if self.name is not None else f"{self.file}#{self.index}"

    @property
    def ref(self) -> str:
        """How errors and explanations refer to the rule: ``"office staff"`` or ``#2``."""
        return f'"{self.name}"' if self.name is not None else f"#{self.index}"

    # -- matching (the decide() fast path; explain.py gives the reasons) --

    def user_matches(self, user: str) -> bool:
        if self.users is None and self.groups is None:
            return True
        if self.users is not None and any(p.matches(user) for p in self.users):
            return True
        return any(p.matches(user) for members in self.group_members for p in members)

    def network_matches(self, ip: IPAddress) -> bool:
        """``ip`` must already be unmapped (``gateway.netaddr.unmap_ipv4``)."""
        if self.networks is None:
            return True
        positives = [e for e in self.networks if not e.negated]
        if positives and not any(e.contains(ip) for e in positives):
            return False
        return not any(e.contains(ip) for e in self.networks if e.negated)

    def matches(self, user: str, ip: IPAddress) -> bool:
        return self.user_matches(user) and self.network_matches(ip)

    def matches_everything(self) -> bool:
        """True when no user/address can escape this rule (so later rules are dead)."""
        users_all = (self.users is None and self.groups is None) or any(
            p.kind == "any" for p in (self.users or ())
        ) or any(p.kind == "any" for members in self.group_members for p in members)
        if not users_all:
            return False
        if self.networks is None:
            return True
        if any(e.negated for e in self.networks):
            return False
        prefixes = {(n.version, n.prefixlen) for e in self.networks for n in e.networks}
        return (4, 0) in prefixes and (6, 0) in prefixes
