"""The gateway and Dovecot agree on where every command ends, or the command is refused.

Each test sends what an attacker would through the gateway, with an app password of the
scope the attack is meant to escape, and checks the ground truth: the Maildir on disk (no
mailbox made, no flag changed) and the bytes the client receives (no message it may not
read). Every shape here made Dovecot run a command the gateway never inspected, until the
relay began to send every literal as ``{n}`` and wait for Dovecot's own ``+``.
"""

from __future__ import annotations

import uuid

import pytest

from tests.support.imap import LineClient, ServerClosed, make_message
from tests.support.mfa import (
    app_password_gateway,
    app_password_session,
    direct,
    maildir_snapshot,
)

pytestmark = pytest.mark.e2e

@pytest.fixture
def gw(gateway, tmp_path):
    return app_password_gateway(gateway, tmp_path)


_session = app_password_session


def _mailboxes(dovecot) -> set[bytes]:
    c = direct(dovecot)
    try:
        return {line.rsplit(b" ", 1)[-1].strip(b'"')
                for line in c.command("l", 'LIST "" "*"') if line.startswith(b"* LIST")}
    finally:
        c.close()


def _read_all(c: LineClient, last_tag: str) -> bytes:
    """What the client got until ``last_tag``'s answer, or until the gateway ended the
    session (a literal with a line break outside message data ends it)."""
    return b"\r\n".join(_lines_until(c, last_tag))


def _lines_until(c: LineClient, last_tag: str) -> list[bytes]:
    try:
        return c.read_until_tagged(last_tag, timeout=10)
    except ServerClosed:
        return []  # the session ended; the Maildir is the ground truth


def _no_errors_logged(gw) -> None:
    bad = [e for e in gw.events() if e.get("level") in ("error", "critical")]
    assert not bad, bad
    assert "Traceback" not in gw.log_text()


def test_leading_zeros_in_a_literal_size_cannot_hide_commands_from_a_read_only_scope(
        gw, dovecot):
    box = f"lz-{uuid.uuid4().hex[:8]}"
    assert dovecot.populate("alice", box, 1, 700, tag=box) == 1
    before = maildir_snapshot(dovecot)
    made = f"{box}-made".encode()
    hidden = b"\r\nc CREATE " + made + b"\r\nd SELECT " + box.encode() + b"\r\n"
    second = b"b SEARCH {%d+}\r\n" % len(hidden)
    first = b"a SEARCH {" + b"0" * 40 + b"%d+}\r\n" % len(second)
    c = _session(gw, "--scope", "read-only")
    try:
        c.send(first + second + hidden + b"\r\nz NOOP\r\n")
        seen = _read_all(c, "z")
        assert b"d OK [READ-WRITE]" not in seen, seen
    finally:
        c.close()
    c = _session(gw, "--scope", "read-only")
    try:
        r = c.command("s", f'SELECT "{box}"')[-1]
        assert r.startswith(b"s OK [READ-ONLY]"), r
    finally:
        c.close()
    assert made not in _mailboxes(dovecot)
    assert maildir_snapshot(dovecot) == before
    _no_errors_logged(gw)


def test_leading_zeros_cannot_open_a_mailbox_outside_a_mailbox_scope(gw, dovecot):
    secret = f"sec-{uuid.uuid4().hex[:8]}"
    assert dovecot.populate("alice", secret, 1, 900, tag=secret) == 1
    secret_body = make_message(0, 900, secret)
    hidden = b"\r\nc SELECT " + secret.encode() + b"\r\nd FETCH 1 BODY[]\r\n"
    second = b"b SEARCH {%d+}\r\n" % len(hidden)
    first = b"a SEARCH {" + b"0" * 40 + b"%d+}\r\n" % len(second)
    c = _session(gw, "--scope", "read-only", "--mailboxes", "INBOX")
    try:
        c.send(first + second + hidden + b"\r\nz NOOP\r\n")
        seen = _read_all(c, "z")
    finally:
        c.close()
    assert secret_body[:200] not in seen
    assert b"c OK" not in seen, seen


def test_a_syntax_error_before_a_literal_cannot_hide_a_command(gw, dovecot):
    made = f"se-{uuid.uuid4().hex[:8]}".encode()
    hidden = b"c0 CREATE " + made + b"\r\n"
    c = _session(gw, "--scope", "read-only")
    try:
        c.send(b"a SEARCH ) {%d+}\r\n" % len(hidden) + hidden + b"\r\nz NOOP\r\n")
        seen = c.read_until_tagged("z", timeout=10)
        assert any(line.startswith(b"a BAD") for line in seen), seen
        assert not any(line.startswith(b"c0 ") for line in seen), seen
    finally:
        c.close()
    assert made not in _mailboxes(dovecot)
    _no_errors_logged(gw)


@pytest.mark.parametrize("head", [
    b"a APPEND INBOX (\\Foo) ",        # Dovecot refuses the flag before reading the message
    b'a APPEND INBOX "not a date" ',   # ... or the date
    b'a APPEND INBOX CATENATE (FOO "x" TEXT ',  # ... or a CATENATE part
    b"a SELECT INBOX (CONDSTORE) ",     # an argument SELECT does not read
    b"a NOOP ",
])
def test_a_literal_dovecot_refuses_never_reaches_it_even_with_full_access(gw, dovecot, head):
    """Full access, so nothing but the literal's body could be refused: the gateway must not
    count or forward as data what Dovecot would run as commands."""
    made = f"fa-{uuid.uuid4().hex[:8]}".encode()
    hidden = b"c1 CREATE " + made + b"\r\n"
    c = _session(gw)
    try:
        c.send(head + b"{%d+}\r\n" % len(hidden) + hidden + b"\r\nz NOOP\r\n")
        seen = _lines_until(c, "z")
        assert not any(line.startswith(b"c1 ") for line in seen), seen
    finally:
        c.close()
    assert made not in _mailboxes(dovecot)
    _no_errors_logged(gw)


