"""A real Dovecot for the suite, started from ``rig/rig.sh`` under /tmp with free ports.

Why /tmp and not pytest's tmp_path: Dovecot's auth process runs as ``dovecot`` and mail
processes as ``nobody``; both must walk down into the rig dir, and pytest's base dir
(/tmp/pytest-of-root) is mode 0700. Unix socket paths also cap the dir at 78 characters.
Why one Dovecot per session: stopping takes >1 s (the master sleeps 1 s on shutdown).

Trust setup: ``login_trusted_networks = 127.0.0.1/32 ::1/128``. The gateway connects from
127.0.0.1, so its ID ``x-originating-ip`` is honoured; a client at 127.0.0.2 is *not* trusted,
so a PROXY v2 login on its behalf only works when the header carries the SSL TLV (that is
how the proxy-v2 test proves the TLV). ``disable_plaintext_auth = yes`` (Dovecot's default).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .imap import make_message
from .net import free_ports

RIG_DIR = Path(__file__).resolve().parent / "rig"
RIG_SH = RIG_DIR / "rig.sh"

#: alice, bob and carol are the suite's users (tests seed and read their mail). imaptest is
#: Dovecot's imaptest's throw-away account: its compliance tests empty and recreate its
#: mailboxes, so no other test may use it.
USERS = {"alice": "alicepass", "bob": "bobpass", "carol": "carolpass",
         "imaptest": "imaptestpass"}
MASTER = ("gatewaymaster", "masterpass")


class RigError(RuntimeError):
    """Dovecot could not be started or stopped; the message carries rig.sh's output."""


