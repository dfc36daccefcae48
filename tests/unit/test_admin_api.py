"""Admin API pieces without a gateway: the HTTP request reader (fed byte by byte), the
token file, the loopback rule, bearer checks, POST /bans decoding, CLI messages.

The endpoints themselves run against a real gateway in tests/e2e/test_admin_api.py.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from gateway.admin_api import (
    MAX_REQUEST,
    AdminAddressRefused,
    AdminTokenError,
    HttpError,
    Request,
    RequestReader,
    Response,
    check_admin_address,
    is_authorized,
    load_admin_token,
    parse_ban_request,
)
from gateway.admin_client import format_bans, format_sessions
from gateway.cli import main
from gateway.config import config_from_mapping

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


# -- request reader -----------------------------------------------------------------------

BODY = b'{"network":"192.0.2.7"}'
RAW = (b"POST /bans?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t0k\r\n"
       b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)


@pytest.mark.parametrize("split", range(1, len(RAW)))
def test_reader_gives_the_same_request_for_every_split(split):
    reader = RequestReader()
    assert reader.feed(RAW[:split]) is None
    req = reader.feed(RAW[split:])
    assert req is not None
    assert (req.method, req.path, req.target) == ("POST", "/bans", "/bans?x=1")
    assert req.headers["authorization"] == "Bearer t0k"
    assert req.body == BODY


def test_reader_byte_by_byte_answers_exactly_at_the_last_byte():
    reader = RequestReader()
    for i, byte in enumerate(RAW):
        req = reader.feed(bytes([byte]))
        assert (req is not None) == (i == len(RAW) - 1)


def test_request_repr_hides_the_token():
    req = RequestReader().feed(RAW)
    assert "t0k" not in repr(req)


@pytest.mark.parametrize("raw, status, words", [
    (b"GET /bans\r\n\r\n", 400, "request line"),
    (b"GET bans HTTP/1.1\r\n\r\n", 400, "request line"),
    (b"GET /bans HTTP/1.1\r\nNoColon\r\n\r\n", 400, "header"),
    (b"POST /bans HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length"),
    (b"POST /bans HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "Content-Length"),
    (b"GET /bans HTTP/1.1\r\nAuthorization: a\r\nauthorization: b\r\n\r\n", 400, "duplicate"),
    (b"GET /b\xe4ns HTTP/1.1\r\n\r\n", 400, "ASCII"),
    (b"POST /bans HTTP/1.1\r\nContent-Length: 70000\r\n\r\n", 413, "larger"),
])
def test_reader_refuses_bad_requests_with_a_reason(raw, status, words):
    with pytest.raises(HttpError) as err:
        RequestReader().feed(raw)
    assert err.value.status == status and words in err.value.message


def test_reader_bounds_a_head_that_never_ends():
    reader = RequestReader()
    chunk = b"GET /bans HTTP/1.1\r\nX: " + b"y" * 4096
    with pytest.raises(HttpError) as err:
        for _ in range(MAX_REQUEST // 4096 + 2):
            reader.feed(chunk if not reader._buf else b"y" * 4096)
    assert err.value.status == 413
    assert len(reader._buf) <= MAX_REQUEST + 4096


def test_reader_incomplete_request_at_eof_is_400():
    reader = RequestReader()
    reader.feed(b"POST /bans HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}")
    with pytest.raises(HttpError) as err:
        reader.eof()
    assert err.value.status == 400


def test_response_is_json_with_length_and_close():
    raw = Response(404, {"error": "no such thing"}, (("Allow", "GET"),)).to_bytes()
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"Content-Length: %d" % len(body) in head and b"Connection: close" in head
    assert b"Allow: GET" in head
    assert json.loads(body) == {"error": "no such thing"}


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

def _post(body: object) -> Request:
    return Request("POST", "/bans", {}, json.dumps(body).encode())


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
        parse_ban_request(Request("POST", "/bans", {}, b"[" * 60000))
    assert err.value.status == 400
