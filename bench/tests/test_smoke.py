"""End to end: a tiny real run against Dovecot and HAProxy (the gateway has its own tests)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not (shutil.which("dovecot") and shutil.which("haproxy")),
    reason="needs dovecot-imapd and haproxy",
)


def test_quick_run_measures_both_targets_and_writes_json(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--rounds",
            "1",
            "--only",
            "noop,fetch",
            "--targets",
            "dovecot-direct,haproxy",
            "--fetch-messages",
            "20",
            "--noop-count",
            "100",
            "--output",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| NOOP round trip p50 µs" in proc.stdout
    # the header names when and on what the figures were measured
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC, .+ \(\d+ CPUs\)", proc.stdout)
    for row in ("| NOOP: proxy CPU µs per NOOP", "| NOOPs/s over 16 connections",
                "| FETCH, 4 clients at once, MB/s", "| FETCH x 4: MB per proxy CPU-second"):
        assert row in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["errors"] == {}
    for target in ("dovecot-direct", "haproxy"):
        assert doc["tls"][target]["version"] in ("TLSv1.3", "TLSv1.2")
        (noop,) = doc["runs"]["noop"][target]
        assert 0 < noop["p50_us"] <= noop["p99_us"] < 1e6
        assert noop["proxy_cpu_timed_s"] > 0
        (fetch,) = doc["runs"]["fetch"][target]
        assert fetch["bytes"] > 20 * 100 * 1024 and fetch["mb_s"] > 1
        (many,) = doc["runs"]["noop_parallel"][target]
        assert many["noops"] > 16 and many["proxy_cpu_timed_s"] > 0
        (fetch4,) = doc["runs"]["fetch_parallel"][target]
        assert fetch4["bytes"] == 4 * fetch["bytes"]  # every client got the whole mailbox
    # nothing left behind: the run dir is gone and no process still uses its configs
    run_dir = re.search(r"run dir (\S+)", proc.stderr).group(1)
    assert not Path(run_dir).exists()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert run_dir not in cmdline.read_text(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            pass
