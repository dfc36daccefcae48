"""Several gateway processes sharing one credential store: a TOTP code used through one is
refused through another, a device remembered by one is remembered by all, one login
history; revoking an app password on one ends its sessions on the others. Both ways to
share: one PostgreSQL database (several hosts), and one SQLite file (several processes on
one host). And a PostgreSQL outage refuses new logins (uniform NO, logged, counted) while
logged-in sessions carry on, until the database is back, without restarting the gateway."""

from __future__ import annotations

import imaplib
import time

import pytest

from tests.support.attack import metrics_on
from tests.support.gatewayproc import GatewayProcess
from tests.support.mfa import (
    MFA_LIMITS,
    TOTP_STEP,
    admin,
    admin_json,
    assert_denied,
    assert_ok,
    code_at,
    enroll_totp,
    login,
    master_backend,
    step_now,
)
from tests.support.net import wait_until
from tests.support.scrape import sample_value, scrape
from tests.support.stores import BACKENDS, gateway_store, pg_store_section

pytestmark = pytest.mark.e2e

POLICY = """\
[[rule]]
name = "alice with totp, device remembered"
users = ["alice"]
action = "allow"
mfa = "strong"
remember_device = "14d"
"""


@pytest.fixture(params=BACKENDS)
def pair(request, gateway, tmp_path) -> tuple[GatewayProcess, GatewayProcess]:
    """Gateways A and B: separate processes, ports and dirs, one database and key file."""
    if request.param == "postgresql":
        section = pg_store_section(request.getfixturevalue("postgres"), tmp_path)
    else:
        section = {"path": str(tmp_path / "shared.db"),
                   "key_file": str(tmp_path / "shared-store.key")}
    kw = dict(policies={"10-alice.toml": POLICY}, limits=MFA_LIMITS,
              backend=master_backend(tmp_path), store=section)
    return gateway(**kw), gateway(**kw)


def fresh_code(secret: str, step: int) -> str:
    """A code newer than ``step`` that is valid now (the next step, or the current one)."""
    return code_at(secret, max(step + 1, step_now()))


def test_a_totp_code_used_on_one_instance_is_refused_on_another(pair) -> None:
    a, b = pair
    secret, step = enroll_totp(a, "alice")  # A's admin CLI writes the shared database
    code = fresh_code(secret, step)
    assert_ok(login(a, "alice", f"alicepass${code}", client_name="Thunderbird"), "totp")
    # another client through B with the same code: a replay, whichever instance it reaches
    assert_denied(login(b, "alice", f"alicepass${code}", source="127.0.0.2",
                        client_name="K-9 Mail"), "totp_replay")
    # the device A remembered is remembered by B (same /24, same ID name): no code needed
    assert_ok(login(b, "alice", "alicepass", client_name="Thunderbird"), "remembered-device")
    # forgotten through B's CLI: A asks for a code again
    admin(b, "devices", "forget", "alice", "--all")
    assert_denied(login(a, "alice", "alicepass", client_name="Thunderbird"), "totp_required")

    # one login history: attempts through both instances (each flushes its own, every second)
    with gateway_store(a.config_path) as store:
        def both_recorded():
            entries = store.recent_logins("alice")
            return len(entries) >= 4 and entries
        entries = wait_until(both_recorded, timeout=10, what="4 history entries")
    assert {e.reason for e in entries} >= {"ok", "totp_replay", "totp_required"}
    assert {e.client_name for e in entries} >= {"Thunderbird", "K-9 Mail"}


