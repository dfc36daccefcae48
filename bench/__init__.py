"""Benchmark harness: Dovecot direct vs HAProxy vs the gateway (run ``python -m bench --help``)."""
