"""The [web] HTTPS listener of a real gateway, as a browser meets it: the sign-in page
with its security headers over TLS only, each listener serving only its own routes, and
SIGHUP renewing the portal's own certificate.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl

import httpx
import pytest
import trustme

from tests.support.net import free_ports
from tests.support.scrape import http_get

pytestmark = pytest.mark.e2e


def web_gateway(gateway, tls=None, **web):
    web_port, metrics_port, admin_port = free_ports(3)
    gw = gateway(web={"address": f"127.0.0.1:{web_port}", **web},
                 metrics={"address": f"127.0.0.1:{metrics_port}"},
                 admin={"address": f"127.0.0.1:{admin_port}"}, **({"tls": tls} if tls else {}))
    gw.web_port, gw.metrics_port, gw.admin_port = web_port, metrics_port, admin_port
    return gw


def browser(gw, ctx: ssl.SSLContext) -> httpx.Client:
    return httpx.Client(base_url=f"https://127.0.0.1:{gw.web_port}", verify=ctx, timeout=10)


def test_signin_page_over_https_with_security_headers(gateway, certs):
    gw = web_gateway(gateway)
    with browser(gw, certs.client_ssl_context()) as b:
        r = b.get("/")
        assert r.status_code == 200
        assert r.http_version == "HTTP/1.1"
        assert "<h1>Sign in</h1>" in r.text
        assert "Username" in r.text and "Password" in r.text
        assert re.search(r"<button[^>]*>Sign in</button>", r.text)
        assert r.headers["strict-transport-security"].startswith("max-age=")
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "server" not in r.headers
        assert "Secure" in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]
        css = b.get("/static/portal.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert css.headers["x-content-type-options"] == "nosniff"
        # a state-changing request without the CSRF token never reaches a handler
        refused = b.post("/", data={"username": "alice", "password": "alicepass"})
        assert refused.status_code == 403
        # the portal is not the admin API nor the metrics endpoint
        for path in ("/sessions", "/bans", "/metrics", "/healthz"):
            assert b.get(path).status_code == 404, path
    assert "alicepass" not in gw.log_text()
    assert gw.events("web.listening")[0]["address"] == f"127.0.0.1:{gw.web_port}"


def test_web_listener_is_https_only_with_the_tls_minimum(gateway, certs):
    gw = web_gateway(gateway)
    with socket.create_connection(("127.0.0.1", gw.web_port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        raw.settimeout(5)
        try:
            data = raw.recv(4096)
        except ConnectionResetError:
            data = b""
    assert b"HTTP/1.1 200" not in data and b"Sign in" not in data

    strict = web_gateway(gateway, tls={"min_version": "1.3"})

    def version(ctx: ssl.SSLContext) -> str:
        with socket.create_connection(("127.0.0.1", strict.web_port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.version()

    assert version(certs.client_ssl_context()) == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        version(certs.client_ssl_context(maximum_version=ssl.TLSVersion.TLSv1_2))


def test_metrics_and_admin_ports_keep_their_own_routes(gateway):
    gw = web_gateway(gateway)
    assert http_get("127.0.0.1", gw.metrics_port, "/").status == 404
    assert http_get("127.0.0.1", gw.metrics_port, "/sessions").status == 404
    assert http_get("127.0.0.1", gw.metrics_port, "/static/portal.css").status == 404
    assert http_get("127.0.0.1", gw.metrics_port, "/readyz").body == "ready\n"
    # the admin port answers 401 to anything without the token, the page included
    assert http_get("127.0.0.1", gw.admin_port, "/").status == 401


def _leaf(ca: trustme.CA, directory, name: str):
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    with open(cert, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return cert, key


def test_portal_certificate_of_its_own_is_renewed_on_sighup(gateway, certs, tmp_path):
    web_ca = trustme.CA()
    cert, key = _leaf(web_ca, tmp_path, "web")
    gw = web_gateway(gateway, cert=str(cert), key=str(key))
    trusts_web_ca = ssl.create_default_context()
    web_ca.configure_trust(trusts_web_ca)
    with browser(gw, trusts_web_ca) as b:
        assert b.get("/").status_code == 200
    with pytest.raises(httpx.ConnectError), browser(gw, certs.client_ssl_context()) as b:
        b.get("/")  # the [tls] certificate is not the portal's

    renewed_ca = trustme.CA()
    new_cert, new_key = _leaf(renewed_ca, tmp_path, "renewed")
    os.replace(new_cert, cert)
    os.replace(new_key, key)
    os.kill(gw.pid, signal.SIGHUP)
    gw.wait_for_event("tls.reloaded", cert=str(cert))
    trusts_renewed = ssl.create_default_context()
    renewed_ca.configure_trust(trusts_renewed)
    with browser(gw, trusts_renewed) as b:
        assert b.get("/").status_code == 200
