"""The process series: /proc read right (this test process and real children), added up
over a supervisor and its workers, with a CPU counter that does not drop when a worker dies.

Real processes, no fake /proc: the children are Python interpreters that allocate memory
and burn CPU, as a worker does, and are ended by this test (by their own Popen handle).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from gateway.observability import metrics
from gateway.observability.processes import (
    CLOCK_TICKS,
    PAGE_SIZE,
    GatewayProcessCollector,
    parse_stat,
    read_max_fds,
    read_process,
)
from tests.support.scrape import sample_value

#: A worker stand-in: ~40 MiB resident, 0.3 s of CPU, then it waits to be ended.
CHILD = """
import sys, time
ballast = bytearray(40 * 1024 * 1024)
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("ready", flush=True)
time.sleep(120)
"""


def _cpu_of(pid: int) -> float:
    """utime + stime of pid, read here independently of the module under test."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _vm_rss(pid: int) -> int:
    """VmRSS of /proc/PID/status, in bytes (another file than the one the module reads)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    procs = [subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_stat_fields_are_counted_after_the_last_parenthesis():
    # comm "(a) b) c" has spaces and parentheses; utime 250, stime 50, cutime 100,
    # cstime 20 ticks, starttime 1000 ticks after boot, vsize 123456789, rss 2000 pages
    line = (b"4242 ((a) b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 100 20 20 0 3 0 "
            b"1000 123456789 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0")
    sample = parse_stat(line, boot_time=1_700_000_000.0, ticks=100, page_size=4096)
    assert sample.cpu_seconds == pytest.approx(3.0)
    assert sample.waited_children_cpu_seconds == pytest.approx(1.2)
    assert sample.start_time_seconds == pytest.approx(1_700_000_010.0)
    assert sample.virtual_bytes == 123456789
    assert sample.resident_bytes == 2000 * 4096
    with pytest.raises(ValueError):
        parse_stat(b"not a stat line", boot_time=0.0)


def test_this_process_is_read_right():
    pid = os.getpid()
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    before = os.times()
    sample = read_process(pid)
    after = os.times()
    assert sample is not None
    # os.times() counts the same clock ticks for the whole process (all threads)
    assert before.user + before.system - 0.011 <= sample.cpu_seconds \
        <= after.user + after.system + 0.011
    assert sample.cpu_seconds >= 0.2
    assert sample.resident_bytes % PAGE_SIZE == 0
    assert abs(sample.resident_bytes - _vm_rss(pid)) < 0.1 * _vm_rss(pid)
    assert sample.virtual_bytes > sample.resident_bytes
    assert sample.open_fds is not None
    files = [open(os.devnull) for _ in range(5)]  # noqa: SIM115
    try:
        opened = read_process(pid)
        assert opened is not None and opened.open_fds == sample.open_fds + 5
    finally:
        for f in files:
            f.close()
    import resource

    assert read_max_fds(pid) == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_start_time_and_waited_children_cpu():
    before = read_process(os.getpid())
    spawned = time.time()
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        sample = read_process(child.pid)
        assert sample is not None
        assert abs(sample.start_time_seconds - spawned) < 1.0
        assert sample.cpu_seconds >= 0.3 - 0.011
        assert sample.resident_bytes >= 40 * 1024 * 1024
        child_cpu = _cpu_of(child.pid)
    finally:
        child.kill()
        child.wait()
    # reaped: gone from /proc, its CPU now in ours as a waited-for child's
    assert read_process(child.pid) is None
    after = read_process(os.getpid())
    assert before is not None and after is not None
    assert after.waited_children_cpu_seconds - before.waited_children_cpu_seconds \
        >= child_cpu - 0.011


def test_supervisor_scrape_adds_up_itself_and_its_live_workers(
        children, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    listed = [(0, children[0].pid), (1, children[1].pid)]
    registry = metrics.exposition_registry(lambda: listed)

    text = generate_latest(registry).decode()
    rss = {i: _vm_rss(p.pid) for i, p in enumerate(children)}
    own = read_process(os.getpid())
    assert own is not None
    total_rss = sample_value(text, "process_resident_memory_bytes")
    assert total_rss >= 0.9 * (own.resident_bytes + rss[0] + rss[1])
    assert total_rss > own.resident_bytes + 80 * 1024 * 1024
    for index in (0, 1):
        worker = str(index)
        assert sample_value(text, "imap_gateway_worker_resident_memory_bytes", worker=worker) \
            == pytest.approx(rss[index], rel=0.1)
        assert 0.3 - 0.011 <= sample_value(
            text, "imap_gateway_worker_cpu_seconds_total", worker=worker) \
            <= _cpu_of(children[index].pid)
        assert sample_value(text, "imap_gateway_worker_open_fds", worker=worker) >= 3
    cpu = sample_value(text, "process_cpu_seconds_total")
    assert cpu >= own.cpu_seconds + 2 * (0.3 - 0.011)
    assert sample_value(text, "process_open_fds") >= own.open_fds + 6
    assert sample_value(text, "process_start_time_seconds") == own.start_time_seconds
    assert sample_value(text, "process_max_fds") == read_max_fds()

    # Worker 1 dies and is reaped; the supervisor still lists it (it has not noticed):
    # it is left out, its memory is no longer counted, its CPU still is.
    children[1].kill()
    children[1].wait()
    text = generate_latest(registry).decode()
    assert sample_value(text, "process_cpu_seconds_total") >= cpu
    assert sample_value(text, "process_resident_memory_bytes") < total_rss - 30 * 1024 * 1024
    assert not [line for line in text.splitlines() if 'worker="1"' in line]
    assert sample_value(text, "imap_gateway_worker_cpu_seconds_total", worker="0") > 0


def test_one_process_exports_the_standard_series_and_itself_as_worker_0():
    before = os.times()
    text = generate_latest(metrics.REGISTRY).decode()
    after = os.times()
    own = read_process(os.getpid())
    assert own is not None
    assert sample_value(text, "process_resident_memory_bytes") == pytest.approx(
        own.resident_bytes, rel=0.2)
    workers = {line.split('worker="')[1].split('"')[0] for line in text.splitlines()
               if line.startswith("imap_gateway_worker_") and "worker=" in line}
    assert workers == {"0"}
    for name in ("imap_gateway_worker_cpu_seconds_total", "process_cpu_seconds_total"):
        assert before.user + before.system - 0.011 <= sample_value(text, name) \
            <= after.user + after.system + 0.011, name


def test_a_collector_without_workers_describes_the_supervisor_alone():
    registry = CollectorRegistry()
    registry.register(GatewayProcessCollector(lambda: []))
    own = read_process(os.getpid())
    text = generate_latest(registry).decode()
    assert own is not None
    assert sample_value(text, "process_resident_memory_bytes") == pytest.approx(
        own.resident_bytes, rel=0.2)
    assert "imap_gateway_worker_cpu_seconds_total{" not in text
