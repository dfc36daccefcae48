"""The gateway as a real subprocess: config rendering, start, readiness, logs, stop.

``GatewayFactory(**overrides)`` writes a config following the TOML contract (sections
tls, listener, backend, limits, metrics, logging; each override dict is merged into its
section, ``listener=[...]`` replaces the list), starts ``python -m gateway serve`` in its
own process group with cwd = its temp dir, and returns once the implicit-TLS listener
greets. Every process it started is stopped by PID at teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .certs import Certs
from .net import free_ports

START_TIMEOUT = 10.0

#: The core e2e tests log in with passwords alone; MFA has its own tests. Written to
#: ``policies/`` of every test gateway unless ``policies=`` is passed to the factory.
PASSWORD_ONLY_POLICY = """\
# e2e core tests: password-only logins for everyone (the shipped default wants MFA)
[[rule]]
name = "core tests: password only"
action = "allow"
mfa = "none"
"""
STOP_TIMEOUT = 5.0


class GatewayStartError(RuntimeError):
    """The gateway did not greet in time or exited; the message has its log/stderr tail."""


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string for our values
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot render {v!r} as TOML")


def render_toml(config: dict[str, Any]) -> str:
    """Minimal TOML writer for the gateway config: tables of scalars/lists, and arrays of
    tables (a list of dicts, like ``listener``)."""
    out: list[str] = []
    for section, body in config.items():
        if isinstance(body, list):
            for item in body:
                out.append(f"[[{section}]]")
                out += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
                out.append("")
        else:
            out.append(f"[{section}]")
            out += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
            out.append("")
    return "\n".join(out)


@dataclass
class GatewayProcess:
    dir: Path
    config_path: Path
    config: dict[str, Any]
    implicit_port: int
    starttls_port: int
    certs: Certs = field(repr=False)
    proc: subprocess.Popen | None = field(default=None, repr=False)
    host: str = "127.0.0.1"

    @property
    def log_path(self) -> Path:
        return self.dir / self.config["logging"]["file"]

    @property
    def stderr_path(self) -> Path:
        return self.dir / "stderr.txt"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def client_ssl_context(self, **kw) -> ssl.SSLContext:
        return self.certs.client_ssl_context(**kw)

    # ---- logs -------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events(self, name: str | None = None, **fields: Any) -> list[dict[str, Any]]:
        """Parsed JSON log lines (optionally only event ``name`` with matching fields).
        A line that is not JSON fails the test: the contract is JSON lines."""
        out = []
        lines = self.log_text().splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except json.JSONDecodeError as err:
                if n == len(lines):
                    continue  # the last line may be half-written
                raise AssertionError(f"{self.log_path}:{n} is not JSON: {line!r}") from err
            if name is not None and e.get("event") != name:
                continue
            if all(e.get(k) == v for k, v in fields.items()):
                out.append(e)
        return out

    def wait_for_event(self, name: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """First log event ``name`` whose fields equal ``fields``; AssertionError with the
        log tail if none appears within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(name, **fields)
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"no log event {name!r} with {fields} within {timeout}s; log tail:\n"
                    f"{self.tail()}")
            time.sleep(0.05)

    def session_id_for(self, client_port: int, timeout: float = 5.0) -> str:
        """The gateway's session id for the connection from local port ``client_port``."""
        return self.wait_for_event("session.start", timeout, client_port=client_port)["session_id"]

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Until every logged session.start has its session.end (e.g. the readiness probe's),
        so per-IP connection counts start from zero."""
        def idle() -> bool:
            started = {e.get("session_id") for e in self.events("session.start")}
            ended = {e.get("session_id") for e in self.events("session.end")}
            return started <= ended
        deadline = time.monotonic() + timeout
        while not idle():
            if time.monotonic() >= deadline:
                raise AssertionError(f"sessions still open after {timeout}s\n{self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 30) -> str:
        try:
            err = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            err = ""
        log = "\n".join(self.log_text().splitlines()[-lines:])
        err = "\n".join(err.splitlines()[-lines:])
        return f"--- {self.log_path} (tail) ---\n{log}\n--- stderr (tail) ---\n{err}"

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path)],
                cwd=self.dir, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                start_new_session=True)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the implicit-TLS listener sends ``* OK``; GatewayStartError otherwise."""
        deadline = time.monotonic() + timeout
        last: Exception | str = "no attempt"
        while time.monotonic() < deadline:
            if self.returncode is not None:
                raise GatewayStartError(
                    f"gateway exited with {self.returncode} during start\n{self.tail()}")
            try:
                greeting = _tls_greeting(self.host, self.implicit_port, self.client_ssl_context())
                if greeting.startswith(b"* OK"):
                    return
                last = f"unexpected greeting {greeting!r}"
            except (OSError, ssl.SSLError) as e:
                last = e
            time.sleep(0.05)
        raise GatewayStartError(
            f"gateway did not greet on {self.host}:{self.implicit_port} within {timeout}s "
            f"(last: {last})\n{self.tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM by PID, SIGKILL after ``timeout``; returns the exit code. Idempotent."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        return self.proc.returncode


def _tls_greeting(host: str, port: int, ctx: ssl.SSLContext) -> bytes:
    with socket.create_connection((host, port), timeout=2) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            try:
                s.sendall(b"r LOGOUT\r\n")
            except OSError:
                pass
            return data


class GatewayFactory:
    """``factory(**overrides) -> GatewayProcess``, started and greeting. Remembers every
    gateway it made so ``stop_all`` can end them at teardown."""

    def __init__(self, base_dir: Path, certs: Certs, backend_address: str):
        self.base_dir = base_dir
        self.certs = certs
        self.backend_address = backend_address
        self.started: list[GatewayProcess] = []

    def default_config(self, implicit_port: int, starttls_port: int) -> dict[str, Any]:
        return {
            "tls": {"cert": "cert.pem", "key": "key.pem", "min_version": "1.2"},
            "listener": [
                {"address": f"127.0.0.1:{implicit_port}", "mode": "implicit-tls"},
                {"address": f"127.0.0.1:{starttls_port}", "mode": "starttls"},
            ],
            # One process unless a test asks for workers (the default is one per CPU).
            "server": {"workers": 1},
            "backend": {"address": self.backend_address, "tls": "none", "ca_file": "",
                        "client_ip": "id", "connect_timeout": "5s"},
            "limits": {"max_line": 8192, "max_preauth_literal": 8192, "max_bad_commands": 5,
                       "preauth_timeout": "60s", "max_connections_per_ip": 20},
            "metrics": {"address": ""},
            # the admin API defaults to a fixed port; parallel gateways would clash on it
            "admin": {"address": ""},
            "policy": {"dir": "policies"},
            "logging": {"format": "json", "level": "info", "file": "gateway.log"},
        }

    def __call__(self, *, wait: bool = True, attempts: int = 3,
                 policies: dict[str, str] | None = None,
                 **overrides: Any) -> GatewayProcess:
        """Start a gateway; ``overrides`` per config section (``limits={...}``), ``policies``
        = {file name: TOML} for its policy dir (default: PASSWORD_ONLY_POLICY)."""
        last: Exception | None = None
        for _ in range(attempts):
            implicit_port, starttls_port = free_ports(2)
            config = self.default_config(implicit_port, starttls_port)
            for section, value in overrides.items():
                if isinstance(value, dict) and isinstance(config.get(section), dict):
                    config[section] = {**config[section], **value}
                else:
                    config[section] = value
            d = self.base_dir / f"gw{len(self.started)}"
            d.mkdir(parents=True)
            shutil.copy(self.certs.cert_path, d / "cert.pem")
            shutil.copy(self.certs.key_path, d / "key.pem")
            (d / "policies").mkdir()
            for name, text in (policies or {"00-core-tests.toml": PASSWORD_ONLY_POLICY}).items():
                (d / "policies" / name).write_text(text)
            (d / "config.toml").write_text(render_toml(config))
            gw = GatewayProcess(dir=d, config_path=d / "config.toml", config=config,
                                implicit_port=implicit_port, starttls_port=starttls_port,
                                certs=self.certs)
            self.started.append(gw)
            gw.start()
            if not wait:
                return gw
            try:
                gw.wait_ready()
                return gw
            except GatewayStartError as e:
                gw.stop()
                last = e
                if "in use" not in str(e):
                    raise
        raise last  # type: ignore[misc]

    def stop_all(self) -> None:
        for gw in self.started:
            gw.stop()
