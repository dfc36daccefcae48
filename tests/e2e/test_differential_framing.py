"""Differential test: the gateway's post-auth command stream against the real Dovecot.

For each client byte stream (hand-written shapes, then generated ones from
``tests/support/cmdgen.py``):

1. a fresh ``CommandStream`` -- built as ``gateway/relay.py`` builds it, from Dovecot's own
   post-login capabilities -- is fed the stream whole, line by line, byte by byte (short
   streams), in random cuts and in 7-byte chunks, followed by sentinels (``zz9a NOOP``...)
   until it sees one as a command. Each run gives the bytes of all Forward actions (what
   the backend gets) and the tags of the commands it forwarded (a command it refused or
   answered itself is not forwarded). ``receive_data`` must never raise (**exception**);
2. each distinct result goes to Dovecot (logged in as bob, INBOX selected, one connection
   per run): the forwarded bytes, which end with the sentinel the gateway forwarded;
3. the tags Dovecot answers must be exactly the tags the gateway forwarded. A tag Dovecot
   answers that the gateway never saw as a command is a **smuggled** command: it ran past
   every scope check. A forwarded tag Dovecot never answers (or a sentinel it never
   answers because it is still reading a literal) was **swallowed**: the two disagree on
   a boundary. Dovecot sending its own ``+ OK`` (**continuation**) means it reads a
   synchronizing literal the gateway did not see (the gateway forwards every literal it
   sees as LITERAL+). Results that differ by split but agree with Dovecot are **split**.
   Order is not compared: Dovecot runs pipelined commands concurrently and answers them
   out of order (``g1 NOOP`` after ``g3 FETCH``); tags are unique per stream, so the
   comparison is of multisets. The sentinel is a NOOP, which Dovecot answers only after
   every command before it. When Dovecot hangs up, the gateway closed, or no sentinel got
   through (then ``zz9q NOOP`` is appended), only "nothing smuggled" is checked;
4. **raw-differs**: when the gateway (forwarding everything) answered nothing itself yet
   forwarded other bytes than it received, the raw stream sent straight to Dovecot must
   give the same tags. Streams with synchronizing literals are left out: a client waits
   for the server's ``+`` before it sends the literal, and Dovecot refuses some without
   one (APPEND to a missing mailbox) where the gateway, by design, answers ``+`` itself
   and forwards LITERAL+; pipelining them raw would compare a misbehaving client.

Three command filters: forward everything, a read-only scope, and a ``mailboxes=INBOX``
scope (``gateway.auth.scopes``). No timing is asserted anywhere.

Knobs (for ``make fuzz``): ``IGW_DIFF_SEED`` (default fixed; ``random`` picks one and
prints it), ``IGW_DIFF_COUNT`` (streams, default 150), ``IGW_DIFF_MINIMIZE`` (how many
failures to shrink to a minimal input, default 3), ``IGW_DIFF_THREADS`` (default 8).
A failure prints ``seed=... index=...``: ``Generator(seed).stream(index)`` rebuilds it.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from gateway.auth.scopes import build_filter
from gateway.imap.commands import CommandStream, Verdict
from gateway.session import capability_view
from tests.support import cmdgen
from tests.support.cmdgen import Marker, serialize
from tests.support.dovecot import DovecotRig
from tests.support.rawimap import Exchange, capabilities, connect, exchange

pytestmark = pytest.mark.e2e

USER = "bob"
_seed_env = os.environ.get("IGW_DIFF_SEED", "20240601")
SEED = str(random.SystemRandom().randrange(10**9)) if _seed_env == "random" else _seed_env
COUNT = int(os.environ.get("IGW_DIFF_COUNT", "150"))
MINIMIZE = int(os.environ.get("IGW_DIFF_MINIMIZE", "3"))
THREADS = int(os.environ.get("IGW_DIFF_THREADS", "8"))
#: How long Dovecot gets to answer a sentinel that follows bytes it may still be reading
#: as a literal (no timing is asserted: a timeout only makes the comparison a prefix one).
OPEN_END_TIMEOUT = 1.5
FILTERS = ("forward-all", "read-only", "mailboxes=INBOX")


@dataclass
class Finding:
    """One disagreement between the gateway and Dovecot."""

    kind: str  # smuggled | swallowed | continuation | split | raw-differs | exception
    filter: str
    data: bytes
    detail: str
    recipe: list[str] = field(default_factory=list)
    minimized: bytes | None = None
    minimized_detail: str = ""

    def report(self) -> str:
        lines = [f"[{self.kind}] filter={self.filter}: {self.detail}",
                 f"  stream ({len(self.data)} bytes): {_short(self.data)}"]
        if self.recipe:
            lines.append(f"  recipe: {self.recipe}")
        if self.minimized is not None:
            lines.append(f"  minimized ({len(self.minimized)} bytes): {_short(self.minimized)}")
            lines.append(f"    -> {self.minimized_detail[:1500]}")
        return "\n".join(lines)


def _short(data: bytes, limit: int = 600) -> str:
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit // 2]!r} ... {data[-limit // 2:]!r}"


class Harness:
    """Builds command streams like the relay does and runs bytes through Dovecot."""

    def __init__(self, rig: DovecotRig, caps: tuple[str, ...]) -> None:
        self.rig = rig
        self.caps = caps
        self._cache: dict[tuple[bytes, bytes, bool], Exchange] = {}

    def maker(self, name: str) -> Callable[[], CommandStream]:
        scoped = name == "mailboxes=INBOX"
        view = capability_view(self.caps, scoped)
        if name == "forward-all":
            def filt(_info):
                return Verdict.FORWARD
        else:
            filt = build_filter(("read-only",) if name == "read-only" else ("mailboxes=INBOX",))
        return lambda: CommandStream(capability_line=view.line, command_filter=filt,
                                     known_commands=view.known_commands,
                                     allow_catenate=not scoped)

    def dovecot(self, data: bytes, until: bytes, timeout: float,
                stop_on_plus: bool = True) -> Exchange:
        """Dovecot's answer to ``data`` on a fresh connection (cached: the three filters
        often forward the same bytes)."""
        key = (data, until, stop_on_plus)
        ex = self._cache.get(key)
        if ex is None:
            c = connect(self.rig, USER, select="INBOX")
            try:
                ex = exchange(c, data, until, timeout=timeout, stop_on_plus=stop_on_plus)
            finally:
                c.close()
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[key] = ex
        return ex

    def check(self, data: bytes, filt: str, *, chunks: list[bytes] | None = None,
              split_seed: int | None = 0, raw: bool = True,
              timeout: float = 5.0) -> Finding | None:
        """The first disagreement for ``data`` (sent as ``chunks``, default whole) under
        filter ``filt``, or None. With ``split_seed``, other splits of the same bytes are
        tried too: each distinct gateway result goes to Dovecot, and they must all agree."""
        make = self.maker(filt)
        chunkings = [chunks or [data]]
        if split_seed is not None:
            chunkings += cmdgen.splits(data, random.Random(split_seed))
        views = [cmdgen.run_gateway(make, c) for c in chunkings]
        for c, v in zip(chunkings, views, strict=True):
            if v.error is not None:
                return Finding("exception", filt, data, f"CommandStream.receive_data raised "
                               f"{v.error} (chunks {_sizes(c)})")
        distinct: dict[tuple, tuple[list[bytes], cmdgen.GatewayView]] = {}
        for c, v in zip(chunkings, views, strict=True):
            distinct.setdefault(v.key(), (c, v))
        for c, v in distinct.values():
            found = self._against_dovecot(v, timeout)
            if found is not None:
                kind, detail = found
                return Finding(kind, filt, data, f"{detail} (chunks {_sizes(c)})")
        if len(distinct) > 1:
            (c0, v0), (c1, v1) = list(distinct.values())[:2]
            return Finding("split", filt, data,
                           f"chunks {_sizes(c0)} -> forwarded {v0.forwarded[:300]!r} tags "
                           f"{v0.tags}; chunks {_sizes(c1)} -> forwarded {v1.forwarded[:300]!r} "
                           f"tags {v1.tags}")
        v = views[0]
        if raw and filt == "forward-all" and v.closed is None and v.sentinel is not None \
                and not v.replies and v.forwarded != data + v.tail:
            ex_raw = self.dovecot(data + v.tail, v.sentinel, timeout=timeout)
            found = _compare(ex_raw, v.tags, strict=True)
            if found is not None:
                return Finding("raw-differs", filt, data, "raw stream to Dovecot: " + found[1])
        return None

    def _against_dovecot(self, v: cmdgen.GatewayView, timeout: float) -> tuple[str, str] | None:
        if v.sentinel is not None and v.closed is None:
            ex = self.dovecot(v.forwarded, v.sentinel, timeout=timeout)
        else:
            ex = self.dovecot(v.forwarded + b"\r\nzz9q NOOP\r\n", b"zz9q",
                              timeout=min(timeout, OPEN_END_TIMEOUT))
        found = _compare(ex, v.tags, strict=v.sentinel is not None and v.closed is None)
        if found is None:
            return None
        return found[0], (f"{found[1]}; gateway closed={v.closed} replies={v.replies[:300]!r} "
                          f"forwarded={_short(v.forwarded, 300)}")


def _sizes(chunks: list[bytes]) -> str:
    sizes = [len(c) for c in chunks]
    return str(sizes) if len(sizes) <= 12 else f"{sizes[:12]}... ({len(sizes)} chunks)"


def _compare(ex: Exchange, gw_tags: list[bytes], *, strict: bool) -> tuple[str, str] | None:
    seen = set(gw_tags)
    extra = [t for t in ex.tags if t not in seen]
    where = f"Dovecot tags {ex.tags} (end={ex.end}), gateway forwarded {gw_tags}"
    if extra:
        return "smuggled", f"Dovecot ran {extra} that the gateway never saw as commands; {where}"
    plus = [c for c in ex.continuations if not c.startswith(b"+ idling")]
    if plus:
        return "continuation", f"Dovecot asked for literal data: {plus}; {where}"
    if strict and ex.end == "done" and sorted(ex.tags) != sorted(gw_tags):
        missing = sorted(set(gw_tags) - set(ex.tags))
        return "swallowed", f"Dovecot never ran {missing}; {where}"
    if strict and ex.end == "timeout":
        return "swallowed", (f"Dovecot never answered the sentinel the gateway forwarded as a "
                             f"command: it still reads a literal (or IDLE's line); {where}")
    return None


@pytest.fixture(scope="module")
def harness(dovecot: DovecotRig):
    h = Harness(dovecot, capabilities(dovecot, USER))
    yield h
    # The streams may have appended messages and flagged some: leave bob's INBOX empty.
    c = connect(dovecot, USER, select="INBOX")
    try:
        c.command("x1", "STORE 1:* +FLAGS.SILENT (\\Deleted)")
        c.command("x2", "EXPUNGE")
        c.command("x3", "DELETE fz-nx")
        c.command("x4", "DELETE fz-nx2")
    finally:
        c.close()


# -- hand-written shapes ------------------------------------------------------------------

def _lit(*body: bytes, **kw) -> list:
    return [Marker(follow=len(body), **kw), *body]


def _reverse(lead: bytes, **kw) -> bytes:
    """``lead`` ends where Dovecot starts a literal the framer may not see; its size is the
    next command's first line, whose own literal body then holds ``s1 NOOP``."""
    return serialize([lead, Marker(follow=2, **kw), b'g2 LIST "" ', *_lit(b"\r\ns1 NOOP\r\n"),
                      b"\r\n"])


