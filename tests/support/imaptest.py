"""Dovecot's IMAP tester, imaptest: build it, run it, read what it says.

imaptest is the tool Dovecot's authors check IMAP servers with. Two modes matter here:

- compliance (``test=DIR``): scripted groups of commands, each reply checked against the
  expected untagged and tagged responses. It ends with a summary
  (``71 test groups: N failed, M skipped ...``) and names every failing group in a
  ``*** Test NAME ...`` block on stderr.
- stress (no ``test=``): N clients send random commands for S seconds while imaptest tracks
  the mailbox state and reports every reply that contradicts it as an ``Error:`` line.

Both run against a real server only; the binary is built once by ``scripts/imaptest.sh``
(from the pinned reference next to the repo) into ``.cache/imaptest``. A missing or broken
build is an ``ImaptestError``: callers turn it into a failure, never a skip, so CI cannot
pass without having run it.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .imap import make_message

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "imaptest.sh"

#: The rig's throw-away account for imaptest (tests/support/rig/users): the compliance
#: tests delete and recreate its mailboxes, so nothing else may keep mail there.
USER = ("imaptest", "imaptestpass")

#: The number of scripted groups in the pinned imaptest (src/tests, commit 924f619).
EXPECTED_GROUPS = 71

_SUMMARY = re.compile(r"^(\d+) test groups: (\d+) failed, (\d+) skipped due to missing capabilities$",
                      re.MULTILINE)
_COMMANDS = re.compile(r"^(base protocol|extensions): (\d+)/(\d+) individual commands failed$",
                       re.MULTILINE)
_FAILED_GROUP = re.compile(r"^\*\*\* Test (\S+) (?:command|initialization failed)", re.MULTILINE)


class ImaptestError(RuntimeError):
    """imaptest could not be built, did not start, or printed no summary."""


def build(timeout: float = 600) -> Path:
    """Path of the imaptest binary (a wrapper that sets LD_LIBRARY_PATH), built on first use
    by ``scripts/imaptest.sh``; its ``tests/`` dir sits next to it."""
    try:
        proc = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ImaptestError(f"{BUILD_SCRIPT} did not run: {e}") from e
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not Path(lines[-1]).is_file():
        raise ImaptestError(
            f"{BUILD_SCRIPT} failed (exit {proc.returncode}); imaptest is required, "
            f"not optional.\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n"
            f"{proc.stderr[-3000:]}")
    return Path(lines[-1])


def tests_dir(binary: Path) -> Path:
    return binary.parent / "tests"


def _endpoint_args(host: str, port: int, user: str, password: str, tls: bool) -> list[str]:
    args = [f"host={host}", f"port={port}", f"user={user}", f"pass={password}"]
    if tls:
        args.append("ssl=any-cert")  # implicit TLS; the gateway's test CA is not in a store
    return args


# ---- compliance ----------------------------------------------------------------------------

@dataclass
class ComplianceResult:
    """imaptest's summary of one compliance run, plus its raw output for failure messages."""

    groups: int
    failed_groups: int
    skipped_groups: int
    base_failed: int
    base_total: int
    ext_failed: int
    ext_total: int
    failed_names: list[str]
    returncode: int
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.groups} groups: {self.failed_groups} failed "
                f"{self.failed_names}, {self.skipped_groups} skipped; base "
                f"{self.base_failed}/{self.base_total}, extensions "
                f"{self.ext_failed}/{self.ext_total} commands failed; {self.seconds:.1f}s")

    def report(self, limit: int = 12000) -> str:
        """The summary and imaptest's own output (failure blocks are on stderr), each line
        cut at 400 characters (the ID group sends a 30 kB command) and the whole at ``limit``."""
        err = _shorten(self.stderr, limit)
        return (f"{self.summary()}\n--- imaptest stdout ---\n{self.stdout}"
                f"--- imaptest stderr ---\n{err}")


def _shorten(text: str, limit: int, line_limit: int = 400) -> str:
    lines = [line if len(line) <= line_limit
             else f"{line[:line_limit]}... ({len(line) - line_limit} more characters)"
             for line in text.splitlines()]
    out = "\n".join(lines)
    return out if len(out) <= limit else out[:limit] + f"\n... ({len(out) - limit} more characters)"


def parse_compliance(stdout: str, stderr: str, returncode: int) -> ComplianceResult:
    """Read imaptest's three summary lines; ImaptestError when they are missing (a crash,
    a refused connection, a failed login: imaptest then prints only ``Error:``/``Fatal:``)."""
    m = _SUMMARY.search(stdout)
    cmds = {k: (int(f), int(t)) for k, f, t in _COMMANDS.findall(stdout)}
    if m is None or set(cmds) != {"base protocol", "extensions"}:
        raise ImaptestError(f"imaptest printed no summary (exit {returncode})\n--- stdout ---\n"
                            f"{stdout[-4000:]}\n--- stderr ---\n{stderr[-4000:]}")
    names = list(dict.fromkeys(_FAILED_GROUP.findall(stderr)))
    return ComplianceResult(
        groups=int(m.group(1)), failed_groups=int(m.group(2)), skipped_groups=int(m.group(3)),
        base_failed=cmds["base protocol"][0], base_total=cmds["base protocol"][1],
        ext_failed=cmds["extensions"][0], ext_total=cmds["extensions"][1],
        failed_names=names, returncode=returncode, stdout=stdout, stderr=stderr)


