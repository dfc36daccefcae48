"""Both listener kinds speak TLS, and only TLS 1.2 or newer (min_version = "1.2")."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest

from tests.support.imap import LineClient, tagged_status

pytestmark = pytest.mark.e2e

V = ssl.TLSVersion


def _legacy_client(gw, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A verifying client that offers only ``version``; OpenSSL 3 needs security level 0
    before it will even offer TLS 1.1 (the control test below proves that it does)."""
    ctx = gw.client_ssl_context(minimum_version=version, maximum_version=version)
    if version < V.TLSv1_2:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def test_implicit_tls_listener_greets_with_verified_certificate(gateway):
    gw = gateway()
    with LineClient.implicit(gw) as c:
        assert c.greeting.startswith(b"* OK [CAPABILITY ")
        assert c.greeting.rstrip().endswith(b"imap-gateway ready.")
        assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert tagged_status(c.command("a", "CAPABILITY")[-1]) == b"OK"


def test_starttls_listener_upgrades_to_verified_tls(gateway):
    gw = gateway()
    with LineClient.plain(gw) as c:
        assert c.greeting.startswith(b"* OK [CAPABILITY ")
        assert tagged_status(c.command("a", "STARTTLS")[-1]) == b"OK"
        c.starttls(gw.client_ssl_context())
        assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert tagged_status(c.command("b", "CAPABILITY")[-1]) == b"OK"


@pytest.mark.parametrize("version", [V.TLSv1_2, V.TLSv1_3], ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_tls_1_2_and_1_3_accepted(gateway, version, mode):
    gw = gateway()
    ctx = _legacy_client(gw, version)
    if mode == "implicit":
        c = LineClient.implicit(gw, ssl_context=ctx)
    else:
        c = LineClient.plain(gw)
        assert tagged_status(c.command("a", "STARTTLS")[-1]) == b"OK"
        c.starttls(ctx)
    with c:
        assert c.sock.version() == {V.TLSv1_2: "TLSv1.2", V.TLSv1_3: "TLSv1.3"}[version]
        assert tagged_status(c.command("b", "NOOP")[-1]) == b"OK"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_tls_1_1_refused(gateway, mode):
    gw = gateway()
    ctx = _legacy_client(gw, V.TLSv1_1)
    if mode == "implicit":
        with pytest.raises((ssl.SSLError, ConnectionError)):
            LineClient.implicit(gw, ssl_context=ctx)
    else:
        c = LineClient.plain(gw)
        assert tagged_status(c.command("a", "STARTTLS")[-1]) == b"OK"
        with pytest.raises((ssl.SSLError, ConnectionError)):
            c.starttls(ctx)
        c.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_control_our_tls_1_1_client_really_offers_tls_1_1(certs):
    """Without this, test_tls_1_1_refused would pass if the client could not speak 1.1."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.cert_path, certs.key_path)
    server_ctx.minimum_version = V.TLSv1_1
    server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(5)
    seen: list[str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            seen.append(tls.version())

    t = threading.Thread(target=serve)
    t.start()
    ctx = certs.client_ssl_context(minimum_version=V.TLSv1_1, maximum_version=V.TLSv1_1)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with ctx.wrap_socket(socket.create_connection(listener.getsockname(), 5),
                         server_hostname="127.0.0.1") as s:
        assert s.version() == "TLSv1.1"
    t.join(5)
    listener.close()
    assert seen == ["TLSv1.1"]
