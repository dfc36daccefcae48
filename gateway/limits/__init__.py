"""Limits: failed-login counting, tarpits, bans, smart lockout, connection caps.

Pure rules live in ``rules``; state behind ``state.StateBackend`` (in-process, or Redis in
``redis_state`` with the in-process fallback of ``fallback`` while Redis is down); the
``limiter.Limiter`` combines them for the shell,
``connections.ConnectionTracker`` caps connections, and ``outage`` says what the shell does
when the shared state is down. Import from those modules: this package
module imports none of them, so ``gateway.anomaly`` (which builds on ``state``) and
``limiter`` (which builds on ``gateway.anomaly``) stay a one-way chain.
"""
