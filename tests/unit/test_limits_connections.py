"""ConnectionTracker: per-IP concurrency, per-IP rate, global cap, bounded memory."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.limits.connections import ConnectionTracker
from tests.support.limits import limits_config

T0 = 1_700_000_000.0


def tracker(**kw) -> ConnectionTracker:
    base = dict(max_connections_per_ip=3, max_connections=10, max_connection_rate_per_ip=5)
    base.update(kw)
    return ConnectionTracker(**base)


def test_per_ip_concurrency_cap_and_release():
    t = tracker()
    tickets = [t.try_open("192.0.2.1", T0).ticket for _ in range(3)]
    refused = t.try_open("192.0.2.1", T0)
    assert (refused.allowed, refused.reason, refused.ticket) == (
        False, "max_connections_per_ip", None)
    assert t.try_open("192.0.2.2", T0).allowed  # another client is not affected
    t.close(tickets[0])
    t.close(tickets[0])  # a second close of the same ticket is harmless
    assert t.active("192.0.2.1") == 2
    assert t.try_open("192.0.2.1", T0).allowed


def test_rate_per_ip_per_minute():
    t = tracker(max_connections_per_ip=100, max_connections=100)
    for i in range(5):
        d = t.try_open("192.0.2.1", T0 + i)
        t.close(d.ticket)
    d = t.try_open("192.0.2.1", T0 + 30)
    assert (d.allowed, d.reason) == (False, "max_connection_rate_per_ip")
    assert t.try_open("192.0.2.1", T0 + 60.5).allowed  # the first admission aged out


def test_global_cap_and_allow_list_exemption():
    t = ConnectionTracker.from_config(limits_config(
        max_connections_per_ip=1, max_connections=4, max_connection_rate_per_ip=1,
        allow_networks=("10.0.0.0/8",)))
    ok = [t.try_open("10.9.9.9", T0) for _ in range(3)]  # the webmail host: no per-IP caps
    assert all(d.allowed for d in ok)
    assert t.try_open("192.0.2.1", T0).allowed
    full = t.try_open("10.9.9.9", T0)
    assert (full.allowed, full.reason) == (False, "max_connections")
    t.close(ok[0].ticket)
    assert t.try_open("10.9.9.9", T0).allowed


def test_mapped_v4_counts_as_the_same_client():
    t = tracker(max_connections_per_ip=1)
    assert t.try_open("192.0.2.1", T0).allowed
    assert not t.try_open("::ffff:192.0.2.1", T0).allowed


ops = st.lists(
    st.tuples(st.booleans(), st.integers(0, 400), st.integers(0, 50), st.floats(0, 3)),
    max_size=300,
)


@settings(max_examples=40, deadline=None)
@given(ops)
def test_random_open_close_keeps_counts_exact_and_memory_bounded(seq):
    t = tracker(max_connections_per_ip=2, max_connections=30, max_connection_rate_per_ip=4,
                max_tracked_ips=50)
    held = []
    now = T0
    for is_open, ip_n, pick, dt in seq:
        now += dt
        if is_open:
            d = t.try_open(f"198.18.{ip_n // 256}.{ip_n % 256}", now)
            if d.allowed:
                held.append(d.ticket)
        elif held:
            t.close(held.pop(pick % len(held)))
        assert t.total == len(held) >= 0
        assert all(t.active(tk.ip) >= 1 for tk in held)
        assert len(t) <= 50 + 30


def test_logged_in_connections_stop_counting_against_their_address():
    """An office behind one NAT address: logged-in sessions must not lock out the next user."""
    from gateway.limits.connections import ConnectionTracker

    tracker = ConnectionTracker(max_connections_per_ip=2, max_connections=100,
                                max_connection_rate_per_ip=3)
    tickets = []
    for i in range(10):
        decision = tracker.try_open("198.51.100.7", float(i))
        assert decision.allowed, (i, decision.reason)
        tracker.authenticated(decision.ticket)
        tracker.authenticated(decision.ticket)  # idempotent
        tickets.append(decision.ticket)
    assert tracker.total == 10  # the global cap still counts them
    # Unauthenticated connections from the same address are still capped.
    a = tracker.try_open("198.51.100.7", 20.0)
    b = tracker.try_open("198.51.100.7", 20.0)
    c = tracker.try_open("198.51.100.7", 20.0)
    assert a.allowed and b.allowed and not c.allowed
    for t in tickets + [a.ticket, b.ticket]:
        tracker.close(t)
    assert tracker.total == 0 and tracker.active("198.51.100.7") == 0
