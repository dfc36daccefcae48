"""``python -m bench``: Dovecot direct vs HAProxy vs the gateway, same workloads, one process.

Method (why each step is there):
- one Dovecot in benchmark mode, HAProxy and the gateway, all started here and stopped by PID;
- the client runs on the first allowed core, the servers on the others (taskset), so the client's
  CPU does not come out of the servers' budget;
- targets are interleaved within each round (A B C A B C ...) and each metric is the median over
  rounds: on a shared 2-core VM drift between minutes is larger than the differences measured;
- CPU seconds of client, proxy and Dovecot are recorded for every run, so a figure limited by the
  client (or by Dovecot) is visible as such;
- idle-session memory is measured on freshly started proxies (allocators keep freed memory), as
  PSS from /proc/PID/smaps_rollup (RSS counts shared libraries in full);
- "gateway-app-password" is a second gateway whose client logs in with an app password (scrypt in
  the gateway, then a master-user login to Dovecot): it runs only the login workload, since once
  logged in it relays exactly like "gateway";
- "trio-floor" is ``python -m bench.floor`` on the gateway's config: a TLS login relay built from
  the gateway's I/O layer with no gateway features, i.e. the floor of the gateway/haproxy ratio
  that trio and that layer cost (the line "floor share" under the table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench import procstat, rig, workloads
from bench.imapclient import Credentials, client_context
from bench.stats import (
    BASELINE,
    FLOOR,
    LOGIN_ONLY,
    TARGETS,
    floor_note,
    median,
    ratio_note,
    short_error,
    table,
)

WORKLOADS = ("logins", "noop", "fetch", "memory")
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
BOB = Credentials("bob", "bobpass")
SATURATED = 0.85  # client CPU share of one core above which a figure may be the client's limit


@dataclass
class Settings:
    rounds: int = 5
    sessions: int = 2000
    clients: int = 32
    login_seconds: float = 3.0
    noop_count: int = 3000
    noop_connections: int = 16
    noop_seconds: float = 2.0
    fetch_clients: int = 4
    fetch_messages: int = 1000
    message_size: int = 100 * 1024
    only: tuple[str, ...] = WORKLOADS
    targets: tuple[str, ...] = tuple(t for t in TARGETS if t != BASELINE)
    baseline: Path | None = None
    keep: bool = False
    output: Path = RESULTS


def parse_args(argv: list[str] | None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 rounds, 1 s of logins, 100 messages, 200 sessions (< 60 s)",
    )
    p.add_argument(
        "--rounds", type=int, help="interleaved rounds per workload (default 5, quick 2)"
    )
    p.add_argument(
        "--sessions", type=int, help="idle sessions for the memory workload (default 2000)"
    )
    p.add_argument(
        "--clients", type=int, help="concurrent clients in the login workload (default 32)"
    )
    p.add_argument("--login-seconds", type=float, help="length of one login run (default 3)")
    p.add_argument("--noop-count", type=int, help="NOOPs timed per run (default 3000)")
    p.add_argument(
        "--noop-connections", type=int,
        help="connections of the parallel NOOP run (default 16)",
    )
    p.add_argument(
        "--noop-seconds", type=float, help="length of one parallel NOOP run (default 2)"
    )
    p.add_argument(
        "--fetch-messages", type=int, help="messages of 100 KiB in the mailbox (default 1000)"
    )
    p.add_argument(
        "--fetch-clients", type=int, help="clients of the parallel FETCH run (default 4)"
    )
    p.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {','.join(WORKLOADS)}",
    )
    p.add_argument(
        "--targets",
        default=",".join(t for t in TARGETS if t != BASELINE),
        help=f"comma-separated subset of {','.join(TARGETS)}",
    )
    p.add_argument(
        "--baseline", type=Path, metavar="TREE",
        help="also run the gateway of another source tree (e.g. a git worktree of the commit "
             f"before a change) as target {BASELINE}, in the same rounds",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the temp dir (configs, logs) afterwards"
    )
    p.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    a = p.parse_args(argv)
    s = Settings()
    if a.quick:
        s = Settings(
            rounds=2,
            sessions=200,
            clients=16,
            login_seconds=1.0,
            noop_count=300,
            noop_seconds=0.5,
            fetch_messages=100,
        )
    for name in ("rounds", "sessions", "clients", "login_seconds", "noop_count", "fetch_messages",
                 "noop_connections", "noop_seconds", "fetch_clients"):
        if getattr(a, name) is not None:
            setattr(s, name, getattr(a, name))
    s.only = _subset(p, "--only", a.only, WORKLOADS)
    s.targets = _subset(p, "--targets", a.targets, TARGETS)
    if a.baseline is not None:
        if not (a.baseline / "gateway" / "__main__.py").exists():
            p.error(f"--baseline {a.baseline}: no gateway/__main__.py there")
        s.baseline = a.baseline.resolve()
        if BASELINE not in s.targets:
            s.targets = (*s.targets, BASELINE)
    s.keep, s.output = a.keep, a.output
    if (
        min(s.rounds, s.sessions, s.clients, s.noop_count, s.fetch_messages,
            s.noop_connections, s.fetch_clients) < 1
        or s.login_seconds <= 0
        or s.noop_seconds <= 0
    ):
        p.error(
            "--rounds, --sessions, --clients, --noop-count, --noop-connections, --noop-seconds, "
            "--fetch-messages, --fetch-clients, --login-seconds must be > 0"
        )
    return s


def _subset(
    p: argparse.ArgumentParser, flag: str, value: str, allowed: tuple[str, ...]
) -> tuple[str, ...]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        p.error(f"{flag}: unknown {unknown or 'empty list'}; choose from {','.join(allowed)}")
    return tuple(v for v in allowed if v in chosen)  # canonical order


def split_cpus(allowed: set[int]) -> tuple[set[int] | None, set[int] | None]:
    """(client cores, server cores): the first core for the client, the rest for the servers."""
    if len(allowed) < 2:
        return None, None
    first = min(allowed)
    return {first}, allowed - {first}


def raise_nofile(want: int = 65536) -> int:
    """Raise RLIMIT_NOFILE for us and the servers we start (N sessions = N client + 2N proxy fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target_hard in (max(hard, want), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, target_hard), target_hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine() -> dict:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])

    def version(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
            return out.splitlines()[0].strip() if out else ""
        except OSError:
            return ""

    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "mem_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "dovecot": version(["dovecot", "--version"]),
        "haproxy": version(["haproxy", "-v"]),
    }


