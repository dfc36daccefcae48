"""The shared state is down: log, count, fail open (logins) -- decided in one place."""

from __future__ import annotations

from typing import Any, get_args

import pytest
import trio

from gateway.limits.outage import StateOperation, fail_open, state_unavailable
from gateway.limits.state import StateUnavailable
from gateway.observability import metrics


class RecordingLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def error(self, event: str, /, **fields: Any) -> None:
        self.events.append((event, fields))


def count(operation: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "imap_gateway_state_unavailable_total", {"operation": operation})
    return value or 0.0


def test_the_operations_are_the_metric_label_set():
    assert get_args(StateOperation) == metrics.STATE_OPERATIONS


def test_fail_open_passes_answers_through():
    async def answer() -> str:
        return "decision"

    log = RecordingLog()
    assert trio.run(fail_open, "check_login", answer(), log) == "decision"
    assert log.events == []


def test_fail_open_logs_counts_and_gives_no_decision_when_the_state_is_down():
    async def down() -> str:
        raise StateUnavailable("Redis ([state] redis) failed during ban lookup: refused")

    log = RecordingLog()
    before = count("check_connect")
    assert trio.run(fail_open, "check_connect", down(), log) is None
    assert count("check_connect") == before + 1
    assert log.events == [("limiter.unavailable", {
        "operation": "check_connect",
        "error": "Redis ([state] redis) failed during ban lookup: refused"})]


def test_fail_open_lets_other_errors_through():
    async def bug() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        trio.run(fail_open, "anomaly", bug(), RecordingLog())


def test_state_unavailable_only_logs_and_counts():
    log = RecordingLog()
    before = count("admin_bans")
    state_unavailable("admin_bans", StateUnavailable("down"), log)
    assert count("admin_bans") == before + 1
    assert log.events == [("limiter.unavailable", {"operation": "admin_bans", "error": "down"})]
