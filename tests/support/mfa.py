"""Helpers for the zero-trust login e2e tests: the admin CLI, TOTP codes,
logins that report the gateway's verdict, and Maildir snapshots.

Why the CLI as a subprocess: it is what an administrator runs against the same store
the serving gateway reads, so a test that enrolls with it also proves the two share
``[store] path``/``key_file``. Why snapshots of the Maildir itself: "a read-only
credential cannot change a mailbox" is a claim about Dovecot's files, not about what
the gateway answered.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp

from .certs import Certs
from .dovecot import DovecotRig
from .gatewayproc import GatewayFactory, GatewayProcess
from .imap import LineClient, ServerClosed

FAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"

#: Limits for the MFA tests: many deliberate failures from 127.0.0.1 must not trip the
#: failure limiter or a tarpit (tested elsewhere), and the uniform
#: failure delay is shortened so a failing login costs 0.1 s, not 0.5 s.
MFA_LIMITS: dict[str, Any] = {
    "auth_failure_delay": "100ms", "ip_fail_threshold": 1000, "subnet_fail_threshold": 1000,
    "user_fail_threshold": 1000, "user_ip_fail_threshold": 1000, "tarpit_base": "0s",
    "tarpit_max": "0s", "max_connection_rate_per_ip": 1000,
}

TOTP_STEP = 30


# ---- admin CLI ------------------------------------------------------------------------

class AdminError(AssertionError):
    """An admin command that should have worked exited non-zero; carries its stderr."""


def admin(gw: GatewayProcess, *args: str, check: bool = True,
          timeout: float = 20) -> subprocess.CompletedProcess:
    """``python -m gateway ARGS... --config <gw's config>``, output captured as text."""
    proc = subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(gw.config_path)],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=gw.dir)
    if check and proc.returncode != 0:
        raise AdminError(f"`imap-gateway {' '.join(args)}` exited {proc.returncode}\n"
                         f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def admin_json(gw: GatewayProcess, *args: str) -> dict[str, Any]:
    """An admin command with ``--json``; its parsed stdout."""
    return json.loads(admin(gw, *args, "--json").stdout)


@contextlib.contextmanager
def shared_gateway(base_dir: Path, certs: Certs, dovecot: DovecotRig,
                   **kw: Any) -> Iterator[GatewayProcess]:
    """One gateway for several tests (a module-scoped fixture), stopped by PID at the end.

    Only for tests that change no state (store, policy) another test could see: it saves
    a start and a stop (about a second) per test. On failure its log tail is printed."""
    factory = GatewayFactory(base_dir, certs, f"127.0.0.1:{dovecot.imap_port}")
    try:
        yield factory(**kw)
    except BaseException:
        for gw in factory.started:
            print(f"\n=== gateway {gw.dir} rc={gw.returncode} ===\n{gw.tail(40)}")
        raise
    finally:
        factory.stop_all()


# ---- TOTP -------------------------------------------------------------------------------

def step_now() -> int:
    return int(time.time()) // TOTP_STEP


def code_at(secret: str, step: int) -> str:
    """The code an authenticator app shows during time step ``step``."""
    return pyotp.TOTP(secret).at(step * TOTP_STEP)


def enroll_totp(gw: GatewayProcess, user: str = "alice") -> tuple[str, int]:
    """``totp enroll`` + ``totp verify`` with the code of the *previous* step (accepted: ±1).

    Verification consumes its step, so this leaves the current and next steps free for
    logins. Returns (secret, step verified with); a test adds 1 or 2 for fresh codes.
    """
    # Codes are computed from our clock a moment before the gateway checks them: keep
    # clear of a step boundary so "the previous step" is still inside the ±1 window.
    if TOTP_STEP - time.time() % TOTP_STEP < 2:
        time.sleep(TOTP_STEP - time.time() % TOTP_STEP + 0.1)
    enrolled = admin_json(gw, "totp", "enroll", user)
    assert enrolled["user"] == user and enrolled["uri"].startswith("otpauth://totp/"), enrolled
    secret = enrolled["secret"]
    step = step_now() - 1
    admin(gw, "totp", "verify", user, code_at(secret, step))
    return secret, step


def wrong_code(secret: str, step: int) -> str:
    """Six digits that are not valid in steps step-1..step+1 (so it is wrong, not early)."""
    valid = {code_at(secret, s) for s in (step - 1, step, step + 1)}
    n = 0
    while f"{n:06d}" in valid:
        n += 1
    return f"{n:06d}"


def master_backend(d: Path) -> dict[str, Any]:
    """``[backend]`` overrides for app passwords: the rig's master user, its password in a
    0600 file under ``d`` (the gateway refuses a file others can read)."""
    path = d / "master.pass"
    path.write_text("masterpass\n")
    os.chmod(path, 0o600)
    return {"master_user": "gatewaymaster", "master_password_file": str(path)}


# ---- logins ---------------------------------------------------------------------------------

@dataclass
class Attempt:
    """One login through the gateway: the tagged answer and the gateway's log verdict."""

    response: bytes
    event: dict[str, Any]
    client: LineClient | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.event.get("event") == "login.ok"

    @property
    def reason(self) -> str | None:
        return self.event.get("reason")


def quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def login(gw: GatewayProcess, user: str, secret: str, *, source: str | None = None,
          client_name: str | None = None, keep: bool = False, timeout: float = 10) -> Attempt:
    """LOGIN over implicit TLS (optionally from ``source``, after ``ID ("name" ...)``).

    Returns the tagged answer with the ``login.ok``/``login.denied`` event of this very
    session (matched by the client's port). With ``keep`` a successful session stays open
    in ``Attempt.client``; otherwise the client logs out and closes.
    """
    c = LineClient.implicit(gw, source=source, timeout=timeout)
    try:
        sid = gw.session_id_for(c.local_port)
        if client_name is not None:
            r = c.command("i", f'ID ("name" {quote(client_name)})')[-1]
            assert r.startswith(b"i OK"), r
        resp = c.command("a", f"LOGIN {quote(user)} {quote(secret)}")[-1]
        event = _verdict(gw, sid)
    except BaseException:
        c.close()
        raise
    if keep and event.get("event") == "login.ok":
        return Attempt(resp, event, c)
    try:
        c.command("z", "LOGOUT", timeout=3)
    except (ServerClosed, TimeoutError, OSError):
        pass
    c.close()
    return Attempt(resp, event)


def _verdict(gw: GatewayProcess, sid: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = gw.events("login.ok", session_id=sid) + gw.events("login.denied", session_id=sid)
        if found:
            return found[0]
        if time.monotonic() >= deadline:
            raise AssertionError(f"no login.ok/login.denied for session {sid}\n{gw.tail()}")
        time.sleep(0.05)


def assert_denied(a: Attempt, reason: str) -> None:
    """The client saw the one uniform failure; the log names ``reason``."""
    assert a.response == b"a " + FAILED, a.response
    assert a.event.get("event") == "login.denied" and a.reason == reason, a.event


def assert_ok(a: Attempt, factor: str) -> None:
    assert a.response.startswith(b"a OK"), a.response
    assert a.event.get("event") == "login.ok" and a.event.get("factor") == factor, a.event


def wait_session_end(gw: GatewayProcess, sid: str, timeout: float = 5.0) -> dict[str, Any]:
    return gw.wait_for_event("session.end", timeout, session_id=sid)


# ---- Dovecot side ------------------------------------------------------------------------

def direct(dovecot: DovecotRig, user: str = "alice") -> LineClient:
    """A full-rights session straight to Dovecot (not through the gateway), logged in."""
    c = LineClient(dovecot.host, dovecot.imap_port, timeout=10)
    r = c.command("l", f"LOGIN {user} {quote(dovecot.users[user])}")[-1]
    assert r.startswith(b"l OK"), r
    return c


def maildir_snapshot(dovecot: DovecotRig, user: str = "alice") -> dict[str, bytes]:
    """Every message file of the user's Maildir (all folders), path -> bytes.

    The path includes Maildir's flag suffix (``:2,S``), so a flag change (``\\Seen``) shows
    up as a rename. Dovecot's own index/cache files are left out: reading a mailbox may
    legitimately update them. Folder directories are listed too (CREATE/DELETE/RENAME).
    """
    root = dovecot.dir / "mail" / user / "Maildir"
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel.name in ("cur", "new", "tmp"):
            for f in filenames:
                out[str(rel / f)] = (Path(dirpath) / f).read_bytes()
        else:
            for d in dirnames:
                if d not in ("cur", "new", "tmp"):
                    out[str(rel / d) + "/"] = b""
    return out


#: alice must present a strong factor (TOTP or an app password) from everywhere.
ALICE_STRONG_POLICY = """\
[[rule]]
name = "alice strong"
users = ["alice"]
action = "allow"
mfa = "strong"
"""


def app_password_gateway(gateway: Any, tmp_path: Path) -> GatewayProcess:
    """A gateway with ALICE_STRONG_POLICY and the Dovecot master user (app passwords)."""
    gw: GatewayProcess = gateway(policies={"10-ap.toml": ALICE_STRONG_POLICY},
                                 limits=MFA_LIMITS, backend=master_backend(tmp_path))
    return gw


def app_password_session(gw: GatewayProcess, *scope_args: str) -> LineClient:
    """A new app password for alice (``scope_args``: ``--scope``/``--mailboxes`` ...),
    logged in through ``gw``; the caller closes the client."""
    made = admin_json(gw, "app-password", "create", "alice", "--label",
                      f"dev-{uuid.uuid4().hex[:6]}", *scope_args)
    a = login(gw, "alice", made["password"], keep=True)
    assert_ok(a, "app-password")
    assert a.client is not None
    return a.client
