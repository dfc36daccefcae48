"""Every IMAP login attempt lands in the store's login history (what the portal will show a
user): successes and each kind of refusal, with address, IMAP ID name, factor and the
internal reason, and never a password or code."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.store import LoginRecord, open_store
from tests.support.gatewayproc import GatewayProcess
from tests.support.imap import LineClient
from tests.support.mfa import (
    MFA_LIMITS,
    assert_denied,
    assert_ok,
    code_at,
    enroll_totp,
    login,
    step_now,
)

pytestmark = pytest.mark.e2e

POLICY = """\
[[rule]]
name = "alice with totp"
users = ["alice"]
action = "allow"
mfa = "totp"
"""


def history(gw: GatewayProcess, user: str, count: int, timeout: float = 5.0) -> list[LoginRecord]:
    """The user's newest ``count`` history entries, read from the gateway's own database
    (as the portal will), once that many are there."""
    state = Path(gw.dir) / "state"
    deadline = time.monotonic() + timeout
    with open_store(state / "gateway.db", state / "store.key") as store:
        while True:
            entries = store.recent_logins(user)
            if len(entries) >= count or time.monotonic() >= deadline:
                return entries


def test_every_attempt_is_recorded_without_secrets(gateway) -> None:
    gw = gateway(policies={"10-totp.toml": POLICY}, limits=MFA_LIMITS)
    secret, step = enroll_totp(gw, "alice")
    code = code_at(secret, step + 1)
    assert_ok(login(gw, "alice", f"alicepass${code}", client_name="Thunderbird"), "totp")
    assert_denied(login(gw, "alice", f"alicepass${code}", source="127.0.0.2"), "totp_replay")
    fresh = code_at(secret, max(step + 2, step_now()))
    assert_denied(login(gw, "alice", f"wrongpass${fresh}", client_name="mbsync"),
                  "backend_rejected")
    assert_denied(login(gw, "alice", "alicepass"), "totp_required")
    plain = LineClient.plain(gw)
    try:
        answer = plain.command("a", 'LOGIN alice "alicepass"')[-1]
        assert answer.startswith(b"a NO [PRIVACYREQUIRED]"), answer
    finally:
        plain.close()

    entries = history(gw, "alice", 5)
    got = [(e.result, e.reason, e.factor, e.address, e.client_name, e.protocol)
           for e in reversed(entries)]
    assert got == [
        ("success", "ok", "totp", "127.0.0.1", "Thunderbird", "imap"),
        ("failure", "totp_replay", "none", "127.0.0.2", "", "imap"),
        ("failure", "backend_rejected", "none", "127.0.0.1", "mbsync", "imap"),
        ("failure", "totp_required", "none", "127.0.0.1", "", "imap"),
        ("failure", "plaintext", "none", "127.0.0.1", "", "imap"),
    ]
    times = [e.time for e in reversed(entries)]
    assert times == sorted(times) and time.time() - times[0] < 120
    text = repr(entries)
    db = b"".join(p.read_bytes() for p in (Path(gw.dir) / "state").iterdir()
                  if p.name.startswith("gateway.db"))
    for secret_text in ("alicepass", "wrongpass", code, fresh):
        assert secret_text not in text
        assert secret_text.encode() not in db
