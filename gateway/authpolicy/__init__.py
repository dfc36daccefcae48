"""Dovecot's auth-policy server: every login path shares the gateway's limiter.

``protocol``: Dovecot 2.3's policy requests and answers, sans-IO. ``service``: what the
limiter says about each request. The HTTP listener is ``gateway.web.policy_app``, served
with the other web listeners (``gateway.web.serve``); configuration is ``[auth_policy]``.
"""
