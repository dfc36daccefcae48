"""The live event feed without a gateway: the log pipeline feeds it (after redaction),
subscriptions are bounded and say how much they lost, filters, worker-thread hand-off,
and what the Redis relay accepts from the channel.

The feed over WebSocket is in test_feed_web.py; across real gateways (and Redis) in
tests/e2e/test_event_feed.py.
"""

from __future__ import annotations

import io
import json
import re
import time

import pytest
import structlog
import trio

from gateway.observability import events
from gateway.observability.events import (
    FEED_KINDS,
    KINDS,
    EventFeed,
    FeedEvent,
    FeedFull,
    FilterError,
    feed_event,
    feed_processor,
    installed,
    parse_filter,
)
from gateway.observability.events_relay import OUTBOX_SIZE, RedisRelay
from gateway.observability.logs import REDACTED, configure_logging, get_logger, redact_secrets


@pytest.fixture
def logging_to(request):
    """configure_logging into a buffer for the test; structlog's defaults afterwards."""
    out = io.StringIO()
    configure_logging("json", "info", out)
    request.addfinalizer(structlog.reset_defaults)
    return out


def drain(sub) -> list[dict]:
    items = []
    while (item := sub.get_nowait()) is not None:
        items.append(dict(item.data))
    return items


# -- the pipeline feeds it ----------------------------------------------------------------


def test_the_feed_processor_sits_right_after_redaction(logging_to):
    processors = structlog.get_config()["processors"]
    assert processors.index(feed_processor) == processors.index(redact_secrets) + 1


def test_fed_events_are_what_the_json_log_gets_after_redaction(logging_to):
    feed = EventFeed("gw-test:1")
    with installed(feed), feed.subscribe() as sub:
        log = get_logger(session_id="s1", client_ip="192.0.2.7", client_port=5000)
        log.info("login.denied", user="alice", mechanism="LOGIN", reason="bad_password",
                 password="hunter2", extra={"totp_code": "123456", "note": "kept"})
        log.info("session.start")  # not a feed event
    (event,) = drain(sub)
    (line, _) = [json.loads(x) for x in logging_to.getvalue().splitlines()]
    assert event["kind"] == "denied" and event["instance"] == "gw-test:1"
    assert event["password"] == REDACTED and event["extra"]["totp_code"] == REDACTED
    assert {k: v for k, v in event.items() if k not in ("kind", "instance")} == line
    assert (event["user"], event["client_ip"], event["reason"]) == (
        "alice", "192.0.2.7", "bad_password")
    assert "hunter2" not in json.dumps(event) and "123456" not in json.dumps(event)


def test_every_feed_kind_comes_from_a_named_log_event(logging_to):
    feed = EventFeed("i")
    with installed(feed), feed.subscribe() as sub:
        log = get_logger()
        for name in FEED_KINDS:
            log.warning(name, user="bob")
    assert [(e["event"], e["kind"]) for e in drain(sub)] == list(FEED_KINDS.items())
    assert set(FEED_KINDS.values()) == set(KINDS)


def test_below_the_log_level_is_below_the_feed(logging_to):
    configure_logging("json", "warning", logging_to)
    feed = EventFeed("i")
    with installed(feed), feed.subscribe() as sub:
        get_logger().info("login.ok", user="alice")
        get_logger().warning("login.plaintext_blocked", user="alice")
    assert [e["event"] for e in drain(sub)] == ["login.plaintext_blocked"]


def test_fields_the_feed_owns_are_renamed_and_tracebacks_dropped(logging_to):
    feed = EventFeed("i")
    with installed(feed), feed.subscribe() as sub:
        try:
            raise ValueError("boom")
        except ValueError:
            get_logger().exception("anomaly", kind="password_spray", ip="192.0.2.7",
                                   action="ban", instance="spoofed", ratio=float("nan"))
    (event,) = drain(sub)
    assert event["kind"] == "anomaly" and event["anomaly_kind"] == "password_spray"
    assert event["instance"] == "i" and event["anomaly_instance"] == "spoofed"
    assert "exception" not in event and "exc_info" not in event
    assert event["ratio"] == "nan"  # JSON has no NaN: the feed's text stays valid JSON
    json.loads(FeedEvent.of(event).text)


