import pytest

from bench.cli import WORKLOADS, parse_args, split_cpus
from bench.stats import BASELINE, FLOOR, LOGIN_ONLY, TARGETS


def test_defaults_are_the_documented_full_run():
    s = parse_args([])
    assert (s.rounds, s.sessions, s.clients, s.fetch_messages) == (5, 2000, 32, 1000)
    assert s.only == WORKLOADS and s.targets == tuple(t for t in TARGETS if t != BASELINE)


def test_quick_is_small_and_flags_override_it():
    s = parse_args(["--quick", "--sessions", "50"])
    assert s.rounds == 2 and s.fetch_messages == 100 and s.sessions == 50


def test_only_keeps_canonical_order_and_rejects_unknown(capsys):
    assert parse_args(["--only", "memory,logins"]).only == ("logins", "memory")
    with pytest.raises(SystemExit):
        parse_args(["--only", "logins,speed"])
    assert "unknown ['speed']" in capsys.readouterr().err


def test_split_cpus_gives_the_client_its_own_core():
    assert split_cpus({0, 1}) == ({0}, {1})
    assert split_cpus({2, 3, 5}) == ({2}, {3, 5})
    assert split_cpus({0}) == (None, None)  # one core: no pinning at all


def test_targets_include_the_app_password_gateway_and_accept_it_alone():
    assert "gateway-app-password" in parse_args([]).targets
    assert parse_args(["--targets", "gateway-app-password,gateway"]).targets == (
        "gateway",
        "gateway-app-password",
    )


def test_baseline_adds_the_other_trees_gateway_as_a_target(tmp_path):
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "__main__.py").write_text("")
    s = parse_args(["--baseline", str(tmp_path)])
    assert s.baseline == tmp_path.resolve() and s.targets[-1] == BASELINE


def test_the_floor_runs_by_default_in_every_workload_and_alone_with_haproxy():
    s = parse_args([])
    assert FLOOR in s.targets and FLOOR not in LOGIN_ONLY
    assert TARGETS.index("gateway-app-password") < TARGETS.index(FLOOR) < TARGETS.index(BASELINE)
    assert parse_args(["--targets", "trio-floor,haproxy"]).targets == ("haproxy", FLOOR)
