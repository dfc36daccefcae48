"""``imap-gateway events --follow`` against the admin API's feed served in a thread of this
process (Hypercorn's trio worker, a real WebSocket): what it prints with and without
--json, how it reports a wrong token, a stopped gateway and a turned-off admin API.

Against a real gateway and Dovecot: tests/e2e/test_event_feed.py.
"""

from __future__ import annotations

import io
import json
import threading
from types import SimpleNamespace

import pytest
import trio
from hypercorn.trio import serve as hypercorn_serve

from gateway.cli import build_parser, main
from gateway.config import config_from_mapping
from gateway.feed_client import follow_command, format_event
from gateway.observability.events import KINDS, EventFeed
from gateway.web.app import admin_app
from gateway.web.serve import hypercorn_config
from tests.support.net import free_port, wait_until

TOKEN = "f" * 64


class FeedServer:
    """The admin app with a feed, in its own thread and trio run, on a loopback port."""

    def __init__(self) -> None:
        self.feed: EventFeed | None = None
        self.port = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._cancel: trio.CancelScope | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self.feed = EventFeed("gw-a:7")
        app = admin_app(SimpleNamespace(sessions={}, limiter=None), TOKEN, feed=self.feed)
        async with trio.open_nursery() as nursery:
            self._cancel = nursery.cancel_scope
            binds = await nursery.start(hypercorn_serve, app, hypercorn_config("127.0.0.1:0"))
            self.port = int(binds[0].rsplit(":", 1)[1])
            self._ready.set()

    def __enter__(self) -> FeedServer:
        self._thread.start()
        assert self._ready.wait(10), "the feed server did not start"
        return self

    def publish(self, event: dict) -> None:
        assert self.feed is not None
        self.feed.publish(event)  # from this thread: handed to the server's trio run

    def stop(self) -> None:
        if self._token is not None and self._cancel is not None:
            try:
                self._token.run_sync_soon(self._cancel.cancel)
            except trio.RunFinishedError:
                pass
        self._thread.join(10)

    def __exit__(self, *exc) -> None:
        self.stop()


def feed_config(tmp_path, certs, port: int, token: str = TOKEN):
    token_file = tmp_path / "admin.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    return config_from_mapping({
        "tls": {"cert": str(certs.cert_path), "key": str(certs.key_path)},
        "listener": [{"address": "127.0.0.1:9993", "mode": "implicit-tls"}],
        "backend": {"address": "127.0.0.1:143", "client_ip": "id"},
        "admin": {"address": f"127.0.0.1:{port}", "token_file": str(token_file)},
    }, source_path=tmp_path / "gateway.toml")


EVENTS = [
    {"event": "login.ok", "user": "alice", "client_ip": "192.0.2.7", "factor": "totp",
     "ts": "2026-01-02T03:04:05.000000Z", "session_id": "s1"},
    {"event": "login.denied", "user": "evil\x1b[2Jname", "client_ip": "198.51.100.9",
     "reason": "bad_password", "ts": "2026-01-02T03:04:06.000000Z"},
    {"event": "ban.created", "network": "198.51.100.9/32", "ban_reason": "ip_failures",
     "ts": "2026-01-02T03:04:07.000000Z", "expires": 1767323947.25},
]


def run_follow(server: FeedServer, config, *, as_json: bool, kinds=(), user=None,
               address=None, want: int) -> tuple[int, str, str]:
    """Run the command in a thread; publish EVENTS once it subscribed; stop the server
    once ``want`` lines are out (the command then ends: the gateway closed the feed)."""
    out, err = io.StringIO(), io.StringIO()
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(follow_command(
        config, as_json=as_json, kinds=list(kinds), user=user, address=address,
        out=out, err=err)))
    runner.start()
    assert server.feed is not None
    wait_until(lambda: server.feed.subscribers == 1, 10)
    for event in EVENTS:
        server.publish(event)
    wait_until(lambda: out.getvalue().count("\n") >= want, 10)
    server.stop()
    runner.join(10)
    return result[0], out.getvalue(), err.getvalue()


def test_follow_json_prints_one_object_per_line(tmp_path, certs):
    with FeedServer() as server:
        code, out, err = run_follow(server, feed_config(tmp_path, certs, server.port),
                                    as_json=True, want=3)
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(e["event"], e["kind"], e["instance"]) for e in lines] == [
        ("login.ok", "login", "gw-a:7"), ("login.denied", "denied", "gw-a:7"),
        ("ban.created", "ban", "gw-a:7")]
    assert lines[2]["expires"] == "2026-01-02T03:19:07Z"  # times are RFC 3339, like the ts
    assert "\x1b" not in out  # JSON escapes control characters
    assert code == 1 and "the gateway closed the feed" in json.loads(err)["error"]