def _split_collect() -> list[bytes]:
    """A fixed-arity command whose first line arrives as a chunk of its own; its literal
    then announces exactly the next command's first line (see the shape below)."""
    rest = serialize([b'g2 LIST "" ', *_lit(b"\r\ns1 NOOP\r\n"), b"\r\n"])
    n = rest.index(b"\n") + 1
    return [b"g1 COPY 1 {%d+}\r\n" % n, b"x" * n + b"\r\n" + rest]


#: name -> stream (bytes, or the exact chunks the client sends). Each one is a
#: disagreement class found against Dovecot 2.3.19 (or a control that must keep passing);
#: these minimal shapes are what a fix must handle.
SHAPES: dict[str, bytes | list[bytes]] = {
    # controls: agreement today
    "control: plain commands": b"g1 NOOP\r\ng2 SEARCH ALL\r\ng3 FETCH 1:* (FLAGS)\r\n",
    "control: literal with command inside": serialize(
        [b"g1 SEARCH SUBJECT ", *_lit(b"s1 NOOP\r\n"), b"\r\n"]),
    "control: sync literal": serialize(
        [b"g1 SEARCH SUBJECT ", *_lit(b"s1 NOOP\r\n", sync=True), b"\r\n"]),
    "control: fixed arity extra literal": serialize(
        [b"g1 COPY 1 fz-nx2 ", *_lit(b"s1 NOOP\r\n"), b"\r\n"]),
    "control: literal8 outside APPEND": serialize(
        [b"g1 SEARCH SUBJECT ", *_lit(b"s1 NOOP\r\n", binary=True), b"\r\n"]),
    "control: APPEND": serialize(
        [b"g1 APPEND INBOX (\\Seen) ", *_lit(b"Subject: x\r\n\r\ns1 NOOP\r\n"), b"\r\n"]),
    "control: IDLE DONE": b"g1 IDLE\r\nDONE\r\ng2 NOOP\r\n",
    # Dovecot skips a literal the gateway forwards as data -> its body runs
    "syntax error before literal": serialize(
        [b"g1 SEARCH ) ", *_lit(b"s1 NOOP\r\n"), b"\r\n"]),
    "8-bit atom before literal": serialize(
        [b"g1 SEARCH \xff ", *_lit(b"s1 NOOP\r\n"), b"\r\n"]),
    "NUL in quoted string before literal": serialize(
        [b'g1 SEARCH SUBJECT "a\x00b" SUBJECT ', *_lit(b"s1 NOOP\r\n"), b"\r\n"]),
    "bare CR before literal": serialize(
        [b"g1 SEARCH ALL\r SUBJECT ", *_lit(b"s1 NOOP\r\n"), b"\r\n"]),
    "tag with ]": serialize([b"g1] SEARCH SUBJECT ", *_lit(b"s1 NOOP\r\n"), b"\r\n"]),
    "APPEND invalid system flag": serialize(
        [b"g1 APPEND INBOX (\\Bogus) ", *_lit(b"s1 NOOP\r\n"), b"\r\n"]),
    "APPEND invalid date": serialize(
        [b'g1 APPEND INBOX "bad date" ', *_lit(b"s1 NOOP\r\n"), b"\r\n"]),
    "APPEND syntax error resumes mid-line": b"g1 APPEND INBOX {s1 NOOP\r\n",
    "APPEND unterminated quote resumes mid-line": b'g1 APPEND INBOX "s1 NOOP\r\n',
    "literal8 as APPEND mailbox": serialize(
        [b"g1 APPEND ", *_lit(b"s1 NOOP\r\n", binary=True), b"\r\n"]),
    "APPEND CATENATE unknown part": serialize(
        [b"g1 APPEND INBOX CATENATE (BOGUS ", *_lit(b"s1 NOOP\r\n"), b")\r\n"]),
    "line past 64 KiB before literal": serialize(
        [b"g1 SEARCH SUBJECT ", *_lit(b"x" * 60000), b" ALL" * 1500, b" ",
         *_lit(b"s1 NOOP\r\n"), b"\r\n"]),
    "IDLE then a literal line": serialize(
        [b'g1 IDLE\r\ng2 LIST "" ', *_lit(b"s1 NOOP\r\n"), b"\r\nDONE\r\n"]),
    # Dovecot reads a literal the gateway does not see -> the gateway's next command's
    # literal body runs
    "leading zeros in literal size": _reverse(b"g1 SEARCH SUBJECT ", zeros=26),
    "literal right after )": _reverse(b"g1 SEARCH (ALL)"),
    "literal right after quoted string": _reverse(b'g1 SEARCH SUBJECT "x"'),
    "literal right after literal": _reverse(
        serialize([b"g1 SEARCH SUBJECT ", *_lit(b"abc")])),
    # Dovecot reads an empty literal where the framer sees none: the line goes on
    "empty literal {}": b"g1 SEARCH SUBJECT {}\r\ng2 NOOP\r\n",
    "empty literal {+}": b"g1 SEARCH SUBJECT {+}\r\ng2 NOOP\r\n",
    # the gateway itself forwards a line twice
    "fixed-arity first line alone in a chunk": _split_collect(),
    # the gateway raises on client bytes (a refused command with a {0} literal; the
    # read-only SELECT -> EXAMINE rewrite of a line that ends in a bare LF)
    "refused command with {0}": b"g1 XYZZY {0}\r\ng2 NOOP\r\n",
    "SELECT line ending in bare LF": b"g1 SELECT INBOX\ng2 NOOP\r\n",
}

