"""The live feed's two WebSocket doors and the admin pages, without a gateway: served by
Hypercorn's trio worker on a loopback port (WebSockets) or called in-process (pages),
over a fake gateway with a real store, limiter and policy.

Who is signed in comes from a stand-in for portal sign-in (``admin_routes(who=...)``),
except in the tests of ``signed_in`` itself, which use real web sessions of the store.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
import trio
from hypercorn.trio import serve as hypercorn_serve
from structlog.testing import capture_logs
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from gateway.config import config_from_mapping
from gateway.limits.limiter import Limiter
from gateway.limits.state import MemoryState
from gateway.observability.events import EventFeed
from gateway.policy import PolicyReloader, load_policy
from gateway.store import open_store
from gateway.web import feed as web_feed
from gateway.web.admin_pages import (
    SignedIn,
    admin_routes,
    expected_origin,
    human_duration,
    invite_link,
    is_admin,
    signed_in,
)
from gateway.web.app import admin_app, portal_app
from gateway.web.csrf import PRESESSION_COOKIE, SESSION_COOKIE, make_token
from gateway.web.serve import hypercorn_config
from tests.support.asgi import AsgiClient
from tests.support.limits import limits_config

TOKEN = "t" * 64
SECRET = b"s" * 32
PUBLIC_URL = "https://mail.example.test"
ORIGIN = "https://mail.example.test"
NOW = 1_000_000.0

POLICY = """\
[groups]
ops = ["carol", "*@ops.example"]

