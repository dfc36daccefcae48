"""A gateway that cannot bind one of its addresses: one line, exit status 2, nothing served.

What an operator relies on when something else holds a port (a second gateway on the
same host, most often on the admin API's default port): ``imap-gateway serve`` says
which config key and address, and the system's reason, on one line of stderr; exits 2
like any other startup error; prints no traceback; and never serves part of its
addresses. The gateway that holds the port goes on working.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess

import pytest

from tests.support.attack import metrics_on
from tests.support.imap import LineClient
from tests.support.net import free_port
from tests.support.scrape import http_get, metrics_address

pytestmark = pytest.mark.e2e

EXIT_TIMEOUT = 15.0


def _exit_status(gw) -> int:
    assert gw.proc is not None
    try:
        return gw.proc.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the gateway still runs after {EXIT_TIMEOUT}s\n{gw.tail()}") \
            from None


def _assert_refused(gw, key: str, address: str) -> None:
    """Exit 2 with one stderr line naming ``key``, ``address`` and "in use"; nothing served."""
    status = _exit_status(gw)
    err = gw.stderr_path.read_text(errors="replace")
    assert status == 2, gw.tail()
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert key in lines[0] and address in lines[0] and "in use" in lines[0], lines[0]
    # Addresses are bound before anything is served or logged.
    assert not gw.events("gateway.listening") and not gw.events("admin.listening"), gw.tail()


def _sections_with(key: str, address: str, starttls_port: int) -> dict[str, object]:
    """Config overrides that put ``address`` under ``key``; the other addresses are free.
    The held address comes last in its group, so something was bound before it."""
    if key == "[[listener]] address":
        return {"listener": [
            {"address": f"127.0.0.1:{starttls_port}", "mode": "starttls"},
            {"address": address, "mode": "implicit-tls"},
        ], "metrics": metrics_on()}
    if key == "[metrics] address":
        return {"metrics": {"address": address}}
    return {"metrics": metrics_on(), "admin": {"address": address}}


@pytest.mark.parametrize("key", ["[[listener]] address", "[metrics] address", "[admin] address"])
def test_an_address_in_use_is_named_in_one_line_and_the_gateway_exits_2(gateway, key):
    with socket.create_server(("127.0.0.1", 0)) as held:
        address = f"127.0.0.1:{held.getsockname()[1]}"
        gw = gateway(wait=False, **_sections_with(key, address, free_port()))
        _assert_refused(gw, key, address)
        # the port's owner still has it: nobody took it over or closed it
        with socket.create_connection(("127.0.0.1", held.getsockname()[1]), timeout=2):
            pass


def test_a_second_gateway_on_the_first_ones_admin_port_exits_and_the_first_keeps_working(
        gateway):
    # Two gateways with the default [admin] address clash on it; here on a free port,
    # since other suites on this host may be using the default one.
    admin = {"address": f"127.0.0.1:{free_port()}"}
    first = gateway(metrics=metrics_on(), admin=admin)
    first.wait_for_event("admin.listening")

    second = gateway(wait=False, admin=admin)
    _assert_refused(second, "[admin] address", admin["address"])

    with LineClient.implicit(first) as c:
        assert c.command("a", "LOGIN alice alicepass")[-1].startswith(b"a OK")
        c.command("z", "LOGOUT")
    host, port = metrics_address(first)
    assert http_get(host, port, "/readyz").status == 200
    token = (first.dir / "state" / "admin.token").read_text().strip()
    conn = http.client.HTTPConnection("127.0.0.1", int(admin["address"].rsplit(":", 1)[1]),
                                      timeout=10)
    try:
        conn.request("GET", "/sessions", headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert "sessions" in json.loads(resp.read())
    finally:
        conn.close()
