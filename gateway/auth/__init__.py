"""Login factors and the per-login decision.

``factors``: pure TOTP / app-password / device-key functions; ``decide``: the
AuthPlan for one login; ``admin``: CLI-facing helpers. (No imports here, so that
``gateway.store`` can import ``gateway.auth.factors`` without a cycle.)
"""
