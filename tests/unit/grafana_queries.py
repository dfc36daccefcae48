"""Read the PromQL out of the Grafana dashboards and check it against the metric catalogue.

Why this module exists: the dashboards (grafana/dashboards/*.json) and alert rules
(grafana/alerts/*.rules.yml) name metrics by string, and nothing in Python imports them. A
renamed metric or a typo in a label value ("password-spray") gives an empty panel or an alert
that can never fire, silently. The unit tests use this module to compare every query with
the catalogue below; a later end-to-end test (a real Prometheus scraping a gateway under
attack) reuses `panel_queries` / `promql_queries` to check that each panel returns data.

The catalogue mirrors the list the lead defines in gateway/observability/metrics.py.
When a metric or a label value changes there, change it here in the same commit.

No I/O beyond reading the dashboard file; no Grafana, no Prometheus.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
GRAFANA_DIR = REPO_ROOT / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
DATASOURCE_UID = "prometheus"


@dataclass(frozen=True)
class Metric:
    """One metric family: its type, its label names, and the label values that are a closed set.

    `closed` maps a label name to every value the gateway may emit for it. A label that is
    missing from `closed` (e.g. `listener`, `backend`, auth `reason`) takes operator-chosen
    or open-ended values and is not checked.
    """

    kind: str  # counter | gauge | histogram
    labels: frozenset[str] = frozenset()
    closed: dict[str, frozenset[str]] = field(default_factory=dict)


def _m(metric_type: str, labels: str = "", /, **closed: str) -> Metric:
    return Metric(
        kind=metric_type,
        labels=frozenset(labels.split()),
        closed={k: frozenset(v.split()) for k, v in closed.items()},
    )


METRICS: dict[str, Metric] = {
    "imap_gateway_connections_total": _m("counter", "listener tls_mode", tls_mode="implicit starttls"),
    "imap_gateway_connections_active": _m("gauge", "listener"),
    "imap_gateway_connections_rejected_total": _m(
        "counter", "reason", reason="per_ip_limit global_limit banned rate_limit"
    ),
    "imap_gateway_tls_handshake_failures_total": _m(
        "counter", "listener reason", reason="timeout protocol eof other"
    ),
    # auth `reason` is open-ended ("..." in the lead's list): only result/mechanism are closed.
    "imap_gateway_auth_attempts_total": _m(
        "counter", "result reason mechanism", result="success failure",
        mechanism="login plain auth-login oauthbearer xoauth2"
    ),
    "imap_gateway_auth_decision_seconds": _m("histogram"),
    "imap_gateway_plaintext_logins_blocked_total": _m("counter", "listener"),
    "imap_gateway_oauth_key_fetches_total": _m("counter", "result", result="ok error"),
    "imap_gateway_policy_denials_total": _m("counter", "rule"),
    "imap_gateway_tarpit_delay_seconds": _m("histogram"),
    "imap_gateway_bans_active": _m("gauge", "scope", scope="ip subnet user_ip"),
    "imap_gateway_bans_created_total": _m("counter", "scope reason", scope="ip subnet user_ip"),
    "imap_gateway_anomalies_total": _m(
        "counter",
        "kind",
        kind="password_spray credential_stuffing distributed_brute_force new_network_for_user "
        "plaintext_login_attempt high_volume_fetch mass_delete",
    ),
    "imap_gateway_backend_connect_seconds": _m("histogram", "backend"),
    "imap_gateway_backend_errors_total": _m(
        "counter", "backend kind", kind="connect_timeout refused tls login_timeout protocol closed"
    ),
    "imap_gateway_backend_up": _m("gauge", "backend"),
    "imap_gateway_bytes_relayed_total": _m(
        "counter", "direction", direction="client_to_backend backend_to_client"
    ),
    "imap_gateway_commands_relayed_total": _m("counter", "command"),
    "imap_gateway_commands_refused_total": _m("counter", "reason"),
    "imap_gateway_sessions_active": _m("gauge"),
    "imap_gateway_session_duration_seconds": _m("histogram"),
    "imap_gateway_preauth_disconnects_total": _m(
        "counter", "reason", reason="timeout too_many_bad_commands line_too_long literal_too_large"
    ),
    "imap_gateway_login_history_dropped_total": _m("counter"),
    "imap_gateway_state_unavailable_total": _m(
        "counter",
        "operation",
        operation="check_connect check_login record_failure record_success anomaly admin_bans",
    ),
    "imap_gateway_tls_cert_expiry_timestamp_seconds": _m("gauge", "cert", cert="imap web"),
    "imap_gateway_policy_reload_failures_total": _m("counter"),
    "imap_gateway_policy_last_reload_successful": _m("gauge"),
    "imap_gateway_state_fallback_active": _m("gauge"),
    "imap_gateway_state_fallback_switches_total": _m("counter", "to", to="memory redis"),
    # protocol is Dovecot's service name (open); command and decision are the endpoint's own.
    "imap_gateway_auth_policy_requests_total": _m(
        "counter", "protocol command decision",
        command="allow report", decision="allow reject delay error",
    ),
    "imap_gateway_auth_policy_reports_total": _m(
        "counter", "protocol result",
        result="success failure policy_reject gateway_relay",
    ),
    "imap_gateway_auth_policy_request_seconds": _m("histogram", "command", command="allow report"),
    "imap_gateway_auth_policy_unauthorized_total": _m("counter"),
    "imap_gateway_store_unavailable_total": _m(
        "counter", "operation", operation="login credential_check login_history web"
    ),
    "imap_gateway_workers": _m("gauge"),
    "imap_gateway_worker_restarts_total": _m("counter"),
    # worker is the worker's index ("0" also without workers): open, as [server] workers is.
    "imap_gateway_worker_cpu_seconds_total": _m("counter", "worker"),
    "imap_gateway_worker_resident_memory_bytes": _m("gauge", "worker"),
    "imap_gateway_worker_open_fds": _m("gauge", "worker"),
}

#: Catalogued series whose definitions come with other branches (the limiter's Redis
#: fallback, the Dovecot auth-policy server, the PostgreSQL store, the worker supervisor),
#: each under exactly this name, type and labels. Until they are merged the dashboards may
#: already show them; empty this set once metrics.py defines them all.
NOT_DEFINED_YET = frozenset({
})

#: Series that are not defined in gateway/observability/metrics.py but that dashboards and
#: rules may use: Prometheus' own ``up`` for every target, and the standard names of the
#: process collectors (prometheus_client's for one process; with workers the supervisor's,
#: gateway/observability/processes.py, for the whole gateway).
STANDARD_METRICS: dict[str, Metric] = {
    "up": _m("gauge"),
    "process_cpu_seconds_total": _m("counter"),
    "process_resident_memory_bytes": _m("gauge"),
    "process_virtual_memory_bytes": _m("gauge"),
    "process_open_fds": _m("gauge"),
    "process_max_fds": _m("gauge"),
    "process_start_time_seconds": _m("gauge"),
}
ALL_METRICS: dict[str, Metric] = {**METRICS, **STANDARD_METRICS}

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def series_names() -> dict[str, str]:
    """Every series name a query may use, mapped to its family (histograms expand to 3 series)."""
    names: dict[str, str] = {}
    for family, metric in ALL_METRICS.items():
        if metric.kind == "histogram":
            for suffix in HISTOGRAM_SUFFIXES:
                names[family + suffix] = family
        else:
            names[family] = family
    return names


def series_labels(name: str) -> frozenset[str]:
    """Labels a query may select or group by on series `name` (target labels, `le` on buckets)."""
    family = series_names()[name]
    extra = {"le"} if name.endswith("_bucket") else set()
    return ALL_METRICS[family].labels | TARGET_LABELS | extra


# ------------------------------------------------------------------ dashboards


def load_dashboard(path: Path | str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def iter_panels(dashboard: dict):
    """Every panel, including those nested in collapsed rows (Grafana keeps them in row["panels"])."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries(dashboard_path: Path | str) -> list[tuple[str, str]]:
    """(panel title, PromQL expr) for every query target of every non-row panel, in file order.

    The expressions are returned as written, Grafana variables included ($instance,
    $__rate_interval, $__range); use `promql_queries` to get text Prometheus accepts.
    """
    out: list[tuple[str, str]] = []
    for panel in iter_panels(load_dashboard(dashboard_path)):
        if panel.get("type") == "row":
            continue
        for target in panel.get("targets", []):
            out.append((panel.get("title", ""), target.get("expr", "")))
    return out


