"""A minimal HTTP endpoint for /metrics, /healthz and /readyz, served by trio.

Deliberately tiny (one request per connection, GET only, bounded request size): the
endpoint is meant for a Prometheus scraper on a trusted network, and a full HTTP
stack would be more attack surface than feature here.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from gateway.observability.metrics import render_latest

_MAX_REQUEST = 8192


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _handle(stream: trio.SocketStream, ready: Callable[[], bool]) -> None:
    async with stream:
        request = b""
        with trio.move_on_after(5):
            while b"\r\n\r\n" not in request and len(request) < _MAX_REQUEST:
                data = await stream.receive_some(4096)
                if not data:
                    break
                request += data
        parts = request.split(b" ", 2)
        path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
        if parts[0] != b"GET":
            out = _response("405 Method Not Allowed", b"GET only\n")
        elif path == b"/metrics":
            out = _response("200 OK", render_latest(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == b"/healthz":
            out = _response("200 OK", b"ok\n")
        elif path == b"/readyz":
            out = _response("200 OK", b"ready\n") if ready() else _response(
                "503 Service Unavailable", b"not ready\n")
        else:
            out = _response("404 Not Found", b"not found\n")
        try:
            await stream.send_all(out)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def serve_metrics(
    listeners: list[trio.SocketListener], ready: Callable[[], bool], *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve on ``listeners`` (bound by the caller, which binds every address of the
    gateway before it serves any) until cancelled; closes them on the way out."""
    async def handler(stream: trio.SocketStream) -> None:
        await _handle(stream, ready)

    task_status.started(listeners)
    await trio.serve_listeners(handler, listeners)
