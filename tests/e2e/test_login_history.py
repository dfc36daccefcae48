"""Every IMAP login attempt lands in the store's login history (what the portal will show a
user): successes and each kind of refusal, with address, IMAP ID name, factor and the
internal reason, and never a password or code. Once per store backend (SQLite,
PostgreSQL)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.store import LoginRecord
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
from tests.support.stores import gateway_store

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
    deadline = time.monotonic() + timeout
    with gateway_store(gw.config_path) as store:
        while True:
            entries = store.recent_logins(user)
            if len(entries) >= count or time.monotonic() >= deadline:
                return entries


def test_every_attempt_is_recorded_without_secrets(gateway, store_section) -> None:
    gw = gateway(policies={"10-totp.toml": POLICY}, limits=MFA_LIMITS, store=store_section)
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
    db = dump_store(gw, store_section)
    for secret_text in ("alicepass", "wrongpass", code, fresh):
        assert secret_text not in text
        assert secret_text.encode() not in db


def dump_store(gw: GatewayProcess, store_section: dict[str, str]) -> bytes:
    """Every byte the gateway's store holds: its SQLite files, or every PostgreSQL row."""
    if not store_section:
        return b"".join(p.read_bytes() for p in (Path(gw.dir) / "state").iterdir()
                        if p.name.startswith("gateway.db"))
    import psycopg

    password = Path(store_section["password_file"]).read_text().strip()
    out = []
    with psycopg.connect(store_section["url"], password=password) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                out += [v if isinstance(v, bytes) else str(v).encode() for v in row]
    return b"\n".join(out)
