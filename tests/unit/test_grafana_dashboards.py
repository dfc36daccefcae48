"""The Grafana dashboards show real gateway metrics, through the provisioned datasource.

What an operator would hit otherwise: an empty panel (metric renamed, label value misspelt,
a PromQL syntax error) or "datasource not found" on every panel after provisioning.
Syntax is checked by promtool (Prometheus' own parser); names by the catalogue in
grafana_queries.py, which mirrors gateway/observability/metrics.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.grafana_queries import (
    ALL_METRICS,
    DASHBOARD_DIR,
    DATASOURCE_UID,
    GRAFANA_DIR,
    METRICS,
    NOT_DEFINED_YET,
    REPO_ROOT,
    catalogue_problems,
    dashboard_paths,
    iter_panels,
    load_dashboard,
    panel_queries,
    promql_queries,
    render_grafana_variables,
    scan_promql,
    series_labels,
    series_names,
)

ATTACKS = DASHBOARD_DIR / "imap-gateway-attacks.json"
OPERATIONS = DASHBOARD_DIR / "imap-gateway-operations.json"
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
PROMTOOL = shutil.which("promtool")

DASHBOARDS = dashboard_paths()
ids = [p.stem for p in DASHBOARDS]


def test_both_dashboards_exist_with_their_titles():
    titles = {load_dashboard(p)["title"] for p in DASHBOARDS}
    assert titles == {"IMAP gateway — attacks", "IMAP gateway — operations"}
    assert {p.name for p in DASHBOARDS} == {ATTACKS.name, OPERATIONS.name}


@pytest.mark.parametrize("path", DASHBOARDS, ids=ids)
def test_dashboard_identity_is_stable_and_panel_ids_unique(path: Path):
    """uid is what links and bookmarks use; duplicate panel ids make Grafana drop panels."""
    d = load_dashboard(path)
    assert d["uid"] == path.stem, "uid must stay equal to the file name (links depend on it)"
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    panel_ids = [p["id"] for p in iter_panels(d)]
    assert len(panel_ids) == len(set(panel_ids)), f"duplicate panel ids in {path.name}"
    assert "imap-gateway" in d["tags"], "the dashboards link to each other through this tag"


@pytest.mark.parametrize("path", DASHBOARDS, ids=ids)
def test_every_panel_has_a_query(path: Path):
    for panel in iter_panels(load_dashboard(path)):
        if panel["type"] == "row":
            continue
        exprs = [t.get("expr", "").strip() for t in panel.get("targets", [])]
        assert exprs and all(exprs), f"panel {panel['title']!r} has a target without a query"


@pytest.mark.parametrize("path", DASHBOARDS, ids=ids)
def test_queries_use_only_gateway_metrics_labels_and_values(path: Path):
    problems = [
        f"{title}: {problem}"
        for title, expr in panel_queries(path)
        for problem in catalogue_problems(expr)
    ]
    assert problems == []


@pytest.mark.parametrize("path", DASHBOARDS, ids=ids)
def test_counters_are_only_graphed_through_rate_or_increase(path: Path):
    """A raw counter graph is a line that only goes up (and drops at each restart)."""
    counters = [n for n, m in ALL_METRICS.items() if m.kind == "counter"]
    counters += [n + s for n, m in ALL_METRICS.items() if m.kind == "histogram" for s in ("_bucket", "_count", "_sum")]
    for title, expr in panel_queries(path):
        for name in scan_promql(expr).metrics & set(counters):
            start = expr.index(name)
            before = expr[:start].rstrip()
            assert before.endswith(("rate(", "increase(")), f"{title}: {name} outside rate()/increase()"


@pytest.mark.parametrize("path", DASHBOARDS, ids=ids)
def test_quantiles_keep_the_le_label(path: Path):
    """histogram_quantile over buckets summed without `le` returns nothing."""
    for title, expr in panel_queries(path):
        refs = scan_promql(expr)
        if any(m.endswith("_bucket") for m in refs.metrics):
            assert "histogram_quantile(" in expr and "le" in refs.grouping_labels, title


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH (Debian package prometheus)")
def test_queries_are_valid_promql(tmp_path: Path):
    """Prometheus' own parser, via `promtool check rules` on one recording rule per query."""
    rules = []
    for path in DASHBOARDS:
        for i, (title, expr) in enumerate(promql_queries(path)):
            rules.append({"record": f"dashboard:{path.stem.replace('-', '_')}:{i}", "expr": expr})
            assert "$" not in expr, f"{title}: unrendered Grafana variable in {expr!r}"
    rules_file = tmp_path / "panels.rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    proc = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", DASHBOARDS, ids=ids)
