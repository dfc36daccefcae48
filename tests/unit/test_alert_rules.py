"""The Prometheus alert rules load, fire when they should, and stay quiet when they should not.

`promtool check rules` is what Prometheus itself does when it loads the file: a failure here
is a Prometheus that refuses to (re)load its rules in production. `promtool test rules` runs
grafana/alerts/tests/*.yml: synthetic series in, expected alerts (labels and annotations) out.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.unit.grafana_queries import GRAFANA_DIR, catalogue_problems

RULES = GRAFANA_DIR / "alerts" / "imap-gateway.rules.yml"
RULE_TESTS = sorted((GRAFANA_DIR / "alerts" / "tests").glob("*.yml"))
PROMTOOL = shutil.which("promtool")
REQUIRED_ALERTS = {
    "ImapGatewayBruteForce",
    "ImapGatewayPasswordSpray",
    "ImapGatewayBackendDown",
    "ImapGatewayBanSurge",
    "ImapGatewayPlaintextAttempts",
    "ImapGatewayDown",
    "ImapGatewayAbsent",
    "ImapGatewayCertificateExpiring",
    "ImapGatewayCertificateExpiringCritical",
    "ImapGatewayPolicyReloadFailed",
    "ImapGatewayCredentialStuffing",
    "ImapGatewayDistributedBruteForce",
    "ImapGatewayMassDelete",
    "ImapGatewayLimiterStateFallback",
}
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH: apt-get install prometheus"
)


def _alerts() -> dict[str, dict]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=GRAFANA_DIR.parent
    )


@needs_promtool
def test_promtool_check_rules_accepts_the_rules_file():
    proc = _promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_rule_unit_tests_pass():
    assert RULE_TESTS, "no promtool test files in grafana/alerts/tests/"
    proc = _promtool("test", "rules", *map(str, RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@needs_promtool
def test_promtool_test_rules_fails_when_an_expectation_is_wrong(tmp_path):
    """Guards the guard: a test file expecting the wrong alert must make promtool (and us) fail."""
    bad = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": 'imap_gateway_backend_up{backend="dovecot"}', "values": "1x10"}
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "5m",
                        "alertname": "ImapGatewayBackendDown",
                        "exp_alerts": [{"exp_labels": {"severity": "critical", "backend": "dovecot"}}],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "bad.test.yml"
    path.write_text(yaml.safe_dump(bad))
    proc = _promtool("test", "rules", str(path))
    assert proc.returncode != 0 and "FAILED" in proc.stdout + proc.stderr


def test_required_alerts_exist_with_severity_and_actionable_annotations():
    alerts = _alerts()
    assert REQUIRED_ALERTS <= alerts.keys()
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"]) > 60, f"{name}: say what to do"


def test_backend_down_waits_one_minute():
    assert _alerts()["ImapGatewayBackendDown"]["for"] == "1m"


def test_rules_only_use_gateway_metrics_and_known_label_values():
    problems = [
        f"{name}: {p}"
        for name, rule in _alerts().items()
        for p in catalogue_problems(rule["expr"])
    ]
    assert problems == []


def test_every_anomaly_kind_an_alert_names_is_one_the_gateway_counts():
    """An alert on a misspelt kind ("mass-delete") loads fine and never fires."""
    from gateway.observability.metrics import ANOMALY_KINDS

    kinds = set()
    for rule in _alerts().values():
        kinds |= set(re.findall(r'kind="(\w+)"', rule["expr"]))
    assert {"password_spray", "credential_stuffing", "distributed_brute_force",
            "mass_delete"} <= kinds
    assert kinds <= set(ANOMALY_KINDS)


def test_gateway_absence_is_watched_for_the_scrape_job_the_deploy_config_names():
    """absent(up{job=...}) only works if the job is the one Prometheus is configured with."""
    deploy = yaml.safe_load((GRAFANA_DIR.parent / "deploy" / "prometheus.yml").read_text())
    jobs = {c["job_name"] for c in deploy["scrape_configs"]}
    alerts = _alerts()
    assert alerts["ImapGatewayAbsent"]["expr"].strip() == 'absent(up{job="imap-gateway"})'
    assert "imap-gateway" in jobs


def test_every_alert_has_a_firing_case_and_a_quiet_case():
    """A rule test that only checks silence passes for a rule that can never fire."""
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text())
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(_alerts())
    assert alerts - fires == set(), "alerts never shown firing in grafana/alerts/tests"
    assert alerts - quiet == set(), "alerts never shown staying quiet in grafana/alerts/tests"


def test_every_alert_has_a_runbook_line_in_the_deploy_guide():
    """docs/deploy.md's alert table is what an operator reads when paged."""
    doc = (GRAFANA_DIR.parent / "docs" / "deploy.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in doc.splitlines()
            if line.startswith("| ImapGateway")}
    for name, rule in _alerts().items():
        assert name in rows, f"{name} missing from the alert table in docs/deploy.md"
        assert f"| {rule['labels']['severity']} |" in rows[name], name
    assert set(rows) == set(_alerts()), "docs/deploy.md lists alerts the rules file does not have"
