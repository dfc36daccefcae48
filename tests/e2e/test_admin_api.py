"""The admin API and `imap-gateway sessions|bans` against a real gateway and Dovecot.

What an administrator relies on: the CLI shows who is logged in and can throw them out
(the client reads BYE), a ban keeps an address away from Dovecot until it is removed,
and nobody without the token file can do any of it.
"""

from __future__ import annotations

import http.client
import json
import re
import stat
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import pytest

from tests.support.imap import LineClient, imaps
from tests.support.net import free_ports

pytestmark = pytest.mark.e2e


def admin_gateway(gateway, **overrides):
    """A gateway with the admin API on a free loopback port."""
    (port,) = free_ports(1)
    admin = {"address": f"127.0.0.1:{port}", **overrides.pop("admin", {})}
    gw = gateway(admin=admin, **overrides)
    gw.admin_port = port
    return gw


def cli(gw, *args: str, config=None) -> subprocess.CompletedProcess:
    """`imap-gateway ARGS --config FILE` as the administrator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config or gw.config_path)],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def token(gw) -> str:
    return (gw.dir / "state" / "admin.token").read_text().strip()


def http_call(gw, method: str, path: str, *, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, dict, Any]:
    """(status, JSON body, headers); header names match in any case, as in HTTP."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read()), resp.headers
    finally:
        conn.close()


def authed(gw) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(gw)}"}


def test_sessions_list_shows_logged_in_imaplib_session(gateway):
    gw = admin_gateway(gateway)
    m = imaps(gw)
    assert m.login("alice", "alicepass")[0] == "OK"
    assert m.select("INBOX")[0] == "OK"
    port = m.sock.getsockname()[1]
    try:
        r = cli(gw, "sessions", "list", "--json")
        assert r.returncode == 0, r.stderr
        sessions = json.loads(r.stdout)["sessions"]
        mine = [s for s in sessions if s["client_port"] == port]
        assert len(mine) == 1, sessions
        s = mine[0]
        assert s["id"] == gw.session_id_for(port)
        assert (s["user"], s["client_ip"], s["state"]) == ("alice", "127.0.0.1", "authenticated")
        assert s["listener"] == f"127.0.0.1:{gw.implicit_port}"
        assert s["factor"] == "none" and s["app_password"] is None
        assert abs(datetime.fromisoformat(s["started"]).timestamp() - time.time()) < 30
        assert s["bytes_in"] > 0 and s["bytes_out"] > 0  # LOGIN and SELECT went through
        text = cli(gw, "sessions", "list")
        assert text.returncode == 0, text.stderr
        assert s["id"] in text.stdout and "alice" in text.stdout
        assert f"127.0.0.1:{port}" in text.stdout
    finally:
        m.logout()


def test_sessions_kill_ends_the_session_with_bye(gateway):
    gw = admin_gateway(gateway)
    with LineClient.implicit(gw) as c:
        assert c.command("a", "LOGIN bob bobpass")[-1].startswith(b"a OK")
        sid = gw.session_id_for(c.local_port)
        r = cli(gw, "sessions", "kill", sid)
        assert r.returncode == 0, r.stderr
        assert sid in r.stdout and "bob" in r.stdout
        assert c.read_line() == b"* BYE Session terminated by administrator.\r\n"
        c.expect_close()
    ended = gw.wait_for_event("session.end", session_id=sid)
    assert ended["reason"] == "admin_kill"
    listed = json.loads(cli(gw, "sessions", "list", "--json").stdout)["sessions"]
    assert sid not in [s["id"] for s in listed]
    again = cli(gw, "sessions", "kill", sid)
    assert again.returncode == 1 and "no session" in again.stderr, again