def run_compliance(binary: Path, host: str, port: int, user: str, password: str, *,
                   tls: bool = False, timeout: float = 300) -> ComplianceResult:
    """All scripted groups of ``tests_dir(binary)`` against one endpoint (plain IMAP, or
    implicit TLS with any certificate accepted when ``tls``)."""
    args = [str(binary), *_endpoint_args(host, port, user, password, tls),
            f"test={tests_dir(binary)}/"]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(args, capture_output=True, text=True, errors="replace",
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise ImaptestError(f"imaptest compliance run did not finish in {timeout}s\n"
                            f"--- stdout ---\n{e.stdout!r:.4000}\n--- stderr ---\n"
                            f"{e.stderr!r:.4000}") from e
    result = parse_compliance(proc.stdout, proc.stderr, proc.returncode)
    result.seconds = time.monotonic() - t0
    return result


# ---- stress --------------------------------------------------------------------------------

_ERROR_LINE = re.compile(r"^(?:Error|Fatal|Panic): .*$", re.MULTILINE)
_CLIENT_PREFIX = re.compile(r"^(Error|Fatal|Panic): (?:\S+\[\d+\]|client \d+|\S+\(\d+\)):?\s*")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_NUMBER = re.compile(r"\d+")
_QUOTED = re.compile(r'"[^"]*"')


@dataclass
class StressResult:
    """One stress run: imaptest's ``Error:``/``Fatal:``/``Panic:`` lines and its totals."""

    error_lines: list[str]
    totals: str
    returncode: int
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)
    seconds: float = 0.0

    @property
    def crashed(self) -> bool:
        """imaptest itself died (a signal, a Panic/Fatal, no totals): nothing to compare."""
        return (self.returncode < 0 or not self.totals
                or any(line.startswith(("Panic:", "Fatal:")) for line in self.error_lines))

    def error_kinds(self) -> dict[str, list[str]]:
        """Error lines grouped by kind: the client prefix dropped, numbers (sequences, UIDs,
        counts) and quoted strings replaced, so the same fault from two runs compares equal.
        Value: the original lines of that kind."""
        kinds: dict[str, list[str]] = {}
        for line in self.error_lines:
            kinds.setdefault(error_kind(line), []).append(line)
        return kinds


def error_kind(line: str) -> str:
    line = _CLIENT_PREFIX.sub(r"\1: ", line)
    line = _QUOTED.sub('"…"', line)
    line = _HEX.sub("0xN", line)
    return _NUMBER.sub("N", line)[:200]


def write_mbox(path: Path, count: int = 200, tag: str = "stress") -> Path:
    """An mbox of ``count`` messages for imaptest to APPEND from, every one with its own
    Message-ID (with duplicates imaptest reports "ENVELOPE changed" against Dovecot itself).
    A mix of sizes, plain and multipart, so FETCH BODYSTRUCTURE/BODY[n] have parts to walk."""
    with open(path, "wb") as f:
        for i in range(count):
            if i % 3 == 2:
                msg = _multipart(i, tag)
            else:
                msg = make_message(i, 400 + (i * 733) % 12000, tag)
            msg = msg.replace(b"\r\n", b"\n")
            f.write(b"From sender@example.org Mon Jan  2 00:00:00 2023\n" + msg + b"\n")
    return path


def _multipart(i: int, tag: str) -> bytes:
    boundary = f"=_b{i}_"
    text = "".join(f"part one of {tag} {i}, line {n}\r\n" for n in range(1 + i % 20))
    return (f"From: Multi Sender <multi{i % 13}@example.net>\r\n"
            f"To: imaptest@example.org, Other <other{i % 7}@example.com>\r\n"
            f"Cc: cc{i % 5}@example.com\r\n"
            f"Subject: {tag} multipart {i}\r\n"
            f"Date: Tue, 03 Jan 2023 {i % 24:02d}:{i % 60:02d}:00 +0100\r\n"
            f"Message-ID: <{tag}.multi.{i}@rig.example>\r\n"
            f"MIME-Version: 1.0\r\n"
            f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
            f"preamble\r\n--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{text}--{boundary}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n"
            f"{'QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=' * (1 + i % 4)}\r\n"
            f"--{boundary}--\r\n").encode()


def run_stress(binary: Path, host: str, port: int, user: str, password: str, *, mbox: Path,
               tls: bool = False, clients: int = 10, secs: int = 60,
               extra: tuple[str, ...] = ()) -> StressResult:
    """imaptest's random-command stress mode against one endpoint for ``secs`` seconds."""
    args = [str(binary), *_endpoint_args(host, port, user, password, tls),
            f"clients={clients}", f"secs={secs}", f"mbox={mbox}", *extra]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(args, capture_output=True, text=True, errors="replace",
                              timeout=secs + 120, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise ImaptestError(f"imaptest stress run did not end within {secs + 120}s") from e
    out = proc.stdout
    totals = out[out.find("Totals:"):].strip() if "Totals:" in out else ""
    errors = _ERROR_LINE.findall(proc.stderr) + _ERROR_LINE.findall(proc.stdout)
    return StressResult(error_lines=errors, totals=totals, returncode=proc.returncode,
                        stdout=out, stderr=proc.stderr, seconds=time.monotonic() - t0)
