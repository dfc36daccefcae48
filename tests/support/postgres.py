"""A private PostgreSQL cluster (Debian's postgresql package) for the credential store tests.

``initdb`` into a temp dir, then ``postgres`` on a free loopback port with its unix socket
in that dir; stopped by PID (SIGINT: PostgreSQL's "fast" shutdown). The server refuses to
run as root, so as root (CI on a fresh Debian) both run as the ``postgres`` system user
(the child switches user itself, so the PID we hold is the postmaster's own); otherwise as
the current user.

The superuser is ``gateway`` with a random password (scram-sha-256 on every connection),
so the tests exercise ``[store] password_file`` the way a deployment does.
``PostgresServer.new_database()`` gives each test module (or test) a fresh database.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .net import free_port

PG_BIN_DIRS = [Path("/usr/lib/postgresql/15/bin"),
               *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]
SUPERUSER = "gateway"


class PostgresStartError(RuntimeError):
    """initdb/postgres are missing, or the server did not accept connections."""


def _bin(name: str) -> str:
    for d in PG_BIN_DIRS:
        if (d / name).exists():
            return str(d / name)
    raise PostgresStartError(
        f"{name} not found under /usr/lib/postgresql/*/bin: apt-get install postgresql")


def _as_server_user() -> dict[str, Any]:
    """Popen arguments that run initdb/postgres as a non-root user (none if we are not root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


@dataclass
class PostgresServer:
    dir: Path
    port: int
    password: str = field(repr=False)
    proc: subprocess.Popen | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    _databases: int = 0

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.dir / "sock"

    def url(self, database: str, **params: str) -> str:
        """``postgresql://gateway@127.0.0.1:PORT/DB`` (no password: it goes in a file)."""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}" + (
            f"?{query}" if query else "")

    def write_password_file(self, path: Path) -> Path:
        """The superuser password in a 0600 file, as ``[store] password_file`` wants it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        return path

    def conninfo(self, database: str = "postgres") -> str:
        return (f"host={self.host} port={self.port} dbname={database} user={SUPERUSER} "
                f"password={self.password} connect_timeout=5")

    def sql(self, statement: str, database: str = "postgres") -> list[tuple]:
        """Run one statement as the superuser (autocommit); rows if it returns any."""
        import psycopg

        with psycopg.connect(self.conninfo(database), autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    def new_database(self, prefix: str = "igw") -> str:
        """A new empty database, its name unique in this cluster."""
        self._databases += 1
        name = f"{prefix}_{self._databases}_{secrets.token_hex(3)}"
        self.sql(f'CREATE DATABASE "{name}"')
        return name

    def start(self, timeout: float = 30.0) -> None:
        """Start (or restart after ``stop``) the server on the same port and data dir."""
        if self.proc is not None and self.proc.poll() is None:
            return
        log = open(self.dir / "postgres.log", "ab")  # noqa: SIM115 - the server holds it
        self.proc = subprocess.Popen(
            [_bin("postgres"), "-D", str(self.data_dir),
             "-p", str(self.port), "-c", f"listen_addresses={self.host}",
             "-c", f"unix_socket_directories={self.socket_dir}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200", "-c", "shared_buffers=16MB"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir,
            **_as_server_user())
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PostgresStartError(
                    f"postgres exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                self.sql("SELECT 1")
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
        raise PostgresStartError(f"postgres did not accept connections in {timeout:.0f}s: "
                                 f"{self.log_tail()}")

    def stop(self) -> None:
        """Fast shutdown by PID (SIGINT), SIGKILL after 15 s; the data dir stays."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(2)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.dir / "postgres.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def start_postgres() -> PostgresServer:
    """initdb a fresh cluster in a temp dir and start it on a free loopback port."""
    initdb = _bin("initdb")
    d = Path(tempfile.mkdtemp(prefix="igw-pg."))
    password = secrets.token_urlsafe(18)
    pwfile = d / "pwfile"
    pwfile.write_text(password + "\n")
    (d / "sock").mkdir()
    if os.geteuid() == 0:
        # The server user must own its directories (and read the password file once).
        shutil.chown(d, "postgres", "postgres")
        shutil.chown(d / "sock", "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    d.chmod(0o700)
    p = subprocess.run(
        [initdb, "-D", str(d / "data"), "-U", SUPERUSER,
         "--pwfile", str(pwfile), "--auth", "scram-sha-256", "-E", "UTF8",
         "--locale", "C.UTF-8", "--no-sync"],
        capture_output=True, text=True, timeout=120, cwd=d, **_as_server_user())
    pwfile.unlink()
    if p.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        raise PostgresStartError(f"initdb failed: {p.stderr.strip() or p.stdout.strip()}")
    last: Exception | None = None
    for _ in range(5):  # the free port can be taken before postgres binds it
        server = PostgresServer(dir=d, port=free_port(), password=password)
        try:
            server.start()
            return server
        except PostgresStartError as exc:
            last = exc
            server.stop()
    shutil.rmtree(d, ignore_errors=True)
    raise PostgresStartError(f"postgres did not start: {last}")
