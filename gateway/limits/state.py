"""Shared limiter state: one interface, an in-process and a Redis implementation.

Theory of operation
-------------------
The limiter and the anomaly detectors need four primitives, all keyed by a string and all
expiring on their own, so that nothing needs a janitor task:

* sliding windows of distinct members (``window_add``/``window_count``/...): a member is
  kept with the time it was last seen; members older than ``now - window`` do not count.
  "Failures from this IP" are the distinct attempt fingerprints; "users a source sprayed"
  are the distinct user names. Each window keeps at most ``cap`` members (the most recent),
  so a count saturates at ``cap``: thresholds are far below it, and memory stays bounded.
* bucketed sliding sums (``counter_add``): bytes fetched, messages expunged. Ten buckets
  per window, so the sum covers between 0.9 and 1.0 window.
* plain counters with a TTL (``incr``) and "first time in a while" flags (``set_once``).
* bans, stored under ``rules.network_key`` of their network, listed via an index.

Rules:
1. The clock is an argument. Nothing here reads time; expiry is decided against ``now``.
   (Redis additionally gets a real TTL on every key so abandoned keys disappear.)
2. Every method is async so both implementations share one interface; the in-process one
   never awaits anything and imports no async library.
3. Memory is bounded: the in-process store evicts the least recently written key past
   ``max_keys`` (and, separately, the oldest ban past ``max_bans``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.limits.decisions import Ban
from gateway.limits.rules import network_key, normalize_network

DEFAULT_CAP = 256
COUNTER_BUCKETS = 10


#: The operations ``StateBackend.batch`` runs: every one whose arguments and results are
#: plain values (``ban_get`` answers bans). ``ban_put``/``ban_delete``/``ban_list`` stay
#: single calls (ban administration, and the fallback's own bookkeeping for bans).
BATCH_OPS = frozenset({
    "window_add", "window_count", "window_contains", "window_members", "counter_add",
    "incr", "set_once", "delete", "ban_get",
})

#: One operation of a batch: the method name and its positional arguments.
Op = tuple[str, Sequence[Any]]


class StateUnavailable(RuntimeError):
    """The shared state backend (Redis, ``[state] redis``) cannot be reached or answered badly."""


class StateBackend(Protocol):
    """What the limiter and anomaly detectors need from shared state (see module docstring)."""

    async def window_add(
        self, entries: Sequence[tuple[str, str]], now: float, window: float, cap: int = DEFAULT_CAP
    ) -> list[int]:
        """Add each ``(key, member)`` at ``now``; return each key's live member count."""
        ...

    async def window_count(self, keys: Sequence[str], now: float, window: float) -> list[int]:
        """Live member count of each key."""
        ...

    async def window_contains(self, key: str, member: str, now: float, window: float) -> bool:
        """Is ``member`` in the window of ``key``?"""
        ...

    async def window_members(self, key: str, now: float, window: float) -> list[str]:
        """Live members of ``key``, oldest first."""
        ...

    async def counter_add(self, key: str, amount: int, now: float, window: float) -> int:
        """Add ``amount`` (>= 0) to a sliding sum and return the sum over the window."""
        ...

    async def incr(self, key: str, now: float, ttl: float) -> int:
        """Increment a counter that forgets itself ``ttl`` seconds after the last increment."""
        ...

    async def set_once(self, key: str, now: float, ttl: float) -> bool:
        """True the first time in ``ttl`` seconds; False while the flag lives."""
        ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Forget these keys (of any kind)."""
        ...

    async def ban_put(self, ban: Ban, now: float) -> None:
        """Store (or replace) the ban of ``ban.network`` until ``ban.expires``."""
        ...

    async def batch(self, ops: Sequence[Op]) -> list[Any]:
        """Run ``ops`` (each one of ``BATCH_OPS`` with its arguments) in order and return
        each one's result, as the single calls would: one round trip to the supervisor
        instead of one per operation (``RedisState`` sends them singly: measured cheaper
        there). Each operation stays atomic on its own; nothing of one may depend on
        another's result (the caller asks again after)."""
        ...

    async def ban_get(self, keys: Sequence[str], now: float) -> list[Ban]:
        """Active bans stored under any of these network keys."""
        ...

    async def ban_delete(self, network: str) -> bool:
        """Remove the ban of ``network``; False if there was none."""
        ...

    async def ban_list(self, now: float) -> list[Ban]:
        """All active bans, soonest expiry first."""
        ...


class BanAdmin(Protocol):
    """The ban calls of ban administration (list, add, remove); every ``StateBackend``
    has them, and ``FallbackState.shared`` is the one that never answers locally."""

    async def ban_put(self, ban: Ban, now: float) -> None: ...

    async def ban_delete(self, network: str) -> bool: ...

    async def ban_list(self, now: float) -> list[Ban]: ...


def bucket_width(window: float) -> float:
    return window / COUNTER_BUCKETS


@dataclass
class _Window:
    expires: float
    members: dict[str, float] = field(default_factory=dict)


@dataclass
class _Counter:
    expires: float
    buckets: dict[int, int] = field(default_factory=dict)


@dataclass
class _Value:
    expires: float
    value: int = 0


