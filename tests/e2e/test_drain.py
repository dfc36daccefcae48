"""SIGTERM drains: stop accepting, BYE to every session (a logged-in one right after the
response in flight), one ``session.end`` per session, exit within ``[server] drain_timeout``.

Against the real Dovecot: a FETCH of a message far larger than the socket buffers is in
flight when the signal comes, so cutting the session (what a plain cancel does) loses the
end of the literal and the tagged OK.
"""

from __future__ import annotations

import re
import signal
import socket
import time
import uuid

import pytest

from tests.support.imap import LineClient, ServerClosed, tagged_status

pytestmark = pytest.mark.e2e

BIG = 24 << 20  # far more than loopback socket buffers hold
DRAIN = 4.0
#: Exit bound on a loaded machine: the drain timeout, its 2 s grace, plus generous slack.
EXIT_WITHIN = DRAIN + 2 + 30


def _read_all(c: LineClient, timeout: float) -> bytes:
    """Everything until the server closes (TimeoutError if it stays open)."""
    return c.expect_close(timeout)


def test_sigterm_says_bye_after_the_fetch_in_flight_and_exits_within_the_bound(gateway, dovecot):
    box = f"drain-{uuid.uuid4().hex[:8]}"
    assert dovecot.populate("alice", box, 1, BIG, tag=box) == 1
    gw = gateway(server={"workers": 1, "drain_timeout": f"{int(DRAIN)}s"})
    gw.wait_idle()

    idle = LineClient.implicit(gw, timeout=60)  # pre-auth, says nothing
    stuck = LineClient.implicit(gw, timeout=60)  # logged in, half way through an APPEND
    fetcher = LineClient.implicit(gw, timeout=60)
    try:
        assert stuck.command("a", "LOGIN bob bobpass")[-1].startswith(b"a OK")
        stuck.send(b"b APPEND INBOX {1000}\r\n")
        assert stuck.read_line().startswith(b"+")
        stuck.send(b"x" * 400)

        assert fetcher.command("a", "LOGIN alice alicepass")[-1].startswith(b"a OK")
        assert tagged_status(fetcher.command("b", f'SELECT "{box}"')[-1]) == b"OK"
        fetcher.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        fetcher.send(b"c FETCH 1 (BODY.PEEK[])\r\n")
        head = fetcher.read_line()
        m = re.match(rb"\* 1 FETCH \(BODY\[\] \{(\d+)\}\r\n$", head)
        assert m, head
        size = int(m.group(1))
        assert size > BIG - 1024
        first = fetcher.read_exact(65536)  # the FETCH is under way; the rest waits on us

        ports = {"idle": idle.local_port, "stuck": stuck.local_port,
                 "fetcher": fetcher.local_port}
        ids = {name: gw.session_id_for(port) for name, port in ports.items()}
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        gw.wait_for_event("gateway.stopping", timeout=30)

        # Before login: BYE at once. And no new connection is accepted any more.
        assert _read_all(idle, 30).startswith(b"* BYE ")
        with pytest.raises(OSError):
            socket.create_connection((gw.host, gw.implicit_port), timeout=5).close()

        # Mid-FETCH: the whole literal, the tagged OK, then BYE.
        rest = first + fetcher.read_exact(size - len(first), timeout=120)
        assert len(rest) == size
        tail = _read_all(fetcher, 60)
        lines = tail.split(b"\r\n")
        assert lines[0] == b")", tail[:200]
        assert lines[1].startswith(b"c OK"), tail[:200]
        assert lines[2].startswith(b"* BYE "), tail[:200]

        # The APPEND that never completes holds the drain until its bound, then BYE.
        try:
            closing = _read_all(stuck, EXIT_WITHIN)
        except ServerClosed:
            closing = b""
        assert b"* BYE " in closing, closing

        gw.proc.wait(EXIT_WITHIN - (time.monotonic() - signalled))  # type: ignore[union-attr]
        assert gw.returncode == 0, gw.tail()
        for name, sid in ids.items():
            ends = gw.events("session.end", session_id=sid)
            assert len(ends) == 1, (name, gw.tail())
            assert ends[0]["reason"] == "shutdown", (name, ends[0])
        drained = gw.events("gateway.drained")
        assert drained and drained[0]["forced"] == 1, gw.tail()
    finally:
        for c in (idle, stuck, fetcher):
            c.close()


def test_sigterm_ends_an_idle_command_without_waiting_for_done(gateway):
    """IDLE waits for nothing but the client's DONE: the session is idle, BYE comes at once."""
    gw = gateway(server={"workers": 1, "drain_timeout": "60s"})
    held = LineClient.implicit(gw, timeout=30)
    try:
        assert held.command("a", "LOGIN bob bobpass")[-1].startswith(b"a OK")
        held.send(b"b IDLE\r\n")
        assert held.read_line().startswith(b"+")
        gw.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert _read_all(held, 30).startswith(b"* BYE ")
        gw.proc.wait(30)  # type: ignore[union-attr]  (well before the 60 s drain bound)
        assert gw.events("gateway.drained")[0]["forced"] == 0
    finally:
        held.close()
