"""Gateway configuration: one TOML file, validated, frozen.

Rules of this module:

1. The key names are a contract with administrators' files. Renaming a key breaks
   deployments; add a key with a default instead.
2. Every error an administrator can cause becomes one ``ConfigError`` that names the
   file, the dotted key (``backend.connect_timeout``, ``listener[1].mode``; list
   indexes count from 0) and what to do. Nothing else escapes ``load_config``.
3. Validation happens at load time, not when a connection first needs a value: files
   that must exist (TLS cert/key, CA file, master password file) are checked here,
   so a bad config never replaces a good one on reload.
4. No secret is read or kept. The Dovecot master password stays in its file; only the
   path is stored, and that file must give group and others no access and must not be
   empty (``gateway.secretfile``). The only values that may embed a secret (a Redis URL
   with a password; a PostgreSQL URL, which must keep its password in
   ``store.password_file``) are hidden from repr and redacted in ``Config.summary()``.

The result is a tree of frozen pydantic models: durations are float seconds, paths
are absolute ``Path`` objects (relative ones are resolved against the directory of
the config file, so the gateway's working directory does not matter), addresses keep
the string the admin wrote in ``.address`` and expose the parsed ``.host``/``.port``.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

from gateway.durations import HINT as DURATION_HINT
from gateway.durations import DurationError, parse_duration  # noqa: F401 (config API)
from gateway.secretfile import SecretFileError, check_secret_file

__all__ = [
    "AdminConfig",
    "AnomalyConfig",
    "AuthPolicyConfig",
    "BackendConfig",
    "Config",
    "ConfigError",
    "DurationError",
    "LimitsConfig",
    "ListenerConfig",
    "LoggingConfig",
    "MetricsConfig",
    "OAuthConfig",
    "PolicyConfig",
    "ServerConfig",
    "StateConfig",
    "StoreConfig",
    "TLSConfig",
    "WebConfig",
    "config_from_mapping",
    "load_config",
    "parse_address",
    "parse_duration",
]


# ---------------------------------------------------------------------------
# Errors


class ConfigError(Exception):
    """A configuration file the gateway cannot run with.

    ``file`` is the config file, ``key`` the dotted path of the offending key (None
    when the problem is the whole file: missing, unreadable, TOML syntax), ``message``
    what is wrong and, where possible, what to write instead. When several keys are
    wrong, the first is in ``key``/``message`` and all of them are in ``problems``;
    ``str()`` then lists the others after "; ".
    """

    def __init__(
        self,
        file: Path,
        key: str | None,
        message: str,
        *,
        problems: tuple[tuple[str | None, str], ...] = (),
    ) -> None:
        self.file = Path(file)
        self.key = key
        self.message = message
        self.problems = problems or ((key, message),)
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [_format_problem(self.key, self.message)]
        parts += [_format_problem(k, m) for k, m in self.problems[1:]]
        return f"{self.file}: " + "; ".join(parts)


def _format_problem(key: str | None, message: str) -> str:
    return f"{key}: {message}" if key is not None else message


def _fail(message: str) -> PydanticCustomError:
    # One error type for all our own checks, so translation keeps the message as is.
    return PydanticCustomError("gateway_config", message)


# ---------------------------------------------------------------------------
# Durations (parsed by gateway.durations; re-exported here for the config API)


def _duration_validator(*, allow_zero: bool):
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, str):
            raise _fail(
                f"must be a duration string with a unit, got {_show(value)}; {DURATION_HINT}"
            )
        try:
            seconds = parse_duration(value)
        except DurationError as exc:
            raise _fail(str(exc)) from None
        if seconds == 0 and not allow_zero:
            raise _fail(f"must be longer than zero, got {value!r}")
        return seconds

    return BeforeValidator(check)


Duration = Annotated[float, _duration_validator(allow_zero=False)]
"""Seconds, > 0, written in the file as a string with a unit."""
DurationOrZero = Annotated[float, _duration_validator(allow_zero=True)]
"""Seconds, >= 0; zero switches the feature off."""


# ---------------------------------------------------------------------------
# Enums


def _one_of(*choices: str) -> BeforeValidator:
    def check(value: Any) -> str:
        if value not in choices or not isinstance(value, str):
            listed = ", ".join(repr(c) for c in choices)
            extra = " (a number: put it in quotes)" if isinstance(value, int | float) else ""
            raise _fail(f"must be one of {listed}, got {_show(value)}{extra}")
        return value

    return BeforeValidator(check)


# ---------------------------------------------------------------------------
# Addresses

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def parse_address(text: str) -> tuple[str, int]:
    """Split ``"host:port"`` or ``"[v6]:port"`` into ``(host, port)``; host has no brackets.

    An unbracketed IPv6 address is refused rather than guessed at: in ``"::1:993"``
    the last group could be the port or part of the address. Raises ``ValueError``
    with a message that shows the accepted form.
    """
    if not text:
        raise ValueError("empty address; write host:port, e.g. '127.0.0.1:993' or '[::1]:993'")
    if text.startswith("["):
        m = re.fullmatch(r"\[([^\]]*)\](?::(.*))?", text)
        if m is None:
            raise ValueError(f"invalid address {text!r}; write an IPv6 address as '[::1]:993'")
        host, port_text = m.group(1), m.group(2)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"invalid IPv6 address {host!r} in {text!r}; brackets are for IPv6 only, "
                "e.g. '[::1]:993' or '[2001:db8::1]:993'"
            ) from None
        if port_text is None:
            raise ValueError(f"missing port in {text!r}; write e.g. '[{host}]:993'")
    elif "]" in text:
        raise ValueError(f"invalid address {text!r}; write an IPv6 address as '[::1]:993'")
    else:
        colons = text.count(":")
        if colons == 0:
            raise ValueError(f"missing port in {text!r}; write host:port, e.g. '{text}:993'")
        if colons > 1:
            raise ValueError(
                f"invalid address {text!r}: an IPv6 address needs brackets, e.g. '[::1]:993'"
            )
        host, port_text = text.rsplit(":", 1)
        if not host:
            raise ValueError(
                f"missing host in {text!r}; use '0.0.0.0{text}' for all IPv4 interfaces "
                f"or '[::]{text}' for all IPv6 interfaces"
            )
        _check_host(host, text)
    if not port_text.isdigit() or not port_text.isascii():
        raise ValueError(f"port must be a number from 1 to 65535, got {port_text!r} in {text!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be from 1 to 65535, got {port} in {text!r}")
    return host, port


def _check_host(host: str, text: str) -> None:
    labels = host.split(".")
    if all(label.isdigit() for label in labels):
        # Looks like an IPv4 address: it must be one, not a "hostname" of digits.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv4 address {host!r} in {text!r}") from None
        return
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"invalid host name {host!r} in {text!r}")


def _check_address(value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(f"must be a string 'host:port', got {_show(value)}")
    try:
        parse_address(value)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    return value


def _check_optional_address(value: Any) -> str:
    if value == "":
        return value
    return _check_address(value)


Address = Annotated[str, BeforeValidator(_check_address)]
OptionalAddress = Annotated[str, BeforeValidator(_check_optional_address)]


class _HasAddress:
    """``.host``/``.port`` derived from ``.address``; None when the address is ""."""

    address: str

    @property
    def host(self) -> str | None:
        return parse_address(self.address)[0] if self.address else None

    @property
    def port(self) -> int | None:
        return parse_address(self.address)[1] if self.address else None


# ---------------------------------------------------------------------------
# Paths


def _resolve(value: Any, info: ValidationInfo) -> Path:
    if not isinstance(value, str) or not value:
        raise _fail(f"must be a non-empty path string, got {_show(value)}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        base = (info.context or {}).get("base_dir")
        if base is None:
            raise _fail("relative path needs the config file's directory; load with load_config")
        path = Path(base) / path
    return Path(os.path.normpath(path))


def _resolve_optional(value: Any, info: ValidationInfo) -> Path | None:
    if value == "":
        return None
    return _resolve(value, info)


def _readable_file(path: Path | None) -> Path | None:
    if path is None:
        return None
    if not path.exists():
        raise _fail(f"file not found: {path}")
    if not path.is_file():
        raise _fail(f"not a regular file: {path}")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror}; check its owner and mode") from None
    return path


def _private_file(path: Path | None) -> Path | None:
    """Refuse a secret file that group or others can reach, or an empty one.

    A master password lets its holder log in as every user on the backend; a file
    mode of 0644 hands it to every local account. The file is not read here (rule 4).
    """
    if path is None:
        return None
    _readable_file(path)
    try:
        check_secret_file(path)
    except (SecretFileError, OSError) as exc:
        raise _fail(str(exc)) from None
    return path


ResolvedPath = Annotated[Path, BeforeValidator(_resolve)]
OptionalPath = Annotated[Path | None, BeforeValidator(_resolve_optional)]
ReadableFile = Annotated[Path, BeforeValidator(_resolve), AfterValidator(_readable_file)]
OptionalReadableFile = Annotated[
    Path | None, BeforeValidator(_resolve_optional), AfterValidator(_readable_file)
]
PrivateFile = Annotated[
    Path | None, BeforeValidator(_resolve_optional), AfterValidator(_private_file)
]


# ---------------------------------------------------------------------------
# Other value types


def _network(value: Any) -> IPv4Network | IPv6Network:
    if not isinstance(value, str):
        raise _fail(f"must be a CIDR string like '10.0.0.0/8', got {_show(value)}")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(value, strict=False)
            raise _fail(f"{value!r} has host bits set; did you mean '{fixed}'?") from None
        raise _fail(
            f"invalid network {value!r}; write CIDR like '10.0.0.0/8' or '2001:db8::/32'"
        ) from None


Network = Annotated[IPv4Network | IPv6Network, BeforeValidator(_network)]


def _redis_url(value: Any) -> str:
    # Never echo the value: a Redis URL may carry a password.
    if not isinstance(value, str):
        raise _fail("must be a string: '' (in-process state) or a redis:// or rediss:// URL")
    if value == "":
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss"):
        raise _fail(
            f"must start with redis:// or rediss://, got scheme {parts.scheme!r}; "
            "use '' for in-process state"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _fail("invalid port in the Redis URL") from None
    if not parts.hostname:
        raise _fail("the Redis URL has no host; write e.g. 'redis://127.0.0.1:6379/0'")
    return value


#: sslmode values libpq knows; anything else is a typo that would fail at the first login.
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _postgres_url(value: Any) -> str:
    # Never echo the value: a PostgreSQL URL may carry a password.
    if not isinstance(value, str):
        raise _fail("must be a string: '' (the SQLite file at store.path) or a "
                    "postgresql:// URL")
    if value == "":
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres"):
        raise _fail(
            f"must start with postgresql://, got scheme {parts.scheme!r}; use '' for the "
            "SQLite file at store.path"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _fail("invalid port in the PostgreSQL URL") from None
    if not parts.path.strip("/"):
        raise _fail("the PostgreSQL URL names no database; write e.g. "
                    "'postgresql://gateway@db.example.org/gateway'")
    for key, val in parse_qsl(parts.query, keep_blank_values=True):
        if key == "sslmode" and val not in _SSLMODES:
            raise _fail(f"sslmode {val!r} is not one of {', '.join(_SSLMODES)}")
        if key == "password":
            raise _fail("put the password in store.password_file, not in the URL")
    return value


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _separator(value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(f"must be a string, got {_show(value)}")
    if any(c.isspace() or c in '"\\' or not c.isprintable() for c in value):
        raise _fail(
            f"must not contain spaces, quotes, backslashes or control characters, got {value!r}"
        )
    return value


def _login_name(value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(f"must be a string, got {_show(value)}")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise _fail("must not contain spaces or control characters")
    return value


def _public_url(value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(f"must be a string like 'https://mail.example.org', got {_show(value)}")
    if value == "":
        return value
    # It is shown in IMAP responses (a new device's ALERT), which carry ASCII text only.
    if not value.isascii() or any(c.isspace() or not c.isprintable() for c in value):
        raise _fail(f"must be ASCII without spaces (an international host name in its "
                    f"xn-- form), got {value!r}")
    parts = urlsplit(value)
    if parts.scheme != "https":
        raise _fail(f"must start with https:// (the portal is HTTPS only), got {value!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _fail(f"invalid port in {value!r}") from None
    if not parts.hostname:
        raise _fail(f"no host in {value!r}; write e.g. 'https://mail.example.org'")
    if parts.username is not None or parts.password is not None:
        raise _fail("must not contain a user name or password")
    if parts.query or parts.fragment:
        raise _fail(f"must not have a query or fragment, got {value!r}")
    return value


def _totp_issuer(value: Any) -> str:
    """The issuer name authenticator apps show next to the account (otpauth ``issuer``)."""
    if not isinstance(value, str):
        raise _fail(f"must be a name in quotes, e.g. 'Example Mail', got {_show(value)}")
    if not value.strip() or len(value) > 64:
        raise _fail(f"must be 1 to 64 characters, e.g. 'Example Mail', got {value!r}")
    if ":" in value or not value.isprintable():
        raise _fail(f"must not contain ':' (it separates issuer and account in the "
                    f"authenticator app) or control characters, got {value!r}")
    return value


def _admin_name(value: Any) -> str:
    """A portal admin: a login name, or ``@group`` for every member of a group."""
    if not isinstance(value, str):
        raise _fail(f"must be a user name or '@group' in quotes, got {_show(value)}")
    name = value[1:] if value.startswith("@") else value
    if not name:
        raise _fail(f"empty {'group' if value else 'user'} name; write e.g. 'alice' or '@admins'")
    if any(c.isspace() or not c.isprintable() for c in name) or name.startswith("@"):
        raise _fail(f"{value!r}: a name must not contain spaces, control characters or a "
                    "second '@' at the start")
    return value


# ---------------------------------------------------------------------------
# Sections

_FROZEN = ConfigDict(strict=True, extra="forbid", frozen=True)


class TLSConfig(BaseModel):
    """Client-facing TLS. Both files are opened once at load time to prove they are readable."""

    model_config = _FROZEN
    cert: ReadableFile
    key: ReadableFile
    min_version: Annotated[Literal["1.2", "1.3"], _one_of("1.2", "1.3")] = "1.2"


class ListenerConfig(_HasAddress, BaseModel):
    """One listening socket. ``implicit-tls`` is port 993 style; ``starttls`` is 143 style."""

    model_config = _FROZEN
    address: Address
    mode: Annotated[Literal["implicit-tls", "starttls"], _one_of("implicit-tls", "starttls")] = (
        "implicit-tls"
    )


class BackendConfig(_HasAddress, BaseModel):
    """The IMAP server behind the gateway (Dovecot) and how the gateway logs in to it."""

    model_config = _FROZEN
    address: Address
    tls: Annotated[
        Literal["none", "starttls", "implicit"], _one_of("none", "starttls", "implicit")
    ] = "none"
    ca_file: OptionalReadableFile = None
    client_ip: Annotated[Literal["id", "proxy-v2", "none"], _one_of("id", "proxy-v2", "none")] = (
        "id"
    )
    connect_timeout: Duration = 5.0
    login_timeout: Duration = 15.0
    master_user: Annotated[str, BeforeValidator(_login_name)] = ""
    # Only the path: the password itself is read by the backend module when it logs in.
    master_password_file: PrivateFile = None
    master_login: Annotated[Literal["sasl", "separator"], _one_of("sasl", "separator")] = "sasl"
    master_separator: Annotated[str, BeforeValidator(_separator)] = "*"


def _default_workers() -> int:
    """The CPUs this process may run on (its affinity mask, which a container or
    ``taskset`` narrows), not every CPU of the host."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class ServerConfig(BaseModel):
    """The process model: how many worker processes, and how long a SIGTERM drain may take.

    ``workers = 1`` is one process and no supervisor. ``workers = N > 1``: a supervising
    process binds every address and starts N workers that accept on the same addresses
    (SO_REUSEPORT); see ``gateway.proxy.supervisor``.
    """

    model_config = _FROZEN
    workers: int = Field(default_factory=_default_workers, ge=1, le=256)
    # SIGTERM: stop accepting, BYE to every session (logged-in ones after their current
    # response); sessions still open after this long are closed and the process exits.
    drain_timeout: Duration = 10.0


