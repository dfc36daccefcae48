"""Anomaly detection: password spray, credential stuffing, distributed brute force,
new network for a user, plaintext login attempts, high-volume fetch, mass delete.

``model`` holds the event values (imported by ``gateway.limits``), ``detectors`` the
detectors (built on ``gateway.limits.state``). This package module imports neither.
"""
