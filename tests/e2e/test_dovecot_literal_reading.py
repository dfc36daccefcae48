"""Where Dovecot reads a literal: the table in tests/support/dovecot_literals.py, measured.

The gateway's post-auth relay must agree with Dovecot on where every command and literal
ends (ARCHITECTURE.md, security invariants). These tests pin down Dovecot's side of that
agreement on the real server the suite runs, so that a Dovecot upgrade that moves a line
fails here, with the measured value, instead of silently opening a smuggling hole.

Method (see the module doc of ``dovecot_literals``): ``t1 <command> <k args> {8+}`` then
``z1 NOOP`` then ``t2 NOOP``; Dovecot answers z1 exactly when it did not read the literal.
Every arity probe also runs with a synchronizing ``{8}``, where Dovecot's own ``+ OK`` must
appear exactly when it reads.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.imap.capabilities import commands_for_capabilities
from gateway.imap.commands import MAX_ARGS
from gateway.imap.tokens import ParseError, parse_head
from tests.support import dovecot_literals as dl
from tests.support.dovecot import DovecotRig
from tests.support.imap import LineClient
from tests.support.rawimap import Exchange, capabilities, connect, exchange

pytestmark = pytest.mark.e2e

USER = "alice"
STATES = ("authenticated", "selected")


@pytest.fixture(scope="module")
def rig(dovecot: DovecotRig):
    """The session Dovecot with alice's probe mailbox (two messages); probe leftovers
    (appended messages, litprobe-c) are removed afterwards."""
    assert dovecot.populate(USER, dl.PROBE_MAILBOX, 2, 600, tag="litprobe") >= 2
    yield dovecot
    c = connect(dovecot, USER)
    try:
        c.command("d1", "DELETE litprobe-c")
        c.command("d2", "UNSUBSCRIBE litprobe")
        c.command("d3", f"DELETE {dl.PROBE_MAILBOX}")
    finally:
        c.close()


def _open(rig: DovecotRig, state: str) -> LineClient:
    return connect(rig, USER, select=dl.PROBE_MAILBOX if state == "selected" else None)


def _reset(state: str) -> bytes:
    """Put a reused connection back into ``state`` before the next probe."""
    return f"r SELECT {dl.PROBE_MAILBOX}\r\n".encode() if state == "selected" else b"r UNSELECT\r\n"


def _line(command: str, k: int) -> bytes:
    args = dl.PROBE_ARGS[command][:k]
    args += (b"x",) * (k - len(args))
    return b" ".join([b"t1", command.encode(), *args]) + b" "


def _verdict(ex: Exchange, payload: bytes) -> bool:
    """True when Dovecot read the probe literal; fails when the exchange says neither."""
    if b"z1" in ex.tags:
        return False
    assert ex.end == "done" and b"t1" in ex.tags, (
        f"probe inconclusive ({ex.end}): {payload[:200]!r} -> {ex.responses!r}")
    return True


def _measure_arity(rig: DovecotRig, command: str, state: str, marker: bytes) -> list[bool]:
    """For k = 0..5: does Dovecot read a literal placed after k leading arguments?"""
    results: list[bool] = []
    c: LineClient | None = None
    try:
        for k in range(6):
            if c is None:
                c = _open(rig, state)
                reset = b""
            else:
                reset = _reset(state)
            if command == "IDLE":
                # Not read: IDLE starts, DONE ends it. Read: DONE is literal data and
                # IDLE (if it accepted that) would wait for a DONE that never comes.
                payload = reset + _line(command, k) + marker.replace(b"8", b"6") \
                    + b"\r\nDONE\r\nt2 NOOP\r\n"
                ex = exchange(c, payload, b"t2", timeout=3)
                reads = not (ex.end == "done" and b"t1" in ex.tags)
                plus = [p for p in ex.continuations if not p.startswith(b"+ idling")]
            elif command == "LOGOUT":
                # Dovecot hangs up either way; only its "+ OK" tells whether it read.
                payload = reset + dl.probe_payload(_line(command, k), b"{8}")
                ex = exchange(c, payload, b"t2", timeout=3)
                assert ex.end == "closed" and b"t1" in ex.tags, ex.responses
                reads = bool(ex.continuations)
                plus = ex.continuations
                c.close()
                c = None
            else:
                payload = reset + dl.probe_payload(_line(command, k), marker)
                ex = exchange(c, payload, b"t2", timeout=3)
                reads = _verdict(ex, payload)
                plus = ex.continuations
            if marker == b"{8}" or command == "LOGOUT":
                # Dovecot sends "+ OK" for a synchronizing literal exactly when it reads it.
                assert bool(plus) == reads, (command, k, state, ex.responses)
            else:
                assert not plus, (command, k, state, ex.responses)
            results.append(reads)
            if c is not None and ex.end != "done":
                c.close()
                c = None
    finally:
        if c is not None:
            c.close()
    return results


def _arity(reads: list[bool]) -> int | None | str:
    """The table value for one command: None (reads all), N, or "irregular <pattern>"."""
    if all(reads):
        return None
    n = reads.index(False)
    if any(reads[n:]):
        return "irregular " + "".join("R" if r else "." for r in reads)
    return n


def test_argument_table_matches_dovecot(rig: DovecotRig):
    """ARGS_READ: for every command Dovecot offers (and the pre-auth/unknown ones), in
    both states, with {8+} and {8}: how many leading arguments Dovecot reads."""
    jobs = [(cmd, state, marker) for cmd in dl.PROBE_ARGS for state in STATES
            for marker in (b"{8+}", b"{8}")]
    with ThreadPoolExecutor(12) as pool:
        measured = list(pool.map(lambda j: _measure_arity(rig, *j), jobs))
    table: dict[str, set] = {}
    for (cmd, _state, _marker), reads in zip(jobs, measured, strict=True):
        table.setdefault(cmd, set()).add(_arity(reads))
    wrong = {cmd: sorted(map(repr, got)) for cmd, got in table.items()
             if got != {dl.ARGS_READ[cmd]}}
    assert not wrong, (
        "Dovecot reads a different number of arguments than ARGS_READ says "
        f"(Dovecot {dl.DOVECOT_VERSION} measured); measured: {wrong}")
    assert set(dl.ARGS_READ) == set(dl.PROBE_ARGS)


def test_every_announced_command_is_in_the_table(rig: DovecotRig):
    """The table covers every command that Dovecot's post-login CAPABILITY implies."""
    c = connect(rig, USER)
    try:
        caps = next(line for line in c.command("c", "CAPABILITY")
                    if line.startswith(b"* CAPABILITY ")).decode().split()[2:]
    finally:
        c.close()
    implied = {
        "IDLE": ["IDLE"], "NAMESPACE": ["NAMESPACE"], "UNSELECT": ["UNSELECT"], "ID": ["ID"],
        "ENABLE": ["ENABLE"], "MOVE": ["MOVE", "UID MOVE"], "UIDPLUS": ["UID EXPUNGE"],
        "SORT": ["SORT", "UID SORT"], "NOTIFY": ["NOTIFY"], "CONTEXT=SEARCH": ["CANCELUPDATE"],
        "METADATA": ["GETMETADATA", "SETMETADATA"], "COMPRESS=DEFLATE": ["COMPRESS"],
    }
    missing = [cmd for cap in caps for cmd in implied.get(cap, [])
               + (["THREAD", "UID THREAD"] if cap.startswith("THREAD=") else [])
               if cmd not in dl.ARGS_READ]
    assert not missing, (missing, caps)