class LimitsConfig(BaseModel):
    """Pre-auth bounds, connection caps and the failure limiter."""

    model_config = _FROZEN
    max_line: int = Field(8192, ge=1024)
    max_preauth_literal: int = Field(8192, ge=1)
    max_bad_commands: int = Field(5, ge=1)
    preauth_timeout: Duration = 60.0
    max_connections_per_ip: int = Field(20, ge=1)
    max_connections: int = Field(10000, ge=1)
    tls_handshake_timeout: Duration = 10.0
    # RFC 9051 6.1.1 / RFC 3501 5.4: an autologout timer must be at least 30 minutes.
    # Not enforced, so tests can use short values; the default complies.
    idle_timeout: Duration = 1800.0
    # Every failed login is answered no sooner than this after the login command, so
    # the answer's timing does not tell an unknown user from a wrong password.
    auth_failure_delay: DurationOrZero = 0.5
    fail_window: Duration = 900.0
    ip_fail_threshold: int = Field(10, ge=1)
    subnet_fail_threshold: int = Field(30, ge=1)
    user_fail_threshold: int = Field(20, ge=1)
    user_ip_fail_threshold: int = Field(5, ge=1)
    # Distinct networks (subnets) not familiar to a user that tried the user's password
    # within fail_window: from this many on, password-only logins from unfamiliar networks
    # are refused (a second factor still passes). Counted when the login is asked, so a
    # brute force spread over many networks is stopped however many attempts are in flight.
    user_fail_networks: int = Field(5, ge=2)
    subnet_v4_prefix: int = Field(24, ge=1, le=32)
    subnet_v6_prefix: int = Field(64, ge=1, le=128)
    tarpit_base: DurationOrZero = 1.0
    tarpit_max: DurationOrZero = 10.0
    ban_ttl: Duration = 900.0
    ban_ttl_max: Duration = 86400.0
    allow_networks: tuple[Network, ...] = Field((), strict=False)
    max_connection_rate_per_ip: int = Field(30, ge=1)
    # Smart lockout: a successful login makes the user's subnet "familiar" this long; the
    # per-user thresholds never block logins from a familiar subnet.
    familiar_ttl: Duration = 30 * 86400.0
    # Bans within this time count as repeat offences (each doubles the next ban's length).
    offence_memory: Duration = 7 * 86400.0