def test_every_panel_and_variable_uses_the_provisioned_datasource(path: Path):
    d = load_dashboard(path)
    for panel in iter_panels(d):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DS_REF, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS_REF, panel["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds_var = variables["datasource"]
    assert ds_var["type"] == "datasource" and ds_var["query"] == "prometheus"
    assert ds_var["current"]["value"] == DATASOURCE_UID
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DS_REF, var["name"]
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["definition"])
            assert m and m.group(1) in series_names(), var["definition"]
            assert m.group(2) in series_labels(m.group(1)), var["definition"]


def test_provisioned_datasource_has_the_uid_the_dashboards_use():
    doc = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())
    (ds,) = doc["datasources"]
    assert ds["uid"] == DATASOURCE_UID and ds["type"] == "prometheus"


def test_dashboard_provider_path_is_where_compose_mounts_the_dashboards():
    """Grafana starts with an empty folder if these two paths drift apart."""
    doc = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/imap-gateway.yml").read_text())
    (provider,) = doc["providers"]
    compose = yaml.safe_load((REPO_ROOT / "deploy/docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"../grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "../grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


@pytest.mark.parametrize("path", DASHBOARDS, ids=ids)
def test_panels_do_not_overlap(path: Path):
    cells: dict[tuple[int, int], str] = {}
    for panel in load_dashboard(path)["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def _families(path: Path) -> set[str]:
    names: set[str] = set()
    for _, expr in panel_queries(path):
        for m in scan_promql(expr).metrics:
            names.add(m.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum"))
    return names


def test_attacks_dashboard_covers_what_an_attack_looks_like():
    assert {
        "imap_gateway_auth_attempts_total",
        "imap_gateway_bans_created_total",
        "imap_gateway_bans_active",
        "imap_gateway_anomalies_total",
        "imap_gateway_plaintext_logins_blocked_total",
        "imap_gateway_policy_denials_total",
        "imap_gateway_tarpit_delay_seconds",
    } <= _families(ATTACKS)
    assert "imap_gateway_auth_policy_requests_total" in _families(ATTACKS)
    titles = [t for t, _ in panel_queries(ATTACKS)]
    assert "Failed logins by reason" in titles and "Top ban reasons (time range)" in titles
    assert {"Anomalies by kind", "Anomalies by kind (time range)", "Login success ratio"} <= set(titles)


def _panels(path: Path) -> list[dict]:
    return [p for p in iter_panels(load_dashboard(path)) if p["type"] != "row"]


def _exprs(panel: dict) -> list[str]:
    return [t["expr"] for t in panel["targets"]]


@pytest.mark.parametrize("path", DASHBOARDS, ids=ids)
def test_event_rates_are_in_operations_per_second(path: Path):
    """Grafana's "reqps" reads "requests/s"; a login, a ban or an IMAP command is an
    operation ("ops"). Byte rates, CPU, ratios and latencies have units of their own."""
    own_units = ("imap_gateway_bytes_relayed_total", "process_cpu_seconds_total",
                 "imap_gateway_worker_cpu_seconds_total")
    for panel in _panels(path):
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit != "reqps", panel["title"]
        exprs = _exprs(panel)
        if all("rate(" in e and "histogram_quantile(" not in e and " / " not in e
               and not any(m in e for m in own_units) for e in exprs):
            assert unit == "ops", f"{panel['title']}: a rate per second, unit {unit!r}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=ids)
def test_standard_series_are_read_for_the_gateway_job_only(path: Path):
    """up and process_* exist for every target Prometheus scrapes (Prometheus itself
    exports process_*): without job="imap-gateway" the panels would mix them in."""
    for title, expr in panel_queries(path):
        for metric in scan_promql(expr).metrics & {"up", *(m for m in ALL_METRICS if m.startswith("process_"))}:
            assert ("", "job", "=", "imap-gateway") in {
                ("", label, op, value) for _, label, op, value in scan_promql(expr).matchers
            }, f"{title}: {metric} without job=\"imap-gateway\""


def test_gateway_up_panel_reads_prometheus_scrape_of_the_gateway():
    (panel,) = [p for p in _panels(OPERATIONS) if p["title"] == "Gateway up"]
    assert panel["type"] == "stat"
    assert _exprs(panel) == ['up{job="imap-gateway", instance=~"$instance"}']
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    assert mapping["options"]["0"]["text"] == "DOWN" and mapping["options"]["1"]["text"] == "UP"


def test_certificate_panels_show_days_left_with_the_alert_thresholds():
    """Days, not a timestamp; orange below 14 and red below 3, as the two alerts."""
    panels = [p for p in _panels(OPERATIONS)
              if any("imap_gateway_tls_cert_expiry_timestamp_seconds" in e for e in _exprs(p))]
    assert {p["type"] for p in panels} == {"stat", "timeseries"}
    for panel in panels:
        (expr,) = _exprs(panel)
        assert "- time()) / 86400" in expr and "by (cert)" in expr, panel["title"]
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["unit"] == "d", panel["title"]
        steps = [(s["color"], s["value"]) for s in defaults["thresholds"]["steps"]]
        assert steps == [("red", None), ("orange", 3), ("green", 14)], panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=ids)
def test_login_success_ratio_is_successes_over_all_attempts(path: Path):
    (panel,) = [p for p in _panels(path) if p["title"] == "Login success ratio"]
    assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"
    (expr,) = _exprs(panel)
    successes, attempts = expr.split(" / ")
    assert 'result="success"' in successes and "result" not in attempts
    assert all("rate(imap_gateway_auth_attempts_total{" in side for side in (successes, attempts))


def test_operations_dashboard_covers_health_and_traffic():
    assert {
        "up",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "imap_gateway_auth_attempts_total",
        "imap_gateway_tls_cert_expiry_timestamp_seconds",
        "imap_gateway_policy_reload_failures_total",
        "imap_gateway_policy_last_reload_successful",
        "imap_gateway_state_fallback_active",
        "imap_gateway_state_unavailable_total",
        "imap_gateway_store_unavailable_total",
        "imap_gateway_worker_restarts_total",
        "imap_gateway_worker_cpu_seconds_total",
        "imap_gateway_connections_active",
        "imap_gateway_sessions_active",
        "imap_gateway_connections_total",
        "imap_gateway_tls_handshake_failures_total",
        "imap_gateway_backend_up",
        "imap_gateway_backend_connect_seconds",
        "imap_gateway_backend_errors_total",
        "imap_gateway_bytes_relayed_total",
        "imap_gateway_commands_relayed_total",
        "imap_gateway_session_duration_seconds",
    } <= _families(OPERATIONS)


# ------------------------------------------------------------ the checker itself can fail


def test_catalogue_check_reports_unknown_metrics_labels_and_values():
    expr = (
        'sum by (kind) (rate(imap_gateway_anomalies_total{kind="password-spray"}[5m]))'
        ' + sum(imap_gateway_bans_active{reason="x"}) + sum(rate(imap_gateway_logins_total[5m]))'
    )
    problems = catalogue_problems(expr)
    assert any("password-spray" in p for p in problems)
    assert any("no label 'reason'" in p for p in problems)
    assert any("imap_gateway_logins_total" in p for p in problems)
    assert catalogue_problems("sum by (backend) (imap_gateway_sessions_active)") != []
    assert catalogue_problems("node_load1 > 4") == ["unknown metric 'node_load1'"]
    assert catalogue_problems("node_load1 > 4", allow=frozenset({"node_load1"})) == []
    # Prometheus' own up and the standard process_* series are known, with their labels
    assert catalogue_problems('up{job="imap-gateway"} == 0') == []
    assert catalogue_problems('rate(process_cpu_seconds_total{instance="gw1"}[5m])') == []
    assert catalogue_problems('process_open_fds{cert="imap"}') == [
        "process_open_fds has no label 'cert'"]


def test_render_replaces_every_grafana_variable():
    expr = 'sum(increase(x{instance=~"$instance", a="${job}"}[$__range])) / rate(x[$__rate_interval])'
    assert render_grafana_variables(expr, time_range="5m", variables={"job": "gw"}) == (
        'sum(increase(x{instance=~".*", a="gw"}[5m])) / rate(x[1m])'
    )


def test_panel_queries_lists_every_target_with_its_panel_title():
    queries = panel_queries(OPERATIONS)
    assert ("Sessions active", "sum(imap_gateway_sessions_active{instance=~\"$instance\"})") in queries
    # a panel with two targets yields two entries
    assert [t for t, _ in queries].count("Connections and sessions active") == 2


def test_catalogue_matches_the_metrics_the_gateway_defines():
    """The dashboards and alerts are checked against METRICS; METRICS must be what the gateway
    exports (gateway/observability/metrics.py), or those checks prove nothing. A failure here
    after a rename means: update grafana_queries.METRICS, then the dashboards and rules."""
    from prometheus_client.metrics import MetricWrapperBase

    import gateway.observability.metrics as gateway_metrics
    from gateway.observability.processes import WorkerProcessCollector

    defined = {}
    for obj in vars(gateway_metrics).values():
        if isinstance(obj, MetricWrapperBase):
            # prometheus-client keeps the counter name without "_total" in _name.
            name = obj._name + ("_total" if obj._type == "counter" else "")
            defined[name] = (obj._type, frozenset(obj._labelnames))
    # the per-worker process series come from a collector, not from metric objects
    for family in WorkerProcessCollector(lambda: [(0, os.getpid())]).collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        defined[name] = (family.type, frozenset().union(*(s.labels for s in family.samples)))
    expected = {name: (m.kind, m.labels) for name, m in METRICS.items()
                if name in defined or name not in NOT_DEFINED_YET}
    assert defined == expected
