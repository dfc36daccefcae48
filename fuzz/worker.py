"""One fuzz worker process: one target, one engine; results as JSON (``python -m fuzz.worker
CONFIG.json``, started by :mod:`fuzz.cli`). A process per target gives per-target peak RSS,
and atheris (libFuzzer) ends its process when done."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict


def _write(cfg: dict, stats) -> None:  # type: ignore[no-untyped-def]
    data = asdict(stats)
    data.update(target=cfg["target"], engine=cfg["engine"], seed=cfg["seed"])
    tmp = cfg["result"] + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, cfg["result"])


def run_mutator(cfg: dict) -> int:
    from fuzz import engine, targets

    runner = engine.run_mutator(targets.TARGETS[cfg["target"]], cfg["inputs"], cfg["seed"])
    _write(cfg, engine.finish(runner, cfg["minimize"]))
    return 0


def run_atheris(cfg: dict) -> int:
    import atheris

    with atheris.instrument_imports(include=["gateway"]):
        from fuzz import targets
    from fuzz import engine, seeds

    name, n = cfg["target"], cfg["inputs"]
    target = targets.TARGETS[name]
    runner = engine.Runner(target, watchdog=False)
    work = tempfile.mkdtemp(prefix=f"fuzz-{name}-")
    corpus, seeddir = os.path.join(work, "corpus"), os.path.join(work, "seeds")
    os.mkdir(corpus)
    os.mkdir(seeddir)
    for i, blob in enumerate(engine.seed_blobs(target, engine.seed_rng(cfg["seed"], name))):
        with open(os.path.join(seeddir, f"seed-{i:04d}"), "wb") as fh:
            fh.write(blob)
    h = hashlib.sha256(f"{cfg['seed']}:{name}".encode()).digest()
    argv = [
        sys.argv[0],
        f"-seed={1 + int.from_bytes(h[:4], 'big') % (2**31 - 2)}",
        f"-runs={4 * n + 100_000}",  # a cap; the callback ends the run after n inputs
        f"-max_len={engine.MAX_LEN}",
        "-timeout=20",  # a hang kills the worker (the CLI reports it); slow = 1 s is ours
        "-rss_limit_mb=2048",
        "-reload=0",  # no timer-driven corpus reloads: determinism
        "-print_final_stats=0",
        f"-artifact_prefix={cfg['artifacts']}",
    ]
    if target.tokens:
        dict_path = os.path.join(work, "tokens.dict")
        with open(dict_path, "w") as fh:
            fh.write(seeds.libfuzzer_dict(target.tokens))
        argv.append(f"-dict={dict_path}")
    argv += [corpus, seeddir]
    t0 = time.perf_counter()

    def one_input(data: bytes) -> None:
        runner.run_one(data)
        if runner.count >= n:
            runner.stats.seconds = time.perf_counter() - t0
            runner.stats.corpus = len(os.listdir(corpus))
            _write(cfg, engine.finish(runner, cfg["minimize"]))
            shutil.rmtree(work, ignore_errors=True)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 1  # not reached: Fuzz() exits the process


def main(argv: list[str]) -> int:
    with open(argv[1]) as fh:
        cfg = json.load(fh)
    if cfg["engine"] == "atheris":
        return run_atheris(cfg)
    return run_mutator(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