class StateConfig(BaseModel):
    """Shared limiter/ban state: in-process ("") or Redis."""

    model_config = _FROZEN
    # repr=False: the URL may contain a password (redis://:secret@host).
    redis: Annotated[str, BeforeValidator(_redis_url)] = Field("", repr=False)


class StoreConfig(BaseModel):
    """The credential store and the key that encrypts TOTP seeds.

    ``url = ""``: the SQLite file at ``path``; a ``postgresql://`` URL: that database,
    shared by every gateway instance that names it (they must share ``key_file`` too),
    with its password read from ``password_file``. Neither the SQLite file nor the key
    file must exist yet: the store creates them on first use.
    """

    model_config = _FROZEN
    path: ResolvedPath = Field("state/gateway.db", validate_default=True)
    key_file: ResolvedPath = Field("state/store.key", validate_default=True)
    # Shown by authenticator apps above the account name ("Example Mail: alice").
    totp_issuer: Annotated[str, BeforeValidator(_totp_issuer)] = "imap-gateway"
    # repr=False: a URL may carry a password (refused, but never echoed either).
    url: Annotated[str, BeforeValidator(_postgres_url)] = Field("", repr=False)
    password_file: PrivateFile = None


class PolicyConfig(BaseModel):
    model_config = _FROZEN
    dir: ResolvedPath = Field("policies", validate_default=True)


