"""The live event feed with real gateways, a real Dovecot, a real Redis and a real browser:

- ``imap-gateway events --follow --json`` prints an IMAP login within a second of it;
- two gateways sharing ``[state] redis``: an event on A reaches a subscriber of B (once);
- an administrator's headless Chromium sees a login appear under "Live events" without
  reloading, and bans an address from the bans page so the next login from it is refused.

Portal sign-in is not part of this: the admin's web session (with its second factor
done) is made in the gateway's store, as sign-in would, and handed to the browser as
its session cookie.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from playwright.sync_api import expect
from trio_websocket import ConnectionRejected, open_websocket_url

from gateway.store import open_store
from gateway.web.csrf import SESSION_COOKIE
from tests.support.attack import greeting_from
from tests.support.browser import launch_chromium
from tests.support.imap import LineClient, imaps
from tests.support.net import free_ports

pytestmark = pytest.mark.e2e


def admin_gateway(gateway, **overrides):
    (port,) = free_ports(1)
    gw = gateway(admin={"address": f"127.0.0.1:{port}"}, **overrides)
    gw.admin_port = port
    return gw


class Follower:
    """``imap-gateway events --follow ARGS`` as a subprocess; its stdout lines in a queue."""

    def __init__(self, gw, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "events", "--follow", *args,
             "--config", str(gw.config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, bufsize=1)
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line))

    def next_event(self, timeout: float, **fields: Any) -> tuple[float, dict[str, Any]]:
        """(arrival time, event) of the next line whose fields equal ``fields``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no event with {fields} within {timeout}s "
                                     f"(stderr: {self.stop()[1]!r})")
            try:
                at, line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            event = json.loads(line)
            if all(event.get(k) == v for k, v in fields.items()):
                return at, event

    def stop(self) -> tuple[int | None, str]:
        """Ctrl-C (SIGINT by PID); exit code and stderr."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        assert self.proc.stderr is not None
        return self.proc.returncode, self.proc.stderr.read()


@pytest.fixture
def followers() -> Iterator[list[Follower]]:
    made: list[Follower] = []
    yield made
    for f in made:
        f.stop()


def follow(followers: list[Follower], gw, *args: str) -> Follower:
    """Start a follower and return once the gateway logged its subscription."""
    before = len(gw.events("feed.subscribed", door="admin-api"))
    f = Follower(gw, *args)
    followers.append(f)
    deadline = time.monotonic() + 15
    while len(gw.events("feed.subscribed", door="admin-api")) <= before:
        assert f.proc.poll() is None, f.stop()
        assert time.monotonic() < deadline, f"the follower did not subscribe\n{gw.tail()}"
        time.sleep(0.02)
    return f


def test_events_follow_json_prints_an_imap_login_within_a_second(gateway, followers):
    gw = admin_gateway(gateway)
    f = follow(followers, gw, "--json")
    # a follower only listens: longer than the listener's read timeout (5 s) without a
    # word from it must not end the feed (the server's pings keep its pongs coming)
    time.sleep(6)

    m = imaps(gw)
    m.login("alice", "alicepass")
    logged_in = time.monotonic()
    port = m.sock.getsockname()[1]
    try:
        at, event = f.next_event(1.0, event="login.ok", user="alice")
        assert at - logged_in < 1.0
        assert (event["kind"], event["client_ip"], event["client_port"]) == (
            "login", "127.0.0.1", port)
        assert event["session_id"] == gw.session_id_for(port)
        assert event["instance"].endswith(f":{gw.pid}")
    finally:
        m.logout()

    bad = imaps(gw)
    try:
        with pytest.raises(Exception, match="AUTHENTICATIONFAILED"):
            bad.login("bob", "not-bobs-password")
    finally:
        bad.shutdown()
    _, denied = f.next_event(5.0, event="login.denied", user="bob")
    assert denied["kind"] == "denied" and denied["reason"]
    code, err = f.stop()
    assert code == 0, err
    assert "not-bobs-password" not in json.dumps(denied) and "alicepass" not in json.dumps(event)


def test_an_event_on_gateway_a_reaches_a_subscriber_of_gateway_b(gateway, redis_server,
                                                                   followers):
    shared = {"redis": redis_server.url}
    gw_a = admin_gateway(gateway, state=shared)
    gw_b = admin_gateway(gateway, state=shared)
    for gw in (gw_a, gw_b):
        gw.wait_for_event("feed.redis_subscribed", timeout=10)
    on_b = follow(followers, gw_b, "--json", "--kind", "login", "--user", "alice")
    on_a = follow(followers, gw_a, "--json", "--kind", "login")

    m = imaps(gw_a)
    m.login("alice", "alicepass")
    logged_in = time.monotonic()
    m.logout()
    at, event = on_b.next_event(5.0, event="login.ok")
    assert at - logged_in < 1.0
    assert event["user"] == "alice" and event["instance"].endswith(f":{gw_a.pid}")
    # A's own subscriber gets it once: delivered locally, its echo from Redis skipped
    _, local = on_a.next_event(5.0, event="login.ok")
    assert local == event
    time.sleep(0.5)
    assert on_a.lines.empty() and on_b.lines.empty()

    # and the other way round, with B's own instance tag
    m = imaps(gw_b)
    m.login("alice", "alicepass")
    m.logout()
    _, event = on_b.next_event(5.0, event="login.ok")
    assert event["instance"].endswith(f":{gw_b.pid}")
    _, event = on_a.next_event(5.0, event="login.ok")
    assert event["instance"].endswith(f":{gw_b.pid}")


def test_with_two_workers_and_no_redis_the_feed_carries_every_workers_logins(gateway,
                                                                           followers):
    """Worker 0 serves the admin API; a login on worker 1 reaches its subscriber too,
    over the worker link, and worker 1 forwards only while somebody watches."""
    gw = admin_gateway(gateway, wait=False, server={"workers": 2},
                       limits={"max_connection_rate_per_ip": 200})
    gw.wait_for_event("workers.ready", timeout=120)
    f = follow(followers, gw, "--json", "--kind", "login")
    gw.wait_for_event("feed.forwarding", 30, worker=1, active=True)

    served: dict[str, int] = {}  # session id -> the worker that served it
    for _ in range(40):  # all on one worker: probability 2**-39 (kernel hash of the ports)
        with LineClient.implicit(gw, timeout=30) as client:
            assert client.command("a", "LOGIN bob bobpass")[-1].startswith(b"a OK")
            start = gw.wait_for_event("session.start", 30, client_port=client.local_port)
        served[start["session_id"]] = start["worker"]
        if len(served) >= 6 and set(served.values()) == {0, 1}:
            break
    assert set(served.values()) == {0, 1}, served

    seen: dict[str, dict[str, Any]] = {}
    while set(seen) < set(served):
        _, event = f.next_event(10.0, event="login.ok")
        seen[event["session_id"]] = event
    assert set(seen) == set(served)
    pids = {w: gw.wait_for_event("worker.started", 30, worker=w)["pid"] for w in (0, 1)}
    for session_id, worker in served.items():
        event = seen[session_id]
        assert (event["kind"], event["user"], event["worker"]) == ("login", "bob", worker)
        assert event["instance"].endswith(f":{pids[worker]}")

    code, err = f.stop()
    assert code == 0, err
    gw.wait_for_event("feed.forwarding", 30, worker=1, active=False)


# -- the admin pages in a real browser ----------------------------------------------------------


def web_admin_gateway(gateway, admin: str = "alice"):
    web_port, admin_port = free_ports(2)
    public_url = f"https://127.0.0.1:{web_port}"
    gw = gateway(web={"address": f"127.0.0.1:{web_port}", "public_url": public_url,
                      "admins": [admin]},
                 admin={"address": f"127.0.0.1:{admin_port}"},
                 limits={"ban_ttl_max": "1h"})
    gw.public_url = public_url
    return gw


def admin_web_session(gw, user: str) -> str:
    """A web session of ``user`` with the second factor done, as sign-in makes it."""
    state = gw.dir / "state"
    with open_store(state / "gateway.db", state / "store.key") as store:
        return store.create_web_session(user, 3600, time.time(), mfa_done=True).session_id


def expect_live(page) -> None:
    """Until the page says its feed is open (the page's own script writes that)."""
    expect(page.locator("#feed-status")).to_have_text(re.compile(r"^Live"), timeout=10_000)


def test_an_admin_sees_logins_live_and_bans_an_address_from_the_page(gateway):
    gw = web_admin_gateway(gateway)
    session_id = admin_web_session(gw, "alice")
    with launch_chromium() as browser:
        context = browser.new_context(ignore_https_errors=True)
        context.add_cookies([{"name": SESSION_COOKIE, "value": session_id,
                              "url": gw.public_url + "/", "secure": True, "httpOnly": True,
                              "sameSite": "Lax"}])
        page = context.new_page()
        page.goto(gw.public_url + "/admin")
        assert page.locator("h1").inner_text() == "Live events"
        expect_live(page)
        gw.wait_for_event("feed.subscribed", door="portal", admin="alice")
        page.evaluate("window.notReloaded = true")

        m = imaps(gw)
        m.login("bob", "bobpass")
        logged_in = time.monotonic()
        try:
            item = page.locator('#live-events li[data-event="login.ok"][data-user="bob"]')
            item.wait_for(timeout=1_000)
            assert time.monotonic() - logged_in < 1.0
            assert "bob logged in from 127.0.0.1" in item.inner_text()
            assert page.evaluate("window.notReloaded") is True
        finally:
            m.logout()

        # ban 127.0.0.2 from the bans page; the TTL asked for is capped at ban_ttl_max
        page.get_by_role("link", name="Bans").click()
        page.wait_for_url(gw.public_url + "/admin/bans")
        page.fill("#ban-network", "127.0.0.2")
        page.fill("#ban-ttl", "1d")
        page.fill("#ban-reason", "seen in the feed")
        page.get_by_role("button", name="Ban").click()
        page.wait_for_selector("text=Banned 127.0.0.2/32 for 1h")
        assert page.locator("#bans").inner_text().count("127.0.0.2/32") == 1

        banned = gw.wait_for_event("admin.ban_added", network="127.0.0.2/32")
        assert (banned["admin"], banned["via"], banned["reason"]) == (
            "alice", "portal", "seen in the feed")
        assert greeting_from(gw, "127.0.0.2").startswith(b"* BYE [UNAVAILABLE]")
        refused = gw.wait_for_event("connection.refused", client_ip="127.0.0.2")
        assert refused["reason"].startswith("banned")
        with pytest.raises(Exception):  # noqa: B017 - refused at connect, before any login
            imaps(gw, source="127.0.0.2").login("carol", "carolpass")
        ok = imaps(gw, source="127.0.0.1")  # the ban is of 127.0.0.2 only
        assert ok.login("carol", "carolpass")[0] == "OK"
        ok.logout()

        # the refusal shows up live too
        page.get_by_role("link", name="Live events").click()
        page.wait_for_url(gw.public_url + "/admin")
        expect_live(page)
        page.fill("#filter-address", "127.0.0.2")
        page.get_by_role("button", name="Filter").click()
        expect_live(page)
        gw.wait_for_event("feed.subscribed", door="portal", filter={
            "kinds": None, "user": None, "address": "127.0.0.2/32"})
        greeting_from(gw, "127.0.0.2")
        page.locator('#live-events li[data-event="connection.refused"]').wait_for(timeout=2_000)
        assert page.locator("#live-events li").count() == 1  # filtered to 127.0.0.2
        context.close()


def admin_web_session_of(gw, user: str, mfa_done: bool) -> str:
    state = gw.dir / "state"
    with open_store(state / "gateway.db", state / "store.key") as store:
        return store.create_web_session(user, 3600, time.time(), mfa_done=mfa_done).session_id


def handshake(gw, certs, cookie: str | None, origin: str) -> int:
    """The HTTP status of a WebSocket handshake to the portal's /admin/events (101: open)."""
    headers = [(b"origin", origin.encode())]
    if cookie:
        headers.append((b"cookie", f"{SESSION_COOKIE}={cookie}".encode()))
    url = gw.public_url.replace("https://", "wss://") + "/admin/events"

    async def main() -> int:
        try:
            async with open_websocket_url(url, ssl_context=certs.client_ssl_context(),
                                          extra_headers=headers):
                # The server pings on accept; closing at once would cross that ping, and
                # trio-websocket fails when it must answer a ping while closing.
                await trio.sleep(0.3)
                return 101
        except ConnectionRejected as exc:
            return exc.status_code

    return trio.run(main)


def test_the_portal_feed_checks_the_session_the_admin_list_and_the_origin(gateway, certs):
    gw = web_admin_gateway(gateway, admin="alice")
    alice = admin_web_session_of(gw, "alice", True)
    alice_password_only = admin_web_session_of(gw, "alice", False)
    bob = admin_web_session_of(gw, "bob", True)
    assert handshake(gw, certs, alice, gw.public_url) == 101
    assert handshake(gw, certs, alice, "https://evil.example") == 403
    assert handshake(gw, certs, alice, f"https://localhost:{gw.public_url.rsplit(':', 1)[1]}") \
        == 403  # the same server under another name is another origin
    assert handshake(gw, certs, alice_password_only, gw.public_url) == 403
    assert handshake(gw, certs, bob, gw.public_url) == 403
    assert handshake(gw, certs, None, gw.public_url) == 401
    reasons = [e["reason"] for e in gw.events("admin.feed_refused")]
    assert reasons == ["origin", "origin", "second_factor_missing", "not_admin",
                       "not_signed_in"]

    with launch_chromium() as browser:
        context = browser.new_context(ignore_https_errors=True)
        context.add_cookies([{"name": SESSION_COOKIE, "value": bob,
                              "url": gw.public_url + "/", "secure": True, "httpOnly": True,
                              "sameSite": "Lax"}])
        page = context.new_page()
        response = page.goto(gw.public_url + "/admin")
        assert response is not None and response.status == 403
        assert "not an administrator" in page.content()
        context.close()


def test_an_admin_signs_out_a_session_and_manages_a_user_in_the_browser(gateway):
    gw = web_admin_gateway(gateway)
    session_id = admin_web_session(gw, "alice")
    state = gw.dir / "state"
    with open_store(state / "gateway.db", state / "store.key") as store:
        store.create_app_password("bob", "iPhone", None, None, time.time())
    client = LineClient.implicit(gw)
    assert client.command("a", "LOGIN carol carolpass")[-1].startswith(b"a OK")
    sid = gw.session_id_for(client.local_port)
    with launch_chromium() as browser:
        context = browser.new_context(ignore_https_errors=True)
        context.add_cookies([{"name": SESSION_COOKIE, "value": session_id,
                              "url": gw.public_url + "/", "secure": True, "httpOnly": True,
                              "sameSite": "Lax"}])
        page = context.new_page()

        page.goto(gw.public_url + "/admin/sessions")
        row = page.locator("#sessions tr", has_text=sid)
        row.get_by_role("button", name="Sign out").click()
        page.wait_for_selector(f"text=Signed out session {sid} of carol.")
        assert client.read_line() == b"* BYE Session terminated by administrator.\r\n"
        client.expect_close()
        assert gw.wait_for_event("admin.session_killed", session_id=sid)["admin"] == "alice"

        page.goto(gw.public_url + "/admin/users?user=bob")
        assert page.locator("#app-password-count").inner_text() == "1"
        page.once("dialog", lambda dialog: dialog.dismiss())
        revoke = page.get_by_role("button", name="Revoke")
        revoke.click()
        assert revoke.is_enabled()  # not sent, so not disabled either
        assert page.locator("#app-password-count").inner_text() == "1"
        page.once("dialog", lambda dialog: dialog.accept())
        revoke.click()
        page.wait_for_selector("text=Revoked 1 app password(s) of bob")
        assert page.locator("#app-password-count").inner_text() == "0"

        page.get_by_role("button", name="Invite").click()
        link = page.locator("#invite-link").inner_text()
        assert link.startswith(gw.public_url + "/invite/")
        with open_store(state / "gateway.db", state / "store.key") as store:
            assert store.list_app_passwords("bob") == []
            assert store.consume_invite(link.rsplit("/", 1)[1], time.time()).user == "bob"
        context.close()
    client.close()
