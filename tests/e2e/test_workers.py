"""``[server] workers = 2``: one supervisor, two workers on the same addresses.

Against the real Dovecot (and Redis where named): connections land on both workers; an
attacker gets exactly as many wrong passwords before the ban as with one worker, with
and without Redis; one scrape adds up both workers' counters, CPU, memory and descriptors;
a killed worker is started again; SIGHUP reaches every worker; SIGTERM drains every worker
and the supervisor exits.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

import pytest

from tests.support.attack import attempt_login, fast_limits, metrics_on
from tests.support.imap import LineClient
from tests.support.scrape import sample_value, scrape

pytestmark = pytest.mark.e2e

#: Worker start takes seconds on a loaded 2-core machine (each is a fresh interpreter).
READY_TIMEOUT = 120.0
#: Eight sessions land on one worker alone with probability 2/256 (kernel hash of the ports).
THRESHOLD = 8
MANY = 200  # connections per minute allowed from one address: the rate cap stays out of it


def start(gateway: Any, workers: int, drain: str = "5s", **overrides: Any) -> Any:
    gw = gateway(wait=False, server={"workers": workers, "drain_timeout": drain}, **overrides)
    if workers > 1:
        gw.wait_for_event("workers.ready", timeout=READY_TIMEOUT)
    else:
        gw.wait_for_event("gateway.listening", timeout=READY_TIMEOUT)
    return gw


def wrong_passwords_before_ban(gw: Any, source: str, limit: int = 3 * THRESHOLD) -> int:
    """Wrong passwords answered NO from ``source`` (a fresh connection each, so they
    spread over the workers) until a connection is refused as banned."""
    for n in range(limit):
        attempt = attempt_login(gw, "alice", f"guess-{n}", source=source)
        if attempt.refused_at_connect:
            return n
        assert attempt.failed, attempt
    raise AssertionError(f"no ban after {limit} wrong passwords\n{gw.tail()}")


def workers_that_served(gw: Any, **fields: Any) -> set[int]:
    return {e["worker"] for e in gw.events("session.start", **fields) if "worker" in e}


@pytest.mark.parametrize("shared_state", ["supervisor", "redis"])
def test_attacker_gets_no_more_attempts_with_two_workers_than_with_one(
        gateway, request, shared_state):
    state: dict[str, str] = {}
    if shared_state == "redis":
        state = {"redis": request.getfixturevalue("redis_server").url}
    limits = fast_limits(ip_fail_threshold=THRESHOLD, max_connection_rate_per_ip=MANY)
    one = start(gateway, 1, limits=limits, state=state)
    with_one = wrong_passwords_before_ban(one, "127.0.4.1")
    one.stop()

    two = start(gateway, 2, limits=limits, state=state, metrics=metrics_on())
    with_two = wrong_passwords_before_ban(two, "127.0.4.2")
    assert with_two == with_one == THRESHOLD
    assert workers_that_served(two, client_ip="127.0.4.2") == {0, 1}, \
        "the attacker's connections did not land on both workers"

    # One scrape: every connection, whichever worker took it (threshold + the refused one).
    text = scrape(two)
    accepted = sum(sample_value(text, "imap_gateway_connections_total",
                                listener=lst["address"], tls_mode="implicit")
                   for lst in two.config["listener"] if lst["mode"] == "implicit-tls")
    assert accepted == THRESHOLD + 1, text
    refused = sample_value(text, "imap_gateway_connections_rejected_total", reason="banned")
    assert refused == 1


def test_per_ip_connection_cap_holds_across_workers(gateway):
    """max_connections_per_ip bounds the host, not each worker."""
    gw = start(gateway, 2, limits={"max_connections_per_ip": 3,
                                   "max_connection_rate_per_ip": MANY})
    held = [LineClient.implicit(gw, source="127.0.4.3", timeout=30) for _ in range(3)]
    try:
        assert all(c.greeting.startswith(b"* OK") for c in held)
        extra = [LineClient.implicit(gw, source="127.0.4.3", timeout=30) for _ in range(6)]
        assert all(c.greeting.startswith(b"* BYE [UNAVAILABLE]") for c in extra), \
            [c.greeting for c in extra]
        for c in extra:
            c.close()
        # Both workers took some of the 9 connections (all on one: probability 2/512).
        took = workers_that_served(gw, client_ip="127.0.4.3") | {
            e["worker"] for e in gw.events("connection.refused", client_ip="127.0.4.3")}
        assert took == {0, 1}
    finally:
        for c in held:
            c.close()


def _worker_pid(gw: Any, index: int, restarts: int = 0, timeout: float = READY_TIMEOUT) -> int:
    return gw.wait_for_event("worker.started", timeout, process="supervisor", worker=index,
                             restarts=restarts)["pid"]


def test_a_killed_worker_is_started_again_and_counted(gateway):
    gw = start(gateway, 2, metrics=metrics_on())
    victim = _worker_pid(gw, 1)
    os.kill(victim, signal.SIGKILL)  # a worker this test's supervisor started
    exited = gw.wait_for_event("worker.exited", 30, pid=victim)
    assert exited["signal"] == "SIGKILL" and exited["stopping"] is False
    successor = _worker_pid(gw, 1, restarts=1)
    assert successor != victim
    gw.wait_for_event("worker.ready", READY_TIMEOUT, pid=successor)
    assert sample_value(scrape(gw), "imap_gateway_worker_restarts_total") == 1
    # Both workers serve again: new connections are answered, whichever worker takes them.
    for _ in range(8):
        with LineClient.implicit(gw, timeout=30) as c:
            assert c.greeting.startswith(b"* OK")
    assert gw.returncode is None


def _cpu_of(pid: int) -> float:
    """utime + stime of ``pid`` from /proc (its own, not its waited-for children's)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def _login_burst(gw: Any, sources: list[str], per_source: int) -> None:
    """Successful logins (TLS handshake, LOGIN, LOGOUT): work for the workers that take
    them; the supervisor only answers their limiter calls."""
    from concurrent.futures import ThreadPoolExecutor

    def logins(source: str) -> None:
        for _ in range(per_source):
            assert attempt_login(gw, "bob", "bobpass", source=source).ok

    with ThreadPoolExecutor(len(sources)) as pool:
        for future in [pool.submit(logins, s) for s in sources]:
            future.result()


def test_process_metrics_describe_the_supervisor_and_every_worker(gateway):
    """process_* of one scrape cover the supervisor and both workers (not the supervisor
    alone), and imap_gateway_worker_*{worker} describe each worker, checked against /proc."""
    gw = start(gateway, 2, metrics=metrics_on(),
               limits=fast_limits(max_connection_rate_per_ip=MANY))
    supervisor, pids = gw.pid, {i: _worker_pid(gw, i) for i in (0, 1)}

    def worker(text: str, name: str, index: int) -> float:
        return sample_value(text, f"imap_gateway_worker_{name}", worker=str(index))

    before = {i: _cpu_of(pid) for i, pid in pids.items()}
    rss = {i: _rss_of(pid) for i, pid in pids.items()}
    text = scrape(gw)
    after = {i: _cpu_of(pid) for i, pid in pids.items()}
    memory = sample_value(text, "process_resident_memory_bytes")
    assert memory >= 0.9 * (_rss_of(supervisor) + rss[0] + rss[1]), (memory, rss)
    assert memory >= _rss_of(supervisor) + 0.9 * (rss[0] + rss[1])
    for i, pid in pids.items():
        assert worker(text, "resident_memory_bytes", i) == pytest.approx(rss[i], rel=0.25)
        assert before[i] <= worker(text, "cpu_seconds_total", i) <= after[i]
        assert before[i] > 0
        fds = worker(text, "open_fds", i)
        assert 4 <= fds <= len(os.listdir(f"/proc/{pid}/fd")) + 5, fds
    assert sample_value(text, "process_open_fds") >= sum(
        worker(text, "open_fds", i) for i in pids) + 4
    assert sample_value(text, "process_start_time_seconds") <= time.time()

    # A burst of logins keeps the workers busy: the gateway's CPU counter grows by their
    # share, which is more than what the supervisor used meanwhile.
    supervisor_before = _cpu_of(supervisor)
    first = scrape(gw)
    _login_burst(gw, [f"127.0.5.{n}" for n in range(1, 5)], 30)
    second = scrape(gw)
    supervisor_used = _cpu_of(supervisor) - supervisor_before
    grew = (sample_value(second, "process_cpu_seconds_total")
            - sample_value(first, "process_cpu_seconds_total"))
    by_worker = {i: worker(second, "cpu_seconds_total", i) - worker(first, "cpu_seconds_total", i)
                 for i in pids}
    assert all(used > 0 for used in by_worker.values()), by_worker
    assert grew - supervisor_used >= 0.1, (grew, supervisor_used, by_worker)
    assert grew - supervisor_used >= 0.9 * sum(by_worker.values()) - 0.05, (grew, by_worker)

    # A worker killed and started again: its CPU stays in process_cpu_seconds_total (the
    # counter does not go back), the new one is worker 1 from then on.
    os.kill(pids[1], signal.SIGKILL)  # a worker this test's supervisor started
    gw.wait_for_event("worker.exited", 30, pid=pids[1])
    successor = _worker_pid(gw, 1, restarts=1)
    gw.wait_for_event("worker.ready", READY_TIMEOUT, pid=successor)
    third = scrape(gw)
    assert sample_value(third, "process_cpu_seconds_total") >= sample_value(
        second, "process_cpu_seconds_total")
    assert 0 < worker(third, "cpu_seconds_total", 1) <= _cpu_of(successor)


def _open_files(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile
    return out


def test_only_the_workers_hold_the_credential_store_open(gateway):
    """The supervisor creates and checks the store before the workers start, then closes
    it: it serves no login, and one connection less per host counts with PostgreSQL."""
    gw = start(gateway, 2)
    store = str(gw.dir / "state" / "gateway.db")
    assert os.path.exists(store)
    for index in (0, 1):
        assert store in _open_files(_worker_pid(gw, index)), index
    assert not {f for f in _open_files(gw.pid) if f.startswith(store)}, _open_files(gw.pid)


def test_sighup_reaches_every_worker_and_sigterm_drains_them_all(gateway):
    gw = start(gateway, 2, drain="15s")
    gw.proc.send_signal(signal.SIGHUP)
    for index in (0, 1):
        gw.wait_for_event("tls.reloaded", 60, worker=index)

    idle = LineClient.implicit(gw, timeout=60)
    stuck = LineClient.implicit(gw, timeout=60)  # holds its worker's drain to the bound
    try:
        assert stuck.command("a", "LOGIN bob bobpass")[-1].startswith(b"a OK")
        stuck.send(b"b APPEND INBOX {1000}\r\n")
        assert stuck.read_line().startswith(b"+")
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        assert idle.expect_close(60).startswith(b"* BYE ")
        # While a worker still drains, nothing accepts new clients: they are refused.
        gw.wait_for_event("supervisor.stopping", 30)
        refused = False
        for _ in range(100):
            try:
                socket.create_connection((gw.host, gw.implicit_port), timeout=5).close()
            except OSError:
                refused = True
                break
            time.sleep(0.1)
        assert refused and gw.returncode is None
        assert not gw.events("session.end", client_port=stuck.local_port)  # still draining
        assert b"* BYE " in stuck.expect_close(60)
        gw.proc.wait(15 + 2 + 5 + 60)  # drain_timeout, grace, kill margin, slack
        assert gw.returncode == 0, gw.tail()
        assert time.monotonic() - signalled < 15 + 2 + 5 + 60
        for index in (0, 1):
            assert gw.events("gateway.drained", worker=index), gw.tail()
            assert gw.events("worker.exited", worker=index, stopping=True), gw.tail()
    finally:
        idle.close()
        stuck.close()


def test_admin_api_lists_and_kills_sessions_of_every_worker(gateway):
    """Worker 0 serves the admin API; a session another worker holds is listed (within a
    few seconds) and killed (its client reads BYE) like one of its own."""
    import http.client
    import json

    from tests.support.net import free_ports

    (port,) = free_ports(1)
    gw = start(gateway, 2, admin={"address": f"127.0.0.1:{port}"})
    token = (gw.dir / "state" / "admin.token").read_text().strip()

    def call(method: str, path: str) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, path, headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    clients = []
    try:
        for _ in range(8):
            c = LineClient.implicit(gw, timeout=30)
            assert c.command("a", "LOGIN bob bobpass")[-1].startswith(b"a OK")
            clients.append(c)
        by_port = {c.local_port: c for c in clients}
        worker_of = {gw.wait_for_event("session.start", 30, client_port=p)["session_id"]:
                     gw.wait_for_event("session.start", 30, client_port=p)["worker"]
                     for p in by_port}
        assert set(worker_of.values()) == {0, 1}, worker_of
        deadline = time.monotonic() + 30
        while True:
            status, body = call("GET", "/sessions")
            assert status == 200, body
            listed = {s["id"]: s for s in body["sessions"] if s["user"] == "bob"}
            if set(worker_of) <= set(listed) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert set(worker_of) <= set(listed), (worker_of, listed)

        victim = next(sid for sid, w in worker_of.items() if w == 1)
        status, body = call("DELETE", f"/sessions/{victim}")
        assert status == 200 and body["killed"] == victim, body
        port_of = {gw.wait_for_event("session.start", 30, session_id=sid)["client_port"]: sid
                   for sid in worker_of}
        client = by_port[next(p for p, sid in port_of.items() if sid == victim)]
        assert b"* BYE " in client.expect_close(30)
        end = gw.wait_for_event("session.end", 30, session_id=victim)
        assert end["reason"] == "admin_kill" and end["worker"] == 1
    finally:
        for c in clients:
            c.close()


def test_auth_policy_endpoint_answers_from_the_shared_state(gateway):
    """Worker 0 serves [auth_policy] address; a ban the IMAP guesses made (on whichever
    worker) rejects the same address for Dovecot's other logins (POP3 here)."""
    import http.client
    import json

    from tests.support.net import free_ports

    (port,) = free_ports(1)
    limits = fast_limits(ip_fail_threshold=THRESHOLD, max_connection_rate_per_ip=MANY)
    gw = start(gateway, 2, limits=limits, auth_policy={"address": f"127.0.0.1:{port}"})

    def allow(remote: str) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            body = json.dumps({"login": "alice", "remote": remote, "protocol": "pop3"})
            conn.request("POST", "/?command=allow", body=body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200
            return json.loads(resp.read())
        finally:
            conn.close()

    assert allow("127.0.4.5")["status"] >= 0
    assert wrong_passwords_before_ban(gw, "127.0.4.5") == THRESHOLD
    assert workers_that_served(gw, client_ip="127.0.4.5") == {0, 1}
    assert allow("127.0.4.5")["status"] < 0
    assert allow("127.0.4.6")["status"] >= 0
