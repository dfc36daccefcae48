"""Shared fixtures: a real Dovecot (session), test certificates (session), the gateway
factory, and a fake backend that never greets.

Tests that need Dovecot carry ``pytest.mark.e2e``. A missing Dovecot is a failure, not a
skip: CI must fail loudly rather than pass an empty suite.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.support.certs import Certs, make_certs
from tests.support.dovecot import DovecotRig, RigError, start_rig
from tests.support.gatewayproc import GatewayFactory
from tests.support.postgres import PostgresServer, PostgresStartError, start_postgres
from tests.support.redis import RedisServer, RedisStartError, start_redis
from tests.support.stores import BACKENDS, StoreOpener, make_opener, pg_store_section


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Remember each phase's outcome on the item, so fixtures can dump logs on failure."""
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False)
               for w in ("setup", "call"))


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotRig]:
    """One Dovecot for the whole run (stopping takes >1 s), under /tmp, on free ports.
    Set IGW_KEEP_RIG=1 to keep its directory (config, log, mail) after the run."""
    try:
        rig = start_rig()
    except RigError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield rig
    finally:
        rig.stop()
        if not os.environ.get("IGW_KEEP_RIG"):
            shutil.rmtree(rig.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One private PostgreSQL cluster for the run (initdb takes seconds), started only by
    tests that use it; each test gets its own database (``new_database``). A missing
    PostgreSQL is a failure, not a skip. Tests that stop the server start their own."""
    try:
        server = start_postgres()
    except PostgresStartError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(params=BACKENDS)
def opener(request: pytest.FixtureRequest, tmp_path) -> StoreOpener:
    """The credential store's database and key file, once per backend: SQLite in tmp_path,
    and a fresh database in the session's PostgreSQL (see tests/support/stores.py)."""
    pg = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    return make_opener(request.param, tmp_path, pg)


@pytest.fixture(params=BACKENDS)
def store_section(request: pytest.FixtureRequest, tmp_path) -> dict[str, str]:
    """``[store]`` overrides for test gateways, once per backend: none (the SQLite file in
    the gateway's dir), or a fresh database in the session's PostgreSQL with its password
    file (pass it as ``gateway(store=store_section)``)."""
    if request.param == "sqlite":
        return {}
    pg: PostgresServer = request.getfixturevalue("postgres")
    return pg_store_section(pg, tmp_path)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """trustme CA + server cert for localhost/127.0.0.1/::1; ``certs.ca_path`` for curl
    --cacert and mbsync, ``certs.client_ssl_context()`` for Python clients."""
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def gateway(request: pytest.FixtureRequest, tmp_path, certs: Certs,
            dovecot: DovecotRig) -> Iterator[GatewayFactory]:
    """Factory: ``gateway(backend={...}, limits={...}) -> GatewayProcess`` (started, greeting).
    Default backend: the session Dovecot's plain port with client_ip = "id". All gateways
    are stopped by PID at teardown; on a failed test their log tails are printed."""
    factory = GatewayFactory(tmp_path, certs, f"127.0.0.1:{dovecot.imap_port}")
    try:
        yield factory
    finally:
        factory.stop_all()
        if _failed(request):
            for gw in factory.started:
                print(f"\n=== gateway {gw.dir} rc={gw.returncode} ===\n{gw.tail(40)}")
            print("\n=== dovecot log tail ===\n"
                  + "\n".join(dovecot.log_since(0).splitlines()[-30:]))


@pytest.fixture
def fake_silent_backend() -> Iterator[str]:
    """A fake backend (a fault no real Dovecot produces on purpose): accepts TCP and never
    sends a greeting. Yields "127.0.0.1:PORT"; holds every accepted socket until teardown."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_forever() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    t = threading.Thread(target=accept_forever, name="fake_silent_backend", daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        t.join(2)
        listener.close()
        for c in held:
            c.close()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A Redis server of the suite's own for a test module (tests that stop Redis define
    their own, per test)."""
    try:
        server = start_redis()
    except RedisStartError as e:  # a missing server is a failure, not a skip
        pytest.fail(str(e), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