@dataclass
class Target:
    """One thing the client connects to, and the processes whose CPU and memory are its cost."""

    name: str
    addr: tuple[str, int]
    proxy_pids: Callable[[], list[int]]
    server: rig.Server | None = None  # None for dovecot-direct (Dovecot itself is shared)
    creds: Credentials = field(default_factory=lambda: BOB, repr=False)  # what clients log in with


@dataclass
class Bench:
    settings: Settings
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))
    rd: rig.RunDir | None = None
    ctx: ssl.SSLContext | None = None
    dovecot: rig.Server | None = None
    ports: rig.DovecotPorts | None = None
    server_cpus: set[int] | None = None
    targets: dict[str, Target] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    runs: dict[str, dict[str, list[dict]]] = field(default_factory=dict)
    tls: dict[str, dict[str, str]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    # --- servers ---

    def start(self) -> None:
        client_cpus, self.server_cpus = split_cpus(os.sched_getaffinity(0))
        self.extra["cpus"] = {
            "client": sorted(client_cpus or []),
            "servers": sorted(self.server_cpus or []),
        }
        self.extra["nofile"] = raise_nofile()
        self.rd = rig.RunDir.create()
        self.log(f"bench: run dir {self.rd.path}")
        self.ctx = client_context(str(self.rd.cert))
        self.dovecot, self.ports = rig.start_dovecot(self.rd, self.server_cpus)
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)  # after the servers: they must not inherit it
        if "dovecot-direct" in self.settings.targets:
            self.targets["dovecot-direct"] = Target(
                "dovecot-direct", ("127.0.0.1", self.ports.imaps), self._login_pids
            )
        if "haproxy" in self.settings.targets:
            self._start_proxy("haproxy")
        # the floor too: it is built from this tree's gateway package
        for name in ("gateway", "gateway-app-password", FLOOR, BASELINE):
            if name in self.settings.targets:
                why_not = rig.gateway_available()
                if why_not:
                    self.errors[name] = f"not started: {why_not}"
                else:
                    self._start_proxy(name)
        for name, t in self.targets.items():
            try:
                conn = workloads.Conn.open(t.addr, self.ctx)
                self.tls[name] = conn.tls_info()
                conn.close()
            except workloads.ClientErrors as e:
                self.tls[name] = {"error": str(e)}

    def _login_pids(self) -> list[int]:
        # looked up through self: the memory workload restarts Dovecot
        return rig.dovecot_login_pids(self.dovecot)

    def _start_proxy(self, name: str) -> None:
        """(Re)start HAProxy, a gateway or the floor on a fresh port; a failure disables that target."""
        old = self.targets.pop(name, None)
        if old and old.server:
            old.server.stop()
        try:
            if name == "haproxy":
                server = rig.start_haproxy(self.rd, self.ports.proxy, self.server_cpus, self.ctx)
            elif name == "gateway":
                server = rig.start_gateway(self.rd, self.ports.imap, self.server_cpus, self.ctx)
            elif name == FLOOR:
                server = rig.start_floor(self.rd, self.ports.imap, self.server_cpus, self.ctx)
            elif name == BASELINE:
                server = rig.start_gateway(self.rd, self.ports.imap, self.server_cpus, self.ctx,
                                           source=self.settings.baseline, name=BASELINE)
            else:
                server = rig.start_gateway(
                    self.rd, self.ports.imap, self.server_cpus, self.ctx, app_password_user=BOB.user
                )
        except rig.RigError as e:
            self.errors[name] = f"failed to start: {e}"
            self.log(f"bench: {name} failed to start:\n{e}")
            return
        self.targets[name] = Target(name, server.addr, server.pids, server, server.creds or BOB)
        self.log(f"bench: {name} pid {server.pid} on {server.addr[0]}:{server.addr[1]}")

    def stop(self) -> None:
        for t in self.targets.values():
            if t.server:
                t.server.stop()
        if self.dovecot:
            self.dovecot.stop()
        if self.rd and not self.settings.keep:
            self.rd.remove()
        elif self.rd:
            self.log(f"bench: kept {self.rd.path}")

    @property
    def n_server_cpus(self) -> int:
        return len(self.server_cpus) if self.server_cpus else os.cpu_count() or 1

    def usable(self, name: str, workload: str) -> Target | None:
        t = self.targets.get(name)
        if t is None or (name in LOGIN_ONLY and workload != "logins"):
            return None
        if t.server and not t.server.alive():
            self.errors.setdefault(
                name,
                f"{name} exited (rc {t.server.proc.returncode}); last lines of "
                f"{t.server.log}:\n{rig.tail(t.server.log)}",
            )
            return None
        return None if name in self.errors else t

    # --- workloads ---

    def run_rounds(
        self, workload: str, fn: Callable[[Target], dict], summary: Callable[[dict], str]
    ) -> None:
        """Interleave targets within each round; a target that fails drops out with its error recorded."""
        runs = self.runs.setdefault(workload, {})
        for r in range(1, self.settings.rounds + 1):
            parts = []
            for name in TARGETS:
                t = self.usable(name, workload)
                if t is None:
                    continue
                try:
                    result, usage = workloads.metered(
                        lambda t=t: fn(t), t.proxy_pids, self.dovecot.pid
                    )
                except workloads.ClientErrors as e:
                    self.errors[name] = f"{workload}: {type(e).__name__}: {e}"
                    self.log(f"bench: {name} failed in {workload}: {e}")
                    continue
                result.update(usage.as_dict())
                runs.setdefault(name, []).append(result)
                parts.append(f"{name} {summary(result)}")
            self.log(f"{workload} round {r}/{self.settings.rounds}: " + ", ".join(parts))

    def logins(self) -> None:
        s = self.settings
        for (
            name
        ) in TARGETS:  # warm-up: Dovecot forks its imap processes, the proxies load their code
            t = self.usable(name, "logins")
            if t:
                try:
                    workloads.logins(
                        t.addr, self.ctx, t.creds, s.clients, min(0.5, s.login_seconds)
                    )
                except workloads.ClientErrors:
                    pass  # reported by the measured runs
        self.run_rounds(
            "logins",
            lambda t: workloads.logins(t.addr, self.ctx, t.creds, s.clients, s.login_seconds),
            lambda r: f"{r['rate']:.0f}/s (client CPU {r['client_cpu_s'] / r['wall_s']:.0%})",
        )

    @staticmethod
    def _proxy_cpu(t: Target) -> Callable[[], float]:
        return lambda: procstat.cpu_seconds(t.proxy_pids())

    def noop(self) -> None:
        s = self.settings
        self.run_rounds(
            "noop",
            lambda t: workloads.noop(t.addr, self.ctx, BOB, s.noop_count, min(200, s.noop_count),
                                     self._proxy_cpu(t)),
            lambda r: f"p50 {r['p50_us']:.0f} p99 {r['p99_us']:.0f} µs",
        )
        self.run_rounds(
            "noop_parallel",
            lambda t: workloads.noop_parallel(t.addr, self.ctx, BOB, s.noop_connections,
                                              s.noop_seconds, self._proxy_cpu(t)),
            lambda r: f"{r['rate']:.0f} NOOPs/s",
        )

    def fetch(self) -> None:
        s = self.settings
        plain = ("127.0.0.1", self.ports.imap)
        secs = workloads.populate(plain, BOB, s.fetch_messages, s.message_size)
        self.extra["populate_s"] = round(secs, 3)
        self.log(
            f"fetch: populated {s.fetch_messages} x {s.message_size} B by MULTIAPPEND in {secs:.2f}s"
        )
        workloads.fetch(
            plain, None, BOB, s.fetch_messages
        )  # warm Dovecot's index and the page cache
        self.run_rounds(
            "fetch",
            lambda t: workloads.fetch(t.addr, self.ctx, BOB, s.fetch_messages),
            lambda r: f"{r['mb_s']:.0f} MB/s",
        )
        self.run_rounds(
            "fetch_parallel",
            lambda t: workloads.fetch_parallel(t.addr, self.ctx, BOB, s.fetch_messages,
                                               s.fetch_clients, self._proxy_cpu(t)),
            lambda r: f"{r['mb_s']:.0f} MB/s",
        )

    def memory(self) -> None:
        """Idle authenticated sessions on freshly started servers, one target at a time."""
        n = self.settings.sessions
        runs = self.runs.setdefault("memory", {})
        for name in TARGETS:
            if name not in self.targets or name in self.errors or name in LOGIN_ONLY:
                continue
            if name == "dovecot-direct":
                self.dovecot.stop()
                self.dovecot, _ = rig.start_dovecot(self.rd, self.server_cpus, self.ports)
            else:
                self._start_proxy(name)
            t = self.usable(name, "memory")
            if t is None:
                continue
            try:
                result = self._measure_idle(t, n)
            except workloads.ClientErrors as e:
                self.errors[name] = f"memory: {type(e).__name__}: {e}"
                self.log(f"bench: {name} failed in memory: {e}")
                continue
            runs[name] = [result]
            self.log(
                f"memory: {name} {result['sessions']} sessions, PSS {result['pss_kib_per_session']:.1f} "
                f"KiB/session, RSS {result['rss_kib_per_session']:.1f} KiB/session"
            )

    def _measure_idle(self, t: Target, n: int) -> dict:
        # one session first, so lazily built state (TLS context, imports, pools) is baseline, not per-session
        conns, errs = workloads.open_sessions(t.addr, self.ctx, BOB, 1, threads=1)
        workloads.close_all(conns)
        if errs:
            raise workloads.ImapError(errs[0])
        time.sleep(0.5)
        pids = t.proxy_pids()
        before = procstat.memory(pids)
        t0 = time.perf_counter()
        conns, errs = workloads.open_sessions(t.addr, self.ctx, BOB, n)
        opened = time.perf_counter() - t0
        try:
            if not conns:
                raise workloads.ImapError(f"no session opened: {errs[0] if errs else '?'}")
            time.sleep(1.0)
            pids = t.proxy_pids()
            after = procstat.memory(pids)
        finally:
            workloads.close_all(conns)
        time.sleep(1.0)
        closed = procstat.memory(t.proxy_pids())
        k = len(conns)
        out = {
            "sessions": k,
            "open_s": round(opened, 2),
            "processes": len(pids),
            "rss_kib_before": before.rss_kib,
            "pss_kib_before": before.pss_kib,
            "rss_kib_after": after.rss_kib,
            "pss_kib_after": after.pss_kib,
            "pss_kib_after_close": closed.pss_kib,
            "rss_kib_per_session": (after.rss_kib - before.rss_kib) / k,
            "pss_kib_per_session": (after.pss_kib - before.pss_kib) / k,
        }
        if errs:
            out["errors"] = errs
        return out

    # --- results ---

    def medians(
        self, workload: str, key: str, per: Callable[[dict], float] | None = None
    ) -> dict[str, float]:
        out = {}
        for name, rounds in self.runs.get(workload, {}).items():
            values = [per(r) if per else r[key] for r in rounds]
            values = [v for v in values if v is not None]
            if values:
                out[name] = median(values)
        return out

    def rows(self) -> list[tuple[str, dict[str, float]]]:
        s, rows = self.settings, []
        if "logins" in self.runs:
            rows += [
                (
                    f"TLS logins/s ({s.clients} clients, higher is better)",
                    self.medians("logins", "rate"),
                ),
                (
                    # every login of the run over its whole length: no client is in flight at
                    # either end, so on a saturated core this is the steady-state rate even when a
                    # login takes ~1 s (app passwords: 32 clients x one scrypt each), where the
                    # window count above loses the ramp-up before the first logins complete
                    "TLS logins/s sustained (all completed / wall time)",
                    self.medians("logins", "", lambda r: r["completed"] / r["wall_s"]),
                ),
                (
                    "login: proxy CPU ms per login",
                    self.medians("logins", "", lambda r: 1000 * r["proxy_cpu_s"] / r["completed"]),
                ),
                (
                    "login: server core busy % (proxy + Dovecot)",
                    self.medians(
                        "logins",
                        "",
                        lambda r: (
                            100
                            * (r["proxy_cpu_s"] + r["backend_cpu_s"])
                            / r["wall_s"]
                            / self.n_server_cpus
                        ),
                    ),
                ),
                (
                    "login: client CPU % of one core",
                    self.medians("logins", "", lambda r: 100 * r["client_cpu_s"] / r["wall_s"]),
                ),
            ]
        if "noop" in self.runs:
            rows += [
                ("NOOP round trip p50 µs", self.medians("noop", "p50_us")),
                ("NOOP round trip p99 µs", self.medians("noop", "p99_us")),
                (
                    "NOOP: proxy CPU µs per NOOP",
                    self.medians("noop", "", lambda r: 1e6 * r["proxy_cpu_timed_s"] / r["count"]),
                ),
            ]
        if "noop_parallel" in self.runs:
            rows += [
                (
                    f"NOOPs/s over {s.noop_connections} connections",
                    self.medians("noop_parallel", "rate"),
                ),
                (
                    f"NOOP x {s.noop_connections}: proxy CPU µs per NOOP",
                    self.medians("noop_parallel", "",
                                 lambda r: 1e6 * r["proxy_cpu_timed_s"] / r["noops"]),
                ),
            ]
        if "fetch" in self.runs:
            rows += [
                (f"FETCH {s.fetch_messages} x 100 KiB, MB/s", self.medians("fetch", "mb_s")),
                (
                    "FETCH: MB per proxy CPU-second",
                    self.medians(
                        "fetch",
                        "",
                        lambda r: r["bytes"] / 1e6 / r["proxy_cpu_s"] if r["proxy_cpu_s"] else None,
                    ),
                ),
            ]
        if "fetch_parallel" in self.runs:
            rows += [
                (
                    f"FETCH, {s.fetch_clients} clients at once, MB/s",
                    self.medians("fetch_parallel", "mb_s"),
                ),
                (
                    f"FETCH x {s.fetch_clients}: MB per proxy CPU-second",
                    self.medians(
                        "fetch_parallel",
                        "",
                        lambda r: (r["bytes"] / 1e6 / r["proxy_cpu_timed_s"]
                                   if r["proxy_cpu_timed_s"] else None),
                    ),
                ),
            ]
        if "memory" in self.runs:
            rows += [
                (
                    f"{s.sessions} idle sessions: proxy PSS KiB/session",
                    self.medians("memory", "pss_kib_per_session"),
                ),
                (
                    f"{s.sessions} idle sessions: proxy RSS KiB/session",
                    self.medians("memory", "rss_kib_per_session"),
                ),
                (
                    f"{s.sessions} idle sessions: proxy PSS total MiB",
                    self.medians("memory", "", lambda r: r["pss_kib_after"] / 1024),
                ),
            ]
        return rows

    def saturation_notes(self) -> list[str]:
        notes = []
        for workload, by_target in self.runs.items():
            for name, rounds in by_target.items():
                shares = [r["client_cpu_s"] / r["wall_s"] for r in rounds if r.get("wall_s")]
                if shares and median(shares) > SATURATED:
                    notes.append(
                        f"note: client CPU {median(shares):.0%} of its core in {workload} against "
                        f"{name}: that figure may be the client's limit, not the server's"
                    )
        return notes


