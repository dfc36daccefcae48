"""A real redis-server (Debian package) for tests that share gateway state through Redis.

Started on a free loopback port with persistence off (``--save ""``, no AOF) in its own
temp dir, stopped by PID. ``RedisServer.cli(...)`` runs redis-cli against it, so a test
reads TTLs the way an operator would.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .net import free_port


class RedisStartError(RuntimeError):
    """redis-server is missing or did not answer PING on a free port."""


@dataclass
class RedisServer:
    port: int
    dir: Path
    proc: subprocess.Popen = field(repr=False)
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def cli(self, *args: str, timeout: float = 5.0) -> str:
        """``redis-cli -h HOST -p PORT args...``; stdout stripped. AssertionError on failure."""
        exe = shutil.which("redis-cli")
        assert exe, "redis-cli not found: install the Debian package redis-tools"
        p = subprocess.run([exe, "-h", self.host, "-p", str(self.port), *args],
                           capture_output=True, text=True, timeout=timeout)
        assert p.returncode == 0, (args, p.stdout, p.stderr)
        return p.stdout.strip()

    def keys(self, pattern: str = "*") -> list[str]:
        """Keys matching ``pattern`` (SCAN, not KEYS: what one would run in production)."""
        out = self.cli("--scan", "--pattern", pattern)
        return [k for k in out.splitlines() if k]

    def pttl(self, key: str) -> int:
        """Milliseconds left on ``key``: -1 = no TTL (would live forever), -2 = no such key."""
        return int(self.cli("PTTL", key))

    def stop_process(self) -> None:
        """SIGTERM our server by PID, SIGKILL after 5 s; idempotent. The directory stays,
        so ``restart`` can bring a server back on the same port (an outage, then recovery)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self) -> None:
        """A new redis-server on the same port (empty: persistence is off), after
        ``stop_process``. RedisStartError if it does not answer PING."""
        self.stop_process()
        self.proc = _spawn(self.port, self.dir)
        if not _pong(self.port, self.proc, time.monotonic() + 10):
            self.stop_process()
            raise RedisStartError(f"redis-server did not come back on port {self.port}")

    def stop(self) -> None:
        """``stop_process`` and remove the server's directory; idempotent."""
        self.stop_process()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pong(port: int, proc: subprocess.Popen, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def _spawn(port: int, d: Path) -> subprocess.Popen:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RedisStartError("redis-server not found: apt-get install redis-server")
    return subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
         "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def start_redis(attempts: int = 5) -> RedisServer:
    """A fresh redis-server on a free port (retried: the port can be taken between our
    probe and Redis's bind, other suites run on this machine)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RedisStartError("redis-server not found: apt-get install redis-server")
    d = Path(tempfile.mkdtemp(prefix="igw-redis-e2e."))
    for _ in range(attempts):
        port = free_port()
        proc = _spawn(port, d)
        if _pong(port, proc, time.monotonic() + 5):
            return RedisServer(port=port, dir=d, proc=proc)
        proc.terminate()
        proc.wait(5)
    shutil.rmtree(d, ignore_errors=True)
    raise RedisStartError(f"redis-server did not answer PING after {attempts} attempts")
