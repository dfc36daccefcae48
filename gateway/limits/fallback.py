"""Shared state that keeps limiting while Redis is down: Redis, else an in-process store.

Theory of operation
-------------------
``FallbackState`` is the ``StateBackend`` the gateway runs with when ``[state] redis`` is
set. It has two stores: the shared one (``RedisState``) and a ``MemoryState`` of this
process. It is in one of two modes:

* **shared** (normal): every call goes to Redis. A ban this instance makes, and every ban
  the periodic ``ban_list`` sees (the bans gauge asks every few seconds), is copied into
  the local store too, so the bans in force before an outage are still known during it.
* **local** (Redis failed a call): the call that failed, and every call after it, is
  answered by the local store: failures are counted, tarpits grow, thresholds ban, the
  anomaly detectors fire, exactly as with the in-process default, but for this instance
  alone. An attacker who can disturb Redis therefore no longer turns the limiter off:
  at worst each instance limits on its own (N instances let through up to N times a
  threshold). Every ``probe_interval`` seconds one call first pings Redis; when it
  answers, the bans made meanwhile are written to Redis and the mode goes back to shared.
  The counts made meanwhile stay local (they expire on their own): a source gets a fresh
  failure window in Redis, never a free pass past a ban, since its ban was written back.

Ban administration (``shared``: listing, adding, removing) never falls back: it answers
from Redis or raises ``StateUnavailable`` (the admin API says 503), because an
administrator must not be told a ban was added everywhere when one instance holds it.

Visible to operators: ``imap_gateway_state_fallback_active`` (1 while local),
``imap_gateway_state_fallback_switches_total{to="memory"|"redis"}``, the log events
``state.fallback_started`` / ``state.fallback_ended``, and the alert
``ImapGatewayLimiterStateFallback`` (grafana/alerts).

Cost: in local mode one call per ``probe_interval`` waits for a ping (bounded by the Redis
client's connect timeout, ``open_state(timeout=...)``); every other call is in-process.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from gateway.limits.decisions import Ban
from gateway.limits.rules import network_key, normalize_network
from gateway.limits.state import (
    DEFAULT_CAP,
    MemoryState,
    Op,
    StateBackend,
    StateUnavailable,
)
from gateway.observability import metrics
from gateway.observability.logs import get_logger

T = TypeVar("T")

#: Seconds between two attempts to reach Redis again while running on the local store.
DEFAULT_PROBE_INTERVAL = 5.0

log = get_logger()

#: Where each batch operation has its ``now`` (``delete`` has none).
_NOW_AT = {"window_add": 1, "window_count": 1, "window_contains": 2, "window_members": 1,
           "counter_add": 2, "incr": 1, "set_once": 1, "ban_get": 1}


class Pingable(StateBackend, Protocol):
    """A shared store that can say whether it is reachable (``RedisState``)."""

    async def ping(self) -> None:
        """Return when the store answers; raise ``StateUnavailable`` otherwise."""
        ...


class FallbackState:
    """``StateBackend`` on ``primary`` (Redis) with a local fallback (module docstring).

    ``clock`` paces the probes only (monotonic seconds); every decision still uses the
    ``now`` its caller passes.
    """

    def __init__(
        self,
        primary: Pingable,
        local: MemoryState | None = None,
        *,
        probe_interval: float = DEFAULT_PROBE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.local = local if local is not None else MemoryState()
        self.probe_interval = probe_interval
        self._clock = clock
        self._fallback = False
        self._next_probe = 0.0
        self._probing = False
        #: Bans made while local, by network key: written to Redis when it is back.
        self._pending: dict[str, Ban] = {}
        self.shared = SharedBans(self)
        metrics.state_fallback_active.set(0)

    @property
    def fallback_active(self) -> bool:
        """True while calls are answered by the local store."""
        return self._fallback

    # -- mode switches -----------------------------------------------------------------

    def _enter_fallback(self, exc: StateUnavailable) -> None:
        if self._fallback:
            return
        self._fallback = True
        self._next_probe = self._clock() + self.probe_interval
        metrics.state_fallback_active.set(1)
        metrics.state_fallback_switches_total.labels("memory").inc()
        log.error("state.fallback_started", error=str(exc),
                  detail="Redis ([state] redis) is unavailable: this instance counts "
                  "failures and keeps bans in its own memory until Redis answers again")

    async def _recover(self, now: float) -> None:
        """Redis answered: write back the bans made meanwhile, then use Redis again.

        Other tasks may ban while a write is awaited; the loop takes those too, and the
        switch happens with no await after the last check, so no ban is left behind."""
        written = 0
        while self._pending:
            key, ban = next(iter(self._pending.items()))
            await self.primary.ban_put(ban, now)
            written += 1
            if self._pending.get(key) is ban:  # not replaced by a newer ban meanwhile
                del self._pending[key]
        if self._fallback:
            self._fallback = False
            metrics.state_fallback_active.set(0)
            metrics.state_fallback_switches_total.labels("redis").inc()
            log.warning("state.fallback_ended", bans_written_back=written,
                        detail="Redis ([state] redis) answers again; limiter state is "
                        "shared again")

    async def _maybe_probe(self, now: float) -> None:
        if self._probing or self._clock() < self._next_probe:
            return
        self._probing = True
        self._next_probe = self._clock() + self.probe_interval
        try:
            await self.primary.ping()
            await self._recover(now)
        except StateUnavailable:
            pass  # still down: the next probe is due in probe_interval
        finally:
            self._probing = False

    async def _call(
        self, now: float | None, shared: Callable[[], Awaitable[T]],
        local: Callable[[], Awaitable[T]],
    ) -> T:
        if self._fallback and now is not None:
            await self._maybe_probe(now)
        if not self._fallback:
            try:
                return await shared()
            except StateUnavailable as exc:
                self._enter_fallback(exc)
        return await local()

    # -- StateBackend ------------------------------------------------------------------

    async def window_add(
        self, entries: Sequence[tuple[str, str]], now: float, window: float, cap: int = DEFAULT_CAP
    ) -> list[int]:
        return await self._call(now, lambda: self.primary.window_add(entries, now, window, cap),
                                lambda: self.local.window_add(entries, now, window, cap))

    async def window_count(self, keys: Sequence[str], now: float, window: float) -> list[int]:
        return await self._call(now, lambda: self.primary.window_count(keys, now, window),
                                lambda: self.local.window_count(keys, now, window))

    async def window_contains(self, key: str, member: str, now: float, window: float) -> bool:
        return await self._call(
            now, lambda: self.primary.window_contains(key, member, now, window),
            lambda: self.local.window_contains(key, member, now, window))

    async def window_members(self, key: str, now: float, window: float) -> list[str]:
        return await self._call(now, lambda: self.primary.window_members(key, now, window),
                                lambda: self.local.window_members(key, now, window))

    async def counter_add(self, key: str, amount: int, now: float, window: float) -> int:
        return await self._call(now, lambda: self.primary.counter_add(key, amount, now, window),
                                lambda: self.local.counter_add(key, amount, now, window))

    async def incr(self, key: str, now: float, ttl: float) -> int:
        return await self._call(now, lambda: self.primary.incr(key, now, ttl),
                                lambda: self.local.incr(key, now, ttl))

    async def set_once(self, key: str, now: float, ttl: float) -> bool:
        return await self._call(now, lambda: self.primary.set_once(key, now, ttl),
                                lambda: self.local.set_once(key, now, ttl))

    async def delete(self, keys: Sequence[str]) -> None:
        async def both() -> None:
            await self.local.delete(keys)
            await self.primary.delete(keys)
        await self._call(None, both, lambda: self.local.delete(keys))

    async def batch(self, ops: Sequence[Op]) -> list[Any]:
        # As for single calls: a delete also clears the local copy, and the batch's clock
        # (the first ``now`` in it) paces the probe.
        for name, args in ops:
            if name == "delete":
                await self.local.delete(args[0])
        now = next((args[_NOW_AT[name]] for name, args in ops if name in _NOW_AT), None)
        return await self._call(now, lambda: self.primary.batch(ops),
                                lambda: self.local.batch(ops))

    async def ban_put(self, ban: Ban, now: float) -> None:
        # Always kept locally too: a ban this instance made still holds during an outage.
        await self.local.ban_put(ban, now)

        async def remember() -> None:
            self._pending[network_key(normalize_network(ban.network))] = ban
        await self._call(now, lambda: self.primary.ban_put(ban, now), remember)

    async def ban_get(self, keys: Sequence[str], now: float) -> list[Ban]:
        return await self._call(now, lambda: self.primary.ban_get(keys, now),
                                lambda: self.local.ban_get(keys, now))

    async def ban_delete(self, network: str) -> bool:
        return await self.shared.ban_delete(network)

    async def ban_list(self, now: float) -> list[Ban]:
        return await self._call(now, lambda: self.shared.ban_list(now),
                                lambda: self.local.ban_list(now))


class SharedBans:
    """Ban administration on Redis only (never the local store): ``Limiter.add_ban``,
    ``list_bans`` and ``remove_ban`` use this, so they fail with ``StateUnavailable``
    rather than act on one instance. Each success also updates the local copy, and one
    that finds Redis back while the owner runs locally ends the fallback (the bans gauge
    lists bans every few seconds, so an idle gateway notices too)."""

    def __init__(self, owner: FallbackState) -> None:
        self._o = owner

    async def ban_put(self, ban: Ban, now: float) -> None:
        await self._o.primary.ban_put(ban, now)
        await self._o.local.ban_put(ban, now)
        await self._back(now)

    async def ban_list(self, now: float) -> list[Ban]:
        bans = await self._o.primary.ban_list(now)
        local = self._o.local
        if not self._o.fallback_active:
            # Mirror: the local copy is exactly the shared list (one removed elsewhere
            # must not come back as a local ban during the next outage).
            listed = {network_key(normalize_network(b.network)) for b in bans}
            for old in await local.ban_list(now):
                if network_key(normalize_network(old.network)) not in listed:
                    await local.ban_delete(old.network)
        for ban in bans:
            await local.ban_put(ban, now)
        await self._back(now)
        return bans

    async def ban_delete(self, network: str) -> bool:
        removed = await self._o.primary.ban_delete(network)
        locally = await self._o.local.ban_delete(network)
        self._o._pending.pop(network_key(normalize_network(network)), None)
        return removed or locally

    async def _back(self, now: float) -> None:
        if self._o.fallback_active:
            try:
                await self._o._recover(now)
            except StateUnavailable:
                pass
