"""Running inputs: per-input checks (exceptions, invariants, time, memory), failure
bookkeeping and minimization, and the hand-written mutation engine.

Everything here is deterministic for a given seed: the only randomness is one
``random.Random`` per target, seeded from ``(seed, target name)``.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import time
import traceback
import tracemalloc
from array import array
from dataclasses import asdict, dataclass, field

from . import targets as _targets
from .targets import Target, Violation, chunks_of, decode, split_name

#: An input that takes longer than this is a failure ("slow").
SLOW_SECONDS = 1.0
#: The mutator engine interrupts an input after this long (a hang); atheris uses -timeout.
HANG_SECONDS = 10.0
#: Every TRACE_EVERY-th input runs under tracemalloc: peak bytes allocated for that input.
TRACE_EVERY = 251
#: Peak allocation allowed for one input: MEM_BASE + MEM_PER_BYTE * len(input).
MEM_BASE = 4 * 1024 * 1024
MEM_PER_BYTE = 64
#: Largest input the mutator builds (the atheris engine uses -max_len with the same value).
MAX_LEN = 4096
_GATEWAY_ROOT = os.sep + "gateway" + os.sep
_HARNESS_DIR = os.path.dirname(os.path.abspath(__file__))


class Hang(BaseException):
    """Raised by the watchdog's SIGALRM inside a target that ran for HANG_SECONDS."""


def _on_alarm(signum, frame):  # type: ignore[no-untyped-def]
    raise Hang(f"input still running after {HANG_SECONDS:.0f} s")


@dataclass
class Failure:
    signature: str
    kind: str  # exception | invariant | slow | hang | memory | harness
    message: str
    traceback: str
    blob: bytes
    first_input: int
    count: int = 1
    minimized: bytes | None = None
    min_tries: int = 0
    min_message: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["blob"] = self.blob.hex()
        d["minimized"] = self.minimized.hex() if self.minimized is not None else None
        return d


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if _GATEWAY_ROOT in f.filename]
    picked = ours[-2:] if ours else frames[-1:]
    parts = []
    for f in reversed(picked):
        path = f.filename
        i = path.rfind(_GATEWAY_ROOT)
        short = path[i + 1 :] if i >= 0 else os.path.basename(path)
        parts.append(f"{short}:{f.lineno} {f.name}")
    return " <- ".join(parts)


def classify(exc: BaseException) -> tuple[str, str]:
    """``(signature, kind)`` of a failure: what makes two failures "the same bug"."""
    if isinstance(exc, Violation):
        return f"invariant {exc.check}", "invariant"
    if isinstance(exc, Hang):
        return "hang", "hang"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames and os.path.dirname(os.path.abspath(frames[-1].filename)) == _HARNESS_DIR:
        # raised by the harness itself, e.g. a private attribute the bound checks read
        # was renamed in gateway/: not (necessarily) a gateway bug
        where = f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno} {frames[-1].name}"
        return f"harness error {type(exc).__name__} at fuzz/{where}", "harness"
    return f"{type(exc).__name__} at {_where(exc)}", "exception"


@dataclass
class Stats:
    inputs: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    slowest_len: int = 0
    traced: int = 0
    traced_peak: int = 0
    traced_peak_len: int = 0
    features: int = 0
    corpus: int = 0
    digest: str = ""
    peak_rss_kb: int = 0
    failures: list = field(default_factory=list)