def test_no_feed_installed_costs_nothing_and_breaks_nothing(logging_to):
    get_logger().info("login.ok", user="alice")
    assert json.loads(logging_to.getvalue())["event"] == "login.ok"


def test_a_broken_feed_never_costs_a_log_line(logging_to):
    class Broken(EventFeed):
        def publish(self, event_dict):
            raise RuntimeError("feed bug")

    feed = Broken("i")
    with installed(feed):
        get_logger().info("login.ok", user="alice")
    assert json.loads(logging_to.getvalue())["user"] == "alice"


# -- bounded subscriptions -------------------------------------------------------------------


def ok(i: int, **fields) -> dict:
    return {"event": "login.ok", "user": f"user{i}", "client_ip": "192.0.2.7", "seq": i,
            **fields}


def test_a_full_queue_drops_the_oldest_and_the_next_read_says_how_many():
    feed = EventFeed("i", queue_size=3)
    with feed.subscribe() as sub:
        for i in range(10):
            feed.publish(ok(i))
        assert sub.pending() == 3
        lost, *kept = drain(sub)
        assert lost["kind"] == "lost" and lost["lost"] == 7 and lost["instance"] == "i"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", lost["ts"])
        assert [e["seq"] for e in kept] == [7, 8, 9]
        feed.publish(ok(10))
        assert [e["seq"] for e in drain(sub)] == [10]  # told once, then events again
        assert sub.lost_total == 7


def test_a_subscriber_that_never_reads_slows_nobody_down():
    feed = EventFeed("i", queue_size=8)
    with feed.subscribe() as stuck, feed.subscribe(parse_filter(["login"])) as reader:
        started = time.perf_counter()
        received = 0
        for i in range(20_000):
            feed.publish(ok(i))
            while reader.get_nowait() is not None:
                received += 1
        elapsed = time.perf_counter() - started
    assert received == 20_000
    assert stuck.pending() == 8 and stuck.lost == 20_000 - 8
    assert elapsed < 5, elapsed  # O(subscribers) per event, no waiting on the stuck one


def test_subscribers_are_capped():
    feed = EventFeed("i", max_subscribers=2)
    with feed.subscribe(), feed.subscribe():
        assert feed.full()
        with pytest.raises(FeedFull), feed.subscribe():
            pass
    assert feed.subscribers == 0 and not feed.full()


def test_on_watched_hears_of_the_first_subscription_and_the_end_of_the_last():
    feed = EventFeed("i")
    heard: list[bool] = []
    feed.on_watched = heard.append
    with feed.subscribe():
        with feed.subscribe():
            pass
        assert heard == [True]
    assert heard == [True, False]
    with pytest.raises(RuntimeError), feed.subscribe():
        raise RuntimeError("the subscriber's error")
    assert heard == [True, False, True, False]


def test_receive_waits_for_an_event_and_takes_it_from_a_worker_thread(logging_to):
    async def main() -> list[dict]:
        feed = EventFeed("i")
        got = []
        with installed(feed), feed.subscribe() as sub, trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                async def read_two() -> None:
                    for _ in range(2):
                        got.append(dict((await sub.receive()).data))
                nursery.start_soon(read_two)
                await trio.sleep(0.05)
                get_logger().info("login.ok", user="from-trio")
                # structlog runs the processors in the thread that logs
                await trio.to_thread.run_sync(
                    lambda: get_logger().info("login.ok", user="from-a-thread"))
        return got

    got = trio.run(main)
    assert [e["user"] for e in got] == ["from-trio", "from-a-thread"]


# -- filters ---------------------------------------------------------------------------------


def ev(**data) -> FeedEvent:
    fed = feed_event(data, "i")
    assert fed is not None
    return fed


