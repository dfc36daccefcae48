"""Where Dovecot 2.3.19 reads a literal, and where it does not.

Measured against the real Dovecot by ``tests/e2e/test_dovecot_literal_reading.py``; every
value here is asserted there, so a Dovecot upgrade that changes one fails that test.

Why it matters. After any command -- success or error -- Dovecot skips to the end of the
current line (``client->input_skip_line``). A literal Dovecot did not read is therefore
*not* skipped: its body is read as the next commands. If a proxy believed that body was
literal data, a client could hide commands in it that no scope check ever saw. The
opposite also happens: where Dovecot reads a literal the proxy did not see, Dovecot
swallows bytes the proxy took for the next command(s).

What the gateway takes from this table. The relay does not predict which literals Dovecot
reads: it sends every literal as ``{n}`` and lets Dovecot's ``+`` or tagged refusal decide
(``gateway/imap/commands.py``, rule 3), so most rows here are documentation of why that is
necessary. It still relies on these rows, each checked against the gateway's own tables by
``test_dovecot_literal_reading.py`` where a table exists:

* where a literal marker may start, leading zeros, and ``{}``/``{+}`` (the framer places a
  marker exactly where Dovecot starts an argument; anything else is a framing error);
* :data:`ARGS_READ` for fixed-arity commands (``MAX_ARGS``: such commands are read whole
  and extra arguments refused, since Dovecot would answer before reading them);
* APPEND's mid-line resume (:data:`RESUME_CASES`; every APPEND segment must tokenize);
* the line after IDLE (only ``DONE`` is forwarded) and :data:`TAG_REFUSED_BYTES` (the
  gateway refuses at least these tags itself).

How a probe works (``probe_payload``)::

    t1 <command line up to the marker>{8+}\\r\\n  z1 NOOP\\r\\n  t2 NOOP\\r\\n

If Dovecot reads the literal, its 8 bytes are ``z1 NOOP\\r`` and the ``\\n`` ends t1's line;
otherwise ``z1 NOOP`` runs as a command. So: Dovecot answers ``z1`` <=> it did NOT read the
literal. The same probe with a synchronizing ``{8}`` must agree, and Dovecot sends its
``+ OK`` exactly when it reads. Commands whose effects are not confined to the probe
mailbox ``litprobe`` (or ``litprobe-*`` names) are not probed with side effects.

Summary of Dovecot's rules (2.3.19, ``src/lib-imap/imap-parser.c``, ``imap-client.c``):

* A command handler reads either all its arguments up to the end of the line or a fixed
  number N of them (``client_read_args(cmd, N, ...)``); then the rest of the line --
  literal markers included -- is skipped unread. :data:`ARGS_READ` is that N per command.
  The tag and command name are read first; an invalid tag (:data:`TAG_REFUSED_BYTES`), an
  unknown or invalid command name means no argument at all is read.
* A literal starts wherever an *argument* may start: after a space, after ``(``, but also
  directly after ``)``, after a closing ``"``, and directly after a previous literal's body
  (no space needed). Inside an atom (``x{8+}``) it is an error, not a literal.
* ``{}`` and ``{+}`` (no digits) are empty literals, and the command's line goes on after
  their CRLF.
* The size may have any number of leading zeros (``{0000000000000000000000000008+}``:
  the only limit is the line length). On a non-APPEND command a size that does not fit
  in what is left of ``imap_max_line_length`` (65536), or one that overflows, ends the
  connection (``* BYE Literal size too large``).
* ``~{n}`` (literal8) is accepted only by APPEND, and not as its mailbox name; everywhere
  else it is a syntax error and the literal is NOT read.
* Any syntax error before the marker (``)``, 8-bit in an atom, NUL or CR in a quoted
  string, a bare CR, ...) means the marker is NOT read: BAD, skip the line.
* A line whose size so far (text and non-APPEND literal bodies) exceeds 65536 bytes gets
  ``BAD IMAP command line too large`` at the next argument: a later marker is NOT read.
* APPEND checks flags and the date *before* it reads the message literal: an invalid
  system flag (``\\Bogus``, ``\\Recent``) or date means the message literal is NOT read,
  while other errors (extra atoms, a second flag list) still read it. Inside
  ``CATENATE (...)`` an unknown part name, or a literal not preceded by ``TEXT``, is not
  read.
* APPEND does not skip the rest of its line after a *syntax* error in its arguments:
  Dovecot answers BAD and parses the remainder of the line, from where its parser
  stopped, as a new command. ``a APPEND INBOX {c SELECT Secret`` runs ``c SELECT Secret``
  (no literal involved); so does ``a APPEND INBOX "c SELECT Secret`` (see
  :data:`RESUME_CASES`). Other commands skip the line.
* After ``IDLE`` the next line is read as plain text (expecting ``DONE``): a literal marker
  on it is NOT a literal; a line other than DONE ends IDLE with ``BAD Expected DONE``.
* After ``}`` only CRLF or LF may follow (``{8+} `` or ``{8+}\\r\\r\\n``: error, not read).
* Dovecot ends the connection after 20 invalid commands in a row (``Too many invalid IMAP
  commands``), and answers pipelined commands out of order (a NOOP after the commands
  before it): not about literals, but about anyone comparing its answers.

Two client-triggerable assertion failures of Dovecot 2.3.19 were met while probing (each
kills only that client's own imap process): ``a IDLE`` ``DONE`` ``b COPY 1 INBOX``
pipelined (Panic: cmd-copy.c:113 fetch_and_copy, o_stream_is_corked) and
``a SETMETADATA "" (x`` with metadata disabled (Panic: imap-client.c:668
client_default_send_tagline, !cmd->tagline_sent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DOVECOT_VERSION: Final = "2.3.19"
#: The probe mailbox (created by the test, holds two messages while probing).
PROBE_MAILBOX: Final = "litprobe"
#: The literal size every probe uses: the 8 bytes ``z1 NOOP\r``.
PROBE_SIZE: Final = 8


def probe_payload(prefix: bytes, marker: bytes = b"{8+}") -> bytes:
    """The bytes of one probe: ``prefix`` is everything of the line before the marker,
    tag included."""
    return prefix + marker + b"\r\nz1 NOOP\r\nt2 NOOP\r\n"


#: Realistic leading arguments per command; probe k puts the literal after the first k.
#: Arguments that name a mailbox use the probe mailbox or names that do not exist
#: (``litprobe-nx``), so COPY/MOVE/RENAME/DELETE change nothing.
PROBE_ARGS: Final[dict[str, tuple[bytes, ...]]] = {
    # -- RFC 3501 --
    "CAPABILITY": (b"x", b"y", b"z", b"w", b"v"),
    "NOOP": (b"x", b"y", b"z", b"w", b"v"),
    "LOGOUT": (),  # special probe: see the test (Dovecot hangs up)
    "SELECT": (b"litprobe", b"(CONDSTORE)", b"x", b"y", b"z"),
    "EXAMINE": (b"litprobe", b"(CONDSTORE)", b"x", b"y", b"z"),
    "CREATE": (b"litprobe-c", b"(USE (\\Drafts))", b"x", b"y", b"z"),
    "DELETE": (b"litprobe-nx", b"x", b"y", b"z", b"w"),
    "RENAME": (b"litprobe-nx", b"litprobe-ny", b"x", b"y", b"z"),
    "SUBSCRIBE": (b"litprobe", b"x", b"y", b"z", b"w"),
    "UNSUBSCRIBE": (b"litprobe", b"x", b"y", b"z", b"w"),
    "LIST": (b'""', b"*", b"RETURN", b"(SUBSCRIBED)", b"x"),
    "LSUB": (b'""', b"*", b"x", b"y", b"z"),
    "STATUS": (b"litprobe", b"(MESSAGES)", b"x", b"y", b"z"),
    "APPEND": (b"litprobe", b"(\\Seen)", b'"01-Jan-2024 00:00:00 +0000"',
               b"{3+}\r\nabc", b"(\\Flagged)"),
    "CHECK": (b"x", b"y", b"z", b"w", b"v"),
    "CLOSE": (b"x", b"y", b"z", b"w", b"v"),
    "EXPUNGE": (b"x", b"y", b"z", b"w", b"v"),
    "SEARCH": (b"RETURN", b"(MIN)", b"CHARSET", b"UTF-8", b"SUBJECT"),
    "FETCH": (b"1", b"(FLAGS)", b"(CHANGEDSINCE 1)", b"x", b"y"),
    "STORE": (b"1", b"+FLAGS", b"(\\Seen)", b"x", b"y"),
    "COPY": (b"1", b"litprobe-nx", b"x", b"y", b"z"),
    "UID FETCH": (b"1", b"(FLAGS)", b"(CHANGEDSINCE 1)", b"x", b"y"),
    "UID STORE": (b"1", b"+FLAGS", b"(\\Seen)", b"x", b"y"),
    "UID SEARCH": (b"RETURN", b"(MIN)", b"CHARSET", b"UTF-8", b"SUBJECT"),
    "UID COPY": (b"1", b"litprobe-nx", b"x", b"y", b"z"),
    # -- extensions Dovecot announces --
    "IDLE": (),  # special probe: see the test (the next line is IDLE's)
    "NAMESPACE": (b"x", b"y", b"z", b"w", b"v"),
    "UNSELECT": (b"x", b"y", b"z", b"w", b"v"),
    "ID": (b'("name" "probe")', b"x", b"y", b"z", b"w"),
    "ENABLE": (b"CONDSTORE", b"QRESYNC", b"x", b"y", b"z"),
    "MOVE": (b"1", b"litprobe-nx", b"x", b"y", b"z"),
    "UID MOVE": (b"1", b"litprobe-nx", b"x", b"y", b"z"),
    "UID EXPUNGE": (b"1", b"x", b"y", b"z", b"w"),
    "SORT": (b"(DATE)", b"UTF-8", b"ALL", b"SUBJECT", b"x"),
    "UID SORT": (b"(DATE)", b"UTF-8", b"ALL", b"SUBJECT", b"x"),
    "THREAD": (b"REFERENCES", b"UTF-8", b"ALL", b"SUBJECT", b"x"),
    "UID THREAD": (b"REFERENCES", b"UTF-8", b"ALL", b"SUBJECT", b"x"),
    "NOTIFY": (b"SET", b"(SELECTED (MessageNew MessageExpunge))", b"(PERSONAL (MailboxName))",
               b"x", b"y"),
    "CANCELUPDATE": (b'"x1"', b'"x2"', b"x", b"y", b"z"),  # CONTEXT=SEARCH
    # -- registered by Dovecot without a capability (or disabled in this config) --
    "XLIST": (b'""', b"*", b"x", b"y", b"z"),
    "GETMETADATA": (b'""', b"/private/comment", b"x", b"y", b"z"),
    "SETMETADATA": (b'""', b"(/private/comment NIL)", b"x", b"y", b"z"),
    "X-CANCEL": (b"abc", b"x", b"y", b"z", b"w"),
    "X-STATE": (b"x", b"y", b"z", b"w", b"v"),
    "GENURLAUTH": (b"x", b"y", b"z", b"w", b"v"),
    "URLFETCH": (b"x", b"y", b"z", b"w", b"v"),
    "RESETKEY": (b"x", b"y", b"z", b"w", b"v"),
    # COMPRESS (imap_zlib): an invalid mechanism on purpose; DEFLATE would switch streams.
    "COMPRESS": (b"x", b"y", b"z", b"w", b"v"),
    # -- pre-auth commands, and names Dovecot does not know --
    "LOGIN": (b"alice", b"alicepass", b"x", b"y", b"z"),
    "AUTHENTICATE": (b"PLAIN", b"x", b"y", b"z", b"w"),
    "STARTTLS": (b"x", b"y", b"z", b"w", b"v"),
    "UNAUTHENTICATE": (b"x", b"y", b"z", b"w", b"v"),
    "GETQUOTAROOT": (b"litprobe", b"x", b"y", b"z", b"w"),
    "REPLACE": (b"1", b"litprobe", b"x", b"y", b"z"),
    "XYZZY": (b"x", b"y", b"z", b"w", b"v"),
}

#: How many leading arguments Dovecot 2.3.19 reads per command (``None``: all of them, to
#: the end of the line). A literal that is argument number p (1-based) is read iff
#: ``ARGS_READ[cmd] is None or p <= ARGS_READ[cmd]``; a literal nested in a list counts as
#: the list's position. Same in authenticated and selected state (both are probed).
ARGS_READ: Final[dict[str, int | None]] = {
    # whole line
    "SELECT": None, "EXAMINE": None, "LIST": None, "LSUB": None, "XLIST": None,
    "APPEND": None, "SEARCH": None, "FETCH": None, "STORE": None, "UID FETCH": None,
    "UID STORE": None, "UID SEARCH": None, "SORT": None, "UID SORT": None, "THREAD": None,
    "UID THREAD": None, "ID": None, "ENABLE": None, "NOTIFY": None, "CANCELUPDATE": None,
    "GETMETADATA": None, "COMPRESS": None,
    # fixed arity
    "CREATE": 1, "DELETE": 1, "SUBSCRIBE": 1, "UNSUBSCRIBE": 1, "UID EXPUNGE": 1,
    "X-CANCEL": 1,
    "RENAME": 2, "STATUS": 2, "COPY": 2, "UID COPY": 2, "MOVE": 2, "UID MOVE": 2,
    "SETMETADATA": 2,
    # no arguments read at all
    "CAPABILITY": 0, "NOOP": 0, "LOGOUT": 0, "IDLE": 0, "CHECK": 0, "CLOSE": 0,
    "EXPUNGE": 0, "NAMESPACE": 0, "UNSELECT": 0,
    # disabled in this configuration: refused before any argument is read
    "X-STATE": 0, "GENURLAUTH": 0, "URLFETCH": 0, "RESETKEY": 0,
    # pre-auth commands after login, and unknown commands: nothing is read
    "LOGIN": 0, "AUTHENTICATE": 0, "STARTTLS": 0, "UNAUTHENTICATE": 0,
    "GETQUOTAROOT": 0, "REPLACE": 0, "XYZZY": 0,
}


def literal_read(command: str, position: int) -> bool:
    """Whether Dovecot reads a literal given as argument ``position`` (1-based)."""
    n = ARGS_READ[command]
    return n is None or position <= n


@dataclass(frozen=True)
class LiteralCase:
    """One placement of a literal marker and whether Dovecot reads the literal.

    ``prefix``: the bytes before the marker (tag and command included); ``marker``: the
    literal marker, always announcing the 8 bytes ``z1 NOOP\\r``.
    """

    name: str
    prefix: bytes
    reads: bool
    marker: bytes = b"{8+}"
    why: str = ""


#: Placement and syntax cases (SEARCH reads its whole line, so only the placement decides).
SYNTAX_CASES: Final[tuple[LiteralCase, ...]] = (
    # -- where a literal may start --
    LiteralCase("after space", b"t1 SEARCH SUBJECT ", True),
    LiteralCase("two spaces before", b"t1 SEARCH SUBJECT  ", True,
                why="Dovecot skips any number of spaces between arguments"),
    LiteralCase("inside an open list", b"t1 SEARCH (SUBJECT ", True),
    LiteralCase("right after (", b"t1 SEARCH (", True),
    LiteralCase("right after ) no space", b"t1 SEARCH (ALL)", True,
                why="a literal may start right after ')'"),
    LiteralCase("right after closing quote", b't1 SEARCH SUBJECT "x"', True,
                why="a literal may start right after a quoted string"),
    LiteralCase("right after a literal, no space", b"t1 SEARCH SUBJECT {3+}\r\nabc", True,
                why="after a literal body the next argument may follow without a space"),
    LiteralCase("after a literal and a space", b"t1 SEARCH SUBJECT {3+}\r\nabc ", True),
    LiteralCase("glued to an atom", b"t1 SEARCH x", False,
                why="'{' inside an atom: 'Invalid characters in atom'"),
    LiteralCase("glued to NIL", b"t1 SEARCH NIL", False),
    # -- marker forms --
    LiteralCase("synchronizing", b"t1 SEARCH SUBJECT ", True, marker=b"{8}"),
    LiteralCase("leading zeros (28 digits)", b"t1 SEARCH SUBJECT ", True,
                marker=b"{0000000000000000000000000008+}"),
    LiteralCase("leading zeros (20 digits, sync)", b"t1 SEARCH SUBJECT ", True,
                marker=b"{00000000000000000008}"),
    LiteralCase("leading zeros (5000 digits)", b"t1 SEARCH SUBJECT ", True,
                marker=b"{" + b"0" * 5000 + b"8+}"),
    LiteralCase("no digits {}", b"t1 SEARCH SUBJECT ", True, marker=b"{}",
                why="an empty literal: Dovecot sends '+ OK' and t1's line goes on with "
                    "'z1 NOOP' (so z1 is not run)"),
    LiteralCase("no digits {+}", b"t1 SEARCH SUBJECT ", True, marker=b"{+}"),
    LiteralCase("no digits ~{}", b"t1 SEARCH SUBJECT ", False, marker=b"~{}"),
    LiteralCase("literal8 on SEARCH", b"t1 SEARCH SUBJECT ", False, marker=b"~{8+}",
                why="'literal8 not allowed here'"),
    LiteralCase("literal8 on LIST", b't1 LIST "" ', False, marker=b"~{8+}"),
    LiteralCase("literal8 on FETCH", b"t1 FETCH 1 (BODY[HEADER.FIELDS (", False,
                marker=b"~{8+}"),
    LiteralCase("literal8 on STATUS mailbox", b"t1 STATUS ", False, marker=b"~{8+}"),
    LiteralCase("literal8 on SELECT", b"t1 SELECT ", False, marker=b"~{8+}"),
    LiteralCase("literal8 on ID", b"t1 ID (", False, marker=b"~{8+}"),
    LiteralCase("literal8 sync on SEARCH", b"t1 SEARCH SUBJECT ", False, marker=b"~{8}"),
    LiteralCase("literal8 as APPEND message", b"t1 APPEND litprobe ", True, marker=b"~{8+}"),
    LiteralCase("literal8 as APPEND mailbox", b"t1 APPEND ", False, marker=b"~{8+}",
                why="APPEND accepts literal8 only where a message may start"),
    LiteralCase("literal8 in APPEND flag list", b"t1 APPEND litprobe (", True,
                marker=b"~{8+}"),
    LiteralCase("literal8 in APPEND UTF8 (", b"t1 APPEND litprobe UTF8 (", True,
                marker=b"~{8+}"),
    LiteralCase("plus twice", b"t1 SEARCH SUBJECT ", False, marker=b"{8++}"),
    LiteralCase("space inside braces", b"t1 SEARCH SUBJECT ", False, marker=b"{ 8+}"),
    LiteralCase("minus sign", b"t1 SEARCH SUBJECT ", False, marker=b"{-8+}"),
    LiteralCase("marker then space", b"t1 SEARCH SUBJECT ", False, marker=b"{8+} ",
                why="only CRLF or LF may follow '}'"),
    LiteralCase("marker then CR CR LF", b"t1 SEARCH SUBJECT ", False, marker=b"{8+}\r"),
    # -- a syntax error earlier on the line: the marker is never reached --
    LiteralCase("after unexpected )", b"t1 SEARCH ) ", False),
    LiteralCase("after 8-bit atom", b"t1 SEARCH \xff ", False),
    LiteralCase("after DEL in atom", b"t1 SEARCH a\x7fb ", False),
    LiteralCase("after control char in atom", b"t1 SEARCH a\x01b ", False),
    LiteralCase("after NUL in quoted string", b't1 SEARCH SUBJECT "a\x00b" ', False),
    LiteralCase("after NUL atom", b"t1 SEARCH \x00 ", False),
    LiteralCase("after bare CR", b"t1 SEARCH ALL\r ", False, why="'CR sent without LF'"),
    LiteralCase("after CR in quoted string", b't1 SEARCH SUBJECT "a\rb" ', False),
    LiteralCase("after unterminated quote", b't1 SEARCH SUBJECT "x\\" ', False),
    LiteralCase("after invalid literal size", b"t1 SEARCH { ", False),
    LiteralCase("8-bit inside a quoted string is fine", b't1 SEARCH SUBJECT "\xff" ', True),
    LiteralCase("control char in quoted string is fine", b't1 SEARCH SUBJECT "a\x01b" ', True),
    LiteralCase("% * ] \\ in atoms are fine", b"t1 SEARCH a%b a*b a]b a\\b ", True),
    # -- tag and command name --
    LiteralCase("tag with ]", b"t]1 SEARCH ", False, why="Dovecot: 'Invalid tag'"),
    LiteralCase("tag with 8-bit", b"t\xe91 SEARCH ", False),
    LiteralCase("tag with DEL is fine", b"t\x7f1 SEARCH ", True),
    LiteralCase("two spaces after tag", b"t1  SEARCH ", False, why="'Invalid command name'"),
    LiteralCase("tag only", b"t1 ", False),
    LiteralCase("empty line", b" ", False),
    LiteralCase("UID alone", b"t1 UID ", False),
    LiteralCase("two spaces after UID", b"t1 UID  FETCH 1 ", False),
    LiteralCase("lower-case command", b"t1 search subject ", True),
    LiteralCase("8-bit in command name", b"t1 SEARCH\xff ", False),
    # -- after IDLE, the next line is IDLE's --
    LiteralCase("on the line after IDLE", b't1 IDLE\r\nx1 LIST "" ', False,
                why="IDLE reads the next line as text; not DONE -> 'BAD Expected DONE'"),
    # -- APPEND: flags and date are checked before the message literal is read --
    LiteralCase("APPEND message", b"t1 APPEND litprobe ", True),
    LiteralCase("APPEND to a missing mailbox", b"t1 APPEND litprobe-nx ", True),
    LiteralCase("APPEND invalid mailbox name", b't1 APPEND "&" ', True),
    LiteralCase("APPEND invalid system flag", b"t1 APPEND litprobe (\\Bogus) ", False,
                why="'Invalid system flag' before the message literal"),
    LiteralCase("APPEND \\Recent flag", b"t1 APPEND litprobe (\\Recent) ", False),
    LiteralCase("APPEND keyword flag", b"t1 APPEND litprobe (foo) ", True),
    LiteralCase("APPEND invalid date", b't1 APPEND litprobe "bad date" ', False,
                why="'Invalid internal date' before the message literal"),
    LiteralCase("APPEND two flag lists", b"t1 APPEND litprobe (\\Seen) (\\Seen) ", True),
    LiteralCase("APPEND extra atom", b"t1 APPEND litprobe x ", True),
    LiteralCase("APPEND literal in open flag list", b"t1 APPEND litprobe (\\Seen ", True),
    LiteralCase("APPEND second message", b"t1 APPEND litprobe {3+}\r\nabc ", True),
    LiteralCase("APPEND second message no space", b"t1 APPEND litprobe {3+}\r\nabc", True),
    LiteralCase("APPEND atom after message", b"t1 APPEND litprobe {3+}\r\nabc x ", True),
    LiteralCase("APPEND invalid flag, 2nd message",
                b"t1 APPEND litprobe {3+}\r\nabc (\\Bogus) ", False),
    LiteralCase("CATENATE TEXT", b"t1 APPEND litprobe CATENATE (TEXT ", True),
    LiteralCase("CATENATE TEXT literal8", b"t1 APPEND litprobe CATENATE (TEXT ", True,
                marker=b"~{8+}", why="literal8 is accepted inside CATENATE"),
    LiteralCase("CATENATE after URL", b't1 APPEND litprobe CATENATE (URL "/x" TEXT ', True),
    LiteralCase("CATENATE second TEXT",
                b"t1 APPEND litprobe CATENATE (TEXT {3+}\r\nabc TEXT ", True),
    LiteralCase("CATENATE literal without TEXT",
                b"t1 APPEND litprobe CATENATE (TEXT {3+}\r\nabc ", False),
    LiteralCase("CATENATE unknown part", b"t1 APPEND litprobe CATENATE (BOGUS ", False),
    LiteralCase("CATENATE after the list", b"t1 APPEND litprobe CATENATE (TEXT {3+}\r\nabc) ",
                True, why="a further message"),
    # -- fixed arity: inside the last argument read vs after it --
    LiteralCase("STATUS inside item list", b"t1 STATUS litprobe (MESSAGES ", True),
    LiteralCase("STATUS after item list", b"t1 STATUS litprobe (MESSAGES) ", False),
    LiteralCase("SETMETADATA inside list", b't1 SETMETADATA "" (/private/comment ', True),
    LiteralCase("COPY third argument", b"t1 COPY 1 litprobe-nx ", False),
    LiteralCase("CREATE second argument (list)", b"t1 CREATE litprobe-c (", False),
)

#: Lines too long for Dovecot's ``imap_max_line_length`` (65536). ``payload`` is sent
#: followed by ``z1 NOOP\r\nt2 NOOP\r\n``; ``outcome`` is "read" (z1 not answered),
#: "not read" (z1 answered) or "bye" (Dovecot ends the connection).
LONG_LINE_CASES: Final[tuple[tuple[str, bytes, str], ...]] = (
    ("literal 60000 + 2000 bytes of atoms + literal",
     b"t1 SEARCH SUBJECT {60000+}\r\n" + b"x" * 60000 + b" ALL" * 500 + b" {8+}\r\n", "read"),
    ("literal 60000 + 6000 bytes of atoms + literal",
     b"t1 SEARCH SUBJECT {60000+}\r\n" + b"x" * 60000 + b" ALL" * 1500 + b" {8+}\r\n",
     "not read"),
    ("FETCH: literal 60000 + 6000 bytes + literal",
     b"t1 FETCH 1 (BODY[HEADER.FIELDS ({60000+}\r\n" + b"x" * 60000 + b" A" * 3000
     + b" {8+}\r\n", "not read"),
    ("literal 65000 then literal", b"t1 SEARCH SUBJECT {65000+}\r\n" + b"x" * 65000
     + b" {8+}\r\n", "read"),
    ("literals 30000 x 3 then literal",
     b"t1 SEARCH OR SUBJECT {30000+}\r\n" + b"x" * 30000 + b" SUBJECT {30000+}\r\n"
     + b"x" * 30000 + b" SUBJECT {30000+}\r\n" + b"y" * 30000 + b" {8+}\r\n", "bye"),
    ("one literal of 70000", b"t1 SEARCH SUBJECT {70000+}\r\n", "bye"),
    ("size 2^63-1", b"t1 SEARCH SUBJECT {9223372036854775807+}\r\n", "bye"),
    ("size 2^64", b"t1 SEARCH SUBJECT {18446744073709551616+}\r\n", "bye"),
    ("APPEND message of 70000 is fine",
     b"t1 APPEND litprobe {70000+}\r\n" + b"x" * 70000 + b" {8+}\r\n", "read"),
)

#: APPEND resumes parsing mid-line after a syntax error. ``(name, line, tag)``: Dovecot
#: answers ``tag`` (a command hidden inside the line) exactly when ``tag`` is not None.
#: Each line is followed by ``t2 NOOP``.
RESUME_CASES: Final[tuple[tuple[str, bytes, bytes | None], ...]] = (
    ("APPEND invalid literal size", b"t1 APPEND litprobe {z1 NOOP\r\n", b"z1"),
    ("APPEND digits then junk", b"t1 APPEND litprobe {1z1 NOOP\r\n", b"1z1"),
    ("APPEND unterminated quote", b't1 APPEND litprobe "z1 NOOP\r\n', b"z1"),
    ("APPEND after flags", b"t1 APPEND litprobe (\\Seen) {z1 NOOP\r\n", b"z1"),
    ("APPEND after a message", b"t1 APPEND litprobe {3+}\r\nabc {z1 NOOP\r\n", b"z1"),
    ("APPEND in CATENATE", b"t1 APPEND litprobe CATENATE (TEXT {z1 NOOP\r\n", b"z1"),
    ("APPEND hidden command skips a marker",
     b"t1 APPEND litprobe {z1 NOOP {8+}\r\nz2 NOOP\r\n", b"z2"),
    ("APPEND invalid flag: no resume", b"t1 APPEND litprobe (\\Bogus) z1 NOOP\r\n", None),
    ("APPEND mailbox only: no resume", b"t1 APPEND {z1 NOOP\r\n", None),
    ("SEARCH skips the line", b"t1 SEARCH {z1 NOOP\r\n", None),
    ("SEARCH quote skips the line", b't1 SEARCH SUBJECT "z1 NOOP\r\n', None),
    ("STATUS skips the line", b"t1 STATUS litprobe {z1 NOOP\r\n", None),
)

#: Bytes Dovecot refuses in a tag (``* BAD Error in IMAP tag: Invalid tag``, the line is
#: skipped unread): CTLs, 8-bit, and ``" % ( ) * + \\ ] {``. DEL (0x7f) is accepted.
TAG_REFUSED_BYTES: Final = frozenset(
    [*range(0x00, 0x20), *range(0x80, 0x100), *b'"%()*+\\]{'])
