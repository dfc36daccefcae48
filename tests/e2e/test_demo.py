"""``make demo`` (scripts/demo.sh) in its DEMO_CHECK mode: what it prints works.

The demo tells people to connect to ``localhost``; its certificate must cover that name
(and 127.0.0.1 and ::1), and mbsync, which matches DNS names only, must accept it. The
check mode runs the printed curl commands (implicit TLS by name and by address, STARTTLS)
and pulls the INBOX with the printed mbsync config.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.net import free_ports

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("dovecot") is None or shutil.which("curl") is None
                    or shutil.which("mbsync") is None,
                    reason="needs dovecot, curl and mbsync (make deps)")
def test_demo_prints_addresses_that_work_for_curl_and_mbsync():
    imaps, starttls, metrics = free_ports(3)
    env = dict(os.environ, DEMO_CHECK="1", DEMO_VENV=sys.prefix, DEMO_IMAPS_PORT=str(imaps),
               DEMO_STARTTLS_PORT=str(starttls), DEMO_METRICS_PORT=str(metrics))
    done = subprocess.run([str(REPO / "scripts" / "demo.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert f"imaps://localhost:{imaps}/INBOX" in out
    assert "server    localhost" in out and "valid for localhost, 127.0.0.1 and ::1" in out
    # localhost and 127.0.0.1 over implicit TLS, localhost over STARTTLS
    assert out.count("* STATUS INBOX (MESSAGES 1)") == 3, out[-3000:]
    assert "mbsync pulled 1 message(s)" in out, out[-3000:]
    assert "removed /tmp/igw-demo." in out  # cleaned up after itself
