"""What the gateway does when the shared limiter state (``[state] redis``) is down.

With ``[state] redis`` set the state is a ``gateway.limits.fallback.FallbackState``: while
Redis is down it counts and bans in the gateway's own memory, so the login path below
does not see the outage at all (it shows as ``imap_gateway_state_fallback_active``).
What still raises ``StateUnavailable`` is ban administration (which never falls back)
and a state backend without a fallback. Every caller handles it here, so the decision
is written down once:

* Logins and connections fail OPEN. The ban check at connect, the login gate, counting
  a failure or a success, and the anomaly detectors are skipped: the connection is
  admitted, and the login is decided by policy, credentials and MFA alone, without a
  tarpit, new bans or anomaly reports until the state answers again. Failing closed
  would turn an outage of a helper service into an outage of everyone's mail, and would
  give whoever can disturb Redis a lockout of every user for free. What is lost, for
  the duration, is rate limiting; authentication itself is unchanged.
* The admin API's ban endpoints answer 503: an administrator must never be told that
  a ban was listed, added or removed when it was not.

Either way the event is logged (``limiter.unavailable`` with the operation and the
error) and counted in ``imap_gateway_state_unavailable_total{operation}`` (no user or
address labels), so an outage is visible on the dashboards and can raise an alert.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Literal, Protocol, TypeVar

from gateway.limits.state import StateUnavailable
from gateway.observability import metrics

T = TypeVar("T")

#: What was asked of the state; the values of the metric's ``operation`` label
#: (``metrics.STATE_OPERATIONS``).
StateOperation = Literal[
    "check_connect", "check_login", "record_failure", "record_success", "anomaly", "admin_bans"
]


class EventLog(Protocol):
    """The part of a structlog logger used here (a session's bound logger, say)."""

    def error(self, event: str, /, **fields: Any) -> Any: ...


def state_unavailable(operation: StateOperation, exc: StateUnavailable, log: EventLog) -> None:
    """Log and count one call that found the shared state down. The caller then acts on
    the decision for its operation (see the module docstring); ``fail_open`` does both
    for the login path."""
    log.error("limiter.unavailable", operation=operation, error=str(exc))
    metrics.state_unavailable_total.labels(operation).inc()


async def fail_open(operation: StateOperation, call: Awaitable[T], log: EventLog) -> T | None:
    """Await ``call`` (a limiter or detector coroutine); if the shared state is down,
    log and count it and return None.

    None means "the limiter has no say this time": the caller admits the connection,
    lets the login proceed to the credential check, skips the tarpit and the anomaly
    report. The gateway fails open on purpose (module docstring). Other exceptions
    propagate.
    """
    try:
        return await call
    except StateUnavailable as exc:
        state_unavailable(operation, exc, log)
        return None