[[rule]]
name = "everyone"
action = "allow"
mfa = "none"
"""

#: Cookie value -> who the stand-in for sign-in says is signed in.
ROOT, HALF, USER, CAROL = ("r" * 43, "h" * 43, "u" * 43, "c" * 43)
PEOPLE = {ROOT: SignedIn("root", True), HALF: SignedIn("root", False),
          USER: SignedIn("alice", True), CAROL: SignedIn("Carol", True)}


async def stand_in(conn, store, now) -> SignedIn | None:
    return PEOPLE.get(conn.cookies.get(SESSION_COOKIE, ""))


@dataclass
class FakeSession:
    session_id: str
    user: str | None
    client_ip: str = "192.0.2.7"
    client_port: int = 5000
    started_at: float = NOW - 90
    factor: str = "totp"
    app_password_label: str | None = None
    bytes_in: int = 10
    bytes_out: int = 20
    cancel_scope: object | None = "running"
    kill_reason: str | None = None
    killed: list = field(default_factory=list)

    @property
    def listener(self):
        return SimpleNamespace(address="127.0.0.1:993")

    def kill(self, reason: str, message: str) -> None:
        self.kill_reason = reason
        self.killed.append((reason, message))


def make_services(tmp_path, certs, **web: Any) -> SimpleNamespace:
    web = {"public_url": PUBLIC_URL, "admins": ["root", "@ops"], **web}
    config = config_from_mapping({
        "tls": {"cert": str(certs.cert_path), "key": str(certs.key_path)},
        "listener": [{"address": "127.0.0.1:9993", "mode": "implicit-tls"}],
        "backend": {"address": "127.0.0.1:143", "client_ip": "id"},
        "limits": {"ban_ttl_max": "2h"},
        "web": web,
    }, source_path=tmp_path / "gateway.toml")
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "00.toml").write_text(POLICY)
    store = open_store(tmp_path / "gateway.db", tmp_path / "store.key", create_key=True)
    return SimpleNamespace(
        config=config, store=store,
        policy=PolicyReloader(policies, current=load_policy(policies)),
        limiter=Limiter(MemoryState(), limits_config(ban_ttl_max="2h"), None),
        sessions={"s-1": FakeSession("s-1", "alice"),
                  "s-2": FakeSession("s-2", None, cancel_scope=None)},
        feed=EventFeed("gw:1"))


@pytest.fixture
def services(tmp_path, certs):
    s = make_services(tmp_path, certs)
    yield s
    s.store.close()


def portal(services, who=stand_in, clock=lambda: NOW):
    return portal_app(services, secret=SECRET, clock=clock,
                      routes=admin_routes(services, who=who, clock=clock))


# -- helpers: serve an app, open a socket -------------------------------------------------


async def serving(nursery, app) -> str:
    binds = await nursery.start(hypercorn_serve, app, hypercorn_config("127.0.0.1:0"))
    return binds[0].replace("http://", "ws://")


def ws_headers(cookie: str | None = None, origin: str | None = ORIGIN,
               token: str | None = None) -> list[tuple[bytes, bytes]]:
    headers = []
    if cookie is not None:
        headers.append((b"cookie", f"{SESSION_COOKIE}={cookie}".encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return headers


def rejection(app_of, path: str, headers) -> tuple[int, str]:
    """(status, error message) of a refused handshake."""
    async def main() -> tuple[int, str]:
        async with trio.open_nursery() as nursery:
            nursery.cancel_scope.deadline = trio.current_time() + 10
            base = await serving(nursery, app_of())
            try:
                async with open_websocket_url(base + path, extra_headers=headers):
                    pass
            except ConnectionRejected as exc:
                return exc.status_code, json.loads(exc.body or b"{}").get("error", "")
            finally:
                nursery.cancel_scope.cancel()
        raise AssertionError("the handshake was accepted (or timed out)")
    return trio.run(main)


def stream(app_of, feed_holder, path: str, headers, publish: list[dict],
           want: int) -> list[dict]:
    """Open the socket, publish ``publish`` into the feed, read ``want`` messages."""
    async def main() -> list[dict]:
        async with trio.open_nursery() as nursery:
            app = app_of()
            base = await serving(nursery, app)
            feed = feed_holder()
            async with open_websocket_url(base + path, extra_headers=headers) as ws:
                with trio.fail_after(5):
                    while feed.subscribers == 0:
                        await trio.sleep(0.01)
                for event in publish:
                    feed.publish(event)
                got = []
                with trio.fail_after(5):
                    for _ in range(want):
                        got.append(json.loads(await ws.get_message()))
                with trio.move_on_after(0.2):  # and nothing more
                    got.append(json.loads(await ws.get_message()))
            with trio.fail_after(5):
                while feed.subscribers:
                    await trio.sleep(0.01)  # the server noticed the close
            nursery.cancel_scope.cancel()
        return got
    return trio.run(main)


EVENTS = [
    {"event": "login.ok", "user": "alice", "client_ip": "192.0.2.7", "factor": "totp"},
    {"event": "login.denied", "user": "bob", "client_ip": "198.51.100.9", "reason": "mfa",
     "password": "[redacted]"},
    {"event": "ban.created", "network": "198.51.100.9/32", "ban_reason": "ip_failures"},
]


# -- the admin API's /events ---------------------------------------------------------------


class AdminApi:
    """Builds the admin app inside trio.run (the feed remembers the run it was made in)."""

    def __init__(self) -> None:
        self.feed: EventFeed | None = None

    def app(self):
        self.feed = EventFeed("gw:1")
        return admin_app(SimpleNamespace(sessions={}, limiter=None), TOKEN, feed=self.feed)


@pytest.mark.parametrize("token", [None, "x" * 64])
def test_admin_events_without_the_token_is_refused_401(token):
    with capture_logs() as logs:
        status, message = rejection(AdminApi().app, "/events", ws_headers(token=token,
                                                                          origin=None))
    assert status == 401 and "bearer token" in message
    assert any(e["event"] == "admin.unauthorized" and e["path"] == "/events" for e in logs)


def test_admin_events_streams_what_the_filter_lets_through():
    api = AdminApi()
    got = stream(api.app, lambda: api.feed, "/events", ws_headers(token=TOKEN, origin=None),
                 EVENTS, 3)
    assert [(e["event"], e["kind"], e["instance"]) for e in got] == [
        ("login.ok", "login", "gw:1"), ("login.denied", "denied", "gw:1"),
        ("ban.created", "ban", "gw:1")]
    api = AdminApi()
    got = stream(api.app, lambda: api.feed, "/events?kind=denied&kind=ban&address=198.51.100.0/24",
                 ws_headers(token=TOKEN, origin=None), EVENTS, 2)
    assert [e["event"] for e in got] == ["login.denied", "ban.created"]
    api = AdminApi()
    got = stream(api.app, lambda: api.feed, "/events?user=ALICE",
                 ws_headers(token=TOKEN, origin=None), EVENTS, 1)
    assert [e["user"] for e in got] == ["alice"]


def test_admin_events_refuses_a_bad_filter_with_the_reason():
    status, message = rejection(AdminApi().app, "/events?kind=everything",
                                ws_headers(token=TOKEN, origin=None))
    assert status == 400 and "unknown kind everything; kinds: login, denied" in message


def test_admin_events_is_a_websocket_only():
    c = AsgiClient(AdminApi().app())
    r = c.get("/events", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 426 and "WebSocket" in r.json()["error"]
    r = c.get("/nothing", headers={"Authorization": f"Bearer {TOKEN}"})
    assert "/events (WebSocket)" in r.json()["error"]


def test_the_listeners_ping_websockets_well_within_their_read_timeout():
    # Hypercorn ends a connection silent for read_timeout; a feed reader only listens,
    # so its pongs to our pings must arrive in time (tests/e2e: a 6 s idle feed lives).
    config = hypercorn_config("127.0.0.1:0")
    assert config.read_timeout is not None and config.websocket_ping_interval is not None
    assert config.websocket_ping_interval <= config.read_timeout / 2


def test_a_full_feed_refuses_with_503():
    api = AdminApi()

    def app():
        made = api.app()
        assert api.feed is not None
        api.feed.max_subscribers = 0
        return made

    status, message = rejection(app, "/events", ws_headers(token=TOKEN, origin=None))
    assert status == 503 and "try again later" in message


# -- the portal's /admin/events --------------------------------------------------------------


@pytest.mark.parametrize("cookie, origin, status, reason", [
    (None, ORIGIN, 401, "not_signed_in"),
    ("z" * 43, ORIGIN, 401, "not_signed_in"),             # no such session
    (HALF, ORIGIN, 403, "second_factor_missing"),
    (USER, ORIGIN, 403, "not_admin"),
    (ROOT, None, 403, "origin"),                          # no Origin at all
    (ROOT, "https://evil.example", 403, "origin"),        # another site's page
    (ROOT, "http://mail.example.test", 403, "origin"),    # not over HTTPS
    (ROOT, "https://mail.example.test:8443", 403, "origin"),
    (ROOT, "null", 403, "origin"),
])
def test_portal_feed_refuses_unless_admin_with_second_factor_and_our_origin(
        services, cookie, origin, status, reason):
    with capture_logs() as logs:
        got, message = rejection(lambda: portal(services), "/admin/events",
                                 ws_headers(cookie, origin))
    assert got == status, message
    refused = [e for e in logs if e["event"] == "admin.feed_refused"]
    assert [e["reason"] for e in refused] == [reason]
    assert not [e for e in logs if e["event"] == "feed.subscribed"]


def test_portal_feed_is_refused_while_public_url_is_unset(tmp_path, certs):
    services = make_services(tmp_path, certs, public_url="")
    status, message = rejection(lambda: portal(services), "/admin/events",
                                ws_headers(ROOT, ORIGIN))
    assert status == 403 and "public_url is not set" in message


@pytest.mark.parametrize("cookie", [ROOT, CAROL])  # named in admins, and a member of @ops
def test_portal_feed_streams_to_an_admin(services, cookie):
    def app():
        services.feed = EventFeed("gw:1")
        return portal(services)

    with capture_logs() as logs:
        got = stream(app, lambda: services.feed, "/admin/events?kind=login",
                     ws_headers(cookie, ORIGIN), EVENTS, 1)
    assert [(e["event"], e["user"]) for e in got] == [("login.ok", "alice")]
    (subscribed,) = [e for e in logs if e["event"] == "feed.subscribed"]
    assert subscribed["door"] == "portal" and subscribed["admin"] == PEOPLE[cookie].user
    assert subscribed["filter"]["kinds"] == ["login"]


def test_origin_and_admin_rules():
    assert expected_origin("https://Mail.Example.org") == "https://mail.example.org"
    assert expected_origin("https://mail.example.org:443/") == "https://mail.example.org"
    assert expected_origin("https://mail.example.org:8443/portal") == \
        "https://mail.example.org:8443"
    assert expected_origin("https://[2001:db8::1]:8443") == "https://[2001:db8::1]:8443"
    assert expected_origin("") is None
    groups = load_policy_groups()
    assert is_admin("root", ["root"], {}) and is_admin("ROOT", ["root"], {})
    assert is_admin("dave@ops.example", ["@ops"], groups)
    assert not is_admin("dave@example.org", ["@ops"], groups)
    assert not is_admin("carol", ["@gone"], groups)  # a group the policy lacks names nobody
    assert not is_admin("@ops", ["@ops"], groups)
    assert invite_link("https://mail.example.org/", "T0K") == "https://mail.example.org/invite/T0K"
    assert [human_duration(s) for s in (0, 59, 3600, 5400, 90061)] == [
        "0s", "59s", "1h", "1h 30m", "1d 1h"]


def load_policy_groups():
    from gateway.policy.loader import parse_user_pattern
    return {"ops": (parse_user_pattern("carol"), parse_user_pattern("*@ops.example"))}


# -- the pages --------------------------------------------------------------------------------


class Browser:
    """An in-process browser for the portal whose session cookie is ``cookie``."""

    #: The pre-session cookie: the stand-in sessions are not in the store, so the forms'
    #: CSRF token is the pre-session's (gateway.web.csrf).
    PRESESSION = "p" * 43

    def __init__(self, app, cookie: str) -> None:
        self.client = AsgiClient(app, base_url=PUBLIC_URL)
        self.cookie = cookie
        self.csrf = make_token(SECRET, self.PRESESSION)
        self.headers = {"Cookie": f"{SESSION_COOKIE}={cookie}; "
                                  f"{PRESESSION_COOKIE}={self.PRESESSION}"}

    def get(self, path: str, **kw):
        return self.client.get(path, headers=self.headers, follow_redirects=False, **kw)

    def post(self, path: str, data: dict[str, str], *, csrf: bool = True):
        form = {**data, **({"csrf_token": self.csrf} if csrf else {})}
        return self.client.post(path, data=form, headers=self.headers, follow_redirects=False)


#: The pipeline's first processor: what the pages bind (admin, via) reaches the lines.
MERGED = [structlog.contextvars.merge_contextvars]

PAGES = ["/admin", "/admin/bans", "/admin/sessions", "/admin/users"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_refuse_everyone_but_an_admin_with_a_second_factor(services, path):
    app = portal(services)
    nobody = AsgiClient(app, base_url=PUBLIC_URL).get(path, follow_redirects=False)
    assert nobody.status_code == 303 and nobody.headers["location"] == "/"
    half = Browser(app, HALF).get(path)
    assert half.status_code == 403 and "second factor" in half.text
    user = Browser(app, USER).get(path)
    assert user.status_code == 403 and "not an administrator" in user.text
    root = Browser(app, ROOT).get(path)
    assert root.status_code == 200, root.text
    assert root.headers["cache-control"] == "no-store"
    assert "<script>" not in root.text  # no inline script (the CSP would block it)
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", root.text)  # nor inline handlers
    assert "content-security-policy" in root.headers


def test_live_events_page(services):
    r = Browser(portal(services), ROOT).get("/admin")
    assert "<h1>Live events</h1>" in r.text
    assert 'src="/static/admin-events.js"' in r.text
    assert 'id="live-events"' in r.text and 'data-feed="/admin/events"' in r.text
    for name in ("kind", "user", "address"):
        assert f'name="{name}"' in r.text
    js = AsgiClient(portal(services), base_url=PUBLIC_URL).get("/static/admin-events.js")
    assert js.status_code == 200 and "new WebSocket" in js.text
    assert "innerHTML" not in js.text  # events go in as text, never as markup


def test_post_without_the_csrf_token_changes_nothing(services):
    b = Browser(portal(services), ROOT)
    for path, data in [("/admin/bans", {"network": "192.0.2.50"}),
                       ("/admin/sessions/kill", {"id": "s-1"}),
                       ("/admin/users/invite", {"user": "alice"})]:
        assert b.post(path, data, csrf=False).status_code == 403, path
    assert trio.run(services.limiter.list_bans, NOW) == []
    assert services.sessions["s-1"].killed == []
    assert services.store.list_invites("alice") == []


def test_a_non_admin_with_the_csrf_token_still_changes_nothing(services):
    b = Browser(portal(services), USER)
    r = b.post("/admin/bans", {"network": "192.0.2.50"})
    assert r.status_code == 403
    assert trio.run(services.limiter.list_bans, NOW) == []


def test_bans_add_with_ttl_capped_list_and_remove(services):
    b = Browser(portal(services), ROOT)
    with capture_logs(MERGED) as logs:
        r = b.post("/admin/bans", {"network": "192.0.2.50", "ttl": "3d", "reason": "lab"})
    assert r.status_code == 200, r.text
    assert "Banned 192.0.2.50/32 for 2h (TTL capped at 2h, [limits] ban_ttl_max)." in r.text
    (ban,) = trio.run(services.limiter.list_bans, NOW)
    assert (ban.network, ban.reason, ban.source, ban.expires - NOW) == (
        "192.0.2.50/32", "lab", "admin", 7200)
    (added,) = [e for e in logs if e["event"] == "admin.ban_added"]
    assert (added["admin"], added["via"], added["network"]) == ("root", "portal", "192.0.2.50/32")
    page = b.get("/admin/bans").text
    assert "<code>192.0.2.50/32</code>" in page and ">Remove</button>" in page
    assert b.post("/admin/bans", {"network": "192.0.2.51", "ttl": "10m"}).status_code == 200
    assert {x.expires - NOW for x in trio.run(services.limiter.list_bans, NOW)} == {7200, 600}
    r = b.post("/admin/bans/remove", {"network": "192.0.2.50/32"})
    assert r.status_code == 200 and "Removed the ban of 192.0.2.50/32." in r.text
    assert [x.network for x in trio.run(services.limiter.list_bans, NOW)] == ["192.0.2.51/32"]
    assert b.post("/admin/bans/remove", {"network": "192.0.2.50"}).status_code == 404


@pytest.mark.parametrize("data, message", [
    ({"network": ""}, "Give an address or a CIDR network."),
    ({"network": "not-an-ip"}, "not-an-ip"),
    ({"network": "192.0.2.9", "ttl": "forever"}, "TTL:"),
    ({"network": "192.0.2.9", "ttl": "0s"}, "longer than 0s"),
    ({"network": "0.0.0.0/0"}, "wider than"),
    ({"network": "192.0.2.9", "reason": "x" * 201}, "at most 200 characters"),
    ({"network": "192.0.2.9", "reason": "tab\there"}, "printable text"),
])
def test_bad_ban_forms_are_explained_and_kept(services, data, message):
    r = Browser(portal(services), ROOT).post("/admin/bans", data)
    assert r.status_code == 400 and message in r.text, r.text
    assert trio.run(services.limiter.list_bans, NOW) == []


def test_sessions_list_and_sign_out(services):
    b = Browser(portal(services), ROOT)
    page = b.get("/admin/sessions").text
    assert "<code>s-1</code>" in page and "<code>s-2</code>" in page
    assert page.count(">Sign out</button>") == 1  # a session before login cannot be ended
    with capture_logs(MERGED) as logs:
        r = b.post("/admin/sessions/kill", {"id": "s-1"})
    assert r.status_code == 200 and "Signed out session s-1 of alice." in r.text
    assert services.sessions["s-1"].killed == [
        ("admin_kill", "Session terminated by administrator.")]
    (killed,) = [e for e in logs if e["event"] == "admin.session_killed"]
    assert (killed["admin"], killed["via"], killed["user"]) == ("root", "portal", "alice")
    assert b.post("/admin/sessions/kill", {"id": "nope"}).status_code == 404
    assert b.post("/admin/sessions/kill", {"id": "s-2"}).status_code == 409


def test_users_status_reset_revoke_invite(services):
    store = services.store
    store.enroll("alice", NOW)
    store.create_app_password("alice", "iPhone", None, None, NOW)
    store.create_app_password("alice", "Laptop", ["read-only"], None, NOW)
    b = Browser(portal(services), ROOT)
    page = b.get("/admin/users?user=alice").text
    assert '<dd id="totp-status">pending</dd>' in page
    assert '<dd id="app-password-count">2</dd>' in page and "iPhone" in page
    assert ">Revoke</button>" in page and ">Reset authenticator</button>" in page
    assert 'href="/admin/users?user=alice"' in page  # alice has a live session

    r = b.post("/admin/users/reset-totp", {"user": "alice"})
    assert r.status_code == 200 and "Removed alice&#39;s authenticator" in r.text
    assert '<dd id="totp-status">none</dd>' in r.text
    r = b.post("/admin/users/revoke-app-passwords", {"user": "alice"})
    assert "Revoked 2 app password(s) of alice" in r.text
    assert store.list_app_passwords("alice") == []

    with capture_logs() as logs:
        r = b.post("/admin/users/invite", {"user": "alice"})
    link = re.search(r'<code id="invite-link">([^<]+)</code>', r.text).group(1)
    assert link.startswith(PUBLIC_URL + "/invite/")
    token = link.rsplit("/", 1)[1]
    assert store.consume_invite(token, NOW + 60).user == "alice"
    assert token not in json.dumps(logs)  # shown once, on the page, never logged
    assert r.headers["cache-control"] == "no-store"


# -- the seam with sign-in: real web sessions of the store -----------------------------------


def test_signed_in_reads_the_stores_web_session_from_the_cookie(services):
    store = services.store
    mfa = store.create_web_session("root", 3600, NOW, mfa_done=True)
    password_only = store.create_web_session("root", 3600, NOW)

    async def who(cookie: str | None, now: float = NOW):
        headers = [(b"cookie", f"{SESSION_COOKIE}={cookie}".encode())] if cookie else []
        conn = SimpleNamespace(cookies={SESSION_COOKIE: cookie} if cookie else {},
                               headers=headers, scope={"type": "websocket"})
        return await signed_in(conn, store, now)

    assert trio.run(who, mfa.session_id) == SignedIn("root", True)
    assert trio.run(who, password_only.session_id) == SignedIn("root", False)
    assert trio.run(who, None) is None
    assert trio.run(who, "x" * 43) is None
    assert trio.run(who, mfa.session_id, NOW + 7200) is None  # expired

    app = portal(services, who=signed_in)
    assert Browser(app, mfa.session_id).get("/admin").status_code == 200
    assert Browser(app, password_only.session_id).get("/admin").status_code == 403
    # two session cookies in one header: the CSRF check and signed_in read the same one
    # (the last), so the form's token always belongs to the session that acts
    for first, last, status in [(mfa.session_id, "y" * 43, 303), ("y" * 43, mfa.session_id, 200)]:
        r = AsgiClient(app, base_url=PUBLIC_URL).get(
            "/admin", headers={"Cookie": f"{SESSION_COOKIE}={first}; {SESSION_COOKIE}={last}"},
            follow_redirects=False)
        assert r.status_code == status, (first, last)


def test_an_open_portal_feed_ends_when_the_session_stops_being_an_admins(services,
                                                                         monkeypatch):
    monkeypatch.setattr(web_feed, "RECHECK_SECONDS", 0.05)
    allowed = {"yes": True}

    async def who(conn, store, now):
        return SignedIn("root", True) if allowed["yes"] else None

    async def main() -> tuple[int | None, float]:
        async with trio.open_nursery() as nursery:
            services.feed = EventFeed("gw:1")
            base = await serving(nursery, portal(services, who=who))
            async with open_websocket_url(base + "/admin/events",
                                          extra_headers=ws_headers(ROOT, ORIGIN)) as ws:
                with trio.fail_after(5):
                    while services.feed.subscribers == 0:
                        await trio.sleep(0.01)
                services.feed.publish(EVENTS[0])
                assert json.loads(await ws.get_message())["event"] == "login.ok"
                allowed["yes"] = False  # signed out elsewhere
                started = trio.current_time()
                with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                took = trio.current_time() - started
            nursery.cancel_scope.cancel()
        return closed.value.reason.code, took

    with capture_logs() as logs:
        code, took = trio.run(main)
    assert code == 1008 and took < 1
    assert [e["admin"] for e in logs if e["event"] == "feed.revoked"] == ["root"]
