"""The log pipeline's redaction and the metric set's cardinality rules."""

from __future__ import annotations

import io
import json

import structlog

from gateway.observability import metrics
from gateway.observability.logs import REDACTED, configure_logging, get_logger

FORBIDDEN_LABELS = {"user", "username", "ip", "client_ip", "address", "session", "session_id"}


def _log_lines(emit) -> list[dict]:
    out = io.StringIO()
    configure_logging("json", "debug", out)
    try:
        emit(get_logger(session_id="s1"))
    finally:
        structlog.reset_defaults()
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_secret_fields_are_redacted_at_any_depth():
    lines = _log_lines(
        lambda log: log.info(
            "login.denied", user="alice", password="hunter2", totp_code="123456",
            extra={"app_password": "abcd-efgh", "note": "kept"},
        )
    )
    (line,) = lines
    assert line["password"] == REDACTED
    assert line["totp_code"] == REDACTED
    assert line["extra"] == {"app_password": REDACTED, "note": "kept"}
    assert line["user"] == "alice" and line["session_id"] == "s1"
    assert "hunter2" not in json.dumps(line)


def test_exception_tracebacks_do_not_carry_frame_locals():
    def fail(password: str) -> None:
        raise ValueError("bad input")

    secret = "s3cret" + "-in-a-local"  # built at run time: the source line must not hold it

    def emit(log):
        try:
            fail(secret)
        except ValueError:
            log.exception("oops")

    (line,) = _log_lines(emit)
    assert "bad input" in line["exception"]
    assert "s3cret-in-a-local" not in json.dumps(line)


def test_level_filter_drops_debug_lines_at_info():
    out = io.StringIO()
    configure_logging("json", "info", out)
    try:
        get_logger().debug("noise")
        get_logger().info("signal")
    finally:
        structlog.reset_defaults()
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["signal"]


def test_every_metric_is_prefixed_and_has_no_user_or_ip_label():
    names = []
    for family in metrics.REGISTRY.collect():
        names.append(family.name)
        for sample in family.samples:
            assert not FORBIDDEN_LABELS & set(sample.labels)
    for collector in list(metrics.REGISTRY._collector_to_names):
        labelnames = getattr(collector, "_labelnames", ())
        assert not FORBIDDEN_LABELS & set(labelnames), collector
    assert names and all(n.startswith(("imap_gateway_", "process_")) for n in names)


def test_process_metrics_have_the_standard_names():
    """Operators' existing CPU/memory/fd panels and alerts query process_*; a namespaced
    copy (imap_gateway_process_*) would leave them empty."""
    names = {family.name for family in metrics.REGISTRY.collect()}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds",
            "process_max_fds", "process_start_time_seconds"} <= names
    assert not {n for n in names if n.startswith("imap_gateway_process_")}


def test_command_label_folds_unknown_names():
    assert metrics.command_label("uid fetch") == "UID_FETCH"
    assert metrics.command_label("SELECT") == "SELECT"
    assert metrics.command_label("X-EVIL-" + "A" * 50) == "other"