class Runner:
    """Runs one target's inputs and keeps what went wrong (one entry per signature)."""

    def __init__(self, target: Target, *, watchdog: bool) -> None:
        self.target = target
        self.watchdog = watchdog
        self.count = 0
        self.failures: dict[str, Failure] = {}
        self.features: set = set()
        self._digest = hashlib.blake2b(digest_size=8)
        self.stats = Stats()
        # Timing-dependent values live in preallocated arrays, never in new Python objects:
        # which objects stay alive must not depend on timing, since atheris' choice of
        # inputs depends on the memory layout (see fuzz.worker).
        self._slow = array("d", [0.0, 0.0])  # slowest input's seconds; first slow input's
        self._slow_n = array("q", [0, 0, 0, 0])  # slowest's length; slow count; first's #, len
        self._slow_blob = bytearray(2 * MAX_LEN + 16)
        if watchdog:
            signal.signal(signal.SIGALRM, _on_alarm)

    def _run(self, blob: bytes, features: set) -> tuple[BaseException | None, float]:
        if self.watchdog:
            signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
        t0 = time.perf_counter()
        err: BaseException | None = None
        try:
            self.target.run(blob, features)
        except (Exception, Hang) as e:  # the failure itself: recorded, never re-raised
            err = e
        finally:
            dt = time.perf_counter() - t0
            if self.watchdog:
                signal.setitimer(signal.ITIMER_REAL, 0)
        return err, dt

    def run_one(self, blob: bytes) -> bool:
        """Run one input; True when it showed behaviour not seen before (for the corpus)."""
        self.count += 1
        n = self.count
        self._digest.update(len(blob).to_bytes(4, "little"))
        self._digest.update(blob)
        features: set = set()
        traced = n % TRACE_EVERY == 0
        if traced:
            tracemalloc.start()
        try:
            err, dt = self._run(blob, features)
        finally:
            if traced:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
        st = self.stats
        if dt > self._slow[0]:
            self._slow[0] = dt
            self._slow_n[0] = len(blob)
        if err is not None:
            sig, kind = classify(err)
            self._record(sig, kind, err, blob, n)
        elif dt > SLOW_SECONDS and not traced:
            self._note_slow(blob, dt, n)
        if traced:
            st.traced += 1
            if peak > st.traced_peak:
                st.traced_peak, st.traced_peak_len = peak, len(blob)
            if peak > MEM_BASE + MEM_PER_BYTE * len(blob):
                self._record("memory", "memory", None, blob, n,
                             f"peak {peak} bytes allocated for a {len(blob)}-byte input")
        new = features - self.features
        if new:
            self.features |= new
            return True
        return False

    def _note_slow(self, blob: bytes, dt: float, n: int) -> None:
        """Count a slow input; keep the first one in the preallocated buffer."""
        self._slow_n[1] += 1
        if self._slow_n[1] == 1:
            size = min(len(blob), len(self._slow_blob))
            memoryview(self._slow_blob)[:size] = memoryview(blob)[:size]
            self._slow[1] = dt
            self._slow_n[2] = n
            self._slow_n[3] = size

    def collect_timing(self) -> None:
        """Turn the timing arrays into stats and a "slow" failure (after the run)."""
        self.stats.slowest, self.stats.slowest_len = self._slow[0], self._slow_n[0]
        if self._slow_n[1] and "slow" not in self.failures:
            blob = bytes(self._slow_blob[: self._slow_n[3]])
            self._record("slow", "slow", None, blob, self._slow_n[2],
                         f"{self._slow[1]:.2f} s for a {len(blob)}-byte input")
            self.failures["slow"].count = self._slow_n[1]

    def _record(self, sig: str, kind: str, err: BaseException | None, blob: bytes, n: int,
                message: str = "") -> None:
        f = self.failures.get(sig)
        if f is not None:
            f.count += 1
            return
        if err is not None:
            message = f"{type(err).__name__}: {err}"
            tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        else:
            tb = ""
        self.failures[sig] = Failure(sig, kind, message, tb, blob, n)

    # -- minimization ------------------------------------------------------------------------------

    def signature_of(self, blob: bytes) -> str | None:
        err, dt = self._run(blob, set())
        if err is not None:
            return classify(err)[0]
        if dt > SLOW_SECONDS:
            return "slow"
        return None

    def minimize(self, failure: Failure, budget_s: float = 20.0, max_tries: int = 4000) -> None:
        """Shrink the failing blob while it fails with the same signature (ddmin on the data,
        then the simplest split and configuration that still fail)."""
        if failure.kind == "memory":
            failure.minimized = failure.blob  # tracemalloc runs are too costly to repeat
            return
        # A sampled split-independence failure must not vanish when ddmin changes the sample.
        _targets.FORCE_RESPLIT = "split_dependent" in failure.signature
        try:
            self._minimize(failure, budget_s, max_tries)
            if failure.minimized is not None and failure.kind not in ("slow", "hang", "memory"):
                err, _ = self._run(failure.minimized, set())
                failure.min_message = f"{type(err).__name__}: {err}" if err else ""
        finally:
            _targets.FORCE_RESPLIT = False

    def _minimize(self, failure: Failure, budget_s: float, max_tries: int) -> None:
        deadline = time.monotonic() + (budget_s if failure.kind != "slow" else 3 * budget_s)
        tries = 0
        sig = failure.signature

        def fails(blob: bytes) -> bool:
            nonlocal tries
            if tries >= max_tries or time.monotonic() > deadline:
                return False
            tries += 1
            return self.signature_of(blob) == sig

        blob = failure.blob
        if len(blob) < 2:
            blob = blob.ljust(2, b"\x00")
            if not fails(blob):
                blob = failure.blob
        if len(blob) >= 2:
            flags, split, data = decode(blob)
            for simple in (0, 4, 6):  # whole, one chunk per line, byte by byte
                if split != simple and fails(bytes([flags, simple]) + data):
                    split = simple
                    break
            data = _ddmin(data, lambda d: fails(bytes([flags, split]) + d))
            if split != 0 and fails(bytes([flags, 0]) + data):
                split = 0
                data = _ddmin(data, lambda d: fails(bytes([flags, split]) + d))
            for bit in range(8):
                if flags & (1 << bit) and fails(bytes([flags & ~(1 << bit), split]) + data):
                    flags &= ~(1 << bit)
            blob = bytes([flags, split]) + data
        failure.minimized = blob
        failure.min_tries = tries


