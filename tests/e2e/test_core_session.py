"""After login: rewritten capabilities, COMPRESS refused, and a real mail session
(SELECT, APPEND/FETCH of 1 MB byte-identical, IDLE, LOGOUT) relayed to Dovecot."""

from __future__ import annotations

import re
import time
import uuid

import pytest

from tests.support.imap import LineClient, ServerClosed, imaps, make_message, tagged_status

pytestmark = pytest.mark.e2e

HIDDEN = ("STARTTLS", "LOGINDISABLED")


def _assert_rewritten(caps: set[str]) -> None:
    assert {"IMAP4REV1", "IDLE", "UIDPLUS", "MULTIAPPEND"} <= caps, caps  # Dovecot's list
    for bad in HIDDEN:
        assert bad not in caps, caps
    assert not [c for c in caps if c.startswith(("COMPRESS=", "AUTH="))], caps


def test_login_ok_carries_rewritten_dovecot_capabilities(gateway):
    gw = gateway()
    with LineClient.implicit(gw) as c:
        ok = c.command("a", "LOGIN alice alicepass")[-1]
        m = re.match(rb"a OK \[CAPABILITY ([^\]]+)\]", ok)
        assert m, ok
        _assert_rewritten(set(m.group(1).decode().upper().split()))


def test_capability_command_after_login_is_rewritten_too(gateway):
    """A client that asks again must not be offered COMPRESS it would then be refused."""
    gw = gateway()
    m = imaps(gw)
    m.login("alice", "alicepass")
    typ, data = m.capability()
    m.logout()
    assert typ == "OK"
    _assert_rewritten(set(data[-1].decode().upper().split()))


def test_compress_deflate_is_refused_and_session_goes_on_uncompressed(gateway):
    gw = gateway()
    with LineClient.implicit(gw) as c:
        assert c.command("a", "LOGIN alice alicepass")[-1].startswith(b"a OK")
        r = c.command("b", "COMPRESS DEFLATE")[-1]
        assert r.startswith(b"b NO [CANNOT]"), r
        resp = c.command("c", "SELECT INBOX")
        assert tagged_status(resp[-1]) == b"OK", resp
        assert any(re.match(rb"\* \d+ EXISTS", x) for x in resp), resp


def test_append_and_fetch_1mb_message_byte_identical(gateway):
    gw = gateway()
    box = f"big-{uuid.uuid4().hex[:8]}"
    msg = make_message(7, 1 << 20, tag=box)
    m = imaps(gw, timeout=30)
    m.login("alice", "alicepass")
    assert m.create(box)[0] == "OK"
    typ, data = m.append(box, None, None, msg)
    assert typ == "OK", data
    typ, data = m.select(box)
    assert typ == "OK" and data == [b"1"], data
    typ, data = m.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK"
    assert data[0][1] == msg
    assert m.logout()[0] == "BYE"


def test_idle_is_woken_by_another_sessions_append(gateway, dovecot):
    gw = gateway()
    box = f"idle-{uuid.uuid4().hex[:8]}"
    assert dovecot.populate("bob", box, 1, 1000, tag=box) == 1
    with LineClient.implicit(gw) as idler:
        assert idler.command("a", "LOGIN bob bobpass")[-1].startswith(b"a OK")
        assert tagged_status(idler.command("b", f'SELECT "{box}"')[-1]) == b"OK"
        idler.send(b"c IDLE\r\n")
        assert idler.read_line().startswith(b"+"), "no IDLE continuation"
        other = imaps(gw)
        other.login("bob", "bobpass")
        assert other.append(box, None, None, make_message(1, 1000, tag=box))[0] == "OK"
        other.logout()
        pushed = [idler.read_line(timeout=10)]
        while not pushed[-1].endswith(b" EXISTS\r\n"):
            pushed.append(idler.read_line(timeout=10))
        assert pushed[-1] == b"* 2 EXISTS\r\n", pushed
        idler.send(b"DONE\r\n")
        rest = idler.read_until_tagged("c")
        assert rest[-1].startswith(b"c OK"), rest


def test_logout_says_bye_then_ok_and_closes(gateway):
    gw = gateway()
    with LineClient.implicit(gw) as c:
        assert c.command("a", "LOGIN alice alicepass")[-1].startswith(b"a OK")
        resp = c.command("z", "LOGOUT")
        assert resp[0].startswith(b"* BYE"), resp
        assert resp[-1].startswith(b"z OK"), resp
        try:
            tail = c.expect_close(5)
        except ServerClosed:
            tail = b""
        assert tail == b""


def test_idle_timeout_counts_from_the_last_traffic_and_ends_with_bye(gateway):
    """The idle deadline is moved lazily (only when it would move by more than 1/64 of
    ``idle_timeout``): traffic still keeps a session alive past the timeout, and silence
    still ends it with the autologout BYE soon after."""
    gw = gateway(limits={"idle_timeout": "2s"})
    gw.wait_idle(timeout=10)
    with LineClient.implicit(gw, timeout=10) as c:
        assert c.command("a", "LOGIN alice alicepass")[-1].startswith(b"a OK")
        started = time.monotonic()
        for i in range(6):  # 3 s of NOOPs, 0.5 s apart: longer than the timeout
            time.sleep(0.5)
            assert c.command(f"n{i}", "NOOP")[-1].startswith(f"n{i} OK".encode())
        assert time.monotonic() - started > 2.5
        silent = time.monotonic()
        rest = c.expect_close(timeout=30)
        waited = time.monotonic() - silent
    assert b"* BYE Autologout" in rest
    assert waited >= 1.5  # not before the timeout (generous: the machine is shared)
    assert gw.wait_for_event("session.end", timeout=10, user="alice")["reason"] == "idle_timeout"
