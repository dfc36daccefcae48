"""The web stack without a gateway: the portal page and its security headers, the CSRF
check, the metrics/health app, the TLS context that follows certificate reloads, and a
WebSocket route served by Hypercorn's trio worker to a trio-websocket client.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from types import SimpleNamespace

import pytest
import trio
import trustme
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from trio_websocket import open_websocket_url

from gateway.web.app import metrics_app, portal_app
from gateway.web.csrf import (
    CSRF_HEADER,
    PRESESSION_COOKIE,
    CSRFMiddleware,
    check_token,
    csrf_of,
    make_token,
    new_session_id,
)
from gateway.web.headers import SECURITY_HEADERS, SecurityHeaders
from gateway.web.serve import hypercorn_config, switching_context
from tests.support.asgi import AsgiClient
from tests.support.portal import PORTAL, SECRET, Clock, make_services


@pytest.fixture
def portal(tmp_path):
    services = make_services(tmp_path)
    yield lambda: AsgiClient(portal_app(services, secret=SECRET, clock=Clock()), base_url=PORTAL)
    services.store.close()


def assert_security_headers(response) -> None:
    for name, value in SECURITY_HEADERS:
        assert response.headers.get(name) == value, name
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "script-src 'self'" in csp
    assert response.headers["strict-transport-security"].startswith("max-age=")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


# -- the portal page ---------------------------------------------------------------------


def test_signin_page_is_rendered_with_a_csrf_token_for_its_presession_cookie(portal):
    c = portal()
    r = c.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    assert_security_headers(r)
    page = r.text
    assert "<h1>Sign in</h1>" in page
    assert 'for="username">Username<' in page and 'for="password">Password<' in page
    assert '<button type="submit">Sign in</button>' in page
    assert 'src="/static/portal.js"' in page and "<script>" not in page  # no inline script
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{PRESESSION_COOKIE}=")
    for attribute in ("Path=/", "Secure", "HttpOnly", "SameSite=Strict"):
        assert attribute in cookie
    session_id = c.cookies[PRESESSION_COOKIE]
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert token == make_token(SECRET, session_id)
    # the browser keeps its cookie: same session, same token, no new cookie
    again = c.get("/")
    assert "set-cookie" not in again.headers
    assert f'value="{token}"' in again.text


def test_static_files_and_errors_carry_the_headers_too(portal):
    c = portal()
    css = c.get("/static/portal.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert_security_headers(css)
    js = c.get("/static/portal.js")
    assert js.status_code == 200 and "addEventListener" in js.text
    for path in ("/nope", "/static/../app.py", "/static/%2e%2e/app.py"):
        r = c.get(path)
        assert r.status_code == 404, path
        assert_security_headers(r)


def test_a_post_without_the_token_is_refused_with_403(portal):
    c = portal()
    c.get("/")
    r = c.post("/signin", data={"username": "alice", "password": "x"})
    assert r.status_code == 403 and "CSRF" in r.text
    assert_security_headers(r)


# -- CSRF --------------------------------------------------------------------------------


def csrf_echo() -> AsgiClient:
    """A tiny app behind CSRFMiddleware whose POST handler echoes the body it received."""

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse(csrf_of(request).token)

    async def echo(request: Request) -> PlainTextResponse:
        return PlainTextResponse((await request.body()).decode())

    app = Starlette(routes=[Route("/", page), Route("/do", echo, methods=["POST", "DELETE"])])
    return AsgiClient(CSRFMiddleware(app, secret=SECRET, max_form=1024), base_url=PORTAL)


def test_token_is_an_hmac_of_the_session_id():
    a, b = new_session_id(), new_session_id()
    assert a != b and len(a) == 43
    assert check_token(SECRET, a, make_token(SECRET, a))
    assert not check_token(SECRET, a, make_token(SECRET, b))
    assert not check_token(b"other" * 8, a, make_token(SECRET, a))
    for bad in (None, "", "x", make_token(SECRET, a)[:-1], "é"):
        assert not check_token(SECRET, a, bad)


def test_state_changing_requests_need_the_token_of_their_own_session_cookie():
    c = csrf_echo()
    # no cookie at all: refused, even with a token made for some other session
    r = c.post("/do", headers={CSRF_HEADER: make_token(SECRET, new_session_id())})
    assert r.status_code == 403
    token = c.get("/").text  # now the client has a cookie and its token
    assert c.post("/do").status_code == 403
    assert c.delete("/do").status_code == 403
    assert c.post("/do", headers={CSRF_HEADER: token + "x"}).status_code == 403
    assert c.post("/do", headers={CSRF_HEADER: make_token(SECRET, new_session_id())}
                  ).status_code == 403
    ok = c.post("/do", headers={CSRF_HEADER: token}, content=b"payload")
    assert (ok.status_code, ok.text) == (200, "payload")
    assert c.delete("/do", headers={CSRF_HEADER: token}).status_code == 200
    # a form carries it as a field; the handler still reads the whole body
    r = c.post("/do", data={"csrf_token": token, "name": "a b"})
    assert (r.status_code, r.text) == (200, "csrf_token=" + token + "&name=a+b")
    assert c.post("/do", data={"csrf_token": "wrong"}).status_code == 403
    assert c.post("/do", data={"csrf_token": [token, token]}).status_code == 403
    assert c.post("/do", data={"csrf_token": token, "pad": "x" * 2000}).status_code == 413


def test_another_browsers_cookie_value_is_not_trusted_unless_well_formed():
    c = csrf_echo()
    c.cookies.set(PRESESSION_COOKIE, "short", domain="portal.test")
    r = c.get("/")
    assert PRESESSION_COOKIE in r.headers["set-cookie"]  # replaced by a fresh id


def test_security_headers_replace_a_handlers_own():
    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x", headers={"Content-Security-Policy": "default-src *"})

    r = AsgiClient(SecurityHeaders(Starlette(routes=[Route("/", page)])),
                   base_url=PORTAL).get("/")
    assert r.headers.get_list("content-security-policy") == [dict(SECURITY_HEADERS)[
        "content-security-policy"]]


# -- metrics and health ------------------------------------------------------------------


def test_metrics_and_health_endpoints():
    ready = [False]
    c = AsgiClient(metrics_app(lambda: ready[0]), base_url="http://127.0.0.1:9143")
    assert (c.get("/healthz").status_code, c.get("/healthz").text) == (200, "ok\n")
    r = c.get("/readyz")
    assert (r.status_code, r.text) == (503, "not ready\n")
    ready[0] = True
    r = c.get("/readyz")
    assert (r.status_code, r.text) == (200, "ready\n")
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert "imap_gateway_connections" in names and "imap_gateway_auth_attempts" in names
    # the gateway's own names, and the standard process_* names of the process collector
    assert all(n.startswith(("imap_gateway_", "process_")) for n in names)
    assert "process_cpu_seconds" in names and "process_resident_memory_bytes" in names
    r = c.post("/metrics")
    assert (r.status_code, r.text) == (405, "GET only\n")
    for path in ("/nope", "/sessions", "/", "/metrics/"):
        r = c.get(path)
        assert (r.status_code, r.text) == (404, "not found\n"), path


# -- TLS: the listening context follows the holder's reloads ------------------------------


def test_switching_context_serves_the_certificate_the_holder_has_now(tmp_path):
    def issue(name: str):
        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(cert, key)
        client = ssl.create_default_context()
        ca.configure_trust(client)
        return cert, key, server, client

    old_cert, old_key, old_server, old_client = issue("old")
    _, _, new_server, new_client = issue("new")
    holder = SimpleNamespace(context=old_server)
    listening = switching_context(holder, old_cert, old_key, "1.2")
    assert listening.minimum_version == ssl.TLSVersion.TLSv1_2

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def accept_one() -> None:
        conn, _ = srv.accept()
        try:
            with listening.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"hi")
        except (ssl.SSLError, OSError):
            pass

    def handshake(client: ssl.SSLContext, host: str) -> bool:
        thread = threading.Thread(target=accept_one)
        thread.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    client.wrap_socket(raw, server_hostname=host) as tls:
                return tls.recv(2) == b"hi"
        except ssl.SSLError:
            return False
        finally:
            thread.join(5)

    try:
        assert handshake(old_client, "127.0.0.1")  # no SNI for an IP address
        assert not handshake(new_client, "localhost")
        holder.context = new_server  # what TLSContextHolder.reload() does on SIGHUP
        assert handshake(new_client, "localhost")
        assert handshake(new_client, "127.0.0.1")
        assert not handshake(old_client, "localhost")
    finally:
        srv.close()


# -- WebSocket on this stack: Starlette route, Hypercorn's trio worker, trio-websocket ----


def test_a_trio_websocket_client_talks_to_a_starlette_route_over_hypercorn_trio(certs):
    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        async for text in ws.iter_text():
            await ws.send_text(f"echo: {text}")

    app = SecurityHeaders(Starlette(routes=[WebSocketRoute("/feed", echo)]))
    holder = SimpleNamespace(context=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    holder.context.load_cert_chain(certs.cert_path, certs.key_path)
    tls = switching_context(holder, certs.cert_path, certs.key_path, "1.2")

    async def main() -> list[str]:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(hypercorn_serve, app,
                                        hypercorn_config("127.0.0.1:0", ssl_context=tls))
            url = binds[0].replace("https://", "wss://") + "/feed"
            async with open_websocket_url(url, ssl_context=certs.client_ssl_context()) as ws:
                got = []
                for text in ("one", "two"):
                    await ws.send_message(text)
                    got.append(await ws.get_message())
            nursery.cancel_scope.cancel()
        return got

    assert trio.run(main) == ["echo: one", "echo: two"]


@pytest.mark.parametrize("address", ["127.0.0.1:0", "[::1]:0"])
def test_hypercorn_config_binds_what_the_gateway_config_writes(address):
    if address.startswith("[") and not socket.has_ipv6:
        pytest.skip("no IPv6")
    app = metrics_app(lambda: True)

    async def main() -> list[str]:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(hypercorn_serve, app, hypercorn_config(address))
            nursery.cancel_scope.cancel()
        return binds

    (bind,) = trio.run(main)
    assert bind.startswith("http://" + address.rsplit(":", 1)[0])