@dataclass
class DovecotRig:
    """Handle on one running rig. ``users``/``master`` are the rig's fixed test accounts."""

    dir: Path
    imap_port: int
    imaps_port: int
    proxy_port: int
    #: Only a rig started with ``extra_conf`` that opens a POP3 listener has one.
    pop3_port: int | None = None
    users: dict[str, str] = field(default_factory=lambda: dict(USERS), repr=False)
    master: tuple[str, str] = field(default=MASTER, repr=False)
    host: str = "127.0.0.1"

    @property
    def cert_path(self) -> Path:
        """Dovecot's own self-signed certificate (for direct imaps/STARTTLS connections)."""
        return self.dir / "tls" / "cert.pem"

    @property
    def log_path(self) -> Path:
        return self.dir / "log" / "dovecot.log"

    @property
    def conf_path(self) -> Path:
        return self.dir / "etc" / "dovecot.conf"

    @property
    def pid(self) -> int | None:
        try:
            return int((self.dir / "run" / "master.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    # ---- log ----------------------------------------------------------------------------

    def mark(self) -> int:
        """Current end of the log: pass it to ``log_since``/``wait_for_log`` as ``since``."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, mark: int = 0) -> str:
        """Log text appended after ``mark`` (Dovecot's log process writes asynchronously)."""
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            return f.read().decode("utf-8", "replace")

    def wait_for_log(self, regex: str, timeout: float = 5.0, since: int = 0) -> re.Match[str]:
        """First match of ``regex`` (multiline) in the log after ``since``; AssertionError with
        the log tail when it does not appear within ``timeout`` seconds."""
        pattern = re.compile(regex, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_since(since)
            m = pattern.search(text)
            if m:
                return m
            if time.monotonic() >= deadline:
                tail = "\n".join(text.splitlines()[-25:])
                raise AssertionError(
                    f"Dovecot log {self.log_path} has no line matching {regex!r} after "
                    f"{timeout:.1f}s; new lines since mark:\n{tail}")
            time.sleep(0.05)

    # ---- mail -----------------------------------------------------------------------------

    def populate(self, user: str, mailbox: str, count: int, size: int = 2048,
                 tag: str = "rig") -> int:
        """Append ``count`` messages of ``size`` bytes (``imap.make_message(i, size, tag)``)
        to ``mailbox`` (created if missing) with MULTIAPPEND + LITERAL+ over one direct IMAP
        connection (fast: thousands/s). Returns the mailbox's message count afterwards."""
        with socket.create_connection((self.host, self.imap_port), timeout=30) as s:
            f = s.makefile("rb")
            f.readline()

            def command(tag_: bytes, payload: bytes) -> bytes:
                s.sendall(payload)
                while True:
                    line = f.readline()
                    if not line:
                        raise RigError(f"Dovecot closed the connection during {tag_!r}")
                    if line.startswith(tag_ + b" "):
                        return line

            ok = command(b"l", f"l LOGIN {user} {self.users[user]}\r\n".encode())
            if not ok.startswith(b"l OK"):
                raise RigError(f"populate: LOGIN {user} failed: {ok!r}")
            command(b"c", f'c CREATE "{mailbox}"\r\n'.encode())  # NO [ALREADYEXISTS] is fine
            batch = 500
            for b, start in enumerate(range(0, count, batch)):
                out = bytearray(f'a{b} APPEND "{mailbox}"'.encode())
                for i in range(start, min(count, start + batch)):
                    m = make_message(i, size, tag)
                    out += f" {{{len(m)}+}}\r\n".encode() + m
                out += b"\r\n"
                resp = command(f"a{b}".encode(), bytes(out))
                if not resp.startswith(f"a{b} OK".encode()):
                    raise RigError(f"populate: APPEND to {mailbox} failed: {resp!r}")
            s.sendall(f'q STATUS "{mailbox}" (MESSAGES)\r\n'.encode())
            messages = -1
            while True:
                line = f.readline()
                m = re.search(rb"\(MESSAGES (\d+)\)", line)
                if m:
                    messages = int(m.group(1))
                if line.startswith(b"q ") or not line:
                    break
            s.sendall(b"z LOGOUT\r\n")
            return messages

    # ---- lifecycle ------------------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master by PID (from run/master.pid, checked against our config) and
        wait until it is gone; SIGKILL after ``timeout``. Idempotent."""
        pid = self.pid
        if pid is None or not _is_our_master(pid, self.conf_path):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a daemonized master is PID 1's child,
    and PID 1 may reap late)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


def _is_our_master(pid: int, conf: Path) -> bool:
    """Guard against a recycled PID: it must be a dovecot started with our config file."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    return _alive(pid) and str(conf).encode() in cmdline


def start_rig(*, disable_plaintext_auth: bool = True,
              trusted_networks: str = "127.0.0.1/32 ::1/128",
              users_file: Path | None = None, attempts: int = 5,
              extra_conf: str | None = None) -> DovecotRig:
    """Create a rig dir under /tmp and start Dovecot on free loopback ports.

    ``extra_conf`` is Dovecot configuration appended to the rig's (later settings win);
    ``@POP3_PORT@`` in it becomes a free port, kept as ``rig.pop3_port``.

    Retries with fresh ports when another process grabbed one between our choice and
    Dovecot's bind (several suites run on this machine). Raises RigError with rig.sh's
    output (and the Dovecot log tail) when it cannot start at all.
    """
    if shutil.which("dovecot") is None:
        raise RigError("dovecot is not installed: run `make deps` (as root) or "
                       "`apt-get install -y --no-install-recommends dovecot-imapd`")
    last = ""
    for _ in range(attempts):
        d = Path(tempfile.mkdtemp(prefix="igw-rig.", dir="/tmp"))
        imap, imaps, proxy, pop3 = free_ports(4)
        env = dict(os.environ, IMAP_PORT=str(imap), IMAPS_PORT=str(imaps), PROXY_PORT=str(proxy),
                   DISABLE_PLAINTEXT_AUTH="yes" if disable_plaintext_auth else "no",
                   TRUSTED_NETWORKS=trusted_networks)
        if users_file is not None:
            env["USERS_FILE"] = str(users_file)
        has_pop3 = extra_conf is not None and "@POP3_PORT@" in extra_conf
        if extra_conf is not None:
            extra = Path(d) / "extra.conf"
            extra.write_text(extra_conf.replace("@POP3_PORT@", str(pop3)))
            extra.chmod(0o644)
            env["EXTRA_CONF"] = str(extra)
        proc = subprocess.run([str(RIG_SH), "start", str(d)], env=env, capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
        rig = DovecotRig(dir=d, imap_port=imap, imaps_port=imaps, proxy_port=proxy,
                         pop3_port=pop3 if has_pop3 else None)
        if proc.returncode == 0:
            return rig
        last = proc.stdout + proc.stderr
        rig.stop()
        shutil.rmtree(d, ignore_errors=True)
        if "in use" not in last:
            break
    raise RigError(f"could not start Dovecot with {RIG_SH}:\n{last}")