SHAPE_FILTERS = [(name, f) for name in SHAPES for f in FILTERS]


@pytest.mark.parametrize(("name", "filt"), SHAPE_FILTERS,
                         ids=[f"{n}-{f}" for n, f in SHAPE_FILTERS])
def test_shape(harness: Harness, name: str, filt: str):
    """Each hand-written shape: the gateway and Dovecot agree on every command boundary."""
    shape = SHAPES[name]
    chunks = shape if isinstance(shape, list) else None
    finding = harness.check(b"".join(shape) if chunks else shape, filt, chunks=chunks)
    assert finding is None, finding.report()


# -- generated streams ----------------------------------------------------------------------

def test_generated_streams(harness: Harness):
    """COUNT generated streams (seed SEED) x 3 filters: no smuggled or swallowed command."""
    gen = cmdgen.Generator(SEED)
    streams = [gen.stream(i) for i in range(COUNT)]
    jobs = [(s, f) for s in streams for f in FILTERS]
    t0 = time.monotonic()

    def run(job: tuple[cmdgen.GenStream, str]) -> Finding | None:
        s, f = job
        finding = harness.check(s.data, f, split_seed=s.index)
        if finding is not None:
            finding.recipe = [f"seed={SEED} index={s.index}", *s.recipe]
        return finding

    with ThreadPoolExecutor(THREADS) as pool:
        findings = [f for f in pool.map(run, jobs) if f is not None]
    elapsed = time.monotonic() - t0
    print(f"\ndifferential: seed={SEED} streams={COUNT} checks={len(jobs)} "
          f"dovecot runs={len(harness._cache)} findings={len(findings)} in {elapsed:.1f}s")
    if not findings:
        return
    # One finding per kind first (then more), each shrunk to a minimal input.
    first_of_kind: dict[str, Finding] = {}
    for f in findings:
        first_of_kind.setdefault(f.kind, f)
    shown_list = list(first_of_kind.values())
    shown_list += [f for f in findings if f not in shown_list][:max(0, 10 - len(shown_list))]
    for f in shown_list[:MINIMIZE]:
        f.minimized = cmdgen.minimize(
            f.data, lambda d, kind=f.kind, filt=f.filter: _fails(harness, d, filt, kind),
            seconds=20)
        again = harness.check(f.minimized, f.filter)
        f.minimized_detail = again.detail if again is not None else "(passes when re-run)"
    by_kind: dict[str, int] = {}
    for f in findings:
        by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
    shown = "\n\n".join(f.report() for f in shown_list)
    pytest.fail(f"{len(findings)} disagreements between the gateway and Dovecot "
                f"(seed={SEED}, by kind {by_kind}); first ones:\n\n{shown}", pytrace=False)


def _fails(h: Harness, data: bytes, filt: str, kind: str) -> bool:
    # A shorter wait while shrinking: a slow answer can only make the result less minimal.
    f = h.check(data, filt, raw=kind == "raw-differs", timeout=1.0)
    return f is not None and f.kind == kind