def render_grafana_variables(
    expr: str,
    *,
    rate_interval: str = "1m",
    time_range: str = "1h",
    variables: dict[str, str] | None = None,
) -> str:
    """Replace Grafana's variables so that `expr` is plain PromQL.

    Defaults: `$__rate_interval`/`$__interval` -> `rate_interval`, `$__range` -> `time_range`,
    any other `$name`/`${name}` -> `variables[name]`, else `.*` (what Grafana sends for "All"
    in a regex matcher). A test against a short-lived Prometheus wants a short `time_range`.
    """
    variables = dict(variables or {})
    builtins = {
        "__rate_interval": rate_interval,
        "__interval": rate_interval,
        "__range": time_range,
    }

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name in builtins:
            return builtins[name]
        return variables.get(name, ".*")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", sub, expr)


def promql_queries(dashboard_path: Path | str, **render_kwargs) -> list[tuple[str, str]]:
    """Like `panel_queries`, with Grafana variables replaced (see `render_grafana_variables`)."""
    return [
        (title, render_grafana_variables(expr, **render_kwargs))
        for title, expr in panel_queries(dashboard_path)
    ]


def dashboard_paths() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


# ------------------------------------------------------------------ PromQL scanning

# Words that look like identifiers in PromQL but are not metric names.
_KEYWORDS = frozenset(
    "by without on ignoring group_left group_right offset bool and or unless atan2 inf nan".split()
)
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?!\s*\(|[\w:])")