def test_ban_keeps_the_address_away_from_dovecot_until_removed(gateway, dovecot):
    gw = admin_gateway(gateway)
    added = cli(gw, "bans", "add", "127.0.0.2", "--ttl", "1h", "--reason", "lab test", "--json")
    assert added.returncode == 0, added.stderr
    ban = json.loads(added.stdout)
    assert (ban["network"], ban["scope"], ban["reason"], ban["source"]) == (
        "127.0.0.2/32", "ip", "lab test", "admin")
    expires, created = (datetime.fromisoformat(ban[k]) for k in ("expires", "created"))
    assert abs((expires - created).total_seconds() - 3600) <= 1

    listed = json.loads(cli(gw, "bans", "list", "--json").stdout)["bans"]
    assert [b["network"] for b in listed] == ["127.0.0.2/32"]

    mark = dovecot.mark()
    banned = LineClient.implicit(gw, source="127.0.0.2")
    assert banned.greeting.startswith(b"* BYE [UNAVAILABLE]"), banned.greeting
    try:
        banned.send(b"a LOGIN alice alicepass\r\n")  # a client that does not listen
    except OSError:
        pass
    banned.expect_close()
    # the neighbour address is not affected
    other = imaps(gw, source="127.0.0.1")
    assert other.login("alice", "alicepass")[0] == "OK"
    other.logout()

    removed = cli(gw, "bans", "remove", "127.0.0.2")
    assert removed.returncode == 0, removed.stderr
    assert "127.0.0.2/32" in removed.stdout
    back = imaps(gw, source="127.0.0.2")
    back_port = back.sock.getsockname()[1]
    assert back.login("alice", "alicepass")[0] == "OK"
    back.logout()
    # Every connection the gateway opened to Dovecot for 127.0.0.2 is the one made after
    # the ban was lifted (Dovecot logs the forwarded address of each, so this would list
    # the banned client's too had it got through).
    dovecot.wait_for_log(rf"Login: user=<alice>.*rip=127\.0\.0\.2, rport={back_port}",
                         since=mark)
    ports = re.findall(r"rip=127\.0\.0\.2, rport=(\d+)", dovecot.log_since(mark))
    assert set(ports) == {str(back_port)}, dovecot.log_since(mark)
    assert json.loads(cli(gw, "bans", "list", "--json").stdout)["bans"] == []


def test_cli_ban_ttl_is_capped_at_ban_ttl_max(gateway):
    gw = admin_gateway(gateway, limits={"ban_ttl_max": "2h"})
    added = cli(gw, "bans", "add", "127.0.0.3", "--ttl", "99999999d")
    assert added.returncode == 0, added.stderr
    assert "--ttl capped at 2h, [limits] ban_ttl_max" in added.stdout, added.stdout
    [ban] = json.loads(cli(gw, "bans", "list", "--json").stdout)["bans"]
    assert ban["network"] == "127.0.0.3/32"
    created, expires = (datetime.fromisoformat(ban[k].replace("Z", "+00:00"))
                        for k in ("created", "expires"))
    assert abs((expires - created).total_seconds() - 7200) < 1


def test_banned_client_reads_bye_unavailable_at_connect(gateway):
    gw = admin_gateway(gateway)
    assert cli(gw, "bans", "add", "127.0.2.0/24").returncode == 0
    c = LineClient.implicit(gw, source="127.0.2.9", read_greeting=False)
    data = c.expect_close()
    assert data.startswith(b"* BYE [UNAVAILABLE]"), data
    # a subnet ban is removed by its listed name, URL-encoded on the wire
    r = cli(gw, "bans", "remove", "127.0.2.0/24")
    assert r.returncode == 0, r.stderr
    with LineClient.implicit(gw, source="127.0.2.9") as ok:
        assert ok.greeting.startswith(b"* OK"), ok.greeting
    gone = cli(gw, "bans", "remove", "127.0.2.0/24")
    assert gone.returncode == 1 and "no ban" in gone.stderr