def main(argv: list[str] | None = None) -> int:
    s = parse_args(argv)
    started, t0 = datetime.now(UTC), time.perf_counter()
    bench = Bench(s)
    bench.extra["loadavg_start"] = [
        round(x, 2) for x in os.getloadavg()
    ]  # others share this machine
    try:
        bench.start()
        for w in ("logins", "noop", "fetch", "memory"):
            if w in s.only:
                getattr(bench, w)()
    except rig.RigError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    finally:
        bench.stop()
    bench.extra["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    rows = bench.rows()
    text = table(rows, {k: short_error(v) for k, v in bench.errors.items()})
    ratios = []
    if bench.settings.baseline is not None:
        ratios.append(ratio_note(rows, numerator="gateway", denominator=BASELINE,
                                 label=f"change ({bench.settings.baseline})"))
    # logins/s and CPU per login: the busy and client-CPU rows' ratios mean nothing
    ratios.append(
        ratio_note([r for r in rows if r[0].startswith(("TLS logins/s", "login: proxy CPU"))])
    )
    ratios.append(floor_note(rows))
    notes = [n for n in ratios if n] + bench.saturation_notes()
    info = machine()
    print(f"{started:%Y-%m-%d %H:%M} UTC, {info['cpu'] or 'unknown CPU'} ({info['cpus']} CPUs), "
          f"load average {' '.join(map(str, bench.extra['loadavg_start']))} at the start\n")
    print(text)
    for note in notes:
        print(note)
    command = " ".join(
        ["python -m bench", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]
    )
    doc = {
        "command": command,
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t0, 1),
        "machine": info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()},
        "tls": bench.tls,
        "errors": bench.errors,
        "notes": notes,
        **bench.extra,
        "table": [{"metric": m, **v} for m, v in rows],
        "runs": bench.runs,
    }
    s.output.parent.mkdir(parents=True, exist_ok=True)
    s.output.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\n{command}: {doc['duration_s']} s; results in {s.output}", file=sys.stderr)
    # a target that failed is a failed benchmark (the table and JSON still show what did run)
    return 1 if bench.errors else 0
