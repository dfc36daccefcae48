import pytest

from bench.stats import (
    floor_note,
    fmt,
    median,
    percentile,
    ratio,
    ratio_note,
    short_error,
    table,
)


def test_percentile_is_nearest_rank_sample():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    # with few samples p99 is the maximum, not an interpolation past it
    assert percentile([1.0, 2.0, 3.0], 99) == 3.0


def test_percentile_rejects_empty_and_out_of_range():
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_median_odd_and_even():
    assert median([5, 1, 3]) == 3
    assert median([4, 1, 3, 2]) == 2.5


def test_fmt_three_significant_digits():
    assert fmt(612.4) == "612"
    assert fmt(0.8547) == "0.855"
    assert fmt(1225.2) == "1,225"
    assert fmt(17.73) == "17.7"
    assert fmt(None) == "-"


def test_ratio_needs_both_values():
    assert ratio(300.0, 600.0) == 0.5
    assert ratio(None, 600.0) is None
    assert ratio(300.0, 0.0) is None


def test_table_marks_failed_target_and_ratio():
    rows = [
        ("TLS logins/s", {"dovecot-direct": 650.0, "haproxy": 600.0, "gateway": 300.0}),
        ("NOOP p50 µs", {"dovecot-direct": 80.0, "haproxy": 90.0}),
    ]
    text = table(rows, {"gateway": "noop: ImapError: LOGIN answered NO"})
    lines = text.splitlines()
    assert lines[0].split("|")[1:-1] == [
        " metric       ",
        " dovecot-direct ",
        " haproxy ",
        " gateway ",
        " gateway-app-password ",
        " trio-floor ",
        " gateway/haproxy ",
    ]
    assert lines[2].split("|")[7].strip() == "0.50"
    assert lines[3].split("|")[4].strip() == "error"
    assert lines[3].split("|")[5].strip() == "-"  # app-password target: not run, not failed
    assert lines[3].split("|")[6].strip() == "-"
    assert lines[3].split("|")[7].strip() == "-"
    assert "gateway: noop: ImapError: LOGIN answered NO" in text


def test_short_error_keeps_first_and_last_line():
    msg = "gateway exited (rc 1); last lines of x.log:\n  | Traceback\n  | ImportError: no module\n  +----"
    assert (
        short_error(msg) == "gateway exited (rc 1); last lines of x.log: ... ImportError: no module"
    )
    assert short_error("one line") == "one line"


def test_ratio_note_compares_app_password_with_forward_where_both_ran():
    rows = [
        (
            "TLS logins/s (32 clients, higher is better)",
            {"gateway": 300.0, "gateway-app-password": 30.0},
        ),
        ("login: proxy CPU ms per login", {"gateway": 2.0, "gateway-app-password": 33.0}),
        ("NOOP round trip p50 µs", {"gateway": 150.0}),
    ]
    assert ratio_note(rows) == (
        "app-password / forward (gateway-app-password/gateway): "
        "TLS logins/s 0.10; login: proxy CPU ms per login 16.50"
    )
    assert ratio_note(rows[2:]) is None


def test_table_shows_the_floor_before_the_ratio_and_keeps_the_ratio_gateway_over_haproxy():
    rows = [("login: proxy CPU ms per login", {"haproxy": 0.7, "gateway": 2.1, "trio-floor": 1.2})]
    head, _, body = table(rows, {}).splitlines()
    assert [c.strip() for c in head.split("|")[5:8]] == [
        "gateway-app-password", "trio-floor", "gateway/haproxy"]
    assert [c.strip() for c in body.split("|")[5:8]] == ["-", "1.20", "3.00"]


def test_floor_note_gives_floor_over_haproxy_for_cost_rows_only():
    rows = [
        ("TLS logins/s (32 clients, higher is better)",
         {"haproxy": 800.0, "gateway": 340.0, "trio-floor": 560.0}),
        ("login: proxy CPU ms per login", {"haproxy": 0.716, "gateway": 2.04, "trio-floor": 1.21}),
        ("login: server core busy % (proxy + Dovecot)", {"haproxy": 99.0, "trio-floor": 99.0}),
        ("login: client CPU % of one core", {"haproxy": 70.0, "trio-floor": 50.0}),
        ("NOOP x 16: proxy CPU µs per NOOP", {"haproxy": 14.6, "trio-floor": 34.9}),
        ("FETCH MB/s", {"haproxy": 600.0}),  # the floor failed or did not run this workload
    ]
    assert floor_note(rows) == (
        "floor share (trio-floor/haproxy): TLS logins/s 0.70; login: proxy CPU ms per login "
        "1.69; NOOP x 16: proxy CPU µs per NOOP 2.39"
    )
    assert floor_note([("TLS logins/s", {"haproxy": 800.0, "gateway": 340.0})]) is None
