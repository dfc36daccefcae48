"""The login step's half of device approval (gateway.proxy.login), with a scripted backend
on trio's mock clock: the password check, what is noted, the ALERT, and the deadline that
keeps a backend which delays its refusals (Dovecot's auth_failure_delay, 2 s by default)
from making a wrong password answer later than a right one.

The real gateway, Dovecot and imaplib: tests/e2e/test_mfa_device_approval.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from gateway.auth.approval import alert_text
from gateway.config import config_from_mapping
from gateway.imap.preauth import LoginRequest
from gateway.observability.logs import get_logger
from gateway.policy import PolicyReloader, load_policy
from gateway.proxy.backend import BackendUnavailable
from gateway.proxy.login import Authenticator
from gateway.proxy.values import BackendLoginResult, ClientEndpoint, LoginClient, LoginOutcome
from gateway.store import open_store
from gateway.store.base import DeviceApproval

PASSWORD = "alicepass"
IP = "203.0.113.9"
CLIENT = "iPhone Mail"
URL = "https://mail-gw.example.org:8443"
DELAY = 0.5  # [limits] auth_failure_delay
REMEMBER = 14 * 86400.0

POLICY = """\
[[rule]]
name = "second factor, devices remembered"
users = ["*"]
action = "allow"
mfa = "strong"
remember_device = "14d"
"""


@dataclass
class FakeBackend:
    """Accepts PASSWORD for alice after ``ok_delay``; refuses anything else after
    ``fail_delay`` (a backend's own failure delay)."""

    ok_delay: float = 0.01
    fail_delay: float = 0.01
    code: str = "AUTHENTICATIONFAILED"
    name: str = "fake"
    stream: Any = None
    capabilities: list[str] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    closed: bool = False

    def take_buffered(self) -> bytes:
        return b""

    async def login_plain(self, *, authzid: str, authcid: str, password: str,
                          timeout: float) -> BackendLoginResult:
        self.logins.append(authcid)
        if authcid == "alice" and password == PASSWORD:
            await trio.sleep(self.ok_delay)
            return BackendLoginResult(ok=True, line=b"g OK Logged in\r\n")
        await trio.sleep(self.fail_delay)
        return BackendLoginResult(ok=False, line=f"g NO [{self.code}] no\r\n".encode(),
                                  code=self.code)

    async def fetch_capabilities(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        self.closed = True


class Services:
    def __init__(self, tmp_path: Path, certs: Any, *, web: bool = True,
                 public_url: str = URL) -> None:
        (tmp_path / "policies").mkdir(exist_ok=True)
        (tmp_path / "policies" / "00.toml").write_text(POLICY)
        data: dict[str, Any] = {
            "tls": {"cert": str(certs.cert_path), "key": str(certs.key_path)},
            "listener": [{"address": "127.0.0.1:9993", "mode": "implicit-tls"}],
            "backend": {"address": "127.0.0.1:143", "client_ip": "id"},
            "limits": {"auth_failure_delay": f"{int(DELAY * 1000)}ms"},
            "policy": {"dir": str(tmp_path / "policies")},
        }
        if web:
            data["web"] = {"address": "127.0.0.1:8443", "public_url": public_url}
        self.config = config_from_mapping(data, source_path=tmp_path / "gateway.toml")
        self.policy = PolicyReloader(tmp_path / "policies",
                                     load_policy(tmp_path / "policies"))
        self.store = open_store(tmp_path / "g.db", tmp_path / "k", create_key=True)
        self.master_password: str | None = None
        self.backend = FakeBackend()
        self.backends: list[FakeBackend] = []
        self.unavailable = False

    async def connect_backend(self, endpoint: ClientEndpoint) -> FakeBackend:
        if self.unavailable:
            raise BackendUnavailable("connect", "refused")
        backend = FakeBackend(self.backend.ok_delay, self.backend.fail_delay, self.backend.code)
        self.backends.append(backend)
        return backend


@pytest.fixture
def services(tmp_path: Path, certs: Any) -> Services:
    s = Services(tmp_path, certs)
    yield s
    s.store.close()


def attempt(services: Services, secret: str, *, user: str = "alice", ip: str = IP,
            client_name: str | None = CLIENT, auth: Authenticator | None = None,
            ) -> tuple[LoginOutcome, float]:
    """One login decided on the mock clock: the outcome and how long it took."""
    auth = auth or Authenticator(services)
    result: list[tuple[LoginOutcome, float]] = []

    async def main() -> None:
        endpoint = ClientEndpoint(ip=ip, port=50000, local_ip="127.0.0.1", local_port=993,
                                  session_id="s1", tls_version="TLSv1.3")
        started = trio.current_time()
        client = LoginClient(endpoint, client_name, get_logger(), started=started)
        outcome = await auth.login(client, LoginRequest(b"a", "LOGIN", user, secret))
        result.append((outcome, trio.current_time() - started))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return result[0]


def test_right_password_from_a_new_device_is_noted_and_refused_with_the_alert(
    services: Services,
) -> None:
    with capture_logs() as logs:
        outcome, _ = attempt(services, PASSWORD)
    assert outcome.backend is None and not outcome.unavailable
    assert outcome.alert == alert_text(URL)
    assert outcome.reason == "device_not_approved"
    [device] = services.store.list_pending_devices("alice")
    assert (device.address, device.client_name, device.state) == (
        IP, CLIENT, DeviceApproval.PENDING)
    # the backend session the check opened is closed again
    [backend] = services.backends
    assert backend.logins == ["alice"] and backend.closed
    assert any(e["event"] == "device.approval_requested" and e["device_id"] == device.id
               for e in logs)
    assert PASSWORD not in repr(logs)


def test_wrong_password_gets_the_same_alert_and_notes_nothing(services: Services) -> None:
    outcome, _ = attempt(services, "wrong")
    assert outcome.alert == alert_text(URL) and outcome.reason == "backend_rejected"
    assert services.store.list_pending_devices("alice") == []
    assert services.backends[0].closed
    # asked again, the backend is not: the refusal is remembered for a while
    auth = Authenticator(services)
    attempt(services, "wrong", auth=auth)
    again, _ = attempt(services, "wrong", auth=auth)
    assert again.alert == alert_text(URL) and again.reason == "password_known_bad"
    assert len(services.backends) == 2
    # an unknown user, too
    unknown, _ = attempt(services, "whatever", user="nosuchuser")
    assert unknown.alert == alert_text(URL)
    assert services.store.list_pending_devices("nosuchuser") == []


def test_a_backend_that_delays_refusals_cannot_make_a_wrong_password_answer_later(
    services: Services,
) -> None:
    services.backend.fail_delay = 2.0  # Dovecot's default auth_failure_delay
    right, right_took = attempt(services, PASSWORD)
    wrong, wrong_took = attempt(services, "wrong")
    assert right.alert == wrong.alert == alert_text(URL)
    # the check is cut short before the uniform delay is over; the session then answers
    # both at started + DELAY (+ the same tarpit)
    assert right_took < DELAY and wrong_took < DELAY
    assert wrong_took == pytest.approx(DELAY - 0.05)
    assert wrong.reason == "approval_check_unfinished"
    assert [d.client_name for d in services.store.list_pending_devices("alice")] == [CLIENT]
    assert all(b.closed for b in services.backends)


def test_an_approved_device_logs_in_and_is_remembered(services: Services) -> None:
    attempt(services, PASSWORD)
    [noted] = services.store.list_pending_devices("alice")
    services.store.approve_device("alice", noted.id, None, noted.last_seen)
    # a wrong password from the approved device is an ordinary failure; the approval stays
    wrong, _ = attempt(services, "wrong")
    assert wrong.alert is None and wrong.reason == "backend_rejected"
    assert services.store.list_pending_devices("alice") != []
    with capture_logs() as logs:
        outcome, _ = attempt(services, PASSWORD, ip="203.0.113.77")
    assert outcome.backend is not None and outcome.factor == "remembered-device"
    [device] = services.store.list_devices("alice")
    assert (device.network, device.client_name) == ("203.0.113.0/24", CLIENT)
    assert device.expires - device.created == pytest.approx(REMEMBER)
    assert services.store.list_pending_devices("alice") == []  # the approval is used up
    assert any(e["event"] == "device.approval_used" for e in logs)
    # from now on the device is remembered
    again, _ = attempt(services, PASSWORD)
    assert again.backend is not None and again.factor == "remembered-device"


def test_an_unreachable_backend_is_unavailable_not_an_alert(services: Services) -> None:
    services.unavailable = True
    outcome, _ = attempt(services, PASSWORD)
    assert outcome.unavailable and outcome.alert is None
    services.unavailable = False
    services.backend.code = "UNAVAILABLE"
    outcome, _ = attempt(services, "wrong")
    assert outcome.unavailable and outcome.alert is None
    assert services.store.list_pending_devices("alice") == []


def test_a_code_or_a_deny_rule_is_answered_as_before(services: Services) -> None:
    outcome, _ = attempt(services, PASSWORD + "$123456")
    assert outcome.alert is None and outcome.reason == "totp_not_enrolled"
    assert services.backends == []


def test_without_the_web_portal_nothing_changes(tmp_path: Path, certs: Any) -> None:
    services = Services(tmp_path, certs, web=False)
    try:
        outcome, _ = attempt(services, PASSWORD)
        assert outcome.alert is None and outcome.reason == "totp_not_enrolled"
        assert services.backends == [] and services.store.list_pending_devices("alice") == []
    finally:
        services.store.close()


def test_without_a_public_url_the_portal_is_named(tmp_path: Path, certs: Any) -> None:
    services = Services(tmp_path, certs, public_url="")
    try:
        outcome, _ = attempt(services, PASSWORD)
        assert outcome.alert == alert_text("")
    finally:
        services.store.close()