def test_gateway_reads_fixed_arity_commands_as_dovecot_does(rig: DovecotRig):
    """The relay reads a command whole and refuses extra arguments exactly where Dovecot
    reads a fixed number of arguments (``MAX_ARGS`` against ARGS_READ), for every command
    the relay forwards to this Dovecot; a command Dovecot reads to the line end must not
    be cut short by the relay."""
    known = commands_for_capabilities(capabilities(rig, USER))
    # Known to the relay only to be answered by it (CommandStream._builtin), never sent on.
    answered = {"LOGIN", "AUTHENTICATE", "STARTTLS", "COMPRESS", "UNAUTHENTICATE"}
    wrong = {cmd: (n, MAX_ARGS.get(cmd)) for cmd, n in dl.ARGS_READ.items()
             if cmd in known - answered and MAX_ARGS.get(cmd) != n}
    assert not wrong, f"command: (Dovecot reads, MAX_ARGS) {wrong}"


def test_gateway_refuses_every_tag_dovecot_refuses():
    """A tag Dovecot refuses makes it skip the line unread; the relay refuses such a line
    itself (it may refuse more, e.g. DEL)."""
    accepted = [b for b in sorted(dl.TAG_REFUSED_BYTES - set(b" \r\n"))
                if not isinstance(parse_head(b"t" + bytes([b]) + b"1 NOOP"), ParseError)]
    assert not accepted, accepted


