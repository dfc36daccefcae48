"""Redis implementation of ``StateBackend`` (``[state] redis = "redis://host:port/db"``).

Why coredis and no thread or asyncio bridge: coredis 5+ is written on anyio, and anyio
runs natively on trio, so the client lives in the gateway's trio loop like any other
task. Its connection pool owns an anyio task group, hence ``open_state`` is an async
context manager: enter it in a long-lived task (the server's top-level nursery) and
leave it on shutdown.

Every operation is one Lua script or one command, so each call is one round trip and
atomic: two gateway instances adding to the same window cannot lose an update. Every key
gets a TTL (``PEXPIRE``), so an abandoned counter disappears on its own and a restarted
gateway sees exactly what has not yet expired.

Scripts name several keys; on Redis Cluster they would need hash tags. Plain Redis (and
Sentinel) is what this supports.

Clock: windows store the caller's ``now`` as scores, so all instances must pass the same
kind of clock (wall-clock ``time.time()``), never a per-process monotonic clock.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import coredis
import coredis.exceptions

from gateway.limits.decisions import Ban, BanFormatError
from gateway.limits.fallback import DEFAULT_PROBE_INTERVAL, FallbackState
from gateway.limits.rules import network_key, normalize_network
from gateway.limits.state import (
    BATCH_OPS,
    COUNTER_BUCKETS,
    DEFAULT_CAP,
    MemoryState,
    Op,
    StateBackend,
    StateUnavailable,
    bucket_width,
)

_ERRORS = (coredis.exceptions.RedisError, OSError, TimeoutError)
Parse = Callable[[Any], Any]

_WINDOW_ADD = """
local now, cutoff = ARGV[1], ARGV[2]
local ttl, cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i, k in ipairs(KEYS) do
  redis.call('ZADD', k, now, ARGV[4 + i])
  redis.call('ZREMRANGEBYSCORE', k, '-inf', cutoff)
  local n = redis.call('ZCARD', k)
  if n > cap then
    redis.call('ZREMRANGEBYRANK', k, 0, n - cap - 1)
    n = cap
  end
  redis.call('PEXPIRE', k, ttl)
  out[i] = n
end
return out
"""

_WINDOW_COUNT = """
local out = {}
for i, k in ipairs(KEYS) do
  out[i] = redis.call('ZCOUNT', k, '(' .. ARGV[1], '+inf')
end
return out
"""

_WINDOW_MEMBERS = """
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
"""

_COUNTER_ADD = """
local amount, cur, nb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if amount > 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[2], amount)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local all = redis.call('HGETALL', KEYS[1])
local sum = 0
for i = 1, #all, 2 do
  if tonumber(all[i]) <= cur - nb then
    redis.call('HDEL', KEYS[1], all[i])
  else
    sum = sum + tonumber(all[i + 1])
  end
end
return sum
"""

_INCR = """
local v = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return v
"""

_SET_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 1 end
return 0
"""

# KEYS: ban key, index key. ARGV: json, ttl ms, index member, expires, now.
_BAN_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
"""

_BAN_DELETE = """
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
"""

# KEYS: index key. ARGV: now, ban key prefix.
_BAN_LIST = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, m in ipairs(members) do
  local v = redis.call('GET', ARGV[2] .. m)
  if v then out[#out + 1] = v end
end
return out
"""


def _ms(seconds: float) -> int:
    """A Redis TTL in ms; at least 1 (PEXPIRE 0 would delete the key at once)."""
    return max(1, math.ceil(seconds * 1000))


