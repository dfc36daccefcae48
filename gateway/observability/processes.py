"""CPU, memory and file descriptors of the gateway's processes, read from /proc.

prometheus_client's ``ProcessCollector`` describes the one process that serves the scrape.
With ``[server] workers > 1`` that is the supervisor, while the workers do the work, and
prometheus_client's multiprocess mode adds up only what the processes write to their files,
not what the kernel knows about them. So the supervisor's scrape uses
``GatewayProcessCollector``:

* the standard ``process_*`` names for the whole gateway: CPU (a counter that never goes
  back, see below), resident and virtual memory and open descriptors summed over the
  supervisor and its live workers; the descriptor limit and the start time are the
  supervisor's (a dashboard's "uptime" is the gateway's, not the youngest worker's);
* ``imap_gateway_worker_cpu_seconds_total``, ``imap_gateway_worker_resident_memory_bytes``
  and ``imap_gateway_worker_open_fds`` with ``worker`` = the worker's index, so one worker
  stuck at 100 % of a core shows. A restarted worker's series start again from 0 (a counter
  reset, which ``rate()`` handles); a worker that is down has no series until it is back.

A single process (``workers = 1``) keeps prometheus_client's ``ProcessCollector`` and adds
``WorkerProcessCollector`` with worker "0" = itself, so the per-worker panels work there too.

Why ``process_cpu_seconds_total`` also counts the workers that exited: the kernel adds a
child's CPU time to its parent's ``cutime``/``cstime`` once the parent has waited for it,
and the supervisor waits for every worker it started (trio's ``Process``). Without it the
sum would drop by the dead worker's CPU at every restart, and ``rate()`` takes any drop for
a reset to 0, so the panel would show a spike of all the other workers' CPU since start.
The supervisor both reaps workers and serves the scrape on its one trio thread, so a worker
is either still listed (read from /proc, a zombie's times included) or already in
``cutime``, never both and never neither.

Units and field positions are ``ProcessCollector``'s, so a dashboard reads the same numbers
from one process or many. RSS counts pages shared between processes (the interpreter, the
libraries) in each of them, as ``ps`` does: the sum is above what the gateway adds to the
host's memory use. Linux only, like ``ProcessCollector``: without a readable /proc the
collectors export nothing; a process that exits while it is read is left out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import cache

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PROC = "/proc"

#: (worker index, pid) of every worker to report; called at each scrape.
Workers = Callable[[], Iterable[tuple[int, int]]]

#: The per-worker families: (name as exposed, type, help). The label is always ``worker``.
WORKER_SERIES: tuple[tuple[str, str, str], ...] = (
    ("imap_gateway_worker_cpu_seconds_total", "counter",
     "User and system CPU time of one worker process, in seconds (worker = its index; "
     "without workers, \"0\" = the gateway process). Starts again from 0 when the worker "
     "is restarted."),
    ("imap_gateway_worker_resident_memory_bytes", "gauge",
     "Resident memory of one worker process, in bytes."),
    ("imap_gateway_worker_open_fds", "gauge",
     "Open file descriptors of one worker process (each client connection holds two)."),
)


def _sysconf(name: str, default: int) -> int:
    try:
        value = os.sysconf(name)
    except (ValueError, OSError):
        return default
    return value if value > 0 else default


CLOCK_TICKS = _sysconf("SC_CLK_TCK", 100)
PAGE_SIZE = _sysconf("SC_PAGE_SIZE", 4096)


@dataclass(frozen=True)
class ProcessSample:
    """One process as /proc describes it, in prometheus_client's units."""

    #: utime + stime of every thread, in seconds.
    cpu_seconds: float
    #: cutime + cstime: the CPU of the children this process has waited for, in seconds.
    waited_children_cpu_seconds: float
    resident_bytes: float
    virtual_bytes: float
    #: Unix time.
    start_time_seconds: float
    #: None when /proc/PID/fd could not be listed.
    open_fds: int | None


def parse_stat(text: bytes, *, boot_time: float, ticks: int = CLOCK_TICKS,
               page_size: int = PAGE_SIZE) -> ProcessSample:
    """The fields of one /proc/PID/stat text (``open_fds`` is None: not in it).

    The command name (field 2) may hold spaces and ')', so the fields are counted after
    its last ')'. ValueError (or IndexError) when the text is not a stat line.
    """
    fields = text[text.rindex(b")") + 1:].split()
    # fields[0] is field 3 (state); utime is field 14, stime 15, cutime 16, cstime 17,
    # starttime 22 (ticks after boot), vsize 23 (bytes), rss 24 (pages): proc(5).
    return ProcessSample(
        cpu_seconds=(int(fields[11]) + int(fields[12])) / ticks,
        waited_children_cpu_seconds=(int(fields[13]) + int(fields[14])) / ticks,
        start_time_seconds=boot_time + int(fields[19]) / ticks,
        virtual_bytes=float(fields[20]),
        resident_bytes=float(int(fields[21]) * page_size),
        open_fds=None,
    )


