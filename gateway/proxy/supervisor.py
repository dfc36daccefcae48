"""``[server] workers = N > 1``: one supervising process and N worker processes.

Theory of operation
-------------------
The supervisor binds every address before a worker starts (so a port that cannot be
bound stops ``serve`` with the one-line ``BindError``, and privileged ports need the
right only here):

* each ``[[listener]]`` address N times with SO_REUSEPORT, one socket set per worker
  (``bind.bind_reuseport``): the kernel spreads new connections over the workers;
* ``[metrics] address`` once: the supervisor serves it, from prometheus_client's
  multiprocess files that every worker writes (``PROMETHEUS_MULTIPROC_DIR``, a private
  directory made by ``imap-gateway serve``), so one scrape has every worker's counters,
  and the ``process_*`` series of itself and its live workers together, read from /proc
  (``gateway.observability.processes``);
* ``[admin] address``, ``[web] address`` and ``[auth_policy] address`` once, served by
  worker 0 (bans and the limiter are exact across workers through the shared state; the
  session list and, without Redis, the live feed's events are gathered from every worker;
  see README "Worker processes and shutdown").

Each worker is ``python -m gateway serve`` again, started with its sockets inherited and
:data:`WORKER_ENV` describing them, plus one end of a Unix socket pair to the supervisor
(``gateway.proxy.workerlink``): the host's connection caps, and the limiter state when
``[state] redis`` is not set, live here and are served over it.

Lifecycle:

* a worker that exits while the gateway is not stopping is logged (``worker.exited``),
  counted (``imap_gateway_worker_restarts_total``) and started again after a backoff
  (0.5 s, doubling to 30 s while it keeps dying young) on the very same sockets, so the
  connections queued for it wait for its replacement instead of being reset;
* SIGHUP is passed to every worker (TLS certificates and policy reload in each);
* SIGTERM/SIGINT are passed on: every worker drains (``server.drain``) and exits within
  ``[server] drain_timeout`` (+ its grace); one still running ``KILL_AFTER`` seconds
  later is killed. A second signal is passed on too (the workers then stop at once).
* if the supervisor dies, each worker sees its link close and drains.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from hypercorn.trio import serve as hypercorn_serve

from gateway.config import Config
from gateway.limits.connections import ConnectionTracker
from gateway.limits.state import MemoryState
from gateway.observability import metrics
from gateway.observability.logs import get_logger
from gateway.proxy.bind import BindRequest, bind_all, bind_reuseport, close_all
from gateway.proxy.server import DRAIN_GRACE_SECONDS, http_bind_requests
from gateway.proxy.workerlink import WORKER_ENV, SharedServices, WorkerSpec, serve_worker
from gateway.web.app import metrics_app
from gateway.web.serve import hypercorn_config

log = get_logger()

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: A worker that ran this long before it died is restarted after BACKOFF_FIRST again.
STABLE_AFTER = 60.0
#: Past drain_timeout and its grace, how long the supervisor waits before SIGKILL.
KILL_AFTER = 5.0


@dataclass
class _Worker:
    index: int
    listeners: list[list[socket.socket]]
    process: trio.Process | None = None
    ready: bool = False
    restarts: int = 0
    pids: list[int] = field(default_factory=list)


async def supervise(config: Config, metrics_dir: str) -> None:
    """Run the workers until SIGTERM/SIGINT; see the module docstring.

    Raises ``BindError`` (nothing bound, nothing started) when an address cannot be bound.
    """
    count = config.server.workers
    per_listener = [bind_reuseport(BindRequest("[[listener]] address", lst.address,
                                               backlog=1024), count)
                    for lst in config.listeners]
    try:
        http = await bind_all(http_bind_requests(config))
    except BaseException:
        for groups in per_listener:
            close_all([[trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in g]
                       for g in groups])
        raise
    try:
        workers = [_Worker(i, [per_listener[j][i] for j in range(len(config.listeners))])
                   for i in range(count)]
        await _run(config, workers, http, metrics_dir)
    finally:
        close_all(http)
        for groups in per_listener:
            for group in groups:
                for sock in group:
                    sock.close()


async def _run(config: Config, workers: list[_Worker],
               http: list[list[trio.SocketListener]], metrics_dir: str) -> None:
    rest = iter(http)
    metrics_sockets = next(rest) if config.metrics.address else None
    admin = next(rest) if config.admin.address else None
    web = next(rest) if config.web.address else None
    auth_policy = next(rest) if config.auth_policy.address else None
    shared = SharedServices(
        tracker=ConnectionTracker.from_config(config.limits),
        state=None if config.state.redis else MemoryState(),
    )
    stopping = trio.Event()
    metrics.workers.set(len(workers))

    def all_ready() -> bool:
        return all(w.ready for w in workers)

    def live_workers() -> list[tuple[int, int]]:
        # returncode reaps a worker that has exited (on this thread, as the scrape runs):
        # from then on its CPU time is in the supervisor's cutime, no longer listed here.
        return [(w.index, w.process.pid) for w in workers
                if w.process is not None and w.process.returncode is None]

    async with trio.open_nursery() as nursery:
        if metrics_sockets is not None:
            app = metrics_app(all_ready, live_workers)
            hc = hypercorn_config(config.metrics.address, sockets=metrics_sockets)
            await nursery.start(hypercorn_serve, app, hc)
            log.info("metrics.listening", address=config.metrics.address)
        async with trio.open_nursery() as keepers:
            for worker in workers:
                http_fds = (admin, web, auth_policy) if worker.index == 0 else (None, None, None)
                keepers.start_soon(partial(_keep, config, worker, shared, stopping, http_fds,
                                           metrics_dir, all_ready))
            log.info("supervisor.started", workers=len(workers), pid=os.getpid(),
                     state="redis" if config.state.redis else "supervisor",
                     listeners=[lst.address for lst in config.listeners])
            # Each keeper returns once its worker has exited after ``stopping``.
            keepers.start_soon(_signals, config, workers, stopping)
        log.info("supervisor.stopped")
        nursery.cancel_scope.cancel()


async def _signals(config: Config, workers: list[_Worker], stopping: trio.Event) -> None:
    """Pass SIGHUP on; on SIGTERM/SIGINT pass it on and wait for the workers to drain."""
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            alive = [w for w in workers if w.process is not None and w.process.returncode is None]
            for w in alive:
                assert w.process is not None
                w.process.send_signal(signum)
            if signum == signal.SIGHUP:
                log.info("supervisor.reload", workers=len(alive))
                continue
            if stopping.is_set():
                continue  # a second signal: passed on above, the workers stop at once
            stopping.set()
            log.info("supervisor.stopping", signal=name, workers=len(alive),
                     drain_timeout=config.server.drain_timeout)
            # The workers close their copies as they start draining; once ours are closed
            # too, a new client is refused at once instead of waiting in a queue nobody
            # takes from.
            for w in workers:
                for group in w.listeners:
                    for sock in group:
                        sock.close()
            break
    bound = config.server.drain_timeout + DRAIN_GRACE_SECONDS + KILL_AFTER
    with trio.move_on_after(bound):
        while any(w.process is not None and w.process.returncode is None for w in workers):
            await trio.sleep(0.05)
    for w in workers:
        if w.process is not None and w.process.returncode is None:
            log.error("worker.killed", worker=w.index, pid=w.process.pid, after_s=bound)
            w.process.kill()


async def _keep(config: Config, worker: _Worker, shared: SharedServices, stopping: trio.Event,
                http_fds: tuple[list[trio.SocketListener] | None, ...],
                metrics_dir: str, all_ready: Callable[[], bool]) -> None:
    """Start ``worker`` and start it again whenever it dies, until the gateway stops."""
    failures = 0
    while not stopping.is_set():
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spec = WorkerSpec(
            index=worker.index, count=config.server.workers, link=theirs.fileno(),
            listeners=[[s.fileno() for s in group] for group in worker.listeners],
            admin=[s.socket.fileno() for s in http_fds[0]] if http_fds[0] else None,
            web=[s.socket.fileno() for s in http_fds[1]] if http_fds[1] else None,
            auth_policy=[s.socket.fileno() for s in http_fds[2]] if http_fds[2] else None,
        )
        env = {**os.environ, WORKER_ENV: spec.to_env(), "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        started = trio.current_time()
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "gateway", "serve", "--config", str(config.source_path)],
                env=env, pass_fds=spec.fds(), stdin=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C (SIGINT to the foreground process
                # group) reaches the supervisor only, which passes it on once.
                start_new_session=True)
        finally:
            theirs.close()
        worker.process, worker.ready = process, False
        worker.pids.append(process.pid)
        log.info("worker.started", worker=worker.index, pid=process.pid,
                 restarts=worker.restarts)

        def ready(w: _Worker = worker) -> None:
            w.ready = True
            log.info("worker.ready", worker=w.index, pid=w.process.pid if w.process else None)
            if all_ready():
                log.info("workers.ready", workers=config.server.workers)

        async with trio.open_nursery() as nursery:
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
            nursery.start_soon(serve_worker, stream, shared, worker.index, ready)
            code = await process.wait()
            nursery.cancel_scope.cancel()
        await trio.aclose_forcefully(stream)
        worker.ready = False
        _mark_dead(process.pid, metrics_dir)
        (log.info if stopping.is_set() else log.error)(
            "worker.exited", worker=worker.index, pid=process.pid, **_exit_fields(code),
            stopping=stopping.is_set())
        if stopping.is_set():
            return
        lived = trio.current_time() - started
        failures = 1 if lived >= STABLE_AFTER else failures + 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 1))
        worker.restarts += 1
        metrics.worker_restarts_total.inc()
        log.info("worker.restarting", worker=worker.index, in_s=delay)
        with trio.move_on_after(delay):
            await stopping.wait()


def _exit_fields(code: int) -> dict[str, Any]:
    if code < 0:
        return {"signal": signal.Signals(-code).name}
    return {"exit_code": code}


def _mark_dead(pid: int, metrics_dir: str) -> None:
    """Drop a dead worker's live gauges (its counters stay: totals never go back)."""
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
    except OSError as exc:
        log.warning("metrics.cleanup_failed", pid=pid, error=str(exc))