class MemoryState:
    """In-process state (the default, ``[state] redis = ""``): dicts with expiry.

    Bounded: at most ``max_keys`` keys and ``max_bans`` bans; past that the least recently
    written key (oldest ban) is evicted. Under an address flood this forgets the quietest
    sources first, which is the cheapest thing to forget: it can only make the limiter
    more lenient for them, never lock anyone out.
    """

    def __init__(self, *, max_keys: int = 200_000, max_bans: int = 100_000) -> None:
        if max_keys < 1 or max_bans < 1:
            raise ValueError("max_keys and max_bans must be >= 1")
        self.max_keys = max_keys
        self.max_bans = max_bans
        self._data: OrderedDict[str, _Window | _Counter | _Value] = OrderedDict()
        self._bans: OrderedDict[str, Ban] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    @property
    def ban_count(self) -> int:
        return len(self._bans)

    # -- internals --------------------------------------------------------------------

    def _live(self, key: str, kind: type, now: float):
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires <= now or not isinstance(entry, kind):
            del self._data[key]
            return None
        return entry

    def _store(self, key: str, entry, now: float) -> None:
        self._data[key] = entry
        self._data.move_to_end(key)
        # Drop expired keys at the cold end first, then evict if still over the bound.
        while self._data:
            oldest_key, oldest = next(iter(self._data.items()))
            if oldest.expires <= now and oldest_key != key:
                del self._data[oldest_key]
            else:
                break
        while len(self._data) > self.max_keys:
            self._data.popitem(last=False)

    # -- windows ----------------------------------------------------------------------

    async def window_add(
        self, entries: Sequence[tuple[str, str]], now: float, window: float, cap: int = DEFAULT_CAP
    ) -> list[int]:
        counts = []
        cutoff = now - window
        for key, member in entries:
            w = self._live(key, _Window, now) or _Window(expires=now + window)
            w.members.pop(member, None)  # re-insert so dict order stays oldest-first
            w.members[member] = now
            stale = [m for m, t in w.members.items() if t <= cutoff]
            for m in stale:
                del w.members[m]
            while len(w.members) > cap:
                del w.members[next(iter(w.members))]
            w.expires = now + window
            self._store(key, w, now)
            counts.append(len(w.members))
        return counts

    async def window_count(self, keys: Sequence[str], now: float, window: float) -> list[int]:
        cutoff = now - window
        out = []
        for key in keys:
            w = self._live(key, _Window, now)
            out.append(0 if w is None else sum(1 for t in w.members.values() if t > cutoff))
        return out

    async def window_contains(self, key: str, member: str, now: float, window: float) -> bool:
        w = self._live(key, _Window, now)
        return w is not None and w.members.get(member, -math.inf) > now - window

    async def window_members(self, key: str, now: float, window: float) -> list[str]:
        w = self._live(key, _Window, now)
        if w is None:
            return []
        cutoff = now - window
        return [m for m, t in w.members.items() if t > cutoff]

    # -- counters and flags -----------------------------------------------------------

    async def counter_add(self, key: str, amount: int, now: float, window: float) -> int:
        if amount < 0:
            raise ValueError(f"counter_add: amount must be >= 0, got {amount}")
        width = bucket_width(window)
        current = math.floor(now / width)
        c = self._live(key, _Counter, now) or _Counter(expires=now + window)
        if amount:
            c.buckets[current] = c.buckets.get(current, 0) + amount
        for b in [b for b in c.buckets if b <= current - COUNTER_BUCKETS]:
            del c.buckets[b]
        if amount:  # a read (amount 0) must not extend the key's life
            c.expires = now + window
            self._store(key, c, now)
        return sum(c.buckets.values())

    async def incr(self, key: str, now: float, ttl: float) -> int:
        v = self._live(key, _Value, now) or _Value(expires=now + ttl)
        v.value += 1
        v.expires = now + ttl
        self._store(key, v, now)
        return v.value

    async def set_once(self, key: str, now: float, ttl: float) -> bool:
        if self._live(key, _Value, now) is not None:
            return False
        self._store(key, _Value(expires=now + ttl, value=1), now)
        return True

    async def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._data.pop(key, None)

    async def batch(self, ops: Sequence[Op]) -> list[Any]:
        # Nothing here awaits, so the whole batch is atomic in this process.
        out = []
        for name, args in ops:
            if name not in BATCH_OPS:
                raise ValueError(f"batch: {name!r} is not a batch operation")
            out.append(await getattr(self, name)(*args))
        return out

    # -- bans -------------------------------------------------------------------------

    async def ban_put(self, ban: Ban, now: float) -> None:
        key = network_key(normalize_network(ban.network))
        self._bans[key] = ban
        self._bans.move_to_end(key)
        while len(self._bans) > self.max_bans:
            self._bans.popitem(last=False)

    async def ban_get(self, keys: Sequence[str], now: float) -> list[Ban]:
        out = []
        for key in keys:
            ban = self._bans.get(key)
            if ban is None:
                continue
            if ban.active(now):
                out.append(ban)
            else:
                del self._bans[key]
        return out

    async def ban_delete(self, network: str) -> bool:
        return self._bans.pop(network_key(normalize_network(network)), None) is not None

    async def ban_list(self, now: float) -> list[Ban]:
        for key in [k for k, b in self._bans.items() if not b.active(now)]:
            del self._bans[key]
        return sorted(self._bans.values(), key=lambda b: (b.expires, b.network))
