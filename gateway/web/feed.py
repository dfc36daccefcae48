"""The live event feed over WebSocket: one JSON text message per event
(``gateway.observability.events`` says what an event holds).

Two doors, one stream:

- the admin API's ``/events`` (``admin_events``): the bearer token is checked by
  ``BearerAuth`` before routing, as for every admin route; this is what
  ``imap-gateway events --follow`` reads;
- the portal's ``/admin/events`` (``gateway.web.admin_pages``): the web session, its
  second factor, the admin list and the ``Origin`` header are checked there, and the
  accepted socket is handed to ``stream``.

Query parameters filter the stream: ``kind`` (repeated or a comma list of
``events.KINDS``), ``user``, ``address`` (an IP or CIDR network). A bad filter, a full
feed or a refused caller is answered before the handshake completes, with an HTTP
status and a message (the ASGI WebSocket denial response; Hypercorn supports it),
never with an open socket that says nothing.

A portal subscriber's session is checked again every ``RECHECK_SECONDS``: signing out
(or losing admin rights) also ends an open feed. A subscriber that reads slowly loses events (its queue drops the oldest; it is sent a
``lost`` notice with the count); one that reads nothing for ``SEND_DEADLINE`` seconds
while an event waits is closed (code 1013, try again later).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.observability.events import (
    EventFeed,
    FeedFilter,
    FilterError,
    Subscription,
    parse_filter,
)
from gateway.observability.logs import get_logger

__all__ = ["SEND_DEADLINE", "admin_events", "filter_of", "not_a_websocket", "refuse", "stream"]

log = get_logger()

#: Seconds one message may take to go out before the subscriber counts as gone.
SEND_DEADLINE = 30.0
#: How often a portal subscriber's right to the feed is checked again.
RECHECK_SECONDS = 15.0
#: "Try again later": the close code for a subscriber that stopped reading.
CLOSE_TRY_AGAIN = 1013
#: "Policy violation": the close code when the server cannot send an HTTP refusal.
CLOSE_POLICY = 1008


async def refuse(websocket: WebSocket, status: int, message: str) -> None:
    """Refuse the handshake with ``status`` and ``{"error": message}``."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        body = (json.dumps({"error": message}) + "\n").encode()
        await websocket.send_denial_response(Response(
            body, status, media_type="application/json", headers={"Cache-Control": "no-store"}))
    else:
        await websocket.close(CLOSE_POLICY, message[:120])


def filter_of(websocket: WebSocket) -> FeedFilter:
    """The stream's filter from the query string; ``FilterError`` explains a bad one."""
    params = websocket.query_params
    return parse_filter(params.getlist("kind"), params.get("user"), params.get("address"))


async def stream(websocket: WebSocket, feed: EventFeed, flt: FeedFilter, *, door: str,
                 admin: str | None = None,
                 recheck: Callable[[], Awaitable[bool]] | None = None) -> None:
    """Accept ``websocket`` and send it the feed's events that ``flt`` lets through, until
    the client goes away or the gateway stops. The caller has checked who is asking.

    ``recheck``: asked every ``RECHECK_SECONDS`` whether the caller may still read the
    feed (a portal session can end or lose its admin rights while the socket is open);
    on False the socket is closed (1008).
    """
    if feed.full():
        await refuse(websocket, 503, f"{feed.max_subscribers} feed subscribers already; "
                                     "try again later")
        return
    client = websocket.client
    where = {"door": door, "admin": admin, "client_ip": client.host if client else None,
             "filter": flt.describe()}
    # No await between full() and subscribe(): nobody can take the last place in between.
    with feed.subscribe(flt) as sub:
        try:
            await websocket.accept()
            log.info("feed.subscribed", **where)
            await _send_events(websocket, sub, where, recheck)
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass  # the client went away mid-send: what _until_closed would have seen next
        finally:
            log.info("feed.unsubscribed", **where, delivered=sub.delivered, lost=sub.lost_total)


async def _send_events(websocket: WebSocket, sub: Subscription, where: dict[str, Any],
                       recheck: Callable[[], Awaitable[bool]] | None) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_until_closed, websocket, nursery.cancel_scope)
        if recheck is not None:
            nursery.start_soon(_keep_checking, websocket, recheck, where, nursery.cancel_scope)
        while True:
            event = await sub.receive()
            with trio.move_on_after(SEND_DEADLINE) as sending:
                await websocket.send_text(event.text)
            if sending.cancelled_caught:
                log.warning("feed.subscriber_stalled", **where)
                with trio.move_on_after(1):
                    await websocket.close(CLOSE_TRY_AGAIN, "not reading")
                nursery.cancel_scope.cancel()
                return


async def _keep_checking(websocket: WebSocket, recheck: Callable[[], Awaitable[bool]],
                         where: dict[str, Any], done: trio.CancelScope) -> None:
    while True:
        await trio.sleep(RECHECK_SECONDS)
        if not await recheck():
            break
    log.info("feed.revoked", **where)
    with trio.move_on_after(1):
        await websocket.close(CLOSE_POLICY, "no longer allowed")
    done.cancel()


async def _until_closed(websocket: WebSocket, done: trio.CancelScope) -> None:
    """Read (and ignore) what the client sends; stop the stream when it disconnects."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    except (WebSocketDisconnect, OSError, RuntimeError):
        pass
    done.cancel()


def admin_events(feed: EventFeed) -> Callable[[WebSocket], Awaitable[None]]:
    """The admin API's ``/events`` endpoint (the token was checked before routing)."""

    async def endpoint(websocket: WebSocket) -> None:
        try:
            flt = filter_of(websocket)
        except FilterError as exc:
            await refuse(websocket, 400, str(exc))
            return
        await stream(websocket, feed, flt, door="admin-api")

    return endpoint


async def not_a_websocket(request: Request) -> Response:
    """A plain HTTP request to a feed path: say how to read it."""
    body = {"error": f"{request.url.path} is a WebSocket (e.g. imap-gateway events --follow)"}
    return Response((json.dumps(body) + "\n").encode(), 426, media_type="application/json",
                    headers={"Upgrade": "websocket", "Connection": "Upgrade",
                             "Cache-Control": "no-store"})