def _run_case(rig: DovecotRig, payload: bytes, timeout: float = 3) -> Exchange:
    c = _open(rig, "selected")
    try:
        return exchange(c, payload, b"t2", timeout=timeout)
    finally:
        c.close()


@pytest.mark.parametrize("case", dl.SYNTAX_CASES, ids=lambda c: c.name)
def test_literal_placement(rig: DovecotRig, case: dl.LiteralCase):
    """SYNTAX_CASES: where a marker starts a literal for Dovecot, and where an earlier
    error (or IDLE, or APPEND's flag check) leaves it unread."""
    payload = dl.probe_payload(case.prefix, case.marker)
    ex = _run_case(rig, payload)
    if b"z1" in ex.tags:
        reads = False
    else:
        assert ex.end == "done", (ex.end, ex.responses)
        reads = True
    assert reads == case.reads, (
        f"Dovecot {'reads' if reads else 'does not read'} the literal in {payload[:120]!r}; "
        f"responses: {ex.responses!r}")
    sync = re.fullmatch(rb"~?\{[0-9]*\}", case.marker) is not None
    assert bool([p for p in ex.continuations if p.startswith(b"+ OK")]) == (sync and reads), \
        ex.responses


@pytest.mark.parametrize("case", dl.LONG_LINE_CASES, ids=lambda c: c[0])
def test_long_lines(rig: DovecotRig, case: tuple[str, bytes, str]):
    """LONG_LINE_CASES: past imap_max_line_length a later literal is left unread (BAD
    'IMAP command line too large'), or Dovecot hangs up (a literal above the limit)."""
    _name, payload, outcome = case
    ex = _run_case(rig, payload + b"z1 NOOP\r\nt2 NOOP\r\n", timeout=5)
    if ex.end == "closed" and any(b"BYE" in r for r in ex.untagged_bad):
        got = "bye"
    elif b"z1" in ex.tags:
        got = "not read"
    else:
        assert ex.end == "done", (ex.end, ex.responses)
        got = "read"
    assert got == outcome, [r[:120] for r in ex.responses]


@pytest.mark.parametrize("case", dl.RESUME_CASES, ids=lambda c: c[0])
def test_append_resumes_mid_line(rig: DovecotRig, case: tuple[str, bytes, bytes | None]):
    """RESUME_CASES: after a syntax error APPEND leaves the rest of its line to be parsed
    as a new command (a command hidden in one line, no literal needed)."""
    _name, line, tag = case
    ex = _run_case(rig, line + b"t2 NOOP\r\n")
    assert ex.end == "done", ex.responses
    hidden = [t for t in ex.tags if t != b"t1"]
    if tag is None:
        assert hidden == [], ex.responses
    else:
        assert tag in hidden, ex.responses


def test_tag_bytes(rig: DovecotRig):
    """TAG_REFUSED_BYTES: which bytes Dovecot refuses in a tag (the line is then skipped,
    literal markers included). Each probe is followed by a valid command so that Dovecot's
    limit of 20 invalid commands in a row is never reached."""
    tried = [b for b in range(256) if b not in b" \r\n"]
    payload = b"".join(b"t" + bytes([b]) + b"1 NOOP\r\nk%d NOOP\r\n" % b for b in tried)
    c = _open(rig, "authenticated")
    try:
        ex = exchange(c, payload + b"t2 NOOP\r\n", b"t2")
    finally:
        c.close()
    assert ex.end == "done", ex.responses[-3:]
    accepted = {t[1] for t in ex.tags if t.startswith(b"t") and len(t) == 3}
    refused = {b for b in tried if b not in accepted}
    assert refused == dl.TAG_REFUSED_BYTES - set(b" \r\n"), sorted(
        refused ^ (dl.TAG_REFUSED_BYTES - set(b" \r\n")))
    assert len(ex.untagged_bad) == len(refused)
