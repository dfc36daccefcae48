"""The admin API without a gateway: the app on the web stack (bearer check before
routing, 404/405/400/409/413/408/503/500 as JSON), the token file, the loopback rule,
POST /bans decoding, CLI messages.

The endpoints run against a real gateway in tests/e2e/test_admin_api.py.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field

import pytest
import trio
from structlog.testing import capture_logs

from gateway.admin_client import format_bans, format_sessions
from gateway.cli import main
from gateway.config import config_from_mapping
from gateway.limits.limiter import Limiter
from gateway.limits.state import MemoryState
from gateway.web import app as web_app
from gateway.web.admin import HttpError, parse_ban_request
from gateway.web.app import MAX_BODY, admin_app
from gateway.web.token import (
    AdminAddressRefused,
    AdminTokenError,
    check_admin_address,
    is_authorized,
    load_admin_token,
)
from tests.support.asgi import AsgiClient
from tests.support.limits import limits_config

TOKEN = "a" * 64


def make_config(tmp_path, certs, **admin):
    return config_from_mapping({
        "tls": {"cert": str(certs.cert_path), "key": str(certs.key_path)},
        "listener": [{"address": "127.0.0.1:9993", "mode": "implicit-tls"}],
        "backend": {"address": "127.0.0.1:143", "client_ip": "id"},
        "admin": admin,
    }, source_path=tmp_path / "gateway.toml")


def write_config(tmp_path, certs, **admin):
    """A config file on disk for the CLI (same content as make_config)."""
    lines = [f'[tls]\ncert = "{certs.cert_path}"\nkey = "{certs.key_path}"',
             '[[listener]]\naddress = "127.0.0.1:9993"\nmode = "implicit-tls"',
             '[backend]\naddress = "127.0.0.1:143"\nclient_ip = "id"',
             "[admin]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in admin.items())]
    path = tmp_path / "gateway.toml"
    path.write_text("\n\n".join(lines) + "\n")
    return path


# -- the app: a fake gateway (sessions, a real in-memory limiter) -------------------------

NOW = 1_000_000.0


@dataclass
class FakeSession:
    session_id: str
    user: str | None
    client_ip: str = "192.0.2.7"
    client_port: int = 5000
    started_at: float = NOW - 60
    factor: str | None = "totp"
    app_password_label: str | None = None
    bytes_in: int = 10
    bytes_out: int = 20
    cancel_scope: object | None = None
    kill_reason: str | None = None
    killed: list = field(default_factory=list)

    @property
    def listener(self):
        return type("L", (), {"address": "0.0.0.0:993"})()

    def kill(self, reason: str, message: str) -> None:
        self.kill_reason = reason
        self.killed.append((reason, message))


@dataclass
class FakeGateway:
    sessions: dict = field(default_factory=dict)
    limiter: object = field(
        default_factory=lambda: Limiter(MemoryState(), limits_config(
            allow_networks=["127.0.3.0/24"]), None))


def client(gw=None) -> AsgiClient:
    return AsgiClient(admin_app(gw if gw is not None else FakeGateway(), TOKEN,
                                clock=lambda: NOW))


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer " + "0" * 64},
                                     {"Authorization": f"Basic {TOKEN}"}])
@pytest.mark.parametrize("method, path", [("GET", "/sessions"), ("DELETE", "/bans/127.0.0.9"),
                                          ("GET", "/no-such-path"), ("PUT", "/bans")])
def test_no_or_wrong_token_is_401_before_routing(headers, method, path):
    with capture_logs() as logs:
        r = client().request(method, path, headers=headers)
    assert r.status_code == 401, r.text
    assert "token" in r.json()["error"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.headers["Cache-Control"] == "no-store"
    assert [e["event"] for e in logs] == ["admin.unauthorized"]
    assert logs[0]["path"] == path
    assert TOKEN not in repr(logs)


def test_two_authorization_headers_are_a_bad_request():
    r = client().get("/sessions", headers=[("Authorization", f"Bearer {TOKEN}"),
                                           ("Authorization", "Bearer x")])
    assert r.status_code == 400 and "duplicate" in r.json()["error"]


def test_the_app_repr_does_not_show_the_token():
    assert TOKEN not in repr(admin_app(FakeGateway(), TOKEN))


@pytest.mark.parametrize("method, path, allowed", [
    ("PUT", "/bans", "GET, POST"), ("HEAD", "/sessions", "GET"),
    ("POST", "/sessions", "GET"), ("GET", "/sessions/abc", "DELETE"),
    ("POST", "/bans/192.0.2.7", "DELETE"),
])
def test_wrong_method_is_405_with_exact_allow(method, path, allowed):
    r = client().request(method, path, headers=AUTH)
    assert r.status_code == 405
    assert r.headers["Allow"] == allowed
    if method != "HEAD":
        assert f"use {allowed}" in r.json()["error"]


@pytest.mark.parametrize("path", ["/metrics", "/", "/sessionsx", "/bans/", "/sessions/"])
def test_unknown_endpoint_is_404_naming_the_endpoints(path):
    r = client().get(path, headers=AUTH)
    assert r.status_code == 404, r.text
    assert "/sessions, /bans" in r.json()["error"]


def test_sessions_list_is_sorted_and_shows_no_credential():
    gw = FakeGateway(sessions={
        "b": FakeSession("b", "bob", started_at=NOW - 5),
        "a": FakeSession("a", None, started_at=NOW - 50),
    })
    r = client(gw).get("/sessions", headers=AUTH)
    assert r.status_code == 200
    sessions = r.json()["sessions"]
    assert [s["id"] for s in sessions] == ["a", "b"]
    assert sessions[0]["state"] == "preauth" and sessions[0]["factor"] is None
    assert sessions[1] == {
        "id": "b", "user": "bob", "client_ip": "192.0.2.7", "client_port": 5000,
        "listener": "0.0.0.0:993", "started": NOW - 5, "factor": "totp", "app_password": None,
        "bytes_in": 10, "bytes_out": 20, "state": "authenticated"}


def test_kill_ends_a_logged_in_session_and_refuses_one_before_login():
    live = FakeSession("live", "alice", cancel_scope=object())
    early = FakeSession("early", None)
    gw = FakeGateway(sessions={"live": live, "early": early})
    c = client(gw)
    r = c.delete("/sessions/live", headers=AUTH)
    assert (r.status_code, r.json()) == (200, {"killed": "live", "user": "alice",
                                               "state": "closing"})
    assert live.killed == [("admin_kill", "Session terminated by administrator.")]
    r = c.delete("/sessions/early", headers=AUTH)
    assert r.status_code == 409 and "ban its address" in r.json()["error"]
    assert early.killed == []
    r = c.delete("/sessions/nope", headers=AUTH)
    assert r.status_code == 404 and "sessions list" in r.json()["error"]


def test_bans_add_list_remove_with_url_encoded_network():
    c = client()
    r = c.post("/bans", json={"network": "192.0.2.0/24", "ttl": "1h", "reason": "lab"},
               headers=AUTH)
    assert r.status_code == 201, r.text
    ban = r.json()
    assert (ban["network"], ban["scope"], ban["reason"], ban["source"]) == (
        "192.0.2.0/24", "subnet", "lab", "admin")
    assert ban["expires"] - ban["created"] == 3600
    assert [b["network"] for b in c.get("/bans", headers=AUTH).json()["bans"]] == [
        "192.0.2.0/24"]
    r = c.delete("/bans/192.0.2.0%2F24", headers=AUTH)
    assert (r.status_code, r.json()) == (200, {"removed": "192.0.2.0/24"})
    r = c.delete("/bans/192.0.2.0%2F24", headers=AUTH)
    assert r.status_code == 404 and "no ban of exactly 192.0.2.0/24" in r.json()["error"]
    assert c.get("/bans", headers=AUTH).json() == {"bans": []}


def test_a_ban_ttl_past_ban_ttl_max_is_capped_and_the_answer_says_so():
    c = client()  # ban_ttl_max: the default 24h
    r = c.post("/bans", json={"network": "192.0.2.9", "ttl": "99999999d"}, headers=AUTH)
    assert r.status_code == 201, r.text
    ban = r.json()
    assert ban["expires"] - ban["created"] == 86400
    assert (ban["ttl_capped"], ban["ttl_max"]) == (True, 86400)
    [listed] = c.get("/bans", headers=AUTH).json()["bans"]
    assert listed["expires"] == NOW + 86400
    r = c.post("/bans", json={"network": "192.0.2.10", "ttl": "1h"}, headers=AUTH)
    assert r.json()["ttl_capped"] is False


@pytest.mark.parametrize("body, words", [
    (b'{"network": "not-an-ip"}', "not an IP address"),
    (b'{"network": "127.0.3.7"}', "allow_networks"),
    (b'{"network": "127.0.0.9", "ttl": "5"}', "unit"),
    (b'{"network": "127.0.0.9", "tll": "1h"}', "tll"),
    (b"{", "JSON object"),
    (b"", "JSON object"),
])
def test_bad_ban_requests_are_400_with_a_reason(body, words):
    r = client().post("/bans", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and words in r.json()["error"], r.text


def test_a_body_over_the_limit_is_413_and_nothing_is_banned():
    c = client()
    big = json.dumps({"network": "192.0.2.7", "reason": "x" * MAX_BODY}).encode()
    r = c.post("/bans", content=big, headers=AUTH)
    assert r.status_code == 413 and str(MAX_BODY) in r.json()["error"]

    async def chunks():  # no Content-Length: the limit holds while streaming too
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"x" * 1024

    r = c.post("/bans", content=chunks(), headers=AUTH)
    assert r.status_code == 413
    assert c.get("/bans", headers=AUTH).json() == {"bans": []}


def test_a_crashing_handler_is_500_and_logged_without_the_token():
    class Broken(FakeGateway):
        @property
        def sessions(self):
            raise RuntimeError("boom")

    with capture_logs() as logs:
        r = client(Broken.__new__(Broken)).get("/sessions", headers=AUTH)
    assert r.status_code == 500 and "gateway log" in r.json()["error"]
    assert [e["event"] for e in logs] == ["admin.request_crashed"]
    assert TOKEN not in repr(logs)


def test_a_slow_handler_is_503(monkeypatch):
    monkeypatch.setattr(web_app, "REQUEST_DEADLINE", 0.05)

    class SlowLimiter:
        async def list_bans(self, now):
            await trio.sleep(5)

    r = client(FakeGateway(limiter=SlowLimiter())).get("/bans", headers=AUTH)
    assert r.status_code == 503 and "not answered" in r.json()["error"]


def test_a_body_that_does_not_arrive_in_time_is_408(monkeypatch):
    monkeypatch.setattr(web_app, "REQUEST_DEADLINE", 0.05)
    app = admin_app(FakeGateway(), TOKEN)
    sent: list[dict] = []

    async def receive():
        await trio.sleep(5)  # the client never sends its body

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/bans", "raw_path": b"/bans",
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "headers": [(b"authorization", f"Bearer {TOKEN}".encode()),
                         (b"content-length", b"20")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 9144)}
    trio.run(app, scope, receive, send)
    assert sent[0]["status"] == 408
    assert "not received" in json.loads(sent[1]["body"])["error"]


# -- bearer token ---------------------------------------------------------------------------

@pytest.mark.parametrize("value, ok", [
    (f"Bearer {TOKEN}", True), (f"bearer {TOKEN}", True), (f"Bearer  {TOKEN} ", True),
    ("", False), (f"Bearer {TOKEN[:-1]}", False), (f"Bearer {TOKEN}x", False),
    (f"Basic {TOKEN}", False), (TOKEN, False), ("Bearer ", False), ("Bearer é", False),
])
def test_is_authorized(value, ok):
    headers = {"authorization": value} if value else {}
    assert is_authorized(headers, TOKEN) is ok


# -- token file -----------------------------------------------------------------------------

def test_gateway_creates_a_private_random_token_once(tmp_path, certs):
    config = make_config(tmp_path, certs)
    token = load_admin_token(config, create=True)
    path = tmp_path / "state" / "admin.token"
    assert len(token) == 64 and int(token, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_admin_token(config, create=True) == token  # not regenerated on restart
    assert load_admin_token(config, create=False) == token  # the CLI reads the same one
    other = make_config(tmp_path / "elsewhere", certs)
    (tmp_path / "elsewhere").mkdir()
    assert load_admin_token(other, create=True) != token


def test_cli_side_never_creates_the_token(tmp_path, certs):
    config = make_config(tmp_path, certs)
    with pytest.raises(AdminTokenError, match="start the gateway once"):
        load_admin_token(config, create=False)
    assert not (tmp_path / "state" / "admin.token").exists()


def test_explicit_token_file_is_never_created_and_must_be_private(tmp_path, certs):
    path = tmp_path / "secret" / "admin.token"
    config = make_config(tmp_path, certs, token_file=str(path))
    with pytest.raises(AdminTokenError, match="openssl rand"):
        load_admin_token(config, create=True)
    assert not path.exists()
    path.parent.mkdir()
    path.write_text(TOKEN + "\n")
    path.chmod(0o640)
    with pytest.raises(AdminTokenError, match="chmod 600") as err:
        load_admin_token(config, create=True)
    assert str(path) in str(err.value) and TOKEN not in str(err.value)
    path.chmod(0o600)
    assert load_admin_token(config, create=False) == TOKEN
    path.write_text("short\n")
    with pytest.raises(AdminTokenError, match="at least 16"):
        load_admin_token(config, create=True)


# -- bind address ---------------------------------------------------------------------------

@pytest.mark.parametrize("address", ["127.0.0.1:9144", "127.0.0.9:9144", "[::1]:9144",
                                     "localhost:9144", ""])
def test_loopback_admin_address_is_fine_without_token_file(tmp_path, certs, address):
    check_admin_address(make_config(tmp_path, certs, address=address))


@pytest.mark.parametrize("address", ["0.0.0.0:9144", "192.0.2.7:9144", "[::]:9144",
                                     "admin.example.org:9144"])
def test_public_admin_address_needs_an_explicit_token_file(tmp_path, certs, address):
    with pytest.raises(AdminAddressRefused) as err:
        check_admin_address(make_config(tmp_path, certs, address=address))
    assert "admin.address" in str(err.value) and "token_file" in str(err.value)
    assert str(tmp_path / "gateway.toml") in str(err.value)
    check_admin_address(make_config(tmp_path, certs, address=address,
                                    token_file=str(tmp_path / "t")))


# -- POST /bans body -------------------------------------------------------------------------

def _post(body: object) -> bytes:
    return json.dumps(body).encode()


def test_ban_request_defaults_and_ttl():
    ask = parse_ban_request(_post({"network": "192.0.2.0/24"}))
    assert (ask.network, ask.ttl, ask.reason) == ("192.0.2.0/24", None, "admin")
    ask = parse_ban_request(_post({"network": "192.0.2.7", "ttl": "1h30m", "reason": "spam"}))
    assert (ask.ttl, ask.reason) == (5400.0, "spam")


@pytest.mark.parametrize("body, words", [
    ({}, "'network' is required"),
    ({"network": 7}, "'network' is required"),
    ({"network": "192.0.2.7", "ttl": 3600}, "ttl"),
    ({"network": "192.0.2.7", "ttl": "0s"}, "longer than 0s"),
    ({"network": "192.0.2.7", "ttl": "1y"}, "unit"),
    ({"network": "192.0.2.7", "reason": ""}, "reason"),
    ({"network": "192.0.2.7", "reason": "x" * 201}, "reason"),
    ({"network": "192.0.2.7", "reason": "a\nb"}, "reason"),
    ({"network": "192.0.2.7", "expires": "1h"}, "unknown key(s) expires"),
    (["192.0.2.7"], "JSON object"),
])
def test_ban_request_errors_say_what_to_send(body, words):
    with pytest.raises(HttpError) as err:
        parse_ban_request(_post(body))
    assert err.value.status == 400 and words in err.value.message


# -- CLI without a running gateway ------------------------------------------------------------

def test_cli_with_admin_api_turned_off_says_how_to_turn_it_on(tmp_path, certs, capsys):
    cfg = write_config(tmp_path, certs, address="")
    assert main(["bans", "list", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "[admin] address" in err and str(cfg) in err
    assert main(["bans", "list", "--json", "--config", str(cfg)]) == 1
    assert "[admin] address" in json.loads(capsys.readouterr().err)["error"]


def test_cli_before_first_gateway_start_names_the_token_file(tmp_path, certs, capsys):
    cfg = write_config(tmp_path, certs, address="127.0.0.1:9")
    assert main(["sessions", "list", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "state" / "admin.token") in err and "start the gateway" in err


def test_cli_connection_refused_json_error_is_parseable(tmp_path, certs, capsys):
    from tests.support.net import free_port

    port = free_port()
    cfg = write_config(tmp_path, certs, address=f"127.0.0.1:{port}")
    (tmp_path / "state").mkdir(mode=0o700)
    fd = os.open(tmp_path / "state" / "admin.token", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, TOKEN.encode())
    os.close(fd)
    assert main(["bans", "add", "192.0.2.7", "--json", "--config", str(cfg)]) == 1
    err = json.loads(capsys.readouterr().err)["error"]
    assert err.startswith("connection refused: is the gateway running? admin API at "
                          f"127.0.0.1:{port} ([admin] address in {cfg})")
    assert TOKEN not in err


# -- CLI tables -------------------------------------------------------------------------------

def test_tables_show_what_an_admin_reads():
    now = 1_000_000.0
    text = format_sessions([
        {"id": "abcd", "user": "alice", "client_ip": "192.0.2.7", "client_port": 5000,
         "listener": "0.0.0.0:993", "started": now - 7200, "factor": "totp",
         "app_password": None, "bytes_in": 10, "bytes_out": 20, "state": "authenticated"},
        {"id": "ef01", "user": None, "client_ip": "::1", "client_port": 6000,
         "listener": "[::]:143", "started": now - 5, "factor": None, "app_password": None,
         "bytes_in": 0, "bytes_out": 90, "state": "preauth"},
    ], now)
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "USER", "CLIENT", "LISTENER", "AGE", "FACTOR", "IN",
                                "OUT", "STATE"]
    assert lines[1].split() == ["abcd", "alice", "192.0.2.7:5000", "0.0.0.0:993", "2h", "totp",
                                "10", "20", "authenticated"]
    assert lines[2].split()[1] == "-" and "5s" in lines[2]
    bans = format_bans([{"scope": "subnet", "network": "192.0.2.0/24", "reason": "ip_failures",
                         "created": now - 60, "expires": now + 3600, "source": "auto"}], now)
    assert bans.splitlines()[1].split() == ["192.0.2.0/24", "subnet", "ip_failures", "auto",
                                            "1m", "ago", "in", "1h"]
    assert format_sessions([], now) == "no sessions"
    assert format_bans([], now) == "no active bans"


def test_deeply_nested_json_is_a_bad_request_not_a_crash():
    """60,000 '[' must not raise RecursionError (500 and a traceback in the log)."""
    with pytest.raises(HttpError) as err:
        parse_ban_request(b"[" * 60000)
    assert err.value.status == 400
