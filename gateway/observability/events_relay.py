"""The live feed's process wiring, and its relay between gateway instances over Redis.

``open_feed`` makes the process's ``EventFeed``, installs it for the log pipeline and,
with ``[state] redis``, runs the relay next to it:

- every local event is published on ``CHANNEL`` as ``{"origin": ..., "event": {...}}``
  by one publisher task reading a bounded outbox (``OUTBOX_SIZE``): publishing never
  waits on Redis, and while Redis is slow or down the newest events are dropped and
  counted rather than queued without bound;
- one subscriber task reads the channel and hands the other instances' events to the
  local subscriptions. Messages whose origin is this process are skipped (they were
  delivered locally already). The origin is a random token per process, not the
  instance name: two containers may well both be ``gateway:1``.

A Redis outage costs the other instances' events and this instance's events for them,
nothing else: logins, logs and the local feed go on. coredis reconnects the
subscription on its own; the outage and the recovery are logged once each
(``feed.redis_unavailable``, ``feed.redis_restored``). Whoever can publish on the
channel can put events on administrators' screens, as whoever can write Redis can
already ban addresses: Redis is inside the gateway's trust boundary.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import coredis
import coredis.exceptions
import trio

from gateway.observability.events import KINDS, EventFeed, FeedEvent, installed
from gateway.observability.logs import get_logger

__all__ = ["CHANNEL", "OUTBOX_SIZE", "RedisRelay", "open_feed"]

log = get_logger()

CHANNEL = "igw:events"
OUTBOX_SIZE = 1024
#: A message larger than this on the channel is not an event of ours: ignored.
MAX_MESSAGE = 64 * 1024
_REDIS_ERRORS = (coredis.exceptions.RedisError, OSError, TimeoutError)


class RedisRelay:
    """Publisher and subscriber tasks between one ``EventFeed`` and a Redis channel."""

    def __init__(self, feed: EventFeed, client: Any, channel: str = CHANNEL) -> None:
        self.feed = feed
        self.client = client
        self.channel = channel
        self.origin = secrets.token_hex(8)
        self.dropped = 0
        self._send, self._outbox = trio.open_memory_channel[str](OUTBOX_SIZE)
        self._failing = False

    def forward(self, event: FeedEvent) -> None:
        """Queue a local event for the channel (trio thread; never blocks)."""
        try:
            self._send.send_nowait(f'{{"origin":"{self.origin}","event":{event.text}}}')
        except trio.WouldBlock:
            self.dropped += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publish_loop)
            nursery.start_soon(self._subscribe_loop)
            self.feed.forward = self.forward
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self.feed.forward = None

    async def _publish_loop(self) -> None:
        async for text in self._outbox:
            try:
                await self.client.publish(self.channel, text)
            except _REDIS_ERRORS as exc:
                self._trouble("publish", exc)
            else:
                self._recovered()

    async def _subscribe_loop(self) -> None:
        while True:
            try:
                async with self.client.pubsub(channels=[self.channel],
                                              ignore_subscribe_messages=True) as pubsub:
                    log.info("feed.redis_subscribed", channel=self.channel)
                    self._recovered()
                    async for message in pubsub:
                        self.receive(message.get("data"))
            except _REDIS_ERRORS as exc:
                self._trouble("subscribe", exc)
            await trio.sleep(1.0)  # the subscription ended: try again, not in a hot loop

    def receive(self, data: object) -> None:
        """One message from the channel: another instance's event, or something to skip."""
        if not self.feed.subscribers:
            return  # nobody here to show it to: not worth decoding
        if not isinstance(data, str) or len(data) > MAX_MESSAGE:
            return
        try:
            message = json.loads(data)
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("origin") == self.origin:
            return
        event = message.get("event")
        if (not isinstance(event, dict) or event.get("kind") not in KINDS
                or not isinstance(event.get("instance"), str)):
            return
        try:
            self.feed.deliver_remote(FeedEvent.of(event))
        except ValueError:  # NaN or infinity in someone's JSON
            return

    def _trouble(self, operation: str, exc: BaseException) -> None:
        if not self._failing:
            self._failing = True
            log.warning("feed.redis_unavailable", operation=operation,
                        error=f"{exc.__class__.__name__}: {exc}")

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.info("feed.redis_restored", dropped=self.dropped)


@asynccontextmanager
async def open_feed(redis_url: str = "", *, instance: str | None = None,
                    channel: str = CHANNEL, timeout: float = 2.0) -> AsyncIterator[EventFeed]:
    """The process's event feed, installed for the log pipeline, for the block's duration.

    With ``redis_url`` the relay runs beside it (connections are opened in the
    background: an unreachable Redis delays only the other instances' events).
    """
    feed = EventFeed(instance)
    with installed(feed):
        if not redis_url:
            yield feed
            return
        client = coredis.Redis.from_url(redis_url, decode_responses=True,
                                        connect_timeout=timeout, stream_timeout=timeout)
        async with client, trio.open_nursery() as nursery:
            await nursery.start(RedisRelay(feed, client, channel).run)
            try:
                yield feed
            finally:
                nursery.cancel_scope.cancel()