class AdminConfig(_HasAddress, BaseModel):
    """Local admin API; ``address = ""`` turns it off (then ``host``/``port`` are None)."""

    model_config = _FROZEN
    address: OptionalAddress = "127.0.0.1:9144"
    token_file: OptionalPath = None


class MetricsConfig(_HasAddress, BaseModel):
    """Prometheus endpoint; ``address = ""`` turns it off."""

    model_config = _FROZEN
    address: OptionalAddress = "127.0.0.1:9143"


class WebConfig(_HasAddress, BaseModel):
    """The web portal, HTTPS only; ``address = ""`` (the default) turns it off.

    ``cert``/``key`` default to ``[tls]``'s; ``admins`` are login names or ``@group``.
    """

    model_config = _FROZEN
    address: OptionalAddress = ""
    cert: OptionalReadableFile = None
    key: OptionalReadableFile = None
    public_url: Annotated[str, BeforeValidator(_public_url)] = ""
    enrollment: Annotated[Literal["invite", "password"], _one_of("invite", "password")] = (
        "invite"
    )
    admins: tuple[Annotated[str, BeforeValidator(_admin_name)], ...] = Field((), strict=False)
    session_ttl: Duration = 8 * 3600.0
    activity_retention: Duration = 90 * 86400.0


class AuthPolicyConfig(_HasAddress, BaseModel):
    """Dovecot's auth-policy server (``gateway.authpolicy``); ``address = ""`` (the
    default) turns it off.

    ``token_file``: the secret Dovecot sends in ``auth_policy_server_api_header``; without
    it the endpoint must listen on loopback (anyone who can reach it can report failures,
    and so ban addresses). ``timeout``: the longest a request waits for the limiter before
    it is answered "allow". ``gateway_networks``: where the gateway's own backend
    connections come from; Dovecot's IMAP logins with ``real_remote`` there are the
    gateway's relays, already counted by the gateway.
    """

    model_config = _FROZEN
    address: OptionalAddress = ""
    token_file: PrivateFile = None
    timeout: Duration = 1.0
    gateway_networks: tuple[Network, ...] = Field(
        ("127.0.0.1/32", "::1/128"), strict=False, validate_default=True)


