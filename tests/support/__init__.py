"""Test support for the end-to-end suite: a real Dovecot (``rig/``), TLS certificates,
the gateway as a subprocess, and small IMAP clients.

Nothing here mocks the gateway or Dovecot; helpers whose job is to produce a fault a real
part cannot produce carry "fake" in their name.
"""
