"""``python -m bench.idle``: hold many logged-in idle sessions across the gateway's workers
and report its memory (PSS per process and in total), and Dovecot's.

    python -m bench.idle --sessions 10000 --workers 2

Method: one Dovecot in benchmark mode, with ``service imap { client_limit }`` raised so one
imap process serves many sessions (the default of one process per session would need
10,000 processes); one gateway with ``[server] workers = N``. Each session is a TLS
connection, LOGIN and nothing more. The gateway holds two descriptors per session (client
and backend), so a worker needs ``RLIMIT_NOFILE`` above 2 x its share: the limit is raised
as far as the hard limit allows and printed. PSS (from /proc/PID/smaps_rollup) counts
shared pages once in total, where RSS would count the interpreter's pages in every worker.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import procstat, rig, workloads
from bench.cli import BOB, raise_nofile
from bench.imapclient import client_context
from bench.workers import _ready

#: Appended to bench/dovecot.conf.in: many sessions per imap process (Dovecot merges this
#: block into the template's ``service imap``).
DOVECOT_MANY_PER_PROCESS = """
service imap {
  client_limit = 1000
  process_limit = 100
}
"""


def _open_files(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return -1


def _per_process(pids: list[int]) -> list[dict]:
    out = []
    for pid in pids:
        mem = procstat.memory([pid])
        out.append({"pid": pid, "cmd": procstat.cmdline(pid)[-60:], "pss_mib": mem.pss_kib / 1024,
                    "rss_mib": mem.rss_kib / 1024, "open_files": _open_files(pid)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, default=10000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=32, help="client threads opening sessions")
    p.add_argument("--hold", type=float, default=5.0, help="seconds to hold before measuring")
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "idle.json")
    args = p.parse_args(argv)
    nofile = raise_nofile()
    print(f"RLIMIT_NOFILE {nofile}", file=sys.stderr)
    rd = rig.RunDir.create()
    ctx = client_context(str(rd.cert))
    dovecot, ports = rig.start_dovecot(rd, None, extra=DOVECOT_MANY_PER_PROCESS)
    gateway = None
    conns: list = []
    try:
        gateway = rig.start_gateway(rd, ports.imap, None, ctx, workers=args.workers)
        _ready(gateway, ctx)
        time.sleep(1.0)
        gw_pids = procstat.tree(gateway.pid)
        before = procstat.memory(gw_pids)
        started = time.perf_counter()
        conns, errors = workloads.open_sessions(gateway.addr, ctx, BOB, args.sessions,
                                                threads=args.threads)
        opened = time.perf_counter() - started
        print(f"opened {len(conns)} sessions in {opened:.0f} s; errors: {errors}",
              file=sys.stderr)
        time.sleep(args.hold)
        alive = 0
        for conn in conns[:: max(1, len(conns) // 200)]:  # a sample answers NOOP
            try:
                conn.command(b"n", b"NOOP")
                alive += 1
            except workloads.ClientErrors:
                pass
        gw_pids = procstat.tree(gateway.pid)
        processes = _per_process(gw_pids)
        after = procstat.memory(gw_pids)
        dc_pids = procstat.tree(dovecot.pid)
        dc = procstat.memory(dc_pids)
        n = len(conns)
        result = {
            "sessions": n,
            "workers": args.workers,
            "rlimit_nofile": nofile,
            "open_seconds": round(opened, 1),
            "noop_sample_ok": alive,
            "errors": errors,
            "gateway_processes": processes,
            "gateway_pss_mib_before": before.pss_kib / 1024,
            "gateway_pss_mib_total": after.pss_kib / 1024,
            "gateway_pss_kib_per_session": (after.pss_kib - before.pss_kib) / max(1, n),
            "dovecot_processes": len(dc_pids),
            "dovecot_pss_mib_total": dc.pss_kib / 1024,
        }
    finally:
        workloads.close_all(conns)
        if gateway is not None:
            gateway.stop(60)
        dovecot.stop()
        rd.remove()
    for proc in result["gateway_processes"]:
        print(f"  pid {proc['pid']}: PSS {proc['pss_mib']:.1f} MiB, {proc['open_files']} fds  "
              f"{proc['cmd']}")
    print(f"{n} sessions on {args.workers} workers: gateway PSS {result['gateway_pss_mib_total']:.1f}"
          f" MiB in total ({result['gateway_pss_kib_per_session']:.1f} KiB per session); "
          f"Dovecot {result['dovecot_pss_mib_total']:.1f} MiB in {len(dc_pids)} processes")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