def test_follow_text_lines_and_filters(tmp_path, certs):
    with FeedServer() as server:
        code, out, err = run_follow(server, feed_config(tmp_path, certs, server.port),
                                    as_json=False, kinds=["denied", "ban"],
                                    address="198.51.100.0/24", want=2)
    first, second = out.splitlines()
    assert first.startswith("03:04:06 denied    login.denied user=")
    assert '"evil\\u001b[2Jname"' in first and "\x1b" not in out  # escaped for the terminal
    assert "client_ip=198.51.100.9 reason=bad_password [gw-a:7]" in first
    assert second == ("03:04:07 ban       ban.created network=198.51.100.9/32 "
                      "ban_reason=ip_failures [gw-a:7]")
    assert code == 1 and err.startswith("imap-gateway: the gateway closed the feed")


def test_follow_with_a_wrong_token_names_the_token_file(tmp_path, certs):
    with FeedServer() as server:
        config = feed_config(tmp_path, certs, server.port, token="w" * 64)
        out, err = io.StringIO(), io.StringIO()
        code = follow_command(config, as_json=False, kinds=[], user=None, address=None,
                              out=out, err=err)
    assert code == 1 and out.getvalue() == ""
    assert "missing or wrong bearer token" in err.getvalue()
    assert str(tmp_path / "admin.token") in err.getvalue()


def test_follow_reports_a_bad_filter_and_a_stopped_gateway(tmp_path, certs):
    with FeedServer() as server:
        config = feed_config(tmp_path, certs, server.port)
        err = io.StringIO()
        code = follow_command(config, as_json=True, kinds=[], user=None, address="nowhere",
                              out=io.StringIO(), err=err)
    assert code == 1 and "neither an IP address nor a CIDR network" in json.loads(
        err.getvalue())["error"]
    config = feed_config(tmp_path, certs, free_port())
    err = io.StringIO()
    code = follow_command(config, as_json=False, kinds=[], user=None, address=None,
                          out=io.StringIO(), err=err)
    assert code == 1 and "is the gateway running?" in err.getvalue()
    assert f"{config.admin.address} ([admin] address in" in err.getvalue()


def test_events_needs_follow_and_an_admin_api(tmp_path, certs, capsys):
    path = tmp_path / "gateway.toml"
    path.write_text(f'[tls]\ncert = "{certs.cert_path}"\nkey = "{certs.key_path}"\n'
                    '[[listener]]\naddress = "127.0.0.1:9993"\n'
                    '[backend]\naddress = "127.0.0.1:143"\n[admin]\naddress = ""\n')
    assert main(["events", "--config", str(path)]) == 2
    assert "events needs --follow" in capsys.readouterr().err
    assert main(["events", "--follow", "--json", "--config", str(path)]) == 1
    assert "admin API is turned off" in json.loads(capsys.readouterr().err)["error"]
    with pytest.raises(SystemExit):
        main(["events", "--follow", "--kind", "logins", "--config", str(path)])


def test_the_cli_offers_exactly_the_feed_kinds():
    events = build_parser()._subparsers._group_actions[0].choices["events"]
    (kind,) = [a for a in events._actions if a.dest == "kind"]
    assert tuple(kind.choices) == KINDS


def test_format_event_shows_the_telling_fields_in_order():
    line = format_event({"event": "anomaly", "kind": "anomaly", "anomaly_kind": "password_spray",
                         "ip": "192.0.2.7", "action": "ban", "instance": "gw:1",
                         "ts": "2026-01-02T03:04:05Z", "evidence_users": 25})
    assert line == ("03:04:05 anomaly   anomaly ip=192.0.2.7 anomaly_kind=password_spray "
                    "action=ban [gw:1]")
    assert format_event({"kind": "kill", "event": "admin.session_killed", "user": "a b",
                         "ts": "x"}).split(" ", 1)[1] == 'kill      admin.session_killed user="a b"'


def test_a_closed_pipe_ends_the_command_quietly(tmp_path, certs):
    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    with FeedServer() as server:
        config = feed_config(tmp_path, certs, server.port)
        err = io.StringIO()
        result: list[int] = []
        runner = threading.Thread(target=lambda: result.append(follow_command(
            config, as_json=True, kinds=[], user=None, address=None, out=ClosedPipe(),
            err=err)))
        runner.start()
        assert server.feed is not None
        wait_until(lambda: server.feed.subscribers == 1, 10)
        server.publish(EVENTS[0])
        runner.join(10)
    assert result == [0] and err.getvalue() == ""  # `events --follow | head -1` is no error
