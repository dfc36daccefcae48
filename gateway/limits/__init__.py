"""Limits: failed-login counting, tarpits, bans, smart lockout, connection caps.

Pure rules live in ``rules``; state behind ``state.StateBackend`` (in-process or Redis);
the ``Limiter`` combines them for the shell, ``ConnectionTracker`` caps connections.

Names are re-exported lazily: ``gateway.anomaly`` imports ``gateway.limits.state`` and
``gateway.limits.limiter`` imports ``gateway.anomaly``; eager imports here would be a cycle.
"""

from importlib import import_module

_EXPORTS = {
    "ConnectionTracker": "connections",
    "Ban": "decisions", "ConnectDecision": "decisions", "ConnectionTicket": "decisions",
    "FailureOutcome": "decisions", "LoginGate": "decisions", "SuccessOutcome": "decisions",
    "BanRefused": "limiter", "Limiter": "limiter",
    "RedisState": "redis_state", "open_state": "redis_state",
    "InvalidAddress": "rules",
    "AnomalySettings": "settings", "LimitsConfigError": "settings", "LimitsSettings": "settings",
    "MemoryState": "state", "StateBackend": "state", "StateUnavailable": "state",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"gateway.limits.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'gateway.limits' has no attribute {name!r}")
