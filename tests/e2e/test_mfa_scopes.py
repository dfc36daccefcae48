"""App-password scopes enforced in the relay, checked on Dovecot's files: a read-only
credential cannot change a mailbox (not a flag, not a message, not a folder), and a
``mailboxes=INBOX`` credential neither opens nor sees other mailboxes."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.support.imap import make_message
from tests.support.mfa import (
    app_password_gateway,
    app_password_session,
    direct,
    maildir_snapshot,
)

pytestmark = pytest.mark.e2e

NOPERM = re.compile(rb"^\w+ NO \[NOPERM\]")


@pytest.fixture
def scoped(gateway, tmp_path):
    gw = app_password_gateway(gateway, tmp_path)
    return lambda *scope_args: app_password_session(gw, *scope_args)


def _flags(dovecot, box: str) -> list[bytes]:
    """FLAGS of every message, read with a full-rights session straight to Dovecot."""
    c = direct(dovecot)
    try:
        assert c.command("e", f'EXAMINE "{box}"')[-1].startswith(b"e OK")
        return [r for r in c.command("f", "FETCH 1:* (FLAGS)") if b"FETCH" in r]
    finally:
        c.close()


def test_read_only_refuses_every_change_and_leaves_dovecot_untouched(scoped, dovecot):
    box = f"ro-{uuid.uuid4().hex[:8]}"
    assert dovecot.populate("alice", box, 3, 1500, tag=box) == 3
    before_flags = _flags(dovecot, box)  # also lets Dovecot move new/ to cur/ first
    before = maildir_snapshot(dovecot)

    c = scoped("--scope", "read-only")
    try:
        sel = c.command("s", f'SELECT "{box}"')
        assert sel[-1].startswith(b"s OK [READ-ONLY]"), sel  # sent as EXAMINE
        body = c.command("f", "FETCH 1 BODY[]")
        assert make_message(0, 1500, box) in b"".join(body), body[:1]
        assert body[-1].startswith(b"f OK"), body[-1]

        msg = make_message(99, 500, box)
        refused = {
            "STORE": "STORE 1 +FLAGS (\\Deleted)",
            "UID STORE": "UID STORE 1:* +FLAGS (\\Seen)",
            "COPY": "COPY 1 INBOX",
            "MOVE": "MOVE 1 INBOX",
            "UID MOVE": "UID MOVE 1:* INBOX",
            "EXPUNGE": "EXPUNGE",
            "UID EXPUNGE": "UID EXPUNGE 1:*",
            "CREATE": f'CREATE "{box}-new"',
            "DELETE": f'DELETE "{box}"',
            "RENAME": f'RENAME "{box}" "{box}-renamed"',
        }
        for n, (name, cmd) in enumerate(refused.items()):
            r = c.command(f"r{n}", cmd)[-1]
            assert NOPERM.match(r), (name, r)
        # APPEND with a non-synchronizing literal: the gateway must swallow the message
        # bytes and stay in step with the client
        c.send(f'p APPEND "{box}" {{{len(msg)}+}}\r\n'.encode() + msg + b"\r\n")
        assert NOPERM.match(c.read_until_tagged("p")[-1])
        assert c.command("n", "NOOP")[-1].startswith(b"n OK")
        assert c.command("c", "CLOSE")[-1].startswith(b"c OK")  # CLOSE of EXAMINE expunges nothing
    finally:
        c.close()

    assert maildir_snapshot(dovecot) == before
    after_flags = _flags(dovecot, box)
    assert after_flags == before_flags and not any(b"\\Seen" in f for f in after_flags), after_flags


def test_mailbox_scope_hides_and_refuses_other_mailboxes(scoped, dovecot):
    d = direct(dovecot)
    try:
        d.command("c", "CREATE Archive")  # NO [ALREADYEXISTS] is fine
        assert d.command("l", 'LIST "" "Archive"')[0].startswith(b"* LIST")
    finally:
        d.close()

    c = scoped("--mailboxes", "INBOX")
    try:
        r = c.command("s", "SELECT Archive")[-1]
        assert NOPERM.match(r), r
        r = c.command("t", "STATUS Archive (MESSAGES)")[-1]
        assert NOPERM.match(r), r
        listed = c.command("l", 'LIST "" "*"')
        assert listed[-1].startswith(b"l OK"), listed
        names = [x for x in listed[:-1] if x.startswith(b"* LIST")]
        assert len(names) == 1 and names[0].rstrip().upper().endswith(b"INBOX"), listed
        assert c.command("i", "SELECT INBOX")[-1].startswith(b"i OK")
        # full access inside INBOX, but nothing may leave for another mailbox
        r = c.command("m", "COPY 1:* Archive")[-1]
        assert NOPERM.match(r), r
    finally:
        c.close()


def test_binary_literal_cannot_smuggle_commands_past_a_read_only_scope(scoped, dovecot):
    """Dovecot answers a ``~{n}`` literal outside APPEND with BAD without
    reading it and runs its body as commands. The gateway must refuse it and drop the body."""
    box = f"smug-{uuid.uuid4().hex[:8]}"
    assert dovecot.populate("alice", box, 2, 800, tag=box) == 2
    _flags(dovecot, box)
    before = maildir_snapshot(dovecot)
    hidden = (f'z1 SELECT "{box}"\r\nz2 STORE 1:* +FLAGS (\\Deleted \\Seen)\r\n'
              f"z3 EXPUNGE\r\nz4 CREATE {box}-made\r\n").encode()
    c = scoped("--scope", "read-only")
    try:
        c.send(b'a LIST "" ~{%d+}\r\n' % len(hidden) + hidden + b"\r\n")
        answer = c.read_until_tagged("a")
        assert answer[-1].startswith(b"a BAD"), answer
        c.send(b"b ID ~{21}\r\n")  # the synchronizing form: no "+", a BAD instead
        assert c.read_until_tagged("b")[-1].startswith(b"b BAD")
        assert c.command("n", "NOOP")[-1].startswith(b"n OK")
    finally:
        c.close()
    assert maildir_snapshot(dovecot) == before


def test_catenate_cannot_read_another_mailbox(scoped, dovecot):
    """APPEND ... CATENATE (URL "/Other/;UID=1") copies another mailbox's
    message into INBOX under a mailboxes=INBOX credential."""
    secret = f"sec-{uuid.uuid4().hex[:8]}"
    assert dovecot.populate("alice", secret, 1, 600, tag=secret) == 1
    before = maildir_snapshot(dovecot)
    c = scoped("--mailboxes", "INBOX")
    try:
        caps = c.command("c", "CAPABILITY")[0].upper()
        assert b"CATENATE" not in caps and b"URL-PARTIAL" not in caps, caps
        r = c.command("a", f'APPEND INBOX CATENATE (URL "/{secret}/;UID=1")')[-1]
        assert NOPERM.match(r), r
    finally:
        c.close()
    assert maildir_snapshot(dovecot) == before
