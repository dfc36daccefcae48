"""Post-login relay: client→backend parsed per command, backend→client passed through.

Two tasks in one nursery; when either side ends, the other is cancelled and both
sockets are closed by the session. The backend→client direction is the hot path: each
chunk is handed to ``ResponseScanner`` (O(lines) work, literal bodies skipped by
length) and written to the client unchanged. The scanner tells us when the stream is
between responses, the only place where the gateway may inject its own answers
(e.g. the refusal of a COMPRESS command) without corrupting a backend response.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from gateway.imap import commands as cm
from gateway.imap.responses import ResponseScanner
from gateway.observability import metrics

if TYPE_CHECKING:
    from gateway.backend import BackendConnection
    from gateway.session import ClientSession

BACKEND_RECEIVE_SIZE = 262144
#: How often the volume detector hears about backend→client bytes (a state round trip each).
BYTES_REPORT_INTERVAL = 1 << 20

_TO_BACKEND = metrics.bytes_relayed_total.labels("client_to_backend")
_TO_CLIENT = metrics.bytes_relayed_total.labels("backend_to_client")
_command_counters: dict[str, object] = {}
#: Replies the gateway writes itself that are not refusals of a client command.
_NOT_REFUSALS = frozenset({"continuation", "answered"})


def _count_command(name: str) -> None:
    counter = _command_counters.get(name)
    if counter is None:
        counter = metrics.commands_relayed_total.labels(metrics.command_label(name))
        if len(_command_counters) < 1024:
            _command_counters[name] = counter
    counter.inc()


async def relay(session: ClientSession, backend: BackendConnection, leftover: bytes) -> str:
    """Relay until either side closes, the idle deadline passes or the session is cancelled.

    Returns the end reason for the session log.
    """
    idle_timeout = session.ctx.config.limits.idle_timeout
    stream = cm.CommandStream(
        capability_line=session.capabilities.line,
        command_filter=session.command_filter,
        known_commands=session.capabilities.known_commands,
        allow_catenate=not session.mailbox_scoped,
    )
    scanner = ResponseScanner()
    response_filter = session.response_filter
    # Report volume at least every MiB, and often enough that a low threshold is seen
    # within one session; the remainder is reported when the session ends.
    report_every = min(BYTES_REPORT_INTERVAL,
                       max(4096, session.ctx.config.anomaly.high_volume_fetch_bytes // 4))
    volume = {"unreported": 0}
    client = session.stream
    write_lock = trio.Lock()
    state = {"boundary": True, "reason": "client_closed"}
    pending: list[bytes] = []

    async def reply(data: bytes) -> None:
        async with write_lock:
            if state["boundary"]:
                await client.send_all(data)
                session.bytes_out += len(data)
            else:
                pending.append(data)

    async def client_to_backend(cancel: trio.CancelScope) -> None:
        data = leftover
        while True:
            if data:
                session.bytes_in += len(data)
                for action in stream.receive_data(data):
                    if isinstance(action, cm.Forward):
                        await backend.stream.send_all(action.data)
                        _TO_BACKEND.inc(len(action.data))
                    elif isinstance(action, cm.Command):
                        _count_command(action.info.name)
                        if action.info.name == "LOGOUT":
                            state["reason"] = "logout"
                    elif isinstance(action, cm.Reply):
                        if action.kind not in _NOT_REFUSALS:
                            metrics.commands_refused_total.labels(action.kind).inc()
                        await reply(action.data)
                    elif isinstance(action, cm.Close):
                        await reply(action.data)
                        state["reason"] = action.reason
                        cancel.cancel()
                        return
            data = await client.receive_some(65536)
            idle.deadline = trio.current_time() + idle_timeout
            if not data:
                state["reason"] = "client_closed"
                cancel.cancel()
                return

    async def backend_to_client(cancel: trio.CancelScope) -> None:
        while True:
            data = await backend.stream.receive_some(BACKEND_RECEIVE_SIZE)
            if not data:
                if state["reason"] != "logout":
                    state["reason"] = "backend_closed"
                cancel.cancel()
                return
            idle.deadline = trio.current_time() + idle_timeout
            result = scanner.receive_data(data)
            boundary = result.at_line_boundary
            out = data
            if response_filter is not None:
                out = response_filter.receive_data(data)
                boundary = response_filter.at_line_boundary
            async with write_lock:
                if out:
                    await client.send_all(out)
                    session.bytes_out += len(out)
                state["boundary"] = boundary
                if boundary and pending:
                    joined = b"".join(pending)
                    pending.clear()
                    await client.send_all(joined)
                    session.bytes_out += len(joined)
            _TO_CLIENT.inc(len(data))
            if result.expunged:
                await session.on_expunged(result.expunged)
            volume["unreported"] += len(data)
            if volume["unreported"] >= report_every:
                sent, volume["unreported"] = volume["unreported"], 0
                await session.on_bytes(sent)

    with trio.CancelScope() as idle:
        idle.deadline = trio.current_time() + idle_timeout
        session.cancel_scope = idle
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client_to_backend, nursery.cancel_scope)
                nursery.start_soon(backend_to_client, nursery.cancel_scope)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            state["reason"] = "connection_lost"
    if volume["unreported"]:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await session.on_bytes(volume["unreported"])
    if idle.cancelled_caught:
        if session.kill_reason:
            state["reason"] = session.kill_reason
            bye = b"* BYE " + session.kill_message.encode() + b"\r\n"
        else:
            state["reason"] = "idle_timeout"
            bye = b"* BYE Autologout; idle for too long.\r\n"
        with trio.move_on_after(1):
            try:
                await client.send_all(bye)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
    return state["reason"]
