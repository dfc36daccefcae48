"""``python -m fuzz``: run every target (or some) for a total number of inputs, report.

    python -m fuzz --total 1000000 --seed 1            # all targets, 2 worker processes
    python -m fuzz --total 50000 --target preauth      # one target
    python -m fuzz --replay fuzz-out/failures/preauth-1.bin --target preauth

Each target runs in its own worker process (``--jobs`` at a time). The run is
deterministic for a given ``--seed``, engine and gateway source: the ``digest`` column
hashes every input a target ran. Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fuzz import worker

TARGET_NAMES = ("preauth", "preauth-oauth", "commands", "commands-scoped", "responses",
                "sasl", "proxyproto", "authpolicy")
WEIGHTS = {"preauth": 0.25, "preauth-oauth": 0.10, "commands": 0.15, "commands-scoped": 0.15,
           "responses": 0.15, "sasl": 0.10, "proxyproto": 0.05, "authpolicy": 0.05}
_ADDR_NO_RANDOMIZE = 0x0040000
ROOT = Path(__file__).resolve().parent.parent


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def quotas(total: int, names: list[str]) -> dict[str, int]:
    """Split ``total`` over ``names`` by weight (largest remainder; sums to ``total``)."""
    weight = sum(WEIGHTS[n] for n in names)
    exact = {n: total * WEIGHTS[n] / weight for n in names}
    out = {n: int(v) for n, v in exact.items()}
    rest = total - sum(out.values())
    for n in sorted(names, key=lambda n: (out[n] - exact[n], names.index(n)))[:rest]:
        out[n] += 1
    return out


def _no_aslr() -> None:
    """In the worker, before exec: no address-space randomization. libFuzzer's comparison
    tracing sees object addresses; with ASLR two runs of one seed could differ."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        cur = libc.personality(0xFFFFFFFF)
        if cur != -1:
            libc.personality(cur | _ADDR_NO_RANDOMIZE)
    except (OSError, AttributeError):
        pass


def _worker_env() -> dict[str, str]:
    """A fixed environment (not the caller's): see fuzz.worker's docstring."""
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0",
            "LC_ALL": "C.UTF-8"}


