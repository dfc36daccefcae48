"""Scope filters as the relay applies them (pure: CommandInfo in, Verdict out)."""

from __future__ import annotations

from gateway.auth.scopes import build_filter
from gateway.imap.commands import CommandInfo


def info(line: bytes, name: str, mailbox: str | None = None, unknown: bool = False):
    return CommandInfo(line.split(b" ", 1)[0], name, mailbox, unknown, line=line)


def test_full_scope_has_no_filter():
    assert build_filter(("full",)) is None


def test_read_only_refuses_writes_and_rewrites_select():
    check = build_filter(("read-only",))
    for name in ("STORE", "UID STORE", "COPY", "MOVE", "EXPUNGE", "APPEND", "CREATE",
                 "DELETE", "RENAME", "SETACL", "SETMETADATA", "UID EXPUNGE", "NOTIFY"):
        v = check(info(b"a " + name.encode() + b" x\r\n", name))
        assert v.action == "refuse" and b"a NO [NOPERM]" in v.data, name
    v = check(info(b"s select INBOX\r\n", "SELECT", "INBOX"))
    assert v.action == "rewrite" and v.data == b"s EXAMINE INBOX\r\n"
    assert check(info(b"f UID FETCH 1 BODY[]\r\n", "UID FETCH")).action == "forward"


def test_mailbox_scope_checks_every_mailbox_argument():
    check = build_filter(("full", "mailboxes=INBOX,Archive/*"))
    assert check(info(b"a SELECT inbox\r\n", "SELECT", "inbox")).action == "forward"
    assert check(info(b"a SELECT Archive/2024\r\n", "SELECT", "Archive/2024")).action == "forward"
    assert check(info(b"a SELECT Secret\r\n", "SELECT", "Secret")).action == "refuse"
    assert check(info(b"a SELECT {6}\r\n", "SELECT", None, True)).action == "refuse"
    # RENAME: the destination counts too
    ok = info(b"a RENAME Archive/a Archive/b\r\n", "RENAME", "Archive/a")
    out = info(b"a RENAME Archive/a Other\r\n", "RENAME", "Archive/a")
    lit = info(b"a RENAME Archive/a {5}\r\n", "RENAME", "Archive/a")
    assert check(ok).action == "forward"
    assert check(out).action == "refuse" and check(lit).action == "refuse"
    # commands that could name mailboxes where no filter reads them
    for name in ("NOTIFY", "URLFETCH", "GETMETADATA", "SETMETADATA", "ESEARCH", "GENURLAUTH"):
        assert check(info(b"a " + name.encode() + b" x\r\n", name)).action == "refuse", name
