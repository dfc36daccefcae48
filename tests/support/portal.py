"""The portal in-process, for ASGI tests: a real SQLite store, a real limiter (in-process
state), a real policy directory, and a stand-in for Dovecot that knows the passwords.

Only the backend is fake here: what a login to Dovecot looks like from the gateway is
the e2e tests' business (tests/e2e/test_web_portal_*.py); these tests are about what
the portal does with the answer.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp

from gateway.config import Config, config_from_mapping
from gateway.limits.limiter import Limiter
from gateway.limits.state import MemoryState
from gateway.policy import PolicyReloader, load_policy
from gateway.proxy.backend import BackendUnavailable
from gateway.proxy.values import BackendLoginResult, ClientEndpoint
from gateway.store import SqliteCredentialStore, open_store
from gateway.web.app import portal_app
from gateway.web.csrf import CSRF_FIELD, SESSION_COOKIE

from .asgi import AsgiClient

PORTAL = "https://portal.test"
SECRET = b"k" * 32
T0 = 1_750_000_020.0  # a TOTP step boundary (divisible by 30)

#: Everyone may log in; a rule that remembers devices for 14 days.
POLICY = """\
[[rule]]
name = "carol: no remembered devices"
users = ["carol"]
action = "allow"
mfa = "strong"

[[rule]]
name = "blocked"
users = ["mallory"]
action = "deny"

[[rule]]
name = "everyone"
action = "allow"
mfa = "strong"
remember_device = "14d"
"""

PASSWORDS = {"alice": "alicepass", "bob": "bobpass", "carol": "carolpass",
             "mallory": "mallorypass"}


class Clock:
    """Wall-clock seconds the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeBackend:
    """A backend connection whose login answers from ``passwords``."""

    name = "127.0.0.1:143"

    def __init__(self, services: PortalTestServices) -> None:
        self.services = services

    async def login_plain(self, *, authzid: str, authcid: str, password: str,
                          timeout: float) -> BackendLoginResult:
        self.services.backend_logins.append(authcid)
        if self.services.backend_answer is not None:
            return self.services.backend_answer
        if self.services.passwords.get(authcid) == password:
            return BackendLoginResult(ok=True, line=b"gw1 OK Logged in\r\n")
        return BackendLoginResult(ok=False, line=b"gw1 NO [AUTHENTICATIONFAILED] x\r\n",
                                  code="AUTHENTICATIONFAILED")

    async def aclose(self) -> None:
        self.services.backend_closed += 1


@dataclass
class PortalTestServices:
    """``PortalServices`` for tests (``GatewayContext`` in the gateway)."""

    config: Config
    store: SqliteCredentialStore
    policy: PolicyReloader
    limiter: Limiter
    passwords: dict[str, str] = field(default_factory=lambda: dict(PASSWORDS))
    endpoints: list[ClientEndpoint] = field(default_factory=list)
    backend_logins: list[str] = field(default_factory=list)
    backend_closed: int = 0
    backend_down: bool = False
    backend_answer: BackendLoginResult | None = None

    def attempt_fingerprint(self, user: str, password: str) -> bytes:
        return hmac.new(b"fp", f"{user}\0{password}".encode(), hashlib.sha256).digest()[:8]

    async def connect_backend(self, endpoint: ClientEndpoint) -> FakeBackend:
        self.endpoints.append(endpoint)
        if self.backend_down:
            raise BackendUnavailable("refused", "127.0.0.1:143: connection refused")
        return FakeBackend(self)


def make_services(tmp: Path, *, web: dict[str, Any] | None = None,
                  limits: dict[str, Any] | None = None,
                  policy: str = POLICY,
                  store: dict[str, Any] | None = None) -> PortalTestServices:
    """Services over a fresh store in ``tmp``; ``web``/``limits``/``store`` override config
    keys (the store's files stay under ``tmp/state``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("cert.pem", "key.pem"):
        (tmp / name).write_text("not read by these tests\n")
    (tmp / "policies").mkdir(exist_ok=True)
    (tmp / "policies" / "00-test.toml").write_text(policy)
    config = config_from_mapping({
        "tls": {"cert": "cert.pem", "key": "key.pem"},
        "listener": [{"address": "0.0.0.0:993", "mode": "implicit-tls"},
                     {"address": "0.0.0.0:143", "mode": "starttls"}],
        "backend": {"address": "127.0.0.1:143"},
        "web": {"address": "127.0.0.1:8443", "public_url": "https://mail.example.org:8443",
                "enrollment": "password", **(web or {})},
        "limits": {"auth_failure_delay": "0s", "tarpit_base": "0s", "tarpit_max": "0s",
                   **(limits or {})},
        "store": {**(store or {})},
    }, source_path=tmp / "gateway.toml")
    credentials = open_store(tmp / "state" / "gateway.db", tmp / "state" / "store.key",
                       create_key=True)
    reloader = PolicyReloader(tmp / "policies", load_policy(tmp / "policies"))
    limiter = Limiter(MemoryState(), config.limits, config.anomaly)
    return PortalTestServices(config=config, store=credentials, policy=reloader, limiter=limiter)


class PortalClient(AsgiClient):
    """An ``AsgiClient`` on the portal that reads forms the way a person would."""

    def __init__(self, services: PortalTestServices, clock: Callable[[], float],
                 client: tuple[str, int] = ("192.0.2.10", 50000)) -> None:
        super().__init__(portal_app(services, secret=SECRET, clock=clock), base_url=PORTAL,
                         client=client)
        self.services = services
        self.last_page = ""

    def page(self, path: str) -> Any:
        r = self.get(path)
        self.last_page = r.text
        return r

    def token(self, html: str | None = None) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', html or self.last_page)
        assert found, "no CSRF token on the page"
        return found.group(1)

    def submit(self, path: str, fields: dict[str, str], *, token: str | None = None) -> Any:
        """POST a form with the token of the last page seen (or ``token``)."""
        data = {CSRF_FIELD: token if token is not None else self.token(), **fields}
        r = self.post(path, data=data)
        if r.status_code != 303:
            self.last_page = r.text
        return r

    def follow(self, r: Any) -> Any:
        assert r.status_code == 303, (r.status_code, r.text[:300])
        return self.page(r.headers["location"])

    @property
    def session_cookie(self) -> str | None:
        return self.cookies.get(SESSION_COOKIE)

    def sign_in(self, user: str = "alice", password: str | None = None) -> Any:
        self.page("/")
        r = self.submit("/signin", {"username": user,
                                    "password": password or PASSWORDS[user]})
        return r


def totp_code(secret: str, now: float) -> str:
    return pyotp.TOTP(secret.replace(" ", "")).at(now)


def enroll_active(store: SqliteCredentialStore, user: str, now: float) -> str:
    """An active authenticator for ``user``, confirmed a step before ``now``; its key."""
    secret, _ = store.enroll(user, now - 60)
    assert store.verify_enrollment(user, pyotp.TOTP(secret).at(now - 60), now - 60) == "ok"
    return secret
