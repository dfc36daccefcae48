"""The gateway-app-password target: a real gateway, a real Dovecot, an app password from the CLI."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import rig, workloads
from bench.imapclient import Conn, Credentials, ImapError, client_context
from gateway.auth.factors import generate_app_password

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not shutil.which("dovecot") or rig.gateway_available() is not None,
    reason="needs dovecot-imapd and the gateway package",
)


@pytest.fixture
def dovecot():
    rd = rig.RunDir.create()
    server = None
    try:
        server, ports = rig.start_dovecot(rd, None)
        yield rd, ports
    finally:
        if server:
            server.stop()
        rd.remove()


def test_app_password_logs_in_through_the_gateway_only(dovecot):
    rd, ports = dovecot
    ctx = client_context(str(rd.cert))
    gw = rig.start_gateway(rd, ports.imap, None, ctx, app_password_user="bob")
    try:
        creds = gw.creds
        assert creds is not None and creds.user == "bob" and creds.password != "bobpass"
        assert creds.password not in repr(gw) + repr(creds)
        conn = Conn.open(gw.addr, ctx)
        conn.login(creds)
        assert workloads.select_count(conn) == 0  # a real backend session as bob
        conn.logout()
        # Dovecot itself does not know the app password: the gateway verified it and logged in
        # with the master user.
        direct = Conn.open(("127.0.0.1", ports.imaps), ctx)
        try:
            with pytest.raises(ImapError, match="LOGIN answered"):
                direct.login(creds)
        finally:
            direct.close()
        # a well-formed app password that was never issued is refused (not forwarded as a password)
        conn = Conn.open(gw.addr, ctx)
        try:
            with pytest.raises(ImapError, match="LOGIN answered"):
                conn.login(Credentials("bob", generate_app_password()))
        finally:
            conn.close()
        result = workloads.logins(gw.addr, ctx, creds, clients=2, seconds=0.5)
        assert result["logins"] >= 1 and result["errors"] == 0
    finally:
        gw.stop()
    assert (rd.path / f"gateway-{gw.addr[1]}" / "master.pass").stat().st_mode & 0o077 == 0


def test_bench_reports_app_password_column_and_ratio(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--only",
            "logins,noop",
            "--rounds",
            "1",
            "--login-seconds",
            "0.5",
            "--clients",
            "2",
            "--noop-count",
            "50",
            "--noop-seconds",
            "0.3",
            "--targets",
            "gateway,gateway-app-password",
            "--output",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    header = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| metric"))
    assert "| gateway-app-password |" in header
    doc = json.loads(out.read_text())
    assert doc["errors"] == {}
    (run,) = doc["runs"]["logins"]["gateway-app-password"]
    assert run["logins"] >= 1 and run["errors"] == 0 and run["proxy_cpu_s"] > 0
    assert "gateway-app-password" not in doc["runs"]["noop"]  # logins only: same relay
    assert any(n.startswith("app-password / forward") for n in doc["notes"])
    assert "app-password / forward (gateway-app-password/gateway): TLS logins/s" in proc.stdout
