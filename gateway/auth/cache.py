"""Short-lived memories of secrets, keyed so that they cannot be recovered.

``RecentSecrets`` remembers (user, secret) -> value for a TTL. Two uses in the
authenticator:

- recently *verified* app passwords, so a reconnecting device does not pay scrypt again;
- recently *rejected* passwords (Dovecot said no), so a phone retrying a stale saved
  password all day is answered by the gateway instead of costing Dovecot a password
  check each time (measured: 7 of 7 retries reached Dovecot before this).

Mail clients reconnect all day with the same app password. Verifying it costs one
scrypt (about 30 ms of CPU here, by design); caching a *success* for a few minutes
makes the common case an HMAC and a SQLite read, while a wrong guess still pays the
full scrypt every time (only successes are cached, so an attacker gains nothing).

Rules: the key is HMAC-SHA256 under a random per-process key of (user, canonical
app password), so the cache never holds anything that could be turned back into the
secret offline. A hit is only a hint: the caller re-reads the app password's row and
honours revocation and expiry, so the admin CLI's ``revoke`` takes effect at once.
Pure: no I/O, the clock is passed in. Memory is bounded by ``max_entries`` (LRU).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict


class RecentSecrets:
    def __init__(self, *, ttl: float = 600.0, max_entries: int = 10_000,
                 key: bytes | None = None) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._key = key if key is not None else secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, tuple[int, float]] = OrderedDict()

    def _digest(self, user: str, canonical_secret: str) -> bytes:
        msg = (user + "\0" + canonical_secret).encode("utf-8", "surrogateescape")
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def get(self, user: str, canonical_secret: str, now: float) -> int | None:
        """The value remembered for this (user, secret) within ``ttl``, else None."""
        digest = self._digest(user, canonical_secret)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        app_password_id, expires = entry
        if expires <= now:
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return app_password_id

    def put(self, user: str, canonical_secret: str, value: int, now: float) -> None:
        digest = self._digest(user, canonical_secret)
        self._entries[digest] = (value, now + self.ttl)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