@pytest.mark.parametrize("flt, data, matches", [
    (parse_filter(["login"]), {"event": "login.ok"}, True),
    (parse_filter(["login"]), {"event": "login.denied"}, False),
    (parse_filter(["ban,kill"]), {"event": "admin.session_killed"}, True),
    (parse_filter(["ban", "denied"]), {"event": "connection.refused"}, True),
    (parse_filter(user="Alice"), {"event": "login.ok", "user": "alice"}, True),
    (parse_filter(user="alice"), {"event": "login.ok", "user": "ALICE"}, True),
    (parse_filter(user="alice"), {"event": "login.ok", "user": "alice2"}, False),
    (parse_filter(user="alice"), {"event": "ban.created", "network": "192.0.2.7/32"}, False),
    (parse_filter(address="192.0.2.0/24"), {"event": "login.ok", "client_ip": "192.0.2.7"},
     True),
    (parse_filter(address="192.0.2.7"), {"event": "login.ok", "client_ip": "::ffff:192.0.2.7"},
     True),
    (parse_filter(address="::ffff:192.0.2.7"), {"event": "login.ok", "client_ip": "192.0.2.7"},
     True),
    (parse_filter(address="192.0.2.7"), {"event": "login.ok", "client_ip": "192.0.2.8"}, False),
    (parse_filter(address="192.0.2.7"), {"event": "anomaly", "ip": "192.0.2.7"}, True),
    (parse_filter(address="192.0.2.7"), {"event": "ban.created", "network": "192.0.2.0/24"},
     True),
    (parse_filter(address="2001:db8::1"), {"event": "login.ok", "client_ip": "192.0.2.7"},
     False),
    (parse_filter(["ban"], address="10.0.0.0/8"),
     {"event": "admin.ban_added", "network": "10.1.0.0/16"}, True),
    (parse_filter(["login"], user="bob", address="10.0.0.1"),
     {"event": "login.ok", "user": "bob", "client_ip": "10.0.0.2"}, False),
])
def test_filters(flt, data, matches):
    assert flt.matches(ev(**data)) is matches


def test_a_lost_notice_passes_every_filter():
    feed = EventFeed("i", queue_size=1)
    with feed.subscribe(parse_filter(["ban"], user="x", address="10.0.0.1")) as sub:
        for _ in range(3):
            feed.publish({"event": "ban.created", "user": "x", "network": "10.0.0.0/24"})
        assert [e["kind"] for e in drain(sub)] == ["lost", "ban"]


@pytest.mark.parametrize("kinds, user, address, message", [
    (["logins"], None, None, "unknown kind logins; kinds: login, denied"),
    ([], "a\x1bb", None, "printable"),
    ([], None, "not-an-ip", "neither an IP address nor a CIDR network"),
    ([], None, "x" * 400, "too long"),
])
def test_bad_filters_say_what_would_work(kinds, user, address, message):
    with pytest.raises(FilterError, match=message):
        parse_filter(kinds, user, address)


def test_empty_filter_parameters_mean_no_condition():
    flt = parse_filter(["", " "], "", " ")
    assert (flt.kinds, flt.user, flt.address) == (None, None, None)


# -- what the Redis relay takes from the channel ----------------------------------------------


def test_the_relay_delivers_other_instances_events_and_skips_its_own_and_junk():
    feed = EventFeed("here:1")
    relay = RedisRelay(feed, client=None)
    with feed.subscribe() as sub:
        theirs = {"event": "login.ok", "kind": "login", "instance": "there:2", "user": "bob"}
        relay.receive(json.dumps({"origin": "other", "event": theirs}))
        relay.receive(json.dumps({"origin": relay.origin, "event": theirs}))  # our own echo
        for junk in ("not json", "[]", json.dumps({"origin": "x"}),
                     json.dumps({"origin": "x", "event": {**theirs, "kind": "rootkit"}}),
                     json.dumps({"origin": "x", "event": {**theirs, "instance": 7}}),
                     json.dumps({"origin": "x", "event": theirs}) + " " * 70_000,
                     b"bytes", None, '{"origin": "x", "event": {"kind": "login", '
                     '"instance": "y", "n": NaN}}'):
            relay.receive(junk)
        assert drain(sub) == [theirs]


def test_the_relay_outbox_is_bounded():
    async def main() -> tuple[int, int]:
        feed = EventFeed("here:1")
        relay = RedisRelay(feed, client=None)
        for i in range(OUTBOX_SIZE + 10):
            relay.forward(ev(event="login.ok", seq=i))
        return relay.dropped, relay._outbox.statistics().current_buffer_used

    dropped, queued = trio.run(main)
    assert dropped == 10 and queued == OUTBOX_SIZE


def test_the_module_documents_the_lost_notice():
    assert events.LOST == "lost" and '"kind": "lost"' in (events.__doc__ or "")
