"""Start and stop the servers under test: Dovecot (benchmark mode), HAProxy and the gateway.

Each one runs in the foreground as a child of the benchmark (so its PID is ours to stop, and nothing
is left behind if the benchmark dies: everything is stopped by PID in a ``finally``), pinned with
taskset to the server cores, on ports picked free by binding port 0, with files under one temp dir.
Readiness means "a real client got the IMAP greeting", not "the port accepts": Dovecot's login
process accepts before its auth process is up, and the greeting proves the TLS path as well.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import procstat
from bench.imapclient import Conn, Credentials

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Dovecot's longest unix socket path is DIR/run/token-login/imap-urlauth (+29 chars); sun_path is 107.
MAX_DIR_LEN = 78
USERS = "bob:{PLAIN}bobpass::::::\n"
# Dovecot master user for the gateway-app-password target. {PLAIN} like bob's password: Dovecot's
# hashing is not what is measured (the gateway's scrypt of the app password is).
MASTER_USER = "gatewaymaster"
MASTER_PASSWORD = "masterpass"


class RigError(RuntimeError):
    """A server under test failed to start or to answer; the message quotes its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (others share this machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(template: Path, values: dict[str, str]) -> str:
    """Fill @NAME@ placeholders; refuse to leave one unfilled (a silent typo would misconfigure a run)."""
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    if "@" in "".join(line.split("#", 1)[0] for line in text.splitlines()):
        leftover = [ln for ln in text.splitlines() if "@" in ln.split("#", 1)[0]]
        raise RigError(f"{template.name}: unfilled placeholder in {leftover[0]!r}")
    return text


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no {path})"


def taskset(cpus: set[int] | None, argv: list[str]) -> list[str]:
    """Prefix argv with taskset so the process and everything it forks stay on the given cores."""
    if not cpus or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]


@dataclass
class Server:
    """A child process we started; ``pids()`` is what its memory and CPU are measured over."""

    name: str
    proc: subprocess.Popen
    addr: tuple[str, int]
    log: Path
    measure: Callable[[], list[int]] | None = field(default=None, repr=False)
    #: what clients log in with when the server chose it (the gateway's app password), else None
    creds: Credentials | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        return self.measure() if self.measure else procstat.tree(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> float:
        """SIGTERM, wait, SIGKILL if needed; return seconds taken. Safe to call twice."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                print(
                    f"bench: {self.name} pid {self.pid} ignored SIGTERM for {timeout}s: killed",
                    file=sys.stderr,
                )
        return time.monotonic() - t0


def wait_greeting(server: Server, ctx, timeout: float) -> dict[str, str]:
    """Poll until a client gets ``* OK`` from server.addr; raise RigError with the log if it dies or times out."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not server.alive():
            raise RigError(
                f"{server.name} exited with rc {server.proc.returncode} before it greeted "
                f"on {server.addr[0]}:{server.addr[1]}; last lines of {server.log}:\n"
                f"{tail(server.log)}"
            )
        try:
            conn = Conn.open(server.addr, ctx, timeout=2.0)
        except Exception as e:  # refused while binding, TLS not ready, ...
            last = e
            time.sleep(0.05)
            continue
        info = conn.tls_info()
        conn.close()
        return info
    raise RigError(
        f"{server.name} did not greet on {server.addr[0]}:{server.addr[1]} within "
        f"{timeout:.0f}s (last error: {last!r}); last lines of {server.log}:\n{tail(server.log)}"
    )


@dataclass
class RunDir:
    """The benchmark's temp dir: certificate, configs, logs, Dovecot's mail and sockets."""

    path: Path

    @classmethod
    def create(cls) -> RunDir:
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="imapgw-bench.", dir="/tmp"))
        if len(str(path)) > MAX_DIR_LEN:
            raise RigError(
                f"temp dir path {path} longer than {MAX_DIR_LEN} chars (Dovecot socket paths)"
            )
        # mkdtemp makes it 0700; Dovecot's auth (user dovecot) and mail (nobody) processes must enter it
        path.chmod(0o755)
        for sub in ("etc", "tls", "run", "state", "log", "mail"):
            (path / sub).mkdir()
            (path / sub).chmod(0o755)
        rd = cls(path)
        rd.make_cert()
        return rd

    @property
    def cert(self) -> Path:
        return self.path / "tls" / "cert.pem"

    @property
    def key(self) -> Path:
        return self.path / "tls" / "key.pem"

    @property
    def combined(self) -> Path:
        return self.path / "tls" / "combined.pem"

    def make_cert(self) -> None:
        """Self-signed RSA-2048 (what most mail servers still serve; it sets the handshake cost)."""
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
                str(self.key),
                "-out",
                str(self.cert),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.combined.write_bytes(self.cert.read_bytes() + self.key.read_bytes())
        for p in (self.key, self.combined):
            p.chmod(0o600)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass
class DovecotPorts:
    imap: int
    imaps: int
    proxy: int