@cache
def boot_time(proc: str = PROC) -> float | None:
    """The host's boot time (``btime`` of /proc/stat), None without a readable /proc."""
    return _field_of_line(os.path.join(proc, "stat"), b"btime ", 1)


def read_process(pid: int | str = "self", proc: str = PROC) -> ProcessSample | None:
    """``pid`` now (``"self"``: this process), or None when it is gone or unreadable."""
    btime = boot_time(proc)
    if btime is None:
        return None
    where = os.path.join(proc, str(pid))
    try:
        with open(os.path.join(where, "stat"), "rb") as f:
            sample = parse_stat(f.read(), boot_time=btime)
    except (OSError, ValueError, IndexError):
        return None
    try:
        fds: int | None = len(os.listdir(os.path.join(where, "fd")))
    except OSError:
        fds = None
    return replace(sample, open_fds=fds)


def read_max_fds(pid: int | str = "self", proc: str = PROC) -> float | None:
    """The soft limit on open descriptors (``Max open files`` of /proc/PID/limits)."""
    return _field_of_line(os.path.join(proc, str(pid), "limits"), b"Max open files", 3)


def _in_ticks(seconds: float) -> float:
    """A sum of tick counts as seconds, rounded to the tick: the same CPU time summed in
    another order (a worker's own time, later its parent's ``cutime``) gives the same
    float, so the counter never appears to fall by one unit in the last place."""
    return round(seconds * CLOCK_TICKS) / CLOCK_TICKS


def _field_of_line(path: str, prefix: bytes, index: int) -> float | None:
    """Field ``index`` (split on white space) of the first line of ``path`` that starts
    with ``prefix``, as a number; None when the file, the line or the field is missing."""
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(prefix):
                    return float(line.split()[index])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _worker_families(samples: list[tuple[int, ProcessSample]]) -> list[Metric]:
    (cpu_name, _, cpu_help), (rss_name, _, rss_help), (fds_name, _, fds_help) = WORKER_SERIES
    cpu = CounterMetricFamily(cpu_name, cpu_help, labels=["worker"])
    rss = GaugeMetricFamily(rss_name, rss_help, labels=["worker"])
    fds = GaugeMetricFamily(fds_name, fds_help, labels=["worker"])
    for index, sample in sorted(samples, key=lambda s: s[0]):
        label = [str(index)]
        cpu.add_metric(label, sample.cpu_seconds)
        rss.add_metric(label, sample.resident_bytes)
        if sample.open_fds is not None:
            fds.add_metric(label, sample.open_fds)
    return [cpu, rss, fds]


def _read_workers(workers: Workers) -> list[tuple[int, ProcessSample]]:
    out = []
    for index, pid in workers():
        sample = read_process(pid)
        if sample is not None:
            out.append((index, sample))
    return out


class WorkerProcessCollector(Collector):
    """``imap_gateway_worker_*{worker}`` for each of ``workers()`` that can be read."""

    def __init__(self, workers: Workers) -> None:
        self._workers = workers

    def collect(self) -> Iterable[Metric]:
        return _worker_families(_read_workers(self._workers))


class GatewayProcessCollector(Collector):
    """The supervisor's scrape: the standard ``process_*`` names for itself and its
    ``workers()`` together, and the per-worker series (see the module docstring)."""

    def __init__(self, workers: Workers) -> None:
        self._workers = workers

    def collect(self) -> Iterable[Metric]:
        # The workers first: one reaped meanwhile is then in our cutime (read after).
        workers = _read_workers(self._workers)
        own = read_process("self")
        if own is None:
            return []
        everyone = [own, *(sample for _, sample in workers)]
        out: list[Metric] = [
            CounterMetricFamily(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds: the supervisor, its live "
                "workers and the workers that exited since it started.",
                value=_in_ticks(own.waited_children_cpu_seconds
                                + sum(s.cpu_seconds for s in everyone))),
            GaugeMetricFamily(
                "process_resident_memory_bytes",
                "Resident memory size in bytes: the supervisor and its live workers added up.",
                value=sum(s.resident_bytes for s in everyone)),
            GaugeMetricFamily(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes: the supervisor and its live workers added up.",
                value=sum(s.virtual_bytes for s in everyone)),
            GaugeMetricFamily(
                "process_start_time_seconds",
                "Start time of the supervisor since unix epoch in seconds.",
                value=own.start_time_seconds),
        ]
        if own.open_fds is not None:
            out.append(GaugeMetricFamily(
                "process_open_fds",
                "Number of open file descriptors: the supervisor and its live workers added up.",
                value=sum(s.open_fds or 0 for s in everyone)))
        max_fds = read_max_fds("self")
        if max_fds is not None:
            out.append(GaugeMetricFamily(
                "process_max_fds",
                "Maximum number of open file descriptors of one process (the supervisor's; "
                "each worker has the same limit).",
                value=max_fds))
        return out + _worker_families(workers)
