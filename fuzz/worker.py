"""One fuzz worker process: one target, one engine; results as JSON. Started by
:mod:`fuzz.cli` as ``python -c <LAUNCH> <target>.json`` in a run directory
``/tmp/fuzz-XXXXXXXX``. A process per target gives per-target peak RSS, and atheris
(libFuzzer) ends its process when done.

Every path the worker uses is relative and named after the target, its environment is
fixed (PYTHONPATH = the checkout, PYTHONHASHSEED=0) and the run directory's path always has
the same length, so the process, and its memory layout, are the same whatever ``--out`` or
the caller's environment. That matters: atheris' choice of inputs depends on the layout (a
working directory of another length gave other inputs for the same seed)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict

#: The ``-c`` program that runs a worker (with ``-c``, sys.path[0] is "" whatever the cwd).
LAUNCH = "import sys; from fuzz.worker import main; sys.exit(main(sys.argv))"


def result_name(target: str) -> str:
    return f"{target}.result.json"


def artifact_prefix(target: str) -> str:
    return f"artifacts/{target}-"


def _write(cfg: dict, stats) -> None:  # type: ignore[no-untyped-def]
    data = asdict(stats)
    data.update(target=cfg["target"], engine=cfg["engine"], seed=cfg["seed"])
    result = result_name(cfg["target"])
    with open(result + ".tmp", "w") as fh:
        json.dump(data, fh)
    os.replace(result + ".tmp", result)


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
    work = f"atheris-{name}"  # relative: see the module docstring
    shutil.rmtree(work, ignore_errors=True)
    corpus, seeddir = os.path.join(work, "corpus"), os.path.join(work, "seeds")
    os.makedirs(corpus)
    os.makedirs(seeddir)
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
        f"-artifact_prefix={artifact_prefix(name)}",
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
