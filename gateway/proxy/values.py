"""Plain values and typed seams of the I/O shell: what its modules hand each other.

Rules of this module: it imports no other module of ``gateway.proxy`` (they all import
it), and it holds no behaviour -- dataclasses, and Protocols that say what a piece of the
shell needs from another (the session from the gateway's services, the login step from
the session), so no module needs another's concrete class and no import goes in a circle.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.imap.preauth import LoginRequest
    from gateway.imap.responses import ServerResponse
    from gateway.limits.limiter import Limiter
    from gateway.policy import PolicyReloader
    from gateway.store.base import CredentialStore, LoginRecord

#: A structlog logger with the session's fields bound (``gateway.observability.logs``).
Log = Any


@dataclass(frozen=True, slots=True)
class ClientEndpoint:
    """Who the client is on the network, and what the backend is told about it (ID or
    PROXY v2)."""

    ip: str
    port: int
    local_ip: str
    local_port: int
    session_id: str
    tls_version: str | None


@dataclass(frozen=True, slots=True)
class LoginClient:
    """What the login step may know about the client asking to log in."""

    endpoint: ClientEndpoint
    #: The ``name`` the client sent in IMAP ID (remembered devices key on it), or None.
    client_name: str | None
    log: Log = field(repr=False, compare=False)
    #: ``trio.current_time()`` when the session began deciding this login (the uniform
    #: failure delay counts from it); None: when the login step is called.
    started: float | None = None
    #: The limiter's reason when the user is locked out of this network in a way a
    #: second factor passes (``LoginGate.second_factor_passes``): a password-only login
    #: is then refused with this reason, without asking the backend. None: no lockout.
    lockout: str | None = None


@dataclass(slots=True)
class BackendLoginResult:
    """The backend's answer to the gateway's AUTHENTICATE."""

    ok: bool
    #: The backend's tagged response line (with CRLF), tag included.
    line: bytes
    #: First word of the ``[CODE]``, e.g. "AUTHENTICATIONFAILED", "UNAVAILABLE", or None.
    code: str | None = None
    untagged: list[ServerResponse] = field(default_factory=list)


class BackendLink(Protocol):
    """A backend connection, as the login step, the session and the relay use it."""

    name: str
    stream: trio.abc.Stream
    #: The backend's pre-login capability list (emptied once the session is logged in).
    capabilities: list[str]

    def take_buffered(self) -> bytes: ...

    async def login_plain(
        self, *, authzid: str, authcid: str, password: str, timeout: float
    ) -> BackendLoginResult: ...

    async def fetch_capabilities(self) -> list[str]: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class LoginOutcome:
    """What the login step decided; a success has ``backend`` set."""

    backend: BackendLink | None = None
    user: str | None = None
    ok_line: bytes = b""
    factor: str = "none"
    reason: str = ""
    unavailable: bool = False
    scopes: tuple[str, ...] = ("full",)
    app_password_id: int | None = None
    app_password_label: str | None = None
    #: False when the failure must not feed the limiter (e.g. the source is banned already).
    counted: bool = True
    #: A failure answered with ``NO [ALERT] <alert>`` instead of the uniform
    #: AUTHENTICATIONFAILED (a device waiting for approval); the same text whatever failed.
    alert: str | None = None


@dataclass(frozen=True, slots=True)
class CapabilityView:
    """A backend's post-login capabilities and what follows from them for the relay."""

    #: The list the client sees (no STARTTLS, COMPRESS, AUTH=..., unknown extensions).
    line: bytes
    #: Commands the relay forwards (the backend announced them).
    known_commands: frozenset[str]


class TLSContextSource(Protocol):
    """The current server TLS context (it changes on SIGHUP)."""

    @property
    def context(self) -> ssl.SSLContext: ...


class LoginServices(Protocol):
    """What the login step needs from the running gateway."""

    config: Config

    @property
    def policy(self) -> PolicyReloader: ...

    @property
    def store(self) -> CredentialStore: ...

    @property
    def master_password(self) -> str | None: ...

    async def connect_backend(self, endpoint: ClientEndpoint) -> BackendLink: ...


class Authenticating(Protocol):
    async def login(self, client: LoginClient, req: LoginRequest) -> LoginOutcome: ...


class SessionServices(LoginServices, Protocol):
    """What a client session needs from the running gateway.

    ``tls`` and ``authenticator`` are read-only here, so the gateway may hold a concrete
    class (a plain attribute of a Protocol would have to be exactly the Protocol's type).
    """

    limiter: Limiter

    @property
    def tls(self) -> TLSContextSource: ...

    @property
    def authenticator(self) -> Authenticating: ...

    def attempt_fingerprint(self, user: str, password: str) -> bytes: ...

    def spray_fingerprint(self, password: str) -> bytes: ...

    def record_login(self, record: LoginRecord) -> None: ...