def test_no_token_or_wrong_token_is_401(gateway, tmp_path):
    gw = admin_gateway(gateway)
    for headers in ({}, {"Authorization": "Bearer " + "0" * 64},
                    {"Authorization": f"Basic {token(gw)}"}):
        for method, path in (("GET", "/sessions"), ("DELETE", "/bans/127.0.0.9"),
                             ("GET", "/no-such-path")):
            status, body, hdrs = http_call(gw, method, path, headers=headers)
            assert status == 401, (method, path, headers.keys(), body)
            assert "token" in body["error"]
            assert hdrs.get("WWW-Authenticate", "").startswith("Bearer")
    status, _, _ = http_call(gw, "GET", "/sessions", headers=authed(gw))
    assert status == 200
    # the CLI with another config's token says where its token came from
    wrong = tmp_path / "other.token"
    wrong.write_text("f" * 64 + "\n")
    wrong.chmod(0o600)
    other_cfg = gw.dir / "other.toml"
    other_cfg.write_text(gw.config_path.read_text().replace(
        "[admin]\n", f'[admin]\ntoken_file = "{wrong}"\n'))
    r = cli(gw, "bans", "list", config=other_cfg)
    assert r.returncode == 1
    assert "401" not in r.stdout and str(wrong) in r.stderr, r.stderr


def test_token_file_is_created_private_on_first_start(gateway):
    gw = admin_gateway(gateway)
    path = gw.dir / "state" / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token(gw)) == 64 and int(token(gw), 16) >= 0
    assert token(gw) not in gw.log_text()


def test_bad_requests_get_clear_json_errors(gateway):
    gw = admin_gateway(gateway, limits={"allow_networks": ["127.0.3.0/24"]})
    h = {**authed(gw), "Content-Type": "application/json"}

    def post(obj) -> tuple[int, dict]:
        status, body, _ = http_call(gw, "POST", "/bans", body=json.dumps(obj).encode(), headers=h)
        return status, body

    status, body = post({"network": "not-an-ip"})
    assert status == 400 and "not an IP address" in body["error"]
    status, body = post({"network": "127.0.3.7"})
    assert status == 400 and "allow_networks" in body["error"]
    status, body = post({"network": "127.0.0.9", "ttl": "5"})
    assert status == 400 and "ttl" in body["error"] and "unit" in body["error"]
    status, body = post({"network": "127.0.0.9", "tll": "1h"})
    assert status == 400 and "tll" in body["error"]
    status, body, _ = http_call(gw, "POST", "/bans", body=b"{", headers=h)
    assert status == 400 and "JSON object" in body["error"]
    status, body, hdrs = http_call(gw, "PUT", "/bans", body=b"{}", headers=h)
    assert status == 405 and hdrs["Allow"] == "GET, POST"
    status, body, _ = http_call(gw, "DELETE", "/sessions/0000000000000000", headers=h)
    assert status == 404 and "sessions list" in body["error"]
    status, body, _ = http_call(gw, "GET", "/metrics", headers=h)
    assert status == 404 and "/bans" in body["error"]
    status, body, _ = http_call(gw, "POST", "/bans", body=b"x" * (70 * 1024), headers=h)
    assert status == 413
    # nothing above created a ban
    status, body, _ = http_call(gw, "GET", "/bans", headers=h)
    assert (status, body) == (200, {"bans": []})


def test_cli_says_when_the_gateway_is_not_running(gateway):
    gw = admin_gateway(gateway)
    gw.stop()
    for args in (("sessions", "list"), ("bans", "list", "--json")):
        r = cli(gw, *args)
        assert r.returncode == 1, r
        assert (f"is the gateway running? admin API at 127.0.0.1:{gw.admin_port} "
                f"([admin] address in {gw.config_path})") in r.stderr, r.stderr


def test_non_loopback_admin_address_without_token_file_is_refused(gateway):
    (port,) = free_ports(1)
    gw = gateway(admin={"address": f"0.0.0.0:{port}"}, wait=False)
    deadline = time.monotonic() + 10
    while gw.returncode is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw.returncode not in (None, 0)
    err = gw.stderr_path.read_text() + gw.log_text()
    assert "admin.address" in err and "token_file" in err, err