def test_revoking_on_one_instance_ends_the_session_on_another(pair, certs) -> None:
    a, b = pair
    made = admin_json(a, "app-password", "create", "alice", "--label", "phone")
    keep = admin_json(a, "app-password", "create", "alice", "--label", "desktop")
    imap = imaplib.IMAP4_SSL(b.host, b.implicit_port, ssl_context=b.client_ssl_context(),
                             timeout=10)
    other = imaplib.IMAP4_SSL(b.host, b.implicit_port, ssl_context=b.client_ssl_context(),
                              timeout=10)
    try:
        assert imap.login("alice", made["password"])[0] == "OK"
        assert other.login("alice", keep["password"])[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"
        # revoked through A's admin CLI; B's credential watcher (every second) sees the
        # row gone
        admin(a, "app-password", "revoke", "alice", "phone")
        revoked_at = time.monotonic()
        ended = None
        while time.monotonic() - revoked_at < 6:
            try:
                imap.noop()
            except (imaplib.IMAP4.abort, OSError):
                ended = time.monotonic() - revoked_at
                break
            time.sleep(0.1)
        assert ended is not None, "the session through B outlived the revoke on A"
        # the watcher looks every second: 2 s is the contract, plus slack for a busy machine
        assert ended < 3.0, f"session ended {ended:.1f}s after the revoke"
        b.wait_for_event("session.revoked", reason="app_password_revoked")
        # the session of the app password that was not revoked goes on
        assert other.noop()[0] == "OK"
    finally:
        for c in (imap, other):
            try:
                c.shutdown()
            except OSError:
                pass
    later = login(a, "alice", made["password"])
    assert not later.ok and later.reason.startswith("app_password_"), later.event


def test_database_outage_refuses_new_logins_and_spares_live_sessions(
    gateway, postgres, tmp_path
) -> None:
    gw = gateway(policies={"10-alice.toml": POLICY}, limits=MFA_LIMITS,
                 backend=master_backend(tmp_path), metrics=metrics_on(),
                 store=pg_store_section(postgres, tmp_path))
    secret, step = enroll_totp(gw, "alice")
    live_step = max(step + 1, step_now())
    live = login(gw, "alice", f"alicepass${code_at(secret, live_step)}", keep=True)
    assert_ok(live, "totp")

    def next_step() -> int:  # newer than the live session's, valid now
        return max(live_step + 1, step_now())

    c = live.client
    assert c is not None
    try:
        assert c.command("s", "SELECT INBOX")[-1].startswith(b"s OK")
        postgres.stop()
        try:
            # the logged-in session does not need the store
            assert c.command("n", "NOOP")[-1].startswith(b"n OK")
            assert c.command("f", "UID FETCH 1:* (FLAGS)")[-1].startswith(b"f OK")
            # a new login that needs it: the uniform NO, in bounded time, no traceback
            started = time.monotonic()
            refused = login(gw, "alice", f"alicepass${code_at(secret, next_step())}",
                            source="127.0.0.2", client_name="mbsync", timeout=20)
            assert time.monotonic() - started < 15
            assert_denied(refused, "store_error")
            event = gw.wait_for_event("store.unavailable", operation="login")
            assert "alicepass" not in str(event) and postgres.password not in gw.log_text()
            assert sample_value(scrape(gw), "imap_gateway_store_unavailable_total",
                                operation="login") >= 1
            assert not gw.events("session.crashed")
            assert c.command("n2", "NOOP")[-1].startswith(b"n2 OK")
        finally:
            postgres.start()
        # back without restarting the gateway: a fresh code (the refused one was never
        # recorded) logs in once the pool has reconnected
        def logs_in():
            time.sleep(0.5)
            a = login(gw, "alice", f"alicepass${code_at(secret, next_step())}",
                      source="127.0.0.2", client_name="mbsync")
            return a.ok
        wait_until(logs_in, timeout=TOTP_STEP, interval=0.5, what="a login after the outage")
        assert c.command("n3", "NOOP")[-1].startswith(b"n3 OK")
        assert gw.returncode is None
        # the outage is in the JSON log only: no traceback, no driver chatter on stderr
        stderr = gw.stderr_path.read_text()
        assert "Traceback" not in stderr and "error connecting" not in stderr, stderr
    finally:
        c.close()