class LoggingConfig(BaseModel):
    model_config = _FROZEN
    format: Annotated[Literal["json", "console"], _one_of("json", "console")] = "json"
    level: Annotated[
        Literal["debug", "info", "warning", "error"], _one_of("debug", "info", "warning", "error")
    ] = "info"
    file: OptionalPath = None  # None: stderr


class AnomalyConfig(BaseModel):
    """Thresholds of the anomaly detectors: counts within ``window``."""

    model_config = _FROZEN
    window: Duration = 600.0
    spray_distinct_users: int = Field(20, ge=1)
    stuffing_distinct_ips: int = Field(20, ge=1)
    stuffing_distinct_users: int = Field(20, ge=1)
    stuffing_failure_ratio: float = Field(0.8, gt=0, le=1)
    distributed_brute_force_ips: int = Field(10, ge=1)
    # One password (a keyed fingerprint, never the password) tried against this many
    # accounts from networks not familiar to them within spray_password_window is a spray,
    # from however many sources: that password is then refused from unfamiliar networks.
    spray_password_users: int = Field(5, ge=2)
    spray_password_window: Duration = 3600.0
    # Distinct accounts without any familiar network (never seen logging in: unknown or
    # dormant) failing from anywhere within window: credential stuffing over many sources.
    stuffing_unknown_users: int = Field(30, ge=2)
    high_volume_fetch_bytes: int = Field(2147483648, ge=1)
    mass_delete_messages: int = Field(500, ge=1)
    # What a password spray from one source does: "ban" it, or only "log" the anomaly.
    spray_action: Annotated[Literal["ban", "log"], _one_of("ban", "log")] = "ban"


