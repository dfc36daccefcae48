"""Settings of the limiter: the ``[limits]`` table as plain, validated values.

Rules of this module:
1. Values arrive already read from TOML (by ``gateway/config.py`` or a test); this module
   only converts durations ("15m") to seconds and checks ranges.
2. Every error names the ``[limits]`` key and says what a valid value looks like, so an
   operator can fix the file without reading code.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from gateway import durations

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network



class LimitsConfigError(ValueError):
    """A ``[limits]`` or ``[anomaly]`` value is missing, of the wrong type or out of range."""


def parse_duration(value: Any, *, key: str) -> float:
    """Seconds from ``"15m"``, ``"1s"``, ``"24h"``, ``"30d"``, ``"500ms"`` or a plain number.

    Plain numbers are seconds: TOML users write both forms and both must mean the same.
    """
    if isinstance(value, bool):
        raise LimitsConfigError(f"{key}: expected a duration such as \"15m\", got {value!r}")
    seconds = None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.replace(" ", "")
        try:
            seconds = float(text)  # a plain number means seconds here
        except ValueError:
            try:
                seconds = durations.parse_duration(text)
            except durations.DurationError:
                seconds = None
    if seconds is None:
        raise LimitsConfigError(
            f"{key}: expected a duration such as \"15m\", \"1s\", \"24h\" or \"30d\", got {value!r}"
        )
    if seconds < 0:
        raise LimitsConfigError(f"{key}: a duration cannot be negative, got {value!r}")
    return seconds


def parse_networks(values: Any, *, key: str) -> tuple[IPNetwork, ...]:
    """CIDR strings to networks; a bare address means a single host."""
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise LimitsConfigError(f"{key}: expected a list of CIDR strings such as [\"10.0.0.0/8\"]")
    out: list[IPNetwork] = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(str(v), strict=False))
        except ValueError as exc:
            raise LimitsConfigError(f"{key}: {v!r} is not an IP network ({exc})") from None
    return tuple(out)


def _from_mapping(cls: type, table: str, raw: Mapping[str, Any], durations: set[str]) -> Any:
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise LimitsConfigError(
            f"[{table}] unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        full = f"[{table}] {name}"
        if name in durations:
            kwargs[name] = parse_duration(value, key=full)
        elif name == "allow_networks":
            kwargs[name] = tuple(str(n) for n in parse_networks(value, key=full))
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _from_section(cls: type, section: Any) -> Any:
    """Pick this class's fields from a validated config section (``gateway.config``'s
    ``LimitsConfig``/``AnomalyConfig``, or anything with those attributes); other keys of
    the section (``max_line``...) belong to other layers and are ignored."""
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.init and hasattr(section, f.name):
            value = getattr(section, f.name)
            if f.name == "allow_networks":
                value = tuple(str(n) for n in value)
            kwargs[f.name] = value
    return cls(**kwargs)


def _check_int(obj: Any, name: str, table: str, lo: int, hi: int | None = None) -> None:
    v = getattr(obj, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise LimitsConfigError(f"[{table}] {name}: expected an integer {rng}, got {v!r}")


@dataclass(frozen=True)
class LimitsSettings:
    """The ``[limits]`` table. Durations are seconds.

    ``familiar_ttl`` (how long a successful login makes a network "familiar" for smart
    lockout) and ``offence_memory`` (how long past bans count as repeat offences for TTL
    growth) are not in the shipped config; their defaults are what the issue describes.
    """

    fail_window: float = 900.0
    ip_fail_threshold: int = 10
    subnet_fail_threshold: int = 30
    user_fail_threshold: int = 20
    user_ip_fail_threshold: int = 5
    subnet_v4_prefix: int = 24
    subnet_v6_prefix: int = 64
    tarpit_base: float = 1.0
    tarpit_max: float = 10.0
    ban_ttl: float = 900.0
    ban_ttl_max: float = 86400.0
    allow_networks: tuple[str, ...] = ()
    max_connections_per_ip: int = 20
    max_connections: int = 10000
    max_connection_rate_per_ip: int = 30
    familiar_ttl: float = 30 * 86400.0
    offence_memory: float = 7 * 86400.0
    allow: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    DURATIONS = frozenset(
        {"fail_window", "tarpit_base", "tarpit_max", "ban_ttl", "ban_ttl_max",
         "familiar_ttl", "offence_memory"}
    )

    def __post_init__(self) -> None:
        t = "limits"
        for name in ("ip_fail_threshold", "subnet_fail_threshold", "user_fail_threshold",
                     "user_ip_fail_threshold", "max_connections_per_ip", "max_connections",
                     "max_connection_rate_per_ip"):
            _check_int(self, name, t, 1)
        _check_int(self, "subnet_v4_prefix", t, 1, 32)
        _check_int(self, "subnet_v6_prefix", t, 1, 128)
        for name in self.DURATIONS:
            if not isinstance(getattr(self, name), int | float) or getattr(self, name) < 0:
                raise LimitsConfigError(f"[{t}] {name}: expected a duration >= 0")
        if self.fail_window <= 0 or self.ban_ttl <= 0 or self.familiar_ttl <= 0:
            raise LimitsConfigError(
                f"[{t}] fail_window, ban_ttl and familiar_ttl must be > 0 (a zero window "
                "would count nothing and a zero ban would ban nobody)"
            )
        if self.tarpit_max < self.tarpit_base:
            raise LimitsConfigError(
                f"[{t}] tarpit_max ({self.tarpit_max}s) must be >= tarpit_base ({self.tarpit_base}s)"
            )
        if self.ban_ttl_max < self.ban_ttl:
            raise LimitsConfigError(
                f"[{t}] ban_ttl_max ({self.ban_ttl_max}s) must be >= ban_ttl ({self.ban_ttl}s)"
            )
        nets = parse_networks(list(self.allow_networks), key=f"[{t}] allow_networks")
        object.__setattr__(self, "allow", nets)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> LimitsSettings:
        """Build from the raw ``[limits]`` TOML table (durations may be "15m" strings)."""
        return _from_mapping(cls, "limits", raw, set(cls.DURATIONS))

    @classmethod
    def from_config(cls, section: Any) -> LimitsSettings:
        """Build from ``config.limits`` (already validated, durations in seconds)."""
        return _from_section(cls, section)


@dataclass(frozen=True)
class AnomalySettings:
    """The ``[anomaly]`` table. ``window`` is seconds.

    ``spray_action`` ("ban" or "log") is not in the shipped config: a password spray from
    one source bans it by default, as the issue asks.
    """

    window: float = 600.0
    spray_distinct_users: int = 20
    stuffing_distinct_ips: int = 20
    stuffing_distinct_users: int = 20
    stuffing_failure_ratio: float = 0.8
    distributed_brute_force_ips: int = 10
    high_volume_fetch_bytes: int = 2 * 1024**3
    mass_delete_messages: int = 500
    spray_action: str = "ban"

    def __post_init__(self) -> None:
        t = "anomaly"
        for name in ("spray_distinct_users", "stuffing_distinct_ips", "stuffing_distinct_users",
                     "distributed_brute_force_ips", "high_volume_fetch_bytes",
                     "mass_delete_messages"):
            _check_int(self, name, t, 1)
        if not isinstance(self.window, int | float) or self.window <= 0:
            raise LimitsConfigError(f"[{t}] window: expected a duration > 0, got {self.window!r}")
        r = self.stuffing_failure_ratio
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0 < r <= 1:
            raise LimitsConfigError(
                f"[{t}] stuffing_failure_ratio: expected a number in (0, 1], got {r!r}"
            )
        if self.spray_action not in ("ban", "log"):
            raise LimitsConfigError(
                f"[{t}] spray_action: expected \"ban\" or \"log\", got {self.spray_action!r}"
            )

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> AnomalySettings:
        """Build from the raw ``[anomaly]`` TOML table."""
        return _from_mapping(cls, "anomaly", raw, {"window"})

    @classmethod
    def from_config(cls, section: Any) -> AnomalySettings:
        """Build from ``config.anomaly`` (already validated)."""
        return _from_section(cls, section)