def _mail_owner() -> tuple[str, str, str]:
    """(mail user, mail group, group for the passwd-file): nobody as root, else the invoking user."""
    if os.geteuid() == 0:
        return "nobody", grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name, "dovecot"
    me = pwd.getpwuid(os.geteuid())
    return me.pw_name, grp.getgrgid(me.pw_gid).gr_name, grp.getgrgid(me.pw_gid).gr_name


def _non_root_extra() -> str:
    me = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    return (
        f"default_internal_user = {me}\ndefault_internal_group = {group}\n"
        f"default_login_user = {me}\nservice imap-login {{\n  chroot =\n}}\n"
        f"service anvil {{\n  chroot =\n}}\n"
    )


def start_dovecot(
    rd: RunDir, cpus: set[int] | None, ports: DovecotPorts | None = None, extra: str = ""
) -> tuple[Server, DovecotPorts]:
    """Render the benchmark-mode config and run ``dovecot -F``; return once the plain port greets.

    Pass the ports of a stopped instance to restart it where HAProxy and the gateway expect it.
    ``extra``: config text appended to the template (e.g. a ``service imap`` override).
    """
    if shutil.which("dovecot") is None:
        raise RigError("dovecot not installed: apt-get install -y dovecot-imapd")
    mail_user, mail_group, users_group = _mail_owner()
    ports = ports or DovecotPorts(free_port(), free_port(), free_port())
    conf = rd.path / "etc" / "dovecot.conf"
    conf.write_text(
        render(
            HERE / "dovecot.conf.in",
            {
                "DIR": str(rd.path),
                "IMAP_PORT": str(ports.imap),
                "IMAPS_PORT": str(ports.imaps),
                "PROXY_PORT": str(ports.proxy),
                "MAIL_UID": mail_user,
                "MAIL_GID": mail_group,
                "EXTRA": "" if os.geteuid() == 0 else _non_root_extra(),
            },
        )
        + extra  # appended: Dovecot merges a repeated service block into the first
    )
    users = rd.path / "etc" / "users"
    users.write_text(USERS)
    masters = rd.path / "etc" / "master-users"
    masters.write_text(f"{MASTER_USER}:{{PLAIN}}{MASTER_PASSWORD}\n")
    for p in (users, masters):
        p.chmod(0o640)
        shutil.chown(p, group=users_group)
    shutil.chown(rd.path / "mail", mail_user, mail_group)
    check = subprocess.run(["doveconf", "-c", str(conf), "-n"], capture_output=True, text=True)
    if check.returncode != 0:
        raise RigError(f"doveconf rejected {conf}: {check.stderr.strip()}")
    shutil.rmtree(
        rd.path / "run", ignore_errors=True
    )  # stale sockets from an earlier start stall auth
    (rd.path / "run").mkdir(mode=0o755)
    log = rd.path / "log" / "dovecot.log"
    with open(rd.path / "log" / "dovecot.stderr", "ab") as err:
        proc = subprocess.Popen(
            taskset(cpus, ["dovecot", "-F", "-c", str(conf)]),
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )
    server = Server("dovecot", proc, ("127.0.0.1", ports.imap), log)
    try:
        wait_greeting(server, None, timeout=20)
    except RigError:
        server.stop()
        raise
    return server, ports


def dovecot_login_pids(dovecot: Server) -> list[int]:
    """The imap-login processes: for dovecot-direct they terminate TLS and relay, i.e. the 'proxy'."""
    return [p for p in procstat.tree(dovecot.pid) if "imap-login" in procstat.cmdline(p)]


def start_haproxy(rd: RunDir, proxy_port: int, cpus: set[int] | None, ctx) -> Server:
    if shutil.which("haproxy") is None:
        raise RigError("haproxy not installed: apt-get install -y haproxy")
    port = free_port()
    cfg = rd.path / "etc" / f"haproxy-{port}.cfg"
    cfg.write_text(
        render(
            HERE / "haproxy.cfg.in",
            {
                "PORT": str(port),
                "COMBINED_PEM": str(rd.combined),
                "PROXY_PORT": str(proxy_port),
                "MAXCONN": str(
                    max(100, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 100) // 2)
                ),
            },
        )
    )
    check = subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RigError(f"haproxy -c rejected {cfg}: {(check.stdout + check.stderr).strip()}")
    log = rd.path / "log" / f"haproxy-{port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            taskset(cpus, ["haproxy", "-db", "-f", str(cfg)]),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    server = Server("haproxy", proc, ("127.0.0.1", port), log)
    try:
        wait_greeting(server, ctx, timeout=10)
    except RigError:
        server.stop()
        raise
    return server


def gateway_available() -> str | None:
    """None if ``python -m gateway`` can be run, else why not (checked before spending a start on it)."""
    for name in ("cli.py", "__main__.py"):
        if (REPO / "gateway" / name).exists():
            break
    else:
        return f"{REPO / 'gateway'} has neither cli.py nor __main__.py yet"
    return None