def _run_dir() -> Path:
    """The workers' directory, ``/tmp/fuzz-XXXXXXXX``: its path has the same length in
    every run, whatever ``--out`` is (see fuzz.worker's docstring)."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    run = Path(tempfile.mkdtemp(prefix="fuzz-", dir=base))
    (run / "artifacts").mkdir()
    return run


def run_workers(jobs: list[dict], parallel: int, out: Path) -> dict[str, dict]:
    """Run one worker process per target config, ``parallel`` at a time."""
    import fuzz.targets  # noqa: F401  (bytecode caches written now, not by the first worker)

    run = _run_dir()
    try:
        return _run_workers(jobs, parallel, out, run)
    finally:
        shutil.rmtree(run, ignore_errors=True)


def _run_workers(jobs: list[dict], parallel: int, out: Path, run: Path) -> dict[str, dict]:
    results: dict[str, dict] = {}
    waiting = list(jobs)
    running: list[tuple[subprocess.Popen, dict, object, float]] = []
    env = _worker_env()
    while waiting or running:
        while waiting and len(running) < parallel:
            cfg = waiting.pop(0)
            (run / f"{cfg['target']}.json").write_text(json.dumps(cfg))
            log = open(out / "logs" / f"{cfg['target']}.log", "wb")  # noqa: SIM115
            proc = subprocess.Popen(
                [sys.executable, "-c", worker.LAUNCH, f"{cfg['target']}.json"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(run),
                preexec_fn=_no_aslr,
            )
            running.append((proc, cfg, log, time.monotonic()))
        time.sleep(0.05)
        for item in list(running):
            proc, cfg, log, started = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()  # type: ignore[attr-defined]
            for art in run.glob(f"artifacts/{cfg['target']}-*"):
                shutil.move(str(art), str(out / "artifacts" / art.name))
            r = _collect(proc.returncode, cfg, out, run, time.monotonic() - started)
            results[cfg["target"]] = r
            print(f"  {cfg['target']}: {r['inputs']} inputs in {r['seconds']:.1f} s, "
                  f"{len(r['failures'])} failure(s)", flush=True)
    return results


def _collect(code: int, cfg: dict, out: Path, run: Path, elapsed: float) -> dict:
    path = run / worker.result_name(cfg["target"])
    if code == 0 and path.exists():
        r = json.loads(path.read_text())
        shutil.copy(path, out / "work" / path.name)
        return r
    log = (out / "logs" / f"{cfg['target']}.log").read_text(errors="replace")
    tail = "\n".join(log.splitlines()[-40:])
    artifacts = sorted(str(p) for p in out.glob(f"artifacts/{cfg['target']}-*"))
    return {
        "target": cfg["target"], "engine": cfg["engine"], "inputs": 0, "seconds": elapsed,
        "digest": "-", "peak_rss_kb": 0, "traced_peak": 0, "traced_peak_len": 0,
        "slowest": 0.0, "features": 0, "corpus": 0,
        "failures": [{
            "signature": f"worker died (exit status {code})", "kind": "crash",
            "message": "the worker process ended without results (hang past the hard "
                       "timeout, out of memory, or a crash); log tail below",
            "traceback": tail, "blob": "", "minimized": None, "count": 1, "first_input": 0,
            "min_tries": 0, "artifacts": artifacts,
        }],
    }


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def report(results: dict[str, dict], names: list[str], wall: float, out: Path) -> int:
    from fuzz import targets as tg
    from fuzz.engine import describe_blob

    print()
    print(f"{'target':<16}{'inputs':>9}{'seconds':>9}{'inputs/s':>10}{'failures':>9}"
          f"{'peak RSS':>11}{'max alloc/input':>24}  digest")
    total = fails = 0
    cpu = 0.0
    for name in names:
        r = results[name]
        rate = r["inputs"] / r["seconds"] if r["seconds"] else 0.0
        alloc = f"{_fmt_bytes(r['traced_peak'])} ({r['traced_peak_len']} B in)"
        print(f"{name:<16}{r['inputs']:>9}{r['seconds']:>9.1f}{rate:>10.0f}"
              f"{len(r['failures']):>9}{_fmt_bytes(r['peak_rss_kb'] * 1024):>11}"
              f"{alloc:>24}  {r['digest']}")
        total += r["inputs"]
        fails += len(r["failures"])
        cpu += r["seconds"]
    print(f"{'total':<16}{total:>9}{wall:>9.1f}{total / wall if wall else 0:>10.0f}{fails:>9}"
          f"   (wall clock; {cpu:.1f} s of worker time)")
    failures_dir = out / "failures"
    for name in names:
        target = tg.TARGETS[name]
        for k, f in enumerate(results[name]["failures"], 1):
            print()
            print(f"FAIL {name}: {f['signature']}")
            print(f"  kind: {f['kind']}; inputs that hit it: {f['count']} "
                  f"(first: input #{f['first_input']})")
            print(f"  {f['message']}")
            if f.get("min_message") and f["min_message"] != f["message"]:
                print(f"  minimized: {f['min_message']}")
            if f.get("artifacts"):
                print(f"  libFuzzer artifacts: {', '.join(f['artifacts'])}")
            if not f["blob"]:
                print("  " + f["traceback"].replace("\n", "\n  "))
                continue
            blob = bytes.fromhex(f["minimized"] or f["blob"])
            flags, split, data = tg.decode(blob)
            chunks = tg.chunks_of(data, split)
            base = failures_dir / f"{name}-{k}"
            base.with_suffix(".bin").write_bytes(blob)
            text = _failure_text(name, f, blob, target, describe_blob(target, blob), base)
            base.with_suffix(".txt").write_text(text)
            print(f"  reproducer ({describe_blob(target, blob)}):")
            print(f"    data = {data!r}")
            if len(chunks) > 1:
                print(f"    chunks = {chunks!r}")
            for line in _other_splits(f, data):
                print(f"    {line}")
            print(f"  saved: {base}.txt, {base}.bin "
                  f"(replay: python -m fuzz --replay {base}.bin --target {name})")
    print()
    status = "FAILED" if fails else "OK"
    print(f"fuzz {status}: {total} inputs, {fails} failure(s), {wall:.1f} s, "
          f"{total / wall if wall else 0:.0f} inputs/s")
    return 1 if fails else 0


def _other_splits(f: dict, data: bytes) -> list[str]:
    """For a split dependence: the chunks of the splits the input is compared with."""
    from fuzz import targets as tg

    if "split_dependent" not in f["signature"]:
        return []
    return [f"compared with {tg.split_name(s)}: {tg.chunks_of(data, s)!r}"
            for s in tg._RESPLITS]


def _failure_text(name: str, f: dict, blob: bytes, target, desc: str, base: Path) -> str:  # type: ignore[no-untyped-def]
    from fuzz import targets as tg

    flags, split, data = tg.decode(blob)
    others = "".join(line + "\n" for line in _other_splits(f, data))
    return (
        f"target: {name}\nsignature: {f['signature']}\nkind: {f['kind']}\n"
        f"message: {f['message']}\nminimized input's message: {f.get('min_message', '')}\n"
        f"inputs that hit it: {f['count']}\n"
        f"minimized input: {desc} (ddmin tries: {f['min_tries']})\n"
        f"data = {data!r}\nchunks = {tg.chunks_of(data, split)!r}\n{others}"
        f"original input (hex): {f['blob']}\n\n"
        f"replay: python -m fuzz --replay {base}.bin --target {name}\n\n"
        f"# reproducer (the harness also plays the shell and checks invariants):\n"
        f"{target.reproducer(blob)}\n\n# traceback of the first input that hit it:\n"
        f"{f['traceback']}"
    )


def replay(path: str, name: str) -> int:
    from fuzz import engine
    from fuzz import targets as tg

    blob = Path(path).read_bytes()
    target = tg.TARGETS[name]
    runner = engine.Runner(target, watchdog=True)
    tg.FORCE_RESPLIT = True  # one input: also run every split-independence comparison
    err, dt = runner._run(blob, set())
    print(f"{name}: {engine.describe_blob(target, blob)}; {dt * 1000:.1f} ms")
    print(target.reproducer(blob))
    if err is None:
        print("OK: no exception, every invariant held")
        return 0
    import traceback

    traceback.print_exception(type(err), err, err.__traceback__)
    print(f"FAIL: {engine.classify(err)[0]}")
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--total", type=int, default=1_000_000, help="inputs over all targets")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--target", action="append", choices=TARGET_NAMES,
                   help="only this target (repeatable); default: all")
    p.add_argument("--engine", choices=("auto", "atheris", "mutator"), default="auto",
                   help="atheris (coverage-guided; needs the 'fuzz' extra) or the built-in "
                        "mutator; auto = atheris when installed")
    p.add_argument("--jobs", type=int, default=2, help="worker processes at a time")
    p.add_argument("--out", default="fuzz-out", help="failures, logs and results go here")
    p.add_argument("--no-minimize", action="store_true")
    p.add_argument("--replay", metavar="FILE", help="run one saved input (needs --target)")
    p.add_argument("--list", action="store_true", help="list the targets")
    args = p.parse_args(argv)

    if args.list:
        from fuzz import targets as tg

        for n in TARGET_NAMES:
            print(f"{n:<16} {tg.TARGETS[n].description}")
        return 0
    if args.replay:
        if not args.target or len(args.target) != 1:
            p.error("--replay needs exactly one --target")
        return replay(args.replay, args.target[0])

    engine = args.engine
    if engine == "auto":
        engine = "atheris" if have_atheris() else "mutator"
    elif engine == "atheris" and not have_atheris():
        p.error("atheris is not installed (pip install -e '.[fuzz]')")
    names = list(dict.fromkeys(args.target or TARGET_NAMES))
    share = quotas(args.total, names)
    out = Path(args.out).resolve()
    for sub in ("work", "logs", "failures", "artifacts"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for old in list((out / "failures").iterdir()) + list((out / "work").iterdir()):
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    jobs = [
        {"target": n, "inputs": share[n], "seed": args.seed, "engine": engine,
         "minimize": not args.no_minimize}
        for n in sorted(names, key=lambda n: -share[n])
    ]
    print(f"fuzz: engine={engine} seed={args.seed} total={args.total} jobs={args.jobs} "
          f"(Python {platform.python_version()}, {platform.machine()})", flush=True)
    t0 = time.monotonic()
    results = run_workers(jobs, max(1, args.jobs), out)
    wall = time.monotonic() - t0
    code = report(results, names, wall, out)
    (out / "results.json").write_text(json.dumps(
        {"engine": engine, "seed": args.seed, "total": args.total, "wall_seconds": wall,
         "targets": results}, indent=1))
    return code
