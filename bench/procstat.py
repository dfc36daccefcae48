"""Memory and CPU of the processes under test, read from /proc.

Parsers are pure functions of the file text (tested on fixed strings); the readers around them are
thin. Memory is read from /proc/PID/smaps_rollup: RSS counts shared pages (libraries, the
interpreter) in full in every process, PSS divides them among the sharers, so PSS is the figure to
compare between a C proxy and a Python one (and the one that adds up across processes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Mem:
    """Resident memory in KiB, summed over a set of processes."""

    rss_kib: int
    pss_kib: int

    def __sub__(self, other: Mem) -> Mem:
        return Mem(self.rss_kib - other.rss_kib, self.pss_kib - other.pss_kib)


def parse_smaps_rollup(text: str) -> Mem:
    """Rss and Pss (kB lines) of one /proc/PID/smaps_rollup text."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[key] = int(parts[0])
    if "Rss" not in fields or "Pss" not in fields:
        raise ValueError(f"smaps_rollup without Rss/Pss lines: {text[:200]!r}")
    return Mem(fields["Rss"], fields["Pss"])


def parse_stat(text: str) -> tuple[int, int, float]:
    """(pid, ppid, cpu seconds used = utime + stime) from one /proc/PID/stat text.

    The command name (field 2) may contain spaces and parentheses, so split after its last ')'.
    """
    pid = int(text.split(" ", 1)[0])
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); ppid is field 4, utime field 14, stime field 15
    ppid = int(rest[1])
    ticks = int(rest[11]) + int(rest[12])
    return pid, ppid, ticks / CLK_TCK


def descendants(root: int, parent_of: dict[int, int]) -> list[int]:
    """root and every process below it, given a pid -> ppid map."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_of.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return sorted(out)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None  # the process went away between listing and reading


def parse_schedstat(text: str) -> float:
    """CPU seconds from /proc/PID/schedstat (first field: ns on CPU).

    Preferred over /proc/PID/stat's utime+stime, which count in 10 ms ticks: a 0.2 s FETCH run
    would be measured to +-5 %.
    """
    return int(text.split()[0]) / 1e9


def _cpu(pid: int, stat_cpu: float) -> float:
    """CPU seconds of all threads of pid (schedstat is per thread; the gateway may use worker threads).

    A thread that exited between two readings loses its time; the servers here keep theirs.
    """
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return stat_cpu
    total, seen = 0.0, False
    for tid in tids:
        text = _read(f"/proc/{pid}/task/{tid}/schedstat")
        if text:
            total += parse_schedstat(text)
            seen = True
    return total if seen else stat_cpu


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, cpu seconds) of every live process."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            text = _read(f"/proc/{name}/stat")
            if text:
                pid, ppid, cpu = parse_stat(text)
                table[pid] = (ppid, _cpu(pid, cpu))
    return table


def tree(root: int) -> list[int]:
    """root and its live descendants (Dovecot's master forks auth, imap-login, imap, ...)."""
    table = process_table()
    return descendants(root, {pid: v[0] for pid, v in table.items()}) if root in table else []


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds used so far by the given live processes (exited ones count 0)."""
    total = 0.0
    for pid in pids:
        text = _read(f"/proc/{pid}/stat")
        if text:
            total += _cpu(pid, parse_stat(text)[2])
    return total


def memory(pids: list[int]) -> Mem:
    """Summed Rss/Pss of the given live processes."""
    rss = pss = 0
    for pid in pids:
        text = _read(f"/proc/{pid}/smaps_rollup")
        if text:
            m = parse_smaps_rollup(text)
            rss += m.rss_kib
            pss += m.pss_kib
    return Mem(rss, pss)


def cmdline(pid: int) -> str:
    """The process title (Dovecot children rewrite it: 'dovecot/imap-login', 'dovecot/imap', ...)."""
    text = _read(f"/proc/{pid}/cmdline")
    return (text or "").replace("\0", " ").strip()
