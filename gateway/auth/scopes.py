"""App-password scopes as a command filter for the relay (pure).

A scope list is one access level plus an optional mailbox restriction, e.g.
``("read-only", "mailboxes=INBOX,Archive/*")``. ``build_filter`` turns it into a
``CommandFilter`` that the post-auth ``CommandStream`` consults for every command:

- ``read-only`` is an allowlist. Anything not on it (STORE, COPY, MOVE, EXPUNGE,
  APPEND, CREATE, DELETE, RENAME, SETACL, SETMETADATA, ...) is refused with
  ``NO [NOPERM]`` before it reaches the backend; SELECT is sent as EXAMINE so the
  backend opens the mailbox read-only and sets no ``\\Seen`` flag.
- ``mailboxes=`` refuses commands naming another mailbox (and those whose mailbox
  the stream could not read, e.g. a literal) with ``NO [NOPERM]``; LIST/LSUB answers
  are filtered on the way back (``gateway.imap.listfilter``). It is an allowlist too:
  only commands whose mailbox arguments are all known and checked pass (RENAME's
  destination included); NOTIFY, URLFETCH, GETMETADATA, ... could name other mailboxes
  in places no filter reads, so they are refused. APPEND with CATENATE is refused by
  the command stream (its URLs name source mailboxes).

An allowlist rather than a denylist: a command added to IMAP tomorrow is refused by
a read-only credential until someone decides it only reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from gateway.imap.commands import CommandFilter, CommandInfo, Verdict
from gateway.imap.framing import strip_eol
from gateway.imap.tokens import ParseError, as_astring, parse_head, tokenize

READ_ONLY_COMMANDS = frozenset(
    """EXAMINE FETCH SEARCH ESEARCH SORT THREAD STATUS LIST LSUB XLIST NAMESPACE IDLE NOOP
    CHECK CLOSE UNSELECT ENABLE ID CAPABILITY LOGOUT GETQUOTA GETQUOTAROOT MYRIGHTS
    CANCELUPDATE""".split()
) | {"UID FETCH", "UID SEARCH", "UID SORT", "UID THREAD"}

#: Commands a mailbox-scoped credential may use: no mailbox argument at all, or only
#: mailbox arguments that CommandInfo.mailbox (or the RENAME check) covers.
MAILBOX_SCOPED_COMMANDS = frozenset(
    """CAPABILITY NOOP LOGOUT ID ENABLE IDLE NAMESPACE CHECK CLOSE UNSELECT EXPUNGE
    SELECT EXAMINE STATUS LIST LSUB XLIST CREATE DELETE RENAME SUBSCRIBE UNSUBSCRIBE APPEND
    FETCH STORE SEARCH SORT THREAD COPY MOVE GETQUOTAROOT MYRIGHTS GETACL CANCELUPDATE""".split()
) | {"UID FETCH", "UID STORE", "UID SEARCH", "UID SORT", "UID THREAD", "UID COPY", "UID MOVE",
     "UID EXPUNGE"}

_SELECT = re.compile(rb"^(\S+ )SELECT(?=[ \r\n])", re.IGNORECASE)


def refusal(tag: bytes, text: str = "Not permitted by this credential's scope.") -> bytes:
    return tag + b" NO [NOPERM] " + text.encode("ascii") + b"\r\n"


def parse_mailbox_patterns(scopes: Sequence[str]) -> tuple[str, ...] | None:
    """The ``mailboxes=`` patterns of a scope list, or None when mailboxes are unrestricted."""
    for scope in scopes:
        if scope.startswith("mailboxes="):
            return tuple(p.strip() for p in scope[len("mailboxes="):].split(",") if p.strip())
    return None


def mailbox_matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """``INBOX`` matches case-insensitively (RFC 9051 5.1); ``X/*`` matches X and below."""

    def allowed(name: str) -> bool:
        for pattern in patterns:
            if pattern.upper() == "INBOX" and name.upper() == "INBOX":
                return True
            if pattern == "*":
                return True
            if pattern.endswith("/*"):
                base = pattern[:-2]
                if name == base or name.startswith(base + "/"):
                    return True
            elif name == pattern:
                return True
        return False

    return allowed


def _rename_target_allowed(line: bytes, allowed: Callable[[str], bool]) -> bool:
    """RENAME's destination must be permitted too; unreadable (e.g. a literal) = no."""
    head = parse_head(strip_eol(line))
    if isinstance(head, ParseError):
        return False
    args = tokenize([(strip_eol(line), None)], start=head[2], max_tokens=2)
    if isinstance(args, ParseError) or len(args) < 2:
        return False
    raw = as_astring(args[1])
    return raw is not None and allowed(raw.decode("utf-8", "surrogateescape"))


def build_filter(scopes: Sequence[str]) -> CommandFilter | None:
    """A CommandFilter enforcing ``scopes``; None for an unrestricted (``full``) credential."""
    read_only = "read-only" in scopes
    patterns = parse_mailbox_patterns(scopes)
    if not read_only and patterns is None:
        return None
    allowed = mailbox_matcher(patterns) if patterns is not None else None

    def check(info: CommandInfo) -> Verdict:
        if read_only and info.name not in READ_ONLY_COMMANDS and info.name != "SELECT":
            return Verdict.REFUSE(refusal(info.tag), "scope")
        if allowed is not None and info.name not in MAILBOX_SCOPED_COMMANDS:
            return Verdict.REFUSE(refusal(info.tag), "scope")
        if allowed is not None and info.name == "RENAME" and not _rename_target_allowed(
                info.line, allowed):
            return Verdict.REFUSE(
                refusal(info.tag, "Mailbox not permitted by this credential."), "scope")
        if allowed is not None and info.name not in ("LIST", "LSUB", "XLIST"):
            if info.mailbox_unknown or (info.mailbox is not None and not allowed(info.mailbox)):
                return Verdict.REFUSE(
                    refusal(info.tag, "Mailbox not permitted by this credential."), "scope")
        if read_only and info.name == "SELECT":
            return Verdict.REWRITE(_SELECT.sub(rb"\1EXAMINE", info.line, count=1))
        return Verdict.FORWARD

    return check
