"""The four workloads, each run against one target address at a time.

Each function does one measurement and returns plain numbers; the caller interleaves targets and
takes medians. Clients are blocking sockets in threads (see imapclient's docstring for why).
"""

from __future__ import annotations

import re
import resource
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench import procstat
from bench.imapclient import Conn, Credentials, ImapError
from bench.stats import percentile

ClientErrors = (OSError, ImapError, ssl.SSLError)
_EXISTS = re.compile(rb"^\* (\d+) EXISTS")


def make_message(i: int, size: int) -> bytes:
    """A plain-text RFC 5322 message of exactly ``size`` bytes (CRLF line ends)."""
    head = (
        f"From: Bench <bench@example.org>\r\nTo: bob@example.org\r\n"
        f"Subject: benchmark message {i}\r\nDate: Mon, 02 Jan 2023 10:00:00 +0000\r\n"
        f"Message-ID: <bench.{i}@example.org>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = (f"message {i} " + "abcdefghijklmnopqrstuvwxyz0123456789" * 3)[:76].encode() + b"\r\n"
    body_len = size - len(head)
    if body_len < 2:
        raise ValueError(
            f"message size {size} leaves no room for a body after the {len(head)}-byte header"
        )
    lines, pad = divmod(body_len, len(line))
    if pad == 1:  # a lone byte cannot be a CRLF-terminated line: fold one full line into the pad
        lines, pad = lines - 1, pad + len(line)
    body = line * lines + (b"x" * (pad - 2) + b"\r\n" if pad else b"")
    return head + body


def populate(
    addr: tuple[str, int], creds: Credentials, count: int, size: int, batch: int = 100
) -> float:
    """Fill INBOX with ``count`` messages by MULTIAPPEND (LITERAL+) over one plain connection.

    Returns the seconds taken. Runs directly against Dovecot, once per benchmark run: it sets up
    the FETCH workload, it is not measured through the proxies.
    """
    t0 = time.perf_counter()
    conn = Conn.open(addr, None)
    try:
        conn.login(creds)
        for start in range(0, count, batch):
            parts = [b"a APPEND INBOX"]
            for i in range(start, min(start + batch, count)):
                msg = make_message(i, size)
                parts.append(b" {%d+}\r\n" % len(msg))
                parts.append(msg)
            parts.append(b"\r\n")
            conn.send(b"".join(parts))
            tagged, _ = conn.response(b"a")
            if not tagged.startswith(b"a OK"):
                raise ImapError(f"MULTIAPPEND answered {tagged.strip()[:200]!r}")
        exists = select_count(conn, b"SELECT")
        if exists != count:
            raise ImapError(
                f"INBOX has {exists} messages after populating {count}: not a fresh mailbox?"
            )
        conn.logout()
    finally:
        conn.close()
    return time.perf_counter() - t0


def select_count(conn: Conn, verb: bytes = b"EXAMINE") -> int:
    _, untagged = conn.command(b"s", verb + b" INBOX")
    for line in untagged:
        m = _EXISTS.match(line)
        if m:
            return int(m.group(1))
    raise ImapError(f"{verb.decode()} INBOX returned no EXISTS line")


@dataclass
class Usage:
    """CPU seconds spent during one measurement, by side."""

    wall_s: float
    client_cpu_s: float
    proxy_cpu_s: float
    backend_cpu_s: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.__dict__.items()}


def _client_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return ru.ru_utime + ru.ru_stime


def metered(
    fn: Callable[[], dict], proxy_pids: Callable[[], list[int]], backend_root: int
) -> tuple[dict, Usage]:
    """Run fn and measure the CPU used by the client, the proxy processes and Dovecot's tree.

    Processes that start during the run count from zero; the proxy's own processes are taken out of
    the backend figure (for dovecot-direct the 'proxy' is Dovecot's imap-login).
    """
    before = procstat.process_table()
    c0, t0 = _client_cpu(), time.perf_counter()
    result = fn()
    t1, c1 = time.perf_counter(), _client_cpu()
    after = procstat.process_table()

    def used(pids: list[int]) -> float:
        return sum(after[p][1] - before.get(p, (0, 0.0))[1] for p in pids if p in after)

    proxy = proxy_pids()
    backend = (
        [
            p
            for p in procstat.descendants(backend_root, {k: v[0] for k, v in after.items()})
            if p not in proxy
        ]
        if backend_root in after
        else []
    )
    return result, Usage(t1 - t0, c1 - c0, used(proxy), used(backend))