#: What ``start_gateway`` runs (with ``--config FILE``): the gateway, or the bench's floor relay.
GATEWAY_COMMAND = ("-m", "gateway", "serve")
FLOOR_COMMAND = ("-m", "bench.floor")

#: Forward mode: the password goes to Dovecot, no second factor (what HAProxy compares to).
BENCH_POLICY = """\
[[rule]]
name = "bench: password only"
users = ["*"]
action = "allow"
mfa = "none"
"""


def create_app_password(config: Path, user: str, label: str = "bench") -> Credentials:
    """Create an app password with the gateway's own CLI (as an admin would) and return it.

    Runs before the gateway starts, so the store (``state/`` next to the config) is created by the
    CLI. On failure only the CLI's stderr is quoted: its stdout would hold the secret.
    """
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "app-password",
            "create",
            user,
            "--label",
            label,
            "--json",
            "--config",
            str(config),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    try:
        password = json.loads(proc.stdout)["password"] if proc.returncode == 0 else None
    except (ValueError, KeyError, TypeError):
        password = None
    if not isinstance(password, str) or not password:
        raise RigError(
            f"gateway app-password create {user} --config {config} exited {proc.returncode} "
            f"without a JSON 'password' on stdout; stderr:\n{proc.stderr.strip()[-2000:]}"
        )
    return Credentials(user, password)


def start_gateway(
    rd: RunDir,
    imap_port: int,
    cpus: set[int] | None,
    ctx,
    app_password_user: str | None = None,
    source: Path | None = None,
    name: str | None = None,
    workers: int = 1,
    redis: str | None = None,
    server_section: bool | None = None,
    command: tuple[str, ...] = GATEWAY_COMMAND,
) -> Server:
    """Run ``python -m gateway serve --config FILE`` on a fresh dir/port (config contract: bench/gateway.toml.in).

    ``command``: what runs with ``--config FILE`` instead (``FLOOR_COMMAND``: see
    :func:`start_floor`), so that every target built on the gateway's config gets the same
    rendering, certificate and pinning.

    ``redis``: a Redis URL for ``[state] redis`` (limiter state in Redis, not in the
    process or the workers' supervisor). ``server_section``: write ``[server] workers``
    (default: only for this tree; a ``source`` tree may predate the section).

    Forward mode by default (the client's password goes to Dovecot). With ``app_password_user``
    the gateway also gets the Dovecot master user, an app password is created for that user, and
    the returned server's ``creds`` hold it: logins then cost one scrypt in the gateway plus a
    master-user login to Dovecot. ``source``: run the gateway package of that source tree
    instead of this one (same interpreter and dependencies).
    """
    port = free_port()
    gdir = rd.path / f"gateway-{port}"
    gdir.mkdir()
    shutil.copy(rd.cert, gdir / "cert.pem")
    shutil.copy(rd.key, gdir / "key.pem")
    cfg = gdir / "gateway.toml"
    (gdir / "policies").mkdir()
    (gdir / "policies" / "00-bench.toml").write_text(BENCH_POLICY)
    master = ""
    if app_password_user:
        secret = gdir / "master.pass"
        secret.touch(mode=0o600)
        secret.write_text(MASTER_PASSWORD + "\n")
        master = f'master_user = "{MASTER_USER}"\nmaster_password_file = "master.pass"'
    cfg.write_text(
        render(
            HERE / "gateway.toml.in",
            {"PORT": str(port), "IMAP_PORT": str(imap_port), "MASTER": master,
             # An older tree (--baseline) may not know [server]; this one defaults to a
             # worker per CPU, so the section is always written for it.
             "SERVER": (f"[server]\nworkers = {workers}"
                        if (source is None if server_section is None else server_section)
                        else "")
             + (f'\n\n[state]\nredis = "{redis}"' if redis else ""),
             "METRICS_PORT": str(free_port())},
        )
    )
    creds = create_app_password(cfg, app_password_user) if app_password_user else None
    stderr_path = gdir / "stderr.log"
    tree = source or REPO
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with open(stderr_path, "ab") as out:
        proc = subprocess.Popen(
            taskset(cpus, [sys.executable, *command, "--config", str(cfg)]),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=tree,
            env=env,
        )
    name = name or ("gateway-app-password" if app_password_user else "gateway")
    server = Server(name, proc, ("127.0.0.1", port), stderr_path, creds=creds)
    try:
        wait_greeting(server, ctx, timeout=20)
    except RigError as e:
        server.stop()
        log = gdir / "gateway.log"  # written by the gateway only
        raise RigError(f"{e}\ngateway.log:\n{tail(log)}" if log.exists() else str(e)) from None
    return server


def start_floor(rd: RunDir, imap_port: int, cpus: set[int] | None, ctx) -> Server:
    """Run ``python -m bench.floor`` (the ``trio-floor`` target) on the gateway target's config.

    Same certificate, listener and backend as :func:`start_gateway` renders for the gateway,
    and pinned the same way, so the two differ only in what runs.
    """
    return start_gateway(rd, imap_port, cpus, ctx, name="trio-floor", command=FLOOR_COMMAND)