class RedisState:
    """``StateBackend`` on Redis: windows are sorted sets, sums are hashes of buckets,
    bans are JSON strings with a TTL plus a sorted-set index (score = expiry) for listing."""

    def __init__(self, client: coredis.Redis[str], *, key_prefix: str = "igw:") -> None:
        self._r = client
        self._p = key_prefix
        self._s = {
            name: client.register_script(src)
            for name, src in {
                "window_add": _WINDOW_ADD, "window_count": _WINDOW_COUNT,
                "window_members": _WINDOW_MEMBERS, "counter_add": _COUNTER_ADD,
                "incr": _INCR, "set_once": _SET_ONCE, "ban_put": _BAN_PUT,
                "ban_delete": _BAN_DELETE, "ban_list": _BAN_LIST,
            }.items()
        }

    async def ping(self) -> None:
        """Return when Redis answers PING; ``StateUnavailable`` otherwise."""
        try:
            await self._r.ping()
        except (coredis.exceptions.RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable(f"Redis ([state] redis) failed during ping: {exc}") from exc

    def key(self, key: str) -> str:
        """The Redis key under which logical ``key`` is stored (for inspection and tests)."""
        return self._p + key

    def ban_key(self, network: str) -> str:
        return f"{self._p}ban:{network_key(normalize_network(network))}"

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self._s[name](keys=list(keys), args=[str(a) for a in args])
        except _ERRORS as exc:
            raise StateUnavailable(
                f"Redis ([state] redis) failed during {name}: {exc.__class__.__name__}: {exc}"
            ) from exc

    def _plan(self, name: str, args: Sequence[Any]) -> tuple[Any, Parse]:
        """The Redis request of one ``StateBackend`` operation and how to turn its answer
        into the result; no request (None) when the answer is known without asking."""
        client = self._r
        if name == "window_add":
            entries, now, window, *rest = args
            if not entries:
                return None, lambda _: []
            cap = rest[0] if rest else DEFAULT_CAP
            keys = [self._p + k for k, _ in entries]
            argv = [repr(now), repr(now - window), _ms(window), cap, *(m for _, m in entries)]
            return self._script(name, keys, argv), lambda r: [int(n) for n in r]
        if name == "window_count":
            keys, now, window = args
            if not keys:
                return None, lambda _: []
            return (self._script(name, [self._p + k for k in keys], [repr(now - window)]),
                    lambda r: [int(n) for n in r])
        if name == "window_contains":
            key, member, now, window = args
            return (client.zscore(self._p + key, member),
                    lambda score: score is not None and float(score) > now - window)
        if name == "window_members":
            key, now, window = args
            return self._script(name, [self._p + key], [repr(now - window)]), list
        if name == "counter_add":
            key, amount, now, window = args
            if amount < 0:
                raise ValueError(f"counter_add: amount must be >= 0, got {amount}")
            current = math.floor(now / bucket_width(window))
            argv = [int(amount), current, COUNTER_BUCKETS, _ms(window)]
            return self._script(name, [self._p + key], argv), int
        if name == "incr":
            key, now, ttl = args
            return self._script(name, [self._p + key], [_ms(ttl)]), int
        if name == "set_once":
            key, now, ttl = args
            return (self._script(name, [self._p + key], [_ms(ttl)]),
                    lambda r: bool(int(r)))
        if name == "delete":
            (keys,) = args
            if not keys:
                return None, lambda _: None
            return client.delete([self._p + k for k in keys]), lambda _: None
        if name == "ban_get":
            keys, now = args
            if not keys:
                return None, lambda _: []
            return (client.mget([f"{self._p}ban:{k}" for k in keys]),
                    lambda raw: [b for b in self._decode(v for v in raw if v is not None)
                                 if b.active(now)])
        raise ValueError(f"batch: {name!r} is not a batch operation")

    def _script(self, name: str, keys: list[str], argv: Sequence[Any]) -> Any:
        # EVALSHA; the script object loads the script itself if Redis lost it.
        return self._s[name](keys=keys, args=[str(a) for a in argv])

    async def _one(self, name: str, args: Sequence[Any]) -> Any:
        request, parse = self._plan(name, args)
        try:
            raw = None if request is None else await request
        except _ERRORS as exc:
            raise StateUnavailable(
                f"Redis ([state] redis) failed during {name}: {exc.__class__.__name__}: {exc}"
            ) from exc
        return parse(raw)

    async def batch(self, ops: Sequence[Op]) -> list[Any]:
        """The operations one after the other, each its own round trip.

        Not a pipeline, by measurement: on the limiter alone a coredis pipeline of 3-4
        operations cost less CPU than the single calls, but in the whole gateway (32
        concurrent logins, ``python -m bench.workers --workers 1 --redis``) it cost about
        0.3 ms more per login than these single calls. Probably because a pipeline leases
        a connection of its own, while the single commands of concurrent logins share one
        (coredis multiplexes them); not verified further."""
        for name, _ in ops:
            if name not in BATCH_OPS:
                raise ValueError(f"batch: {name!r} is not a batch operation")
        return [await self._one(name, args) for name, args in ops]

    async def window_add(
        self, entries: Sequence[tuple[str, str]], now: float, window: float, cap: int = DEFAULT_CAP
    ) -> list[int]:
        return list(await self._one("window_add", (entries, now, window, cap)))

    async def window_count(self, keys: Sequence[str], now: float, window: float) -> list[int]:
        return list(await self._one("window_count", (keys, now, window)))

    async def window_contains(self, key: str, member: str, now: float, window: float) -> bool:
        return bool(await self._one("window_contains", (key, member, now, window)))

    async def window_members(self, key: str, now: float, window: float) -> list[str]:
        return list(await self._one("window_members", (key, now, window)))

    async def counter_add(self, key: str, amount: int, now: float, window: float) -> int:
        return int(await self._one("counter_add", (key, amount, now, window)))

    async def incr(self, key: str, now: float, ttl: float) -> int:
        return int(await self._one("incr", (key, now, ttl)))

    async def set_once(self, key: str, now: float, ttl: float) -> bool:
        return bool(await self._one("set_once", (key, now, ttl)))

    async def delete(self, keys: Sequence[str]) -> None:
        await self._one("delete", (keys,))

    async def ban_put(self, ban: Ban, now: float) -> None:
        if not ban.active(now):
            return
        nk = network_key(normalize_network(ban.network))
        args = [ban.to_json(), _ms(ban.expires - now), nk, repr(ban.expires), repr(now)]
        await self._run("ban_put", [f"{self._p}ban:{nk}", f"{self._p}bans"], args)

    async def ban_get(self, keys: Sequence[str], now: float) -> list[Ban]:
        return list(await self._one("ban_get", (keys, now)))

    async def ban_delete(self, network: str) -> bool:
        nk = network_key(normalize_network(network))
        return bool(await self._run("ban_delete", [f"{self._p}ban:{nk}", f"{self._p}bans"], [nk]))

    async def ban_list(self, now: float) -> list[Ban]:
        raw = await self._run("ban_list", [f"{self._p}bans"], [repr(now), f"{self._p}ban:"])
        bans = [b for b in self._decode(raw) if b.active(now)]
        return sorted(bans, key=lambda b: (b.expires, b.network))

    @staticmethod
    def _decode(values) -> list[Ban]:
        out = []
        for v in values:
            try:
                out.append(Ban.from_json(v))
            except BanFormatError:
                # One corrupt record must not disable every ban check; skip it.
                continue
        return out


def redact_url(url: str) -> str:
    """``url`` without its user-info: a Redis URL may carry a password, which must never reach
    a log line or an exception message."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparseable URL>"
    host = rest.rsplit("@", 1)[-1]
    return f"{scheme}://{'***@' if '@' in rest else ''}{host}"


@asynccontextmanager
async def open_state(
    redis_url: str = "",
    *,
    key_prefix: str = "igw:",
    timeout: float = 2.0,
    max_keys: int = 200_000,
    max_bans: int = 100_000,
    probe_interval: float = DEFAULT_PROBE_INTERVAL,
) -> AsyncIterator[StateBackend]:
    """The backend ``[state] redis`` asks for: in-process when empty, else Redis with an
    in-process fallback while Redis is down (``gateway.limits.fallback``).

    Connects (PING) on entry so a wrong URL fails at startup with ``StateUnavailable``
    naming the key, not at the first login.
    """
    if not redis_url:
        yield MemoryState(max_keys=max_keys, max_bans=max_bans)
        return
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise StateUnavailable(
            f"[state] redis: expected \"\" or a URL like redis://host:6379/0, got "
            f"{redact_url(redis_url)!r}"
        )
    client = coredis.Redis.from_url(
        redis_url, decode_responses=True, connect_timeout=timeout, stream_timeout=timeout
    )
    try:
        async with client:
            try:
                await client.ping()
            except (coredis.exceptions.RedisError, OSError, TimeoutError) as exc:
                raise StateUnavailable(
                    f"[state] redis: cannot reach {redact_url(redis_url)!r} "
                    f"({exc.__class__.__name__}: {exc}); check the URL and that Redis is "
                    "running, or set redis = \"\" for in-process state"
                ) from exc
            yield FallbackState(
                RedisState(client, key_prefix=key_prefix),
                MemoryState(max_keys=max_keys, max_bans=max_bans),
                probe_interval=probe_interval,
            )
    except BaseExceptionGroup as group:
        # coredis's pool runs an anyio task group, which wraps whatever leaves this block
        # (ours or the caller's) in an exception group. Hand back a lone exception as
        # itself, so callers catch StateUnavailable (or their own errors) plainly.
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise
