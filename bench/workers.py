"""``python -m bench.workers``: login throughput of the gateway with 1 worker against N.

Method: one Dovecot in benchmark mode (bench/dovecot.conf.in) and one gateway per worker
count, all started here and stopped by PID. Nothing is pinned: the client may run on any
core (with ``[server] workers = 2`` on a 2-core machine the gateway wants both, so
pinning the client to one of them would take that core from a worker). Rounds are
interleaved (1 2 1 2 ...) and the median is reported, since a shared machine drifts more
between minutes than the difference measured. Each run is ``bench.workloads.logins``:
``clients`` threads loop connect + TLS + LOGIN + LOGOUT for ``seconds``; the CPU
seconds of the gateway (supervisor and workers), Dovecot and the client are recorded,
so a figure limited by the client or by Dovecot shows as such.

With ``--redis`` the limiter's state is in a redis-server started here (``[state] redis``,
as with several gateway hosts) instead of the process (1 worker) or the supervisor (N
workers); its CPU seconds are recorded too.

With ``--baseline TREE`` each worker count also runs the gateway of another source tree
(e.g. a worktree of the previous commit; it must know ``[server] workers``), in the same
interleaved rounds, so a change is compared under the same load.

    python -m bench.workers --workers 1,2 --rounds 5 --seconds 5 --clients 32 [--redis]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench import procstat, rig, workloads
from bench.cli import BOB, raise_nofile
from bench.imapclient import client_context
from bench.stats import median
from tests.support.redis import start_redis


def _ready(server: rig.Server, ctx, clients: int = 16, timeout: float = 120.0) -> None:
    """Until ``clients`` logins in a row succeed: every worker accepts (connections queued
    for a worker still starting would otherwise wait inside the first measured run)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            workloads.logins(server.addr, ctx, BOB, clients, 1.0)
            return
        except workloads.ClientErrors:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n")[0])
    p.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=5.0, help="length of one login run")
    p.add_argument("--clients", type=int, default=32, help="concurrent client threads")
    p.add_argument("--redis", action="store_true",
                   help="limiter state in a redis-server started here ([state] redis)")
    p.add_argument("--baseline", type=Path, default=None,
                   help="also run this source tree's gateway, interleaved (label N@base)")
    p.add_argument("--output", type=Path, default=None,
                   help="results file (default bench/results/workers.json, "
                   "workers-redis.json with --redis)")
    args = p.parse_args(argv)
    if args.output is None:
        name = "workers-redis.json" if args.redis else "workers.json"
        args.output = Path(__file__).parent / "results" / name
    counts = [int(n) for n in args.workers.split(",")]
    # Each configuration: (label, workers, source tree or None for this one).
    configs = [(str(n), n, None) for n in counts]
    if args.baseline is not None:
        configs = [c for n in counts
                   for c in ((f"{n}@base", n, args.baseline.resolve()), (str(n), n, None))]
    raise_nofile()
    rd = rig.RunDir.create()
    ctx = client_context(str(rd.cert))
    dovecot, ports = rig.start_dovecot(rd, None)
    redis = start_redis() if args.redis else None
    gateways: dict[str, rig.Server] = {}
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in configs}
    try:
        for label, n, source in configs:
            gateways[label] = rig.start_gateway(rd, ports.imap, None, ctx, workers=n,
                                                name=f"gateway-{label}w", source=source,
                                                server_section=True,
                                                redis=redis.url if redis else None)
            _ready(gateways[label], ctx)
        for r in range(args.rounds):
            for label, _, _ in configs:
                server = gateways[label]
                gw_pids = procstat.tree(server.pid)
                dc_pids = procstat.tree(dovecot.pid)
                gw0, dc0 = procstat.cpu_seconds(gw_pids), procstat.cpu_seconds(dc_pids)
                rs0 = procstat.cpu_seconds([redis.proc.pid]) if redis else 0.0
                sup0 = procstat.cpu_seconds([server.pid])
                cl0 = os.times()
                res = workloads.logins(server.addr, ctx, BOB, args.clients, args.seconds)
                cl1 = os.times()
                res["gateway_cpu_s"] = procstat.cpu_seconds(gw_pids) - gw0
                # With workers: the supervisor's share (connection caps and limiter state
                # answered over the worker links); with one worker it is the worker itself.
                res["main_process_cpu_s"] = procstat.cpu_seconds([server.pid]) - sup0
                res["gateway_cpu_ms_per_login"] = 1000 * res["gateway_cpu_s"] / max(
                    1, res["completed"])
                res["dovecot_cpu_s"] = procstat.cpu_seconds(procstat.tree(dovecot.pid)) - dc0
                res["client_cpu_s"] = (cl1.user + cl1.system) - (cl0.user + cl0.system)
                res["redis_cpu_s"] = (procstat.cpu_seconds([redis.proc.pid]) - rs0
                                      if redis else 0.0)
                res["gateway_processes"] = len(gw_pids)
                runs[label].append(res)
                print(f"round {r + 1}: {label} worker(s): {res['rate']:.0f} logins/s "
                      f"(gateway {res['gateway_cpu_s']:.1f} CPU s = "
                      f"{res['gateway_cpu_ms_per_login']:.2f} ms/login, of which main process "
                      f"{res['main_process_cpu_s']:.1f}; dovecot "
                      f"{res['dovecot_cpu_s']:.1f}, client {res['client_cpu_s']:.1f}, "
                      + (f"redis {res['redis_cpu_s']:.2f}, " if redis else "")
                      + f"errors {res['errors']})", file=sys.stderr)
    finally:
        for server in gateways.values():
            server.stop(30)
        dovecot.stop()
        if redis is not None:
            redis.stop()  # by PID: the server started above
        rd.remove()
    summary = {
        "cpus": sorted(os.sched_getaffinity(0)),
        "loadavg_at_end": os.getloadavg(),
        "settings": {"rounds": args.rounds, "seconds": args.seconds, "clients": args.clients,
                     "state": "redis" if args.redis else "in-process"},
        "baseline": str(args.baseline) if args.baseline else None,
        "median_logins_per_s": {k: median([r["rate"] for r in v]) for k, v in runs.items()},
        "median_gateway_cpu_ms_per_login": {
            k: median([r["gateway_cpu_ms_per_login"] for r in v]) for k, v in runs.items()},
        "median_main_process_cpu_ms_per_login": {
            k: median([1000 * r["main_process_cpu_s"] / max(1, r["completed"]) for r in v])
            for k, v in runs.items()},
        "runs": runs,
    }
    for label, _, source in configs:
        base = summary["median_logins_per_s"][f"{counts[0]}@base" if source else str(counts[0])]
        rate = summary["median_logins_per_s"][label]
        cpu = summary["median_gateway_cpu_ms_per_login"][label]
        main_cpu = summary["median_main_process_cpu_ms_per_login"][label]
        print(f"{label} worker(s): median {rate:.0f} logins/s ({rate / base:.2f}x), "
              f"gateway CPU {cpu:.2f} ms per login (main process {main_cpu:.2f})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2))
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