def _ddmin(data: bytes, fails) -> bytes:  # type: ignore[no-untyped-def]
    """Delta debugging: remove chunks (halves, quarters, ... single bytes) while it fails."""
    n = 2
    while len(data) >= 1:
        size = max(1, len(data) // n)
        removed = False
        i = 0
        while i < len(data):
            cand = data[:i] + data[i + size :]
            if fails(cand):
                data = cand
                removed = True
            else:
                i += size
        if removed:
            n = max(n - 1, 2)
        elif size == 1:
            break
        else:
            n = min(n * 2, len(data))
    # Runs of 2..8 bytes (ddmin's halving never tries a 4-byte run, e.g. base64 quanta).
    for size in range(2, 9):
        i = 0
        while i + size <= len(data):
            cand = data[:i] + data[i + size :]
            if fails(cand):
                data = cand
            else:
                i += 1
    return data


# -- the hand-written mutation engine ----------------------------------------------------------------

_INTERESTING = b"\x00\n\r \"(){}~+*%\\]\x7f\x80\xff0123456789"
_LITERAL_RE = re.compile(rb"(~?)\{(\d*)(\+?)\}")
_NUMBERS = (0, 1, 2, 3, 5, 31, 32, 33, 63, 64, 65, 255, 4096, 8192, 8193, 16384, 16385,
            65536, 2**31, 2**32, 2**63 - 1, 2**63, 10**20, 10**25)


def seed_rng(seed: int, target: str) -> random.Random:
    h = hashlib.sha256(f"{seed}:{target}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


def seed_blobs(target: Target, rng: random.Random) -> list[bytes]:
    """Each seed as is (flags 0, whole), then with random configurations and splits."""
    out = []
    for s in target.seeds:
        out.append(b"\x00\x00" + s)
        for _ in range(3):
            out.append(bytes([rng.randrange(256), rng.randrange(256)]) + s)
    return out


class Mutator:
    """Seeds, then stacked mutations of corpus entries; an input that shows new behaviour
    (a feature the target reports: event kinds, reply statuses, states) joins the corpus."""

    MAX_CORPUS = 4096

    def __init__(self, target: Target, rng: random.Random) -> None:
        self.rng = rng
        self.tokens = target.tokens or [b"\x00", b"\xff"]
        self.corpus: list[bytes] = seed_blobs(target, rng)
        self.initial = list(self.corpus)

    def add(self, blob: bytes) -> None:
        if len(self.corpus) < self.MAX_CORPUS:
            self.corpus.append(blob)
        else:
            self.corpus[self.rng.randrange(len(self.initial), self.MAX_CORPUS)] = blob

    def next(self) -> bytes:
        rng = self.rng
        r = rng.random()
        head = bytes([rng.randrange(256), rng.randrange(256)])
        if r < 0.05:  # random bytes
            n = rng.choice((rng.randrange(16), rng.randrange(256), rng.randrange(MAX_LEN)))
            return head + rng.randbytes(n)
        if r < 0.10:  # token soup
            parts = [rng.choice(self.tokens) if rng.random() < 0.8 else rng.randbytes(3)
                     for _ in range(rng.randrange(1, 40))]
            return head + b"".join(parts)
        base = rng.choice(self.corpus)
        data = bytearray(base[2:])
        if rng.random() < 0.7:
            head = base[:2] if len(base) >= 2 else head
            if rng.random() < 0.3:
                head = bytes([head[0] ^ (1 << rng.randrange(8)), head[1]])
        for _ in range(1 << rng.randrange(4)):
            self._mutate(data)
        return head + bytes(data[:MAX_LEN])

    def _mutate(self, d: bytearray) -> None:
        rng = self.rng
        n = len(d)
        op = rng.randrange(15)
        if n == 0 and op < 12:
            op = 2
        if op == 0:  # flip a bit
            i = rng.randrange(n)
            d[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # an interesting byte
            d[rng.randrange(n)] = rng.choice(_INTERESTING)
        elif op == 2:  # insert a token or random bytes
            tok = rng.choice(self.tokens) if rng.random() < 0.75 else rng.randbytes(
                rng.randrange(1, 9))
            i = rng.randrange(n + 1)
            d[i:i] = tok
        elif op == 3:  # delete a range
            i = rng.randrange(n)
            del d[i : i + rng.randrange(1, 1 + min(64, n - i))]
        elif op == 4:  # duplicate a range elsewhere
            i = rng.randrange(n)
            piece = d[i : i + rng.randrange(1, 64)]
            j = rng.randrange(n + 1)
            d[j:j] = piece
        elif op == 5:  # literal sizes: off by one, zero, exact, huge; sync/non-sync/binary
            ms = list(_LITERAL_RE.finditer(d))
            if not ms:
                i = rng.randrange(n + 1)
                d[i:i] = rng.choice((b" {%d}\r\n", b" {%d+}\r\n", b" ~{%d}\r\n")) % rng.choice(
                    _NUMBERS[:12])
                return
            m = rng.choice(ms)
            size = int(m.group(2) or b"0")
            after = n - m.end() - 2
            num = rng.choice((0, size + 1, max(size - 1, 0), max(after, 0), rng.choice(_NUMBERS)))
            tilde = m.group(1) if rng.random() < 0.8 else (b"" if m.group(1) else b"~")
            plus = m.group(3) if rng.random() < 0.8 else (b"" if m.group(3) else b"+")
            d[m.start() : m.end()] = tilde + b"{%d" % num + plus + b"}"
        elif op == 6:  # line ends: CRLF <-> LF, lone CR, none
            ends = [m.start() for m in re.finditer(rb"\r?\n", d)]
            if not ends:
                d += b"\r\n"
                return
            i = rng.choice(ends)
            j = i + (2 if d[i : i + 1] == b"\r" else 1)
            d[i:j] = rng.choice((b"\n", b"\r\n", b"\r", b"", b"\r\r\n", b"\n\r\n"))
        elif op == 7:  # splice with another corpus entry
            other = rng.choice(self.corpus)[2:]
            i = rng.randrange(n + 1)
            j = rng.randrange(len(other) + 1)
            d[i:] = other[j:]
        elif op == 8:  # change the case of a range
            i = rng.randrange(n)
            j = min(n, i + rng.randrange(1, 16))
            d[i:j] = d[i:j].lower() if rng.random() < 0.5 else d[i:j].upper()
        elif op == 9:  # truncate
            del d[rng.randrange(n) :]
        elif op == 10:  # shuffle lines: drop, repeat or swap one
            lines = d.split(b"\n")
            k = rng.randrange(len(lines))
            how = rng.randrange(3)
            if how == 0 and len(lines) > 1:
                del lines[k]
            elif how == 1:
                lines.insert(k, lines[k])
            else:
                m = rng.randrange(len(lines))
                lines[k], lines[m] = lines[m], lines[k]
            d[:] = b"\n".join(lines)
        elif op == 11:  # replace a token by another
            tok = rng.choice(self.tokens)
            i = d.find(tok) if tok else -1
            if i >= 0:
                d[i : i + len(tok)] = rng.choice(self.tokens)
            else:
                d[rng.randrange(n)] = rng.randrange(256)
        elif op == 12:  # pipeline: the whole input again
            d += d * rng.randrange(1, 3)
        elif op == 13:  # a long line (limits): repeat a byte run
            i = rng.randrange(n + 1)
            d[i:i] = bytes([rng.choice(b"a1 ,(")]) * rng.choice((60, 70, 100, 300, 1100, 3000))
        else:  # insert a token at a token boundary (after a space or line end)
            spots = [m.end() for m in re.finditer(rb"[ \n]", d)] or [0]
            i = rng.choice(spots)
            d[i:i] = rng.choice(self.tokens)


def run_mutator(target: Target, inputs: int, seed: int) -> Runner:
    """Run ``inputs`` inputs of ``target``: the seed corpus first, then mutations."""
    runner = Runner(target, watchdog=True)
    mut = Mutator(target, seed_rng(seed, target.name))
    t0 = time.perf_counter()
    for blob in mut.initial[:inputs]:
        runner.run_one(blob)
    for _ in range(inputs - runner.count):
        blob = mut.next()
        if runner.run_one(blob):
            mut.add(blob)
    runner.stats.seconds = time.perf_counter() - t0
    runner.stats.corpus = len(mut.corpus)
    return runner


def finish(runner: Runner, minimize: bool = True) -> Stats:
    """Minimize the failures and fill in the stats."""
    runner.collect_timing()
    st = runner.stats
    st.inputs = runner.count
    st.features = len(runner.features)
    st.digest = runner._digest.hexdigest()
    if minimize:
        for f in runner.failures.values():
            runner.minimize(f)
    st.failures = [f.to_json() for f in runner.failures.values()]
    try:
        import resource

        st.peak_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except ImportError:  # pragma: no cover - not Linux
        st.peak_rss_kb = 0
    return st


def describe_blob(target: Target, blob: bytes) -> str:
    flags, split, data = decode(blob)
    return f"flags=0x{flags:02x}, split={split} ({split_name(split)}), " \
           f"{len(chunks_of(data, split))} chunk(s), {len(data)} bytes"