def test_synchronizing_literals_wait_for_dovecots_continuation(gw, dovecot):
    box = f"sync-{uuid.uuid4().hex[:8]}"
    msg = make_message(5, 600, box)
    c = _session(gw)
    try:
        assert c.command("c", f"CREATE {box}")[-1].startswith(b"c OK")
        c.send(f"a APPEND {box} {{{len(msg)}}}\r\n".encode())
        assert c.read_line(timeout=5).startswith(b"+ ")  # Dovecot's own "+ OK"
        c.send(msg + b"\r\n")
        assert c.read_until_tagged("a")[-1].startswith(b"a OK [APPENDUID")
        # refused before the literal: the client gets the tagged answer instead of "+"
        c.send(b"b APPEND INBOX (\\Foo) {5}\r\n")
        assert c.read_until_tagged("b")[-1].startswith(b"b BAD")
        assert c.command("n", "NOOP")[-1].startswith(b"n OK")
    finally:
        c.close()


def test_zero_length_literal_on_a_command_without_arguments_gets_bad_not_a_traceback(
        gw, dovecot):
    pre = LineClient.implicit(gw)
    try:
        assert pre.command("a", "NOOP {0}")[-1].startswith(b"a BAD")
        assert pre.command("b", "NOOP")[-1].startswith(b"b OK")
    finally:
        pre.close()
    c = _session(gw)
    try:
        assert c.command("a", "NOOP {0}")[-1].startswith(b"a BAD")
        assert c.command("b", "NOOP")[-1].startswith(b"b OK")
    finally:
        c.close()
    _no_errors_logged(gw)


def test_select_ended_by_a_bare_lf_is_still_read_only(gw, dovecot):
    c = _session(gw, "--scope", "read-only")
    try:
        c.send(b"s SELECT INBOX\n")
        r = c.read_until_tagged("s")[-1]
        assert r.startswith(b"s OK [READ-ONLY]"), r
        assert c.command("n", "NOOP")[-1].startswith(b"n OK")
    finally:
        c.close()
    _no_errors_logged(gw)


def test_every_advertised_command_reaches_dovecot(gw, dovecot):
    c = _session(gw)
    try:
        caps = c.command("c", "CAPABILITY")[0].split()
        assert b"CONTEXT=SEARCH" in caps
        assert c.command("s", "SELECT INBOX")[-1].startswith(b"s OK")
        c.command("u", "SEARCH RETURN (UPDATE) ALL")
        r = c.command("x", 'CANCELUPDATE "u"')[-1]
        assert r.startswith(b"x OK"), r
    finally:
        c.close()


def test_a_longest_rfc2971_id_is_answered_before_login(gw):
    pairs = " ".join(f'"f{i:02d}" "{"v" * 1024}"' for i in range(30))
    c = LineClient.implicit(gw)
    try:
        r = c.command("i", f"ID ({pairs})")
        assert r[-1].startswith(b"i OK"), r[-1]
        assert c.command("n", "NOOP")[-1].startswith(b"n OK")
    finally:
        c.close()


@pytest.mark.parametrize("line", [
    "a APPEND INBOX {{c SELECT {box}",   # Dovecot's APPEND parser resumes mid-line
    'a APPEND INBOX "c SELECT {box}',
])
def test_an_append_that_does_not_parse_cannot_open_another_mailbox(gw, dovecot, line):
    secret = f"ap-{uuid.uuid4().hex[:8]}"
    assert dovecot.populate("alice", secret, 1, 500, tag=secret) == 1
    c = _session(gw, "--mailboxes", "INBOX")
    try:
        c.send(line.format(box=secret).encode() + b"\r\nz NOOP\r\n")
        seen = c.read_until_tagged("z", timeout=10)
        assert not any(x.startswith(b"c ") for x in seen), seen
        assert any(x.startswith(b"a BAD") for x in seen), seen
    finally:
        c.close()


def test_a_tag_dovecot_refuses_cannot_hide_a_literal(gw, dovecot):
    made = f"tg-{uuid.uuid4().hex[:8]}".encode()
    hidden = b"c2 CREATE " + made + b"\r\n"
    c = _session(gw)
    try:
        c.send(b"g1] SEARCH SUBJECT {%d+}\r\n" % len(hidden) + hidden + b"\r\nz NOOP\r\n")
        seen = c.read_until_tagged("z", timeout=10)
        assert not any(x.startswith(b"c2 ") for x in seen), seen
    finally:
        c.close()
    assert made not in _mailboxes(dovecot)


def test_a_line_after_idle_other_than_done_ends_the_session(gw, dovecot):
    made = f"id-{uuid.uuid4().hex[:8]}".encode()
    c = _session(gw)
    try:
        assert c.command("s", "SELECT INBOX")[-1].startswith(b"s OK")
        c.send(b"i IDLE\r\n")
        assert c.read_line(timeout=5).startswith(b"+ ")
        c.send(b'g2 LIST "" {%d+}\r\nc3 CREATE ' % (len(made) + 12) + made + b"\r\n\r\n")
        assert b"BYE" in c.expect_close(timeout=5)
    finally:
        c.close()
    assert made not in _mailboxes(dovecot)