def logins(
    addr: tuple[str, int], ctx: ssl.SSLContext, creds: Credentials, clients: int, seconds: float
) -> dict:
    """``clients`` threads loop connect + TLS + greeting + LOGIN + LOGOUT for ``seconds``.

    Only logins completed inside the window count, so the rate is count / seconds (logins still in
    flight at the end are neither counted nor waited for in the rate).
    """
    barrier = threading.Barrier(clients + 1)
    window: list[float] = []
    counts = [0] * clients  # completed inside the window: the rate
    done = [0] * clients  # completed at all, the tail included: the divisor for CPU per login
    errors = [0] * clients
    first_error: list[str] = []

    def worker(i: int) -> None:
        barrier.wait()
        end = window[0]
        while True:
            try:
                conn = Conn.open(addr, ctx, timeout=10)
                try:
                    conn.login(creds)
                    conn.logout()
                finally:
                    conn.close()
            except ClientErrors as e:
                errors[i] += 1
                if not first_error:
                    first_error.append(f"{type(e).__name__}: {e}")
                time.sleep(0.01)  # a failing target must not turn the client into a busy loop
            else:
                done[i] += 1
                if time.perf_counter() <= end:
                    counts[i] += 1
            if time.perf_counter() >= end:
                return

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    window.append(time.perf_counter() + seconds)
    barrier.wait()
    for t in threads:
        t.join(seconds + 30)
    total, errs = sum(counts), sum(errors)
    if total == 0:
        raise ImapError(
            f"no login succeeded in {seconds}s ({errs} errors; first: "
            f"{first_error[0] if first_error else 'none'})"
        )
    out = {"logins": total, "completed": sum(done), "rate": total / seconds, "errors": errs}
    if first_error:
        out["first_error"] = first_error[0]
    return out


def _no_cpu() -> float:
    return 0.0


def noop(
    addr: tuple[str, int],
    ctx: ssl.SSLContext,
    creds: Credentials,
    count: int,
    warmup: int,
    proxy_cpu: Callable[[], float] = _no_cpu,
) -> dict:
    """Round trip of NOOP on one logged-in connection, one at a time (no pipelining).

    ``proxy_cpu`` (CPU seconds of the proxy so far) is read around the timed NOOPs only, so
    ``proxy_cpu_timed_s`` / ``count`` is the proxy's CPU per NOOP without the login.
    """
    conn = Conn.open(addr, ctx)
    try:
        conn.login(creds)
        samples = []
        clock = time.perf_counter_ns
        cpu0 = 0.0
        for i in range(warmup + count):
            if i == warmup:
                cpu0 = proxy_cpu()
            t0 = clock()
            conn.send(b"n NOOP\r\n")
            tagged, _ = conn.response(b"n")
            dt = clock() - t0
            if not tagged.startswith(b"n OK"):
                raise ImapError(f"NOOP answered {tagged.strip()[:200]!r}")
            if i >= warmup:
                samples.append(dt / 1000)
        cpu1 = proxy_cpu()
        conn.logout()
    finally:
        conn.close()
    samples.sort()
    return {
        "p50_us": percentile(samples, 50),
        "p99_us": percentile(samples, 99),
        "mean_us": sum(samples) / len(samples),
        "count": len(samples),
        "proxy_cpu_timed_s": cpu1 - cpu0,
    }


def _logged_in(
    addr: tuple[str, int], ctx: ssl.SSLContext | None, creds: Credentials, n: int
) -> list[Conn]:
    conns: list[Conn] = []
    try:
        for _ in range(n):
            conn = Conn.open(addr, ctx)
            conns.append(conn)
            conn.login(creds)
    except BaseException:
        close_all(conns)
        raise
    return conns


def _in_parallel(
    conns: list[Conn], body: Callable[[Conn], int], proxy_cpu: Callable[[], float]
) -> tuple[list[int], float, float]:
    """Run ``body(conn)`` in one thread per connection, all released at once; return each
    result, the wall time from the release to the last return and the proxy CPU meanwhile.
    The first client error of any thread is raised here."""
    barrier = threading.Barrier(len(conns) + 1)
    results = [0] * len(conns)
    failures: list[BaseException] = []

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = body(conns[i])
        except ClientErrors as e:
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(conns))]
    for t in threads:
        t.start()
    cpu0 = proxy_cpu()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t0
    cpu1 = proxy_cpu()
    if failures:
        raise failures[0]
    return results, wall, cpu1 - cpu0