@dataclass(frozen=True)
class QueryRefs:
    """What one PromQL expression refers to."""

    metrics: frozenset[str]
    # (metric or "" when the selector has no name, label, operator, value)
    matchers: tuple[tuple[str, str, str, str], ...]
    grouping_labels: frozenset[str]


def scan_promql(expr: str) -> QueryRefs:
    """Find the metric names, label matchers and grouping labels in a PromQL expression.

    A regex scan, not a parser (syntax is checked by promtool in the tests): strings, durations
    and label lists are removed first, so what is left that is not followed by "(" and is not
    a keyword is a metric name.
    """
    expr = render_grafana_variables(expr)
    matchers: list[tuple[str, str, str, str]] = []
    for sel in _SELECTOR.finditer(expr):
        for lm in _MATCHER.finditer(sel.group(2)):
            matchers.append((sel.group(1) or "", lm.group(1), lm.group(2), lm.group(3)))
    grouping: set[str] = set()
    for g in _GROUPING.finditer(expr):
        grouping.update(x.strip() for x in g.group(2).split(",") if x.strip())

    stripped = _SELECTOR.sub(lambda m: (m.group(1) or "") + " ", expr)
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', " ", stripped)
    stripped = _GROUPING.sub(" ", stripped)
    stripped = re.sub(r"\[[^\]]*\]", " ", stripped)  # range/subquery durations
    stripped = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?[smhdwy]?\b", " ", stripped)  # numbers, durations
    metrics = {m for m in _IDENT.findall(stripped) if m not in _KEYWORDS}
    return QueryRefs(frozenset(metrics), tuple(matchers), frozenset(grouping))


def catalogue_problems(expr: str, *, allow: frozenset[str] = frozenset()) -> list[str]:
    """Every way `expr` disagrees with the metric catalogue, as messages naming the culprit.

    `allow` adds metric names that are fine in this context (e.g. another exporter's series).
    Empty list = the query only uses known metrics, known labels and known label values.
    """
    names = series_names()
    refs = scan_promql(expr)
    problems: list[str] = []
    for metric in sorted(refs.metrics):
        if metric not in names and metric not in allow:
            problems.append(f"unknown metric {metric!r}")
    used = [m for m in refs.metrics if m in names]
    for metric, label, op, value in refs.matchers:
        if metric in allow or (metric == "" and not used):
            continue
        targets = [metric] if metric else used
        for name in targets:
            if name not in names:
                continue  # already reported
            if label not in series_labels(name):
                problems.append(f"{name} has no label {label!r}")
                continue
            closed = ALL_METRICS[names[name]].closed.get(label)
            if closed and op in ("=", "!=") and value not in closed:
                problems.append(
                    f"{name}{{{label}{op}{value!r}}}: value not in {sorted(closed)}"
                )
    if used:
        known = frozenset().union(*(series_labels(n) for n in used))
        for label in sorted(refs.grouping_labels - known):
            problems.append(f"grouping by {label!r}, which none of {sorted(used)} has")
    return problems