def _https_url(value: Any) -> str:
    """An https:// URL or "" (off / not set): identity provider endpoints."""
    if not isinstance(value, str):
        raise _fail(f"must be a string like 'https://idp.example.org/realms/mail', got {_show(value)}")
    if value == "":
        return value
    if any(c.isspace() or not c.isprintable() for c in value):
        raise _fail(f"must not contain spaces or control characters, got {value!r}")
    parts = urlsplit(value)
    if parts.scheme != "https":
        # Keys and token checks fetched over plain HTTP could be swapped by anyone on
        # the path, which would let them mint tokens for every user.
        raise _fail(f"must start with https:// (keys are only fetched over TLS), got {value!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _fail(f"invalid port in {value!r}") from None
    if not parts.hostname:
        raise _fail(f"no host in {value!r}")
    if parts.username is not None or parts.password is not None:
        raise _fail("must not contain a user name or password")
    return value


def _claim_name(value: Any) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise _fail(f"must be a claim name without spaces, e.g. 'preferred_username', "
                    f"got {_show(value)}")
    return value


class OAuthConfig(BaseModel):
    """OAuth 2.0 logins (AUTHENTICATE OAUTHBEARER / XOAUTH2); ``issuer = ""`` turns them off.

    Tokens are JWTs checked locally against the issuer's keys (``jwks_url``, by default
    from the issuer's discovery document, or ``jwks_file``), or opaque tokens checked
    with the provider's RFC 7662 ``introspection_url`` as ``client_id`` with the secret
    in ``client_secret_file``. The Dovecot login then goes through ``[backend]
    master_user``.
    """

    model_config = _FROZEN
    issuer: Annotated[str, BeforeValidator(_https_url)] = ""
    audience: str = ""
    jwks_url: Annotated[str, BeforeValidator(_https_url)] = ""
    jwks_file: OptionalReadableFile = None
    introspection_url: Annotated[str, BeforeValidator(_https_url)] = ""
    client_id: str = ""
    client_secret_file: PrivateFile = None
    username_claim: Annotated[str, BeforeValidator(_claim_name)] = "preferred_username"
    mfa_claims: tuple[Annotated[str, BeforeValidator(_claim_name)], ...] = Field(
        ("mfa", "otp", "hwk"), strict=False)
    # A scope every token must carry ("" = none required), e.g. "email" or "imap".
    required_scope: str = ""
    # Clock skew allowed on exp/nbf/iat between the provider and the gateway.
    leeway: DurationOrZero = 60.0
    # An unknown key id refetches the key set at most this often (a flood of made-up
    # kids must not turn the gateway into a load generator against the provider).
    jwks_refetch_interval: DurationOrZero = 60.0
    # Known keys are refreshed this often; a failed refresh keeps the cached keys.
    jwks_cache_ttl: Duration = 3600.0
    # Deadline of one request to the provider (discovery, JWKS, introspection).
    http_timeout: Duration = 10.0
    # CA bundle for the provider's HTTPS certificate ("" = the system's).
    ca_file: OptionalReadableFile = None
    # The provider's name on the portal's "Sign in with ..." button ("" = its host name).
    provider_name: str = ""

    @property
    def portal_sign_in(self) -> bool:
        """The portal offers "Sign in with <provider>" (OpenID Connect code + PKCE)."""
        return self.enabled and bool(self.client_id)

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)


def _at_least_one(listeners: tuple[ListenerConfig, ...]) -> tuple[ListenerConfig, ...]:
    # An AfterValidator rather than min_length: min_length also fires when one
    # listener is invalid, which would add a misleading second error.
    if not listeners:
        raise _fail("at least one [[listener]] table is required")
    return listeners


def _section() -> Any:
    # Validate the empty table with the load context, so default relative paths are
    # resolved against the config file's directory like written ones.
    return Field(default_factory=dict, validate_default=True)


class Config(BaseModel):
    """The whole gateway configuration, as loaded from ``source_path``."""

    model_config = _FROZEN
    source_path: Path
    tls: TLSConfig
    listeners: Annotated[tuple[ListenerConfig, ...], AfterValidator(_at_least_one)] = Field(
        alias="listener", strict=False
    )
    backend: BackendConfig
    server: ServerConfig = _section()
    limits: LimitsConfig = _section()
    state: StateConfig = _section()
    store: StoreConfig = _section()
    policy: PolicyConfig = _section()
    admin: AdminConfig = _section()
    metrics: MetricsConfig = _section()
    web: WebConfig = _section()
    logging: LoggingConfig = _section()
    anomaly: AnomalyConfig = _section()
    oauth: OAuthConfig = _section()
    auth_policy: AuthPolicyConfig = _section()

    def summary(self) -> dict[str, Any]:
        """A JSON-ready view for ``check-config --json``: every value, no secret.

        Durations are seconds, paths absolute strings, addresses with parsed
        host/port. The master password is never in a Config (only its path), and a
        password inside the Redis URL is replaced by ``***``.
        """
        out: dict[str, Any] = {"source_path": str(self.source_path)}
        for name in type(self).model_fields:
            if name == "source_path":
                continue
            value = getattr(self, name)
            if name == "listeners":
                out["listener"] = [_section_summary(item) for item in value]
            else:
                out[name] = _section_summary(value)
        if self.state.redis:
            out["state"]["redis"] = _redact_url(self.state.redis)
        if self.store.url:
            out["store"]["url"] = _redact_url(self.store.url)
        return out


def _section_summary(section: BaseModel) -> dict[str, Any]:
    data = section.model_dump(mode="json")
    if isinstance(section, _HasAddress):
        data["host"] = section.host
        data["port"] = section.port
    return data


# ---------------------------------------------------------------------------
# Loading


def load_config(path: str | Path) -> Config:
    """Read, parse and validate the TOML config at ``path``.

    Every failure (missing file, TOML syntax with line and column, unknown key, wrong
    type, bad value, missing TLS file, master password file open to others) raises
    ``ConfigError``; the caller keeps running on its previous Config if it has one.
    """
    file = Path(os.path.abspath(path))
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(file, None, "file not found") from None
    except IsADirectoryError:
        raise ConfigError(file, None, "is a directory, expected a TOML file") from None
    except OSError as exc:
        raise ConfigError(file, None, f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            file, None, f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, None, f"TOML syntax error: {exc}") from None
    return config_from_mapping(data, source_path=file)