def noop_parallel(
    addr: tuple[str, int],
    ctx: ssl.SSLContext,
    creds: Credentials,
    connections: int,
    seconds: float,
    proxy_cpu: Callable[[], float] = _no_cpu,
) -> dict:
    """``connections`` logged-in connections, each sending NOOP and waiting for its reply in
    a loop for ``seconds``: NOOPs/s in total, and the proxy's CPU per NOOP."""
    conns = _logged_in(addr, ctx, creds, connections)

    def loop(conn: Conn) -> int:
        n, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            conn.send(b"n NOOP\r\n")
            tagged, _ = conn.response(b"n")
            if not tagged.startswith(b"n OK"):
                raise ImapError(f"NOOP answered {tagged.strip()[:200]!r}")
            n += 1
        return n

    try:
        counts, wall, cpu = _in_parallel(conns, loop, proxy_cpu)
    finally:
        close_all(conns)
    total = sum(counts)
    if not total:
        raise ImapError(f"no NOOP answered in {seconds}s over {connections} connections")
    return {"noops": total, "rate": total / wall, "window_s": wall, "proxy_cpu_timed_s": cpu}


def fetch_parallel(
    addr: tuple[str, int],
    ctx: ssl.SSLContext,
    creds: Credentials,
    expect: int,
    clients: int,
    proxy_cpu: Callable[[], float] = _no_cpu,
) -> dict:
    """``clients`` connections each ``FETCH 1:* BODY.PEEK[]`` the whole INBOX at once: MB/s
    of all response bytes over the time until the last one completes."""
    conns = _logged_in(addr, ctx, creds, clients)

    def one(conn: Conn) -> int:
        conn.received = conn.literals = 0
        conn.command(b"f", b"FETCH 1:* BODY.PEEK[]")
        if conn.literals != expect:
            raise ImapError(f"FETCH returned {conn.literals} bodies, expected {expect}")
        return conn.received

    try:
        for conn in conns:
            exists = select_count(conn)
            if exists != expect:
                raise ImapError(f"INBOX has {exists} messages, expected {expect}")
        sizes, wall, cpu = _in_parallel(conns, one, proxy_cpu)
    finally:
        close_all(conns)
    nbytes = sum(sizes)
    return {"mb_s": nbytes / wall / 1e6, "bytes": nbytes, "seconds": wall,
            "proxy_cpu_timed_s": cpu}


def fetch(
    addr: tuple[str, int], ctx: ssl.SSLContext | None, creds: Credentials, expect: int
) -> dict:
    """``FETCH 1:* BODY.PEEK[]`` of the whole INBOX on one connection; MB/s of response bytes."""
    conn = Conn.open(addr, ctx)
    try:
        conn.login(creds)
        exists = select_count(conn)
        if exists != expect:
            raise ImapError(f"INBOX has {exists} messages, expected {expect}")
        conn.received = conn.literals = 0
        t0 = time.perf_counter()
        conn.command(b"f", b"FETCH 1:* BODY.PEEK[]")
        dt = time.perf_counter() - t0
        if conn.literals != expect:
            raise ImapError(f"FETCH returned {conn.literals} bodies, expected {expect}")
        nbytes = conn.received
        conn.logout()
    finally:
        conn.close()
    return {"mb_s": nbytes / dt / 1e6, "bytes": nbytes, "seconds": dt}


def open_sessions(
    addr: tuple[str, int], ctx: ssl.SSLContext, creds: Credentials, n: int, threads: int = 16
) -> tuple[list[Conn], list[str]]:
    """Open n logged-in sessions and leave them idle; return them and any errors (first few)."""
    conns: list[Conn] = []
    errors: list[str] = []
    lock = threading.Lock()
    shares = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]

    def worker(k: int) -> None:
        for _ in range(k):
            try:
                conn = Conn.open(addr, ctx, timeout=30)
                conn.login(creds)
            except ClientErrors as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                return  # a target that refuses sessions will refuse the rest too
            with lock:
                conns.append(conn)

    ts = [threading.Thread(target=worker, args=(k,), daemon=True) for k in shares if k]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return conns, errors[:5]


def close_all(conns: list[Conn]) -> None:
    for c in conns:
        try:
            c.close()
        except OSError:
            pass
