"""Client side of the live event feed: ``imap-gateway events --follow``.

Reads the admin API's WebSocket ``/events`` (``gateway.web.feed``) with trio-websocket,
with the same bearer token as the other admin commands (``gateway.admin_client``), and
prints each event as it arrives: one JSON object per line with ``--json`` (for jq and
scripts), else one readable line. Every line is flushed at once: the point is to see an
event the moment it happens.

Text lines go to a terminal, and their fields come from clients (a user name is what a
client typed): control characters are shown escaped, never written as they are.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlencode

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    open_websocket_url,
)

from gateway.admin_client import AdminDisabled
from gateway.cliformat import json_times
from gateway.web.token import AdminTokenError, admin_token_path, load_admin_token

__all__ = ["FeedTarget", "follow", "follow_command", "format_event", "target_from_config"]

CONNECT_TIMEOUT = 10.0
#: Fields a text line shows after the event name, in this order, when present.
_SHOWN = ("user", "client_ip", "ip", "network", "subnet", "reason", "ban_reason", "factor",
          "mechanism", "anomaly_kind", "action", "scope", "admin", "session_id")


class FeedError(Exception):
    """The feed could not be opened or ended abnormally; the message says what to do."""


@dataclass
class FeedTarget:
    """Where the admin API listens and the token to show it."""

    host: str
    port: int
    token: str = field(repr=False)
    where: str = ""
    token_source: str = ""

    def url(self, query: Sequence[tuple[str, str]]) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = urlencode(list(query))
        return f"ws://{host}:{self.port}/events" + (f"?{text}" if text else "")


def target_from_config(config: Any) -> FeedTarget:
    """The running gateway's feed. Raises ``AdminDisabled`` or ``AdminTokenError``."""
    if not config.admin.address:
        raise AdminDisabled(
            f"the admin API is turned off ([admin] address = \"\" in {config.source_path}); "
            "set it, e.g. address = \"127.0.0.1:9144\", and restart the gateway")
    return FeedTarget(
        host=config.admin.host, port=config.admin.port,
        token=load_admin_token(config, create=False),
        where=f"{config.admin.address} ([admin] address in {config.source_path})",
        token_source=str(admin_token_path(config)))


def _printable(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    if text.isprintable() and " " not in text:
        return text
    return json.dumps(text)  # quoted, control characters escaped


def format_event(event: Mapping[str, Any]) -> str:
    """One readable line: time, kind, event name, the telling fields, [instance]."""
    ts = str(event.get("ts") or "")
    clock = ts[11:19] if len(ts) >= 19 else time.strftime("%H:%M:%S", time.gmtime())
    kind = str(event.get("kind") or "?")
    parts = [clock, kind.ljust(9), _printable(event.get("event") or kind)]
    for name in _SHOWN:
        value = event.get(name)
        if value is not None and value != "":
            parts.append(f"{name}={_printable(value)}")
    instance = event.get("instance")
    if instance:
        parts.append(f"[{_printable(instance)}]")
    return " ".join(parts)


async def follow(target: FeedTarget, query: Sequence[tuple[str, str]],
                 on_event: Callable[[dict[str, Any]], None], *,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
    """Call ``on_event`` with every event of the feed until the gateway closes it.

    Raises ``FeedError`` naming the address, or the token file on a 401.
    """
    where = target.where or f"{target.host}:{target.port}"
    headers = [(b"authorization", f"Bearer {target.token}".encode())]
    try:
        async with open_websocket_url(target.url(query), extra_headers=headers,
                                      connect_timeout=connect_timeout) as ws:
            while True:
                text = await ws.get_message()
                try:
                    event = json.loads(text)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    on_event(event)
    except ConnectionRejected as exc:
        raise FeedError(_rejection(exc, target)) from None
    except ConnectionClosed as exc:
        reason = exc.reason
        detail = f" ({reason.code} {reason.reason})" if reason and reason.reason else ""
        raise FeedError(f"the gateway closed the feed{detail}; was it stopped? admin API at "
                        f"{where}") from None
    except ConnectionTimeout:
        raise FeedError(f"no answer within {connect_timeout:g}s: is the gateway running? "
                        f"admin API at {where}") from None
    except (HandshakeError, OSError) as exc:
        # trio-websocket reports a refused connection as a HandshakeError from the OSError.
        cause = exc if isinstance(exc, OSError) else exc.__cause__
        if isinstance(cause, OSError):
            raise FeedError(f"cannot connect ({cause.strerror or cause}): is the gateway "
                            f"running? admin API at {where}") from None
        raise FeedError(f"no feed at {where} ({exc.__class__.__name__}): is [admin] address "
                        "the gateway's admin port, and the gateway recent enough to have "
                        "/events?") from None


def _rejection(exc: ConnectionRejected, target: FeedTarget) -> str:
    body = bytes(exc.body or b"")
    try:
        message = str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {exc.status_code}"
    if exc.status_code == 401 and target.token_source:
        message += (f"; the token read from {target.token_source} is not the running "
                    "gateway's (was it started with another config?)")
    return message


def follow_command(config: Any, *, as_json: bool, kinds: Sequence[str], user: str | None,
                   address: str | None, out: TextIO | None = None,
                   err: TextIO | None = None) -> int:
    """``imap-gateway events --follow``: print events until Ctrl-C (0) or trouble (1)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        target = target_from_config(config)
    except (AdminDisabled, AdminTokenError) as exc:
        _error(str(exc), as_json, err)
        return 1
    query = [("kind", k) for k in kinds]
    if user:
        query.append(("user", user))
    if address:
        query.append(("address", address))

    def show(event: dict[str, Any]) -> None:
        try:
            write(event)
        except BrokenPipeError:  # `... | head`: the reader is gone
            raise _ReaderGone from None

    def write(event: dict[str, Any]) -> None:
        if as_json:
            out.write(json.dumps(json_times(event), separators=(",", ":")) + "\n")
            out.flush()
        elif event.get("kind") == "lost":
            err.write(f"imap-gateway: {event.get('lost')} event(s) lost: this terminal did "
                      "not keep up\n")
            err.flush()
        else:
            out.write(format_event(event) + "\n")
            out.flush()

    try:
        trio.run(follow, target, query, show)
    except FeedError as exc:
        _error(str(exc), as_json, err)
        return 1
    except KeyboardInterrupt:
        return 0
    except BaseExceptionGroup as group:
        # Ctrl-C while trio-websocket closes the socket can arrive beside an error of its
        # own (e.g. a ping that crossed the close): the user asked to stop, and we have.
        if group.subgroup(KeyboardInterrupt) is not None:
            return 0
        raise
    except _ReaderGone:
        _silence(out)
        return 0
    return 0


class _ReaderGone(Exception):
    """Whoever read our output has gone (a closed pipe): stop quietly."""


def _silence(out: TextIO) -> None:
    """Point a broken stdout at /dev/null, so the flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # not a real file (tests): nothing will flush it at exit


def _error(message: str, as_json: bool, err: TextIO) -> None:
    err.write((json.dumps({"error": message}) if as_json else f"imap-gateway: {message}") + "\n")
    err.flush()