def config_from_mapping(data: Mapping[str, Any], *, source_path: str | Path) -> Config:
    """Validate already-parsed TOML data as if it came from ``source_path``.

    Relative paths resolve against ``source_path``'s directory. Tests and the reload
    path use this; ``load_config`` is the usual entry point.
    """
    source = Path(os.path.abspath(source_path))
    base_dir = source.parent
    if "source_path" in data:
        raise ConfigError(source, "source_path", _unknown_key_message("source_path", Config))
    try:
        config = Config.model_validate(
            {**data, "source_path": source}, context={"base_dir": base_dir}
        )
    except ValidationError as exc:
        problems = tuple(_translate(err) for err in exc.errors())
        key, message = problems[0]
        raise ConfigError(source, key, message, problems=problems) from None
    problems = _cross_checks(config)
    if problems:
        key, message = problems[0]
        raise ConfigError(source, key, message, problems=problems)
    return config


def _cross_checks(config: Config) -> tuple[tuple[str, str], ...]:
    """Rules that involve two keys; each names the key the admin should change."""
    problems: list[tuple[str, str]] = []
    b, lim = config.backend, config.limits
    if b.master_user and b.master_password_file is None:
        problems.append(
            ("backend.master_password_file", "required when backend.master_user is set")
        )
    if b.master_password_file is not None and not b.master_user:
        problems.append(
            ("backend.master_user", "required when backend.master_password_file is set")
        )
    if config.store.password_file is not None and not config.store.url:
        problems.append(("store.url", "required when store.password_file is set (the "
                         "password is for the PostgreSQL database the URL names)"))
    if b.master_user and b.master_login == "separator" and not b.master_separator:
        problems.append(
            ("backend.master_separator", "must not be empty when master_login = 'separator'")
        )
    if b.ca_file is not None and b.tls == "none":
        problems.append(
            (
                "backend.ca_file",
                "has no effect with backend.tls = 'none'; set tls or remove ca_file",
            )
        )
    seen: dict[tuple[str | None, int | None], int] = {}
    for i, listener in enumerate(config.listeners):
        endpoint = (listener.host, listener.port)
        if endpoint in seen:
            problems.append(
                (f"listener[{i}].address", f"same address as listener[{seen[endpoint]}]")
            )
        seen.setdefault(endpoint, i)
    if lim.tarpit_base > lim.tarpit_max:
        problems.append(("limits.tarpit_base", "must not be longer than limits.tarpit_max"))
    if lim.ban_ttl > lim.ban_ttl_max:
        problems.append(("limits.ban_ttl", "must not be longer than limits.ban_ttl_max"))
    if lim.max_connections_per_ip > lim.max_connections:
        problems.append(
            ("limits.max_connections_per_ip", "must not be larger than limits.max_connections")
        )
    if config.admin.address and config.admin.address == config.metrics.address:
        problems.append(("admin.address", "same address as metrics.address; use another port"))
    problems += _web_checks(config)
    problems += _oauth_checks(config)
    problems += _auth_policy_checks(config)
    return tuple(problems)


def _web_checks(config: Config) -> list[tuple[str, str]]:
    web = config.web
    problems: list[tuple[str, str]] = []
    if web.cert is not None and web.key is None:
        problems.append(("web.key", "required when web.cert is set (or remove both to use [tls])"))
    if web.key is not None and web.cert is None:
        problems.append(("web.cert", "required when web.key is set (or remove both to use [tls])"))
    if web.address:
        endpoint = (web.host, web.port)
        taken = [("admin.address", config.admin), ("metrics.address", config.metrics)]
        taken += [(f"listener[{i}].address", lst) for i, lst in enumerate(config.listeners)]
        for key, other in taken:
            if other.address and (other.host, other.port) == endpoint:
                problems.append(("web.address", f"same address as {key}; use another port"))
    return problems


def _oauth_checks(config: Config) -> list[tuple[str, str]]:
    o = config.oauth
    if not o.issuer:
        set_keys = [k for k in ("audience", "jwks_url", "introspection_url", "client_id")
                    if getattr(o, k)]
        set_keys += [k for k in ("jwks_file", "client_secret_file") if getattr(o, k) is not None]
        return [(f"oauth.{k}", "has no effect while oauth.issuer is empty (OAuth logins are "
                 "off); set oauth.issuer or remove it") for k in set_keys]
    problems: list[tuple[str, str]] = []
    if not o.audience:
        problems.append(("oauth.audience", "required when oauth.issuer is set: the audience "
                         "(client id) the provider puts in tokens meant for this gateway"))
    if not config.backend.master_user:
        problems.append(("backend.master_user", "required when oauth.issuer is set: an OAuth "
                         "user has no Dovecot password, so the gateway logs in as the master user"))
    if o.jwks_url and o.jwks_file is not None:
        problems.append(("oauth.jwks_file", "set jwks_url or jwks_file, not both"))
    if o.introspection_url and not o.client_id:
        problems.append(("oauth.client_id", "required when oauth.introspection_url is set"))
    if o.introspection_url and o.client_secret_file is None:
        problems.append(("oauth.client_secret_file",
                         "required when oauth.introspection_url is set"))
    return problems


