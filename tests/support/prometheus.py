"""A real Prometheus (Debian package ``prometheus``) for the dashboard tests.

Why a real one: the dashboards and alert rules are PromQL that only Prometheus evaluates;
a panel is only proven useful when Prometheus, having scraped a gateway, answers its query
with data. A regex over the exposition text cannot say that (``rate()`` needs two samples,
``histogram_quantile`` of a zero rate is NaN, a label matcher can exclude every series).

The server runs in the foreground as our child (its PID is ours to stop), with its own temp
dir for config and TSDB, on a free loopback port, scraping every second. Nothing is fixed:
other engineers run Prometheus servers on this machine too.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .net import free_port

PROMETHEUS = "/usr/bin/prometheus"
START_TIMEOUT = 20.0


class PrometheusError(RuntimeError):
    """Prometheus did not start, or its HTTP API answered an error; carries its log tail."""


def render_config(targets: list[str], rule_files: list[Path], *, job: str = "imap-gateway",
                  interval: str = "1s") -> str:
    """prometheus.yml scraping ``targets`` every ``interval`` and loading ``rule_files``.

    The job name is the one deploy/prometheus.yml uses: the ImapGatewayDown alert matches it.
    JSON is valid YAML, so no YAML writer is needed.
    """
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval,
                   "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": job, "metrics_path": "/metrics",
                            "static_configs": [{"targets": targets}]}],
    }
    return json.dumps(config, indent=2)


@dataclass
class PrometheusServer:
    dir: Path
    port: int
    proc: subprocess.Popen | None = field(default=None, repr=False)
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "prometheus.log"

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---- HTTP API -----------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` member of a successful answer, else PrometheusError
        (with Prometheus' own error text, e.g. a PromQL parse error)."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"GET {url}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query at "now"; the result vector (``[]`` = the panel shows "No data")."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def targets_up(self) -> list[dict[str, Any]]:
        return [t for t in self.api("targets")["activeTargets"] if t.get("health") == "up"]

    def rules(self) -> list[dict[str, Any]]:
        return self.api("rules")["groups"]

    def alerts(self) -> list[dict[str, Any]]:
        return self.api("alerts")["alerts"]

    def wait_until(self, expr: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns a sample whose value is not NaN; PrometheusError
        naming the query (and the log tail) when it does not within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if any(not math.isnan(float(s["value"][1])) for s in result):
                return result
            if time.monotonic() >= deadline:
                raise PrometheusError(
                    f"{expr!r} had no data after {timeout:.0f}s (last result {result});\n"
                    f"targets: {self.api('targets')['activeTargets']}\n{self.tail()}")
            time.sleep(0.25)

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.dir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.dir / 'data'}",
                 f"--web.listen-address={self.host}:{self.port}",
                 "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.proc.returncode}\n"
                                      f"{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise PrometheusError(f"prometheus not ready on {self.url} after {timeout}s\n{self.tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout``. Idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        except ProcessLookupError:
            pass


def start_prometheus(directory: Path, targets: list[str], rule_files: list[Path],
                     attempts: int = 3) -> PrometheusServer:
    """Write the config, start Prometheus on a free port, wait for /-/ready.

    ``promtool check config`` runs first so a broken rule file fails with promtool's message
    rather than as a Prometheus that never becomes ready. Retries on a port race.
    """
    if not Path(PROMETHEUS).exists():
        raise PrometheusError(f"{PROMETHEUS} missing: apt-get install -y prometheus")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prometheus.yml").write_text(render_config(targets, rule_files))
    promtool = shutil.which("promtool")
    if promtool:
        check = subprocess.run([promtool, "check", "config", str(directory / "prometheus.yml")],
                               capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise PrometheusError(f"promtool check config failed:\n{check.stdout}{check.stderr}")
    last: Exception | None = None
    for _ in range(attempts):
        server = PrometheusServer(dir=directory, port=free_port())
        server.start()
        try:
            server.wait_ready()
            return server
        except PrometheusError as e:
            server.stop()
            last = e
            if "address already in use" not in str(e):
                raise
    raise last  # type: ignore[misc]
