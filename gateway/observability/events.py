"""The live event feed: the log events an administrator watches, handed to subscribers
as they happen (``imap-gateway events --follow``, the portal's "Live events" page).

Theory of operation:

1. Source. ``feed_processor`` is one processor of the structlog pipeline
   (``gateway.observability.logs``), placed after ``redact_secrets``: it sees every event
   the JSON log gets, already redacted, and hands those named in ``FEED_KINDS`` to the
   installed ``EventFeed``. It never blocks and never raises: a feed problem must not
   cost a log line. An event below the configured log level is never logged, so it
   never reaches the feed either.
2. Fan-out. ``EventFeed.publish`` copies the event once into a ``FeedEvent`` (JSON-safe
   fields plus ``kind`` and ``instance``, and its JSON text) and offers it to every
   subscription. Each subscription holds at most ``QUEUE_SIZE`` events: when it is full
   the oldest is dropped and counted, and the subscriber's next read is a ``lost``
   notice with that count. Publishing costs O(subscribers) and never awaits, so a
   subscriber that does not read can lose events but never slows logging down.
3. Threads. A log line may come from a worker thread (``trio.to_thread``); the event is
   handed to the trio thread with the run's ``TrioToken`` (``run_sync_soon`` does not
   block). Subscriptions are only touched in the trio thread.
4. Several instances (``gateway.observability.events_relay``): with ``[state] redis`` a
   relay publishes every local event on a Redis channel and delivers the events of the
   other instances to the local subscriptions (``deliver_remote``). Local events are
   delivered locally at once, so a Redis outage loses only the other instances' events.
   Without Redis, the workers of one host send theirs to worker 0, which serves the
   subscribers, over the worker link (``gateway.proxy.feedlink``).

Event shape (one JSON object): the log event's own fields (``event``, ``ts``, ``level``,
``session_id``, ``user``, ``client_ip``, ``reason``, ...), plus ``kind`` (one of
``KINDS``) and ``instance`` (the gateway instance that logged it: ``host:pid``, so each
worker process is an instance of its own; a worker's events also carry its ``worker``
index, as all its log lines do). A log field that already has one of those two names
keeps its value under ``<event>_<name>`` (an anomaly's own ``kind`` becomes
``anomaly_kind``). A lost notice is
``{"kind": "lost", "lost": N, "instance": ..., "ts": ...}``.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import socket
from collections import deque
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio

__all__ = [
    "FEED_KINDS",
    "KINDS",
    "LOST",
    "MAX_SUBSCRIBERS",
    "QUEUE_SIZE",
    "EventFeed",
    "FeedEvent",
    "FeedFilter",
    "FeedFull",
    "FilterError",
    "Subscription",
    "default_instance",
    "feed_processor",
    "installed",
    "parse_filter",
]

#: Log event name -> feed kind. Only these events reach the feed.
FEED_KINDS: Mapping[str, str] = {
    "login.ok": "login",
    "login.denied": "denied",
    "connection.refused": "denied",  # at connect: banned address, connection caps
    "login.plaintext_blocked": "plaintext",
    "ban.created": "ban",
    "admin.ban_added": "ban",
    "admin.ban_removed": "ban",
    "anomaly": "anomaly",
    "session.revoked": "kill",  # policy reload, app password revoked
    "admin.session_killed": "kill",
}
KINDS: tuple[str, ...] = ("login", "denied", "plaintext", "ban", "anomaly", "kill")
LOST = "lost"

#: Events a subscription holds before it drops the oldest.
QUEUE_SIZE = 256
#: Subscriptions one process serves at once (each holds up to QUEUE_SIZE events).
MAX_SUBSCRIBERS = 64
#: Longest user or address filter accepted (they are compared, never stored).
MAX_FILTER_CHARS = 320

#: Fields the feed adds; a log field of the same name is renamed (see the module doc).
_OWN_FIELDS = ("kind", "instance")
#: Never forwarded: tracebacks belong in the log file, not on an admin's screen.
_DROPPED_FIELDS = frozenset({"exc_info", "exception", "stack", "stack_info"})
#: Fields that hold one address, and fields that hold a network (bans, subnets).
_ADDRESS_FIELDS = ("client_ip", "ip")
_NETWORK_FIELDS = ("network", "subnet")


def default_instance() -> str:
    """``host:pid``: tells apart the gateways whose events one feed shows."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _json_safe(value: Any, depth: int = 0) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or infinity
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if depth < 8 and isinstance(value, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if depth < 8 and isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v, depth + 1) for v in value]
    return str(value)


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One event as subscribers get it: ``data`` to filter on, ``text`` to send (JSON)."""

    data: Mapping[str, Any]
    text: str

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> FeedEvent:
        return cls(data, json.dumps(data, separators=(",", ":"), allow_nan=False))

    @property
    def kind(self) -> str:
        return str(self.data.get("kind"))


def feed_event(event_dict: Mapping[str, Any], instance: str) -> FeedEvent | None:
    """The ``FeedEvent`` of one (already redacted) log event; None if it is not fed."""
    name = event_dict.get("event")
    kind = FEED_KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        return None
    data: dict[str, Any] = {}
    for key, value in event_dict.items():
        if key in _DROPPED_FIELDS:
            continue
        if key in _OWN_FIELDS:
            key = f"{name}_{key}"
        data[key] = _json_safe(value)
    data["kind"] = kind
    data["instance"] = instance
    return FeedEvent.of(data)


def _now_iso() -> str:
    """Now, written as the log pipeline writes ``ts`` (structlog's TimeStamper, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------
# Filters


class FilterError(ValueError):
    """A filter parameter the feed cannot use; the message says what would work."""


@dataclass(frozen=True, slots=True)
class FeedFilter:
    """Which events a subscriber wants: all conditions given must hold.

    ``kinds``: None for every kind. ``user``: compared case-insensitively (ASCII, as
    policies compare names). ``address``: an IP or CIDR network; an event matches when
    one of its addresses (``client_ip``, ``ip``) lies in it or one of its networks
    (``network``, ``subnet``: bans) overlaps it. Lost notices pass every filter.
    """

    kinds: frozenset[str] | None = None
    user: str | None = None
    address: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None

    def matches(self, event: FeedEvent) -> bool:
        data = event.data
        kind = data.get("kind")
        if kind == LOST:
            return True
        if self.kinds is not None and kind not in self.kinds:
            return False
        if self.user is not None:
            user = data.get("user")
            if not isinstance(user, str) or _fold(user) != self.user:
                return False
        if self.address is not None and not self._address_matches(data):
            return False
        return True

    def _address_matches(self, data: Mapping[str, Any]) -> bool:
        wanted = self.address
        assert wanted is not None
        for key in _ADDRESS_FIELDS:
            ip = _ip(data.get(key))
            if ip is not None and ip.version == wanted.version and ip in wanted:
                return True
        for key in _NETWORK_FIELDS:
            net = _network(data.get(key))
            if net is not None and net.version == wanted.version and net.overlaps(wanted):
                return True
        return False

    def describe(self) -> dict[str, Any]:
        """The filter as a log line shows it."""
        return {"kinds": sorted(self.kinds) if self.kinds is not None else None,
                "user": self.user, "address": str(self.address) if self.address else None}


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _fold(text: str) -> str:
    return text.translate(_ASCII_LOWER)


def _unmap(ip: ipaddress.IPv4Address | ipaddress.IPv6Address
           ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _ip(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not isinstance(value, str):
        return None
    try:
        return _unmap(ipaddress.ip_address(value))
    except ValueError:
        return None


def _network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if not isinstance(value, str):
        return None
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None


def parse_filter(kinds: list[str] | tuple[str, ...] = (), user: str | None = None,
                 address: str | None = None) -> FeedFilter:
    """A ``FeedFilter`` from query parameters: ``kind`` (repeated or comma-separated),
    ``user``, ``address``. Empty values mean "no condition". Raises ``FilterError``."""
    wanted: set[str] = set()
    for item in kinds:
        wanted.update(k.strip().lower() for k in item.split(",") if k.strip())
    unknown = sorted(wanted - set(KINDS))
    if unknown:
        raise FilterError(f"unknown kind {', '.join(unknown)}; kinds: {', '.join(KINDS)}")
    user = user.strip() if user else None
    if user is not None and (len(user) > MAX_FILTER_CHARS or not user.isprintable()):
        raise FilterError(f"user must be printable text of at most {MAX_FILTER_CHARS} characters")
    network = None
    if address and address.strip():
        text = address.strip()
        if len(text) > MAX_FILTER_CHARS:
            raise FilterError("address is too long; give an IP address or a CIDR network")
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise FilterError(
                f"address {text!r} is neither an IP address nor a CIDR network, e.g. "
                "192.0.2.7 or 192.0.2.0/24") from None
        if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
            mapped = network.network_address.ipv4_mapped
            if mapped is not None:  # ::ffff:a.b.c.d is the IPv4 client a.b.c.d
                network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return FeedFilter(frozenset(wanted) if wanted else None,
                      _fold(user) if user else None, network)


# ---------------------------------------------------------------------------
# Subscriptions and the feed


class FeedFull(Exception):
    """``MAX_SUBSCRIBERS`` subscriptions are open already."""


@dataclass(eq=False)
class Subscription:
    """One subscriber's bounded queue. Read it with ``receive``; leave the feed's
    ``subscribe`` block to end it."""

    filter: FeedFilter
    size: int = QUEUE_SIZE
    instance: str = ""
    #: Events dropped since the subscriber last read a lost notice.
    lost: int = 0
    #: Events dropped over the subscription's life (for the log line at its end).
    lost_total: int = 0
    delivered: int = 0
    _queue: deque[FeedEvent] = field(default_factory=deque)
    _wakeup: trio.Event = field(default_factory=trio.Event)

    def offer(self, event: FeedEvent) -> None:
        """Queue ``event`` if the filter wants it; when full, drop the oldest and count it."""
        if not self.filter.matches(event):
            return
        if len(self._queue) >= self.size:
            self._queue.popleft()
            self.lost += 1
            self.lost_total += 1
        self._queue.append(event)
        self._wakeup.set()

    def pending(self) -> int:
        return len(self._queue)

    def get_nowait(self) -> FeedEvent | None:
        """The next item (a lost notice first, if events were dropped), or None."""
        if self.lost:
            lost, self.lost = self.lost, 0
            return FeedEvent.of({"kind": LOST, "lost": lost, "instance": self.instance,
                                 "ts": _now_iso()})
        if self._queue:
            self.delivered += 1
            return self._queue.popleft()
        return None

    async def receive(self) -> FeedEvent:
        """Wait for the next item: a lost notice first, if events were dropped."""
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            self._wakeup = trio.Event()
            await self._wakeup.wait()


class EventFeed:
    """The process's feed: subscriptions, and an optional relay to other instances.

    Create it inside ``trio.run`` (it remembers the run's token for hand-offs from worker
    threads) and install it with ``installed(feed)`` so the log pipeline feeds it.
    """

    def __init__(self, instance: str | None = None, *, queue_size: int = QUEUE_SIZE,
                 max_subscribers: int = MAX_SUBSCRIBERS) -> None:
        self.instance = instance or default_instance()
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self._subscriptions: set[Subscription] = set()
        #: Called with each local event (in the trio thread): the outbox of the Redis
        #: relay, or of a worker's link to worker 0 (``gateway.proxy.feedlink``).
        self.forward: Any = None
        #: Called with True when the first subscription opens and False when the last
        #: one ends (worker 0 tells the other workers whether to forward). Must not raise.
        self.on_watched: Callable[[bool], None] | None = None
        try:
            self._token: trio.lowlevel.TrioToken | None = trio.lowlevel.current_trio_token()
        except RuntimeError:
            self._token = None

    def __repr__(self) -> str:
        return (f"EventFeed(instance={self.instance!r}, "
                f"subscribers={len(self._subscriptions)})")

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    def full(self) -> bool:
        """Whether ``subscribe`` would refuse another subscription now."""
        return len(self._subscriptions) >= self.max_subscribers

    def wanted(self) -> bool:
        """Whether a published event would go anywhere (cheap: checked per log line)."""
        return bool(self._subscriptions) or self.forward is not None

    @contextmanager
    def subscribe(self, flt: FeedFilter | None = None) -> Iterator[Subscription]:
        """A subscription for the block's duration. Raises ``FeedFull`` past
        ``max_subscribers``."""
        if self.full():
            raise FeedFull(f"{self.max_subscribers} feed subscribers already; try again later")
        sub = Subscription(flt or FeedFilter(), self.queue_size, self.instance)
        self._subscriptions.add(sub)
        if len(self._subscriptions) == 1 and self.on_watched is not None:
            self.on_watched(True)
        try:
            yield sub
        finally:
            self._subscriptions.discard(sub)
            if not self._subscriptions and self.on_watched is not None:
                self.on_watched(False)

    # -- publishing ------------------------------------------------------------------------

    def publish(self, event_dict: Mapping[str, Any]) -> None:
        """Offer one log event to every subscription (and the relay). Never blocks.

        Safe from any thread: outside the trio thread the event is handed over with the
        run's token; after the run has ended it is dropped.
        """
        if not self.wanted():
            return
        event = feed_event(event_dict, self.instance)
        if event is None:
            return
        if self._in_our_run():
            self._deliver_local(event)
        elif self._token is not None:
            try:
                self._token.run_sync_soon(self._deliver_local, event)
            except trio.RunFinishedError:
                pass

    def _in_our_run(self) -> bool:
        if self._token is None:
            return True  # made outside trio (tests): everything happens in one thread
        if not trio.lowlevel.in_trio_run():
            return False
        return trio.lowlevel.current_trio_token() is self._token

    def _deliver_local(self, event: FeedEvent) -> None:
        self._fan_out(event)
        if self.forward is not None:
            self.forward(event)

    def deliver_remote(self, event: FeedEvent) -> None:
        """An event of another instance (from the relay, in the trio thread)."""
        self._fan_out(event)

    def _fan_out(self, event: FeedEvent) -> None:
        for sub in list(self._subscriptions):
            sub.offer(event)


# ---------------------------------------------------------------------------
# The log pipeline's side

_installed: EventFeed | None = None


def feed_processor(_logger: Any, _method: str,
                   event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: offer the event to the installed feed; pass it on unchanged.

    Goes after ``redact_secrets`` in the pipeline, so the feed only ever sees what the
    JSON log gets. A failure here is swallowed: the log line matters more than the feed.
    """
    feed = _installed
    if feed is not None:
        try:
            feed.publish(event_dict)
        except Exception:  # noqa: BLE001, S110 - never let the feed cost a log line
            pass
    return event_dict


@contextmanager
def installed(feed: EventFeed) -> Iterator[EventFeed]:
    """Make ``feed`` the one ``feed_processor`` publishes to, for the block's duration."""
    global _installed
    previous, _installed = _installed, feed
    try:
        yield feed
    finally:
        _installed = previous