def _auth_policy_checks(config: Config) -> list[tuple[str, str]]:
    policy = config.auth_policy
    problems: list[tuple[str, str]] = []
    if not policy.address:
        return problems
    endpoint = (policy.host, policy.port)
    taken = [("admin.address", config.admin), ("metrics.address", config.metrics),
             ("web.address", config.web)]
    taken += [(f"listener[{i}].address", lst) for i, lst in enumerate(config.listeners)]
    for key, other in taken:
        if other.address and (other.host, other.port) == endpoint:
            problems.append(("auth_policy.address", f"same address as {key}; use another port"))
    if policy.token_file is None and not _is_loopback_host(policy.host):
        problems.append((
            "auth_policy.token_file",
            f"required when auth_policy.address ({policy.address!r}) is not a loopback "
            "address: whoever reaches the endpoint can report failed logins and so ban "
            "any address; create one with `openssl rand -hex 32 > FILE; chmod 600 FILE` and "
            "put the same value in Dovecot's auth_policy_server_api_header"))
    return problems


def _is_loopback_host(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


# ---------------------------------------------------------------------------
# Translating pydantic's errors into admin-facing ones

_SECTIONS: dict[str, type[BaseModel]] = {
    "tls": TLSConfig, "listener": ListenerConfig, "backend": BackendConfig,
    "server": ServerConfig,
    "limits": LimitsConfig, "state": StateConfig, "store": StoreConfig,
    "policy": PolicyConfig, "admin": AdminConfig, "metrics": MetricsConfig,
    "web": WebConfig, "logging": LoggingConfig, "anomaly": AnomalyConfig,
    "oauth": OAuthConfig,
    "auth_policy": AuthPolicyConfig,
}  # fmt: skip
_NO_ECHO = {("state", "redis"), ("store", "url")}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _dotted(loc: tuple[int | str, ...]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _model_for(loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The model that owns the last key of ``loc`` (for "did you mean")."""
    names = [p for p in loc[:-1] if isinstance(p, str)]
    return _SECTIONS.get(names[0], Config) if names else Config


def _keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items() if n != "source_path"]


def _unknown_key_message(name: str, model: type[BaseModel], value: Any = None) -> str:
    what = "section" if isinstance(value, dict | list) and model is Config else "key"
    close = difflib.get_close_matches(name, _keys(model), n=1, cutoff=0.75)
    if close:
        hint = f"[{close[0]}]" if what == "section" else f"'{close[0]}'"
        return f"unknown {what}; did you mean {hint}?"
    # A key that belongs in another section is a common slip: say where it goes.
    elsewhere = {
        f"{section}.{key}": key
        for section, sub in _SECTIONS.items()
        if sub is not model
        for key in _keys(sub)
    }
    # Only a key that exists there as written: a fuzzy match across sections misleads
    # (a [backend] "password" is not the store's password_file).
    close = [name] if name in elsewhere.values() else []
    if close:
        home = next(k for k, v in elsewhere.items() if v == close[0])
        return f"unknown {what}; did you mean {home}?"
    return f"unknown {what}; known keys here: " + ", ".join(_keys(model))


def _translate(err: Mapping[str, Any]) -> tuple[str, str]:
    loc = tuple(err["loc"])
    key = _dotted(loc)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    shown = (
        "" if tuple(p for p in loc if isinstance(p, str)) in _NO_ECHO else f", got {_show(value)}"
    )
    if kind == "gateway_config":
        return key, err["msg"]
    if kind == "extra_forbidden":
        return key, _unknown_key_message(str(loc[-1]), _model_for(loc), value)
    if kind == "missing":
        if len(loc) == 1 and loc[0] == "listener":
            return key, "at least one [[listener]] table is required"
        if len(loc) == 1 and loc[0] in _SECTIONS:
            return key, f"required section [{loc[0]}] is missing"
        return key, "required key is missing"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return key, f"must be a table (a [{key}] section){shown}"
    if kind in ("tuple_type", "list_type"):
        if loc == ("listener",):
            return key, "must be an array of tables: write each one as [[listener]]"
        return key, f'must be a list, e.g. ["10.0.0.0/8"]{shown}'
    if kind == "int_type":
        return key, f"must be an integer{shown}"
    if kind == "float_type":
        return key, f"must be a number{shown}"
    if kind == "string_type":
        return key, f"must be a string in quotes{shown}"
    if kind == "greater_than_equal":
        return key, f"must be at least {ctx['ge']}{shown}"
    if kind == "greater_than":
        return key, f"must be greater than {ctx['gt']}{shown}"
    if kind == "less_than_equal":
        return key, f"must be at most {ctx['le']}{shown}"
    return key, f"{err['msg']}{shown}"
