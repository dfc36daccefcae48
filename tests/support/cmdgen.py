"""Random client command streams for the differential framing test
(``tests/e2e/test_differential_framing.py``), the ways to cut them into chunks, and a
minimizer for failing inputs. The gateway side of that test is ``tests/support/relaydrive``.

The generator writes IMAP as a client would -- and as an attacker would: literals of every
form (``{n}`` ``{n+}`` ``~{n}`` ``~{n+}``, leading zeros, huge digit counts, size 0, sizes
off by one), markers glued to ``)`` / ``"`` / a previous literal, syntax errors before a
marker, 8-bit bytes, NUL, bare CR and LF, odd tags, IDLE misuse, APPEND with bad flags or
dates, lines past Dovecot's 64 KiB limit, extra arguments after fixed-arity commands -- and
above all literal bodies that are themselves commands (``s1 NOOP\\r\\n``): if the gateway
and Dovecot disagree about a literal, such a body runs on Dovecot under a tag the gateway
never saw as a command.

Tags: ``g<n>`` for the commands the generator means (now and then one is used twice),
``s<n>`` for command-looking literal bodies (smuggling candidates, each used once),
``zz9<x>`` for the sentinels the harness appends. Every stream is reproducible from
``(seed, index)``; pure Python, no I/O.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# -- building blocks ------------------------------------------------------------------------


@dataclass(frozen=True)
class Marker:
    """A literal marker, serialized with its line end. Its size is ``size`` when given,
    else the serialized length of the ``follow`` pieces right after it, plus ``delta``."""

    size: int | None = None
    follow: int = 1
    delta: int = 0
    sync: bool = False
    binary: bool = False
    zeros: int = 0
    eol: bytes = b"\r\n"
    #: ``{}`` / ``{+}``: no digits at all (Dovecot reads an empty literal).
    no_digits: bool = False

    def render(self, n: int) -> bytes:
        digits = b"" if self.no_digits else b"0" * self.zeros + str(n).encode()
        return ((b"~" if self.binary else b"") + b"{" + digits
                + (b"" if self.sync else b"+") + b"}" + self.eol)


Piece = bytes | Marker


def serialize(pieces: Sequence[Piece]) -> bytes:
    """Render pieces right to left, so a marker can measure what follows it."""
    done: list[bytes] = []  # reversed: done[-1] is the piece right after the current one
    for p in reversed(pieces):
        if isinstance(p, Marker):
            if p.size is not None:
                n = p.size
            else:
                follow = done[len(done) - p.follow:] if p.follow else []
                n = max(0, sum(len(x) for x in follow) + p.delta)
            done.append(p.render(n))
        else:
            done.append(p)
    return b"".join(reversed(done))


@dataclass
class GenStream:
    """One generated stream: its bytes and the recipe (which templates and mutations)."""

    data: bytes
    recipe: list[str] = field(default_factory=list)
    index: int = 0


_ATOMS = (b"INBOX", b"x", b"foo", b"ALL", b"a]b", b"NIL", b"1:*", b"%", b"*")
_TEXT = b"abcXYZ 019-_./%*]\\\"(){}~+\x00\x01\x7f\xc3\xa9\xff\r\n"
#: Syntax errors Dovecot reports before a later marker (so it never reads that literal).
_ERRORS = (b" )", b" \xff", b' "a\x00b"', b" ALL\r", b' "a\rb"', b" a\x7fb", b' "x\\"',
           b" {", b" a\x01b", b" x{1}")
_ZEROS = (1, 3, 17, 18, 19, 20, 24, 25, 26, 27, 40, 200)
_HUGE = (2**31, 2**32 + 7, 2**63 - 1, 2**64, 10**25)


class Generator:
    """``Generator(seed).stream(i)``: the i-th stream of this seed (independent of others)."""

    def __init__(self, seed: int | str, *, long_lines: bool = True, echo: bool = False) -> None:
        """``echo``: also write commands whose search key is a literal holding response
        lines (``cmd_echo``), which Dovecot echoes raw in its BAD reply."""
        self.seed = seed
        self.long_lines = long_lines
        self.echo = echo

    def stream(self, index: int) -> GenStream:
        b = _Builder(random.Random(f"{self.seed}:{index}"), self.long_lines, self.echo)
        pieces: list[Piece] = []
        for _ in range(b.rng.randint(1, 5)):
            pieces += b.command()
        return GenStream(serialize(pieces), b.notes, index)


class _Builder:
    def __init__(self, rng: random.Random, long_lines: bool, echo: bool = False) -> None:
        self.rng = rng
        self.long_lines = long_lines
        self.echo = echo
        self.n_cmd = 0
        self.n_smuggle = 0
        self.notes: list[str] = []

    # -- small parts ------------------------------------------------------------------------

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def tag(self) -> bytes:
        if self.n_cmd and self.chance(0.05):
            # A tag used twice: the relay tells a literal's refusal by its tag.
            self.notes.append("tag reused")
            return b"g%d" % self.rng.randint(1, self.n_cmd)
        self.n_cmd += 1
        tag = b"g%d" % self.n_cmd
        if self.chance(0.04):
            bad = self.rng.choice([b"]", b"\xe9", b"\x7f", b"+", b"{", b"%"])
            self.notes.append(f"tag+{bad!r}")
            tag += bad
        if self.chance(0.02):
            self.notes.append("two spaces after tag")
            tag += b" "
        return tag

    def smuggle(self) -> bytes:
        self.n_smuggle += 1
        return b"s%d NOOP\r\n" % self.n_smuggle

    def eol(self) -> bytes:
        if self.chance(0.05):
            e = self.rng.choice([b"\n", b"\r\r\n", b" \r\n"])
            self.notes.append(f"eol {e!r}")
            return e
        return b"\r\n"

    def body(self) -> list[Piece]:
        """A literal body: mostly command-looking, so that a literal Dovecot skips runs."""
        r = self.rng.random()
        if r < 0.45:
            return [self.smuggle() * self.rng.choice([1, 1, 2])]
        if r < 0.6:
            return [b"\r\n" + self.smuggle()]
        if r < 0.68:  # a command that itself announces a literal
            inner = self.smuggle()[:-len(b"NOOP\r\n")] + b"SEARCH SUBJECT "
            return [inner, Marker(follow=1), self.smuggle(), b"\r\n"]
        if r < 0.72:
            return [b""]
        n = self.rng.randint(1, 24)
        return [bytes(self.rng.choice(_TEXT) for _ in range(n))]

    def marker(self, follow: int) -> Marker:
        zeros = self.rng.choice(_ZEROS) if self.chance(0.12) else 0
        delta = self.rng.choice([-2, -1, 1, 2]) if self.chance(0.06) else 0
        size = self.rng.choice(_HUGE) if self.chance(0.01) else None
        sync = self.chance(0.4)
        binary = self.chance(0.08)
        eol = self.rng.choice([b"\n", b"\r\r\n", b" \r\n"]) if self.chance(0.03) else b"\r\n"
        m = Marker(size=size, follow=follow, delta=delta, sync=sync, binary=binary,
                   zeros=zeros, eol=eol)
        notes = [("~" if binary else "") + ("{n}" if sync else "{n+}")]
        if zeros:
            notes.append(f"zeros={zeros}")
        if delta:
            notes.append(f"delta={delta}")
        if size is not None:
            notes.append(f"size={size}")
        if eol != b"\r\n":
            notes.append(f"marker-eol={eol!r}")
        self.notes.append(" ".join(notes))
        return m

    def literal(self, body: list[Piece] | None = None) -> list[Piece]:
        """Separator, marker and body of one literal argument."""
        if self.chance(0.02):
            self.notes.append("{} without digits")
            return [self.sep_before_literal(), Marker(size=0, no_digits=True,
                                                      sync=self.chance(0.5))]
        body = self.body() if body is None else body
        return [self.sep_before_literal(), self.marker(len(body)), *body]

    def sep_before_literal(self) -> bytes:
        r = self.rng.random()
        if r < 0.08:
            err = self.rng.choice(_ERRORS)
            self.notes.append(f"error {err!r} before literal")
            return err + b" "
        if r < 0.11:
            self.notes.append("glued literal")
            return b""
        if r < 0.13:
            self.notes.append("two spaces before literal")
            return b"  "
        return b" "

    def astring(self) -> list[Piece]:
        """One astring argument, with its leading separator."""
        r = self.rng.random()
        if r < 0.4:
            return self.literal()
        if r < 0.7:
            return [b" " + self.rng.choice(_ATOMS)]
        text = bytes(self.rng.choice(b"abc XYZ-.\\\"") for _ in range(self.rng.randint(0, 6)))
        return [b' "' + text.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"']

    def mailbox(self) -> list[Piece]:
        r = self.rng.random()
        if r < 0.5:
            return [b" " + self.rng.choice([b"INBOX", b"inbox", b"fz-nx", b'"INBOX"'])]
        if r < 0.8:
            return self.literal([self.rng.choice([b"INBOX", b"fz-nx"])])
        return self.literal()

    def extra_args(self) -> list[Piece]:
        """Arguments beyond what a command takes (Dovecot leaves them unread)."""
        if not self.chance(0.25):
            return []
        self.notes.append("extra args")
        out: list[Piece] = []
        for _ in range(self.rng.randint(1, 2)):
            out += self.literal() if self.chance(0.7) else [b" x"]
        return out

    # -- commands ---------------------------------------------------------------------------

    def command(self) -> list[Piece]:
        templates: list[tuple[float, Callable[[], list[Piece]]]] = [
            (3, self.cmd_simple), (5, self.cmd_search), (3, self.cmd_fetch),
            (2, self.cmd_status), (3, self.cmd_list), (3, self.cmd_mailbox1),
            (3, self.cmd_mailbox2), (4, self.cmd_append), (1, self.cmd_id),
            (1, self.cmd_enable), (1, self.cmd_sort), (1, self.cmd_store), (1, self.cmd_idle),
            (3, self.cmd_reverse), (0.5, self.cmd_garbage),
        ]
        if self.long_lines:
            templates.append((0.3, self.cmd_long))
        if self.echo:
            templates.append((3, self.cmd_echo))
        weights = [w for w, _ in templates]
        fn = self.rng.choices([f for _, f in templates], weights)[0]
        self.notes.append(fn.__name__[4:])
        pieces = fn()
        if self.chance(0.03):  # a bare CR or NUL somewhere in a line
            idx = [i for i, p in enumerate(pieces) if isinstance(p, bytes) and len(p) > 1]
            if idx:
                i = self.rng.choice(idx)
                p = pieces[i]
                assert isinstance(p, bytes)
                at = self.rng.randint(1, len(p) - 1)
                junk = self.rng.choice([b"\r", b"\x00", b"\n"])
                self.notes.append(f"inserted {junk!r}")
                pieces[i] = p[:at] + junk + p[at:]
        return pieces

    def cmd_simple(self) -> list[Piece]:
        name = self.rng.choice([b"NOOP", b"CHECK", b"NAMESPACE", b"CAPABILITY", b"EXPUNGE",
                                b"noop", b"UID EXPUNGE 1"])
        return [self.tag() + b" " + name, *self.extra_args(), self.eol()]

    def search_key(self) -> list[Piece]:
        r = self.rng.random()
        if r < 0.2:
            return [b" ALL"]
        if r < 0.6:
            return [b" SUBJECT", *self.astring()]
        if r < 0.75:
            return [b" (SUBJECT", *self.astring(), b")"]
        if r < 0.85:
            return [b" OR SUBJECT", *self.astring(), b" FROM", *self.astring()]
        return [b" HEADER", *self.astring(), *self.astring()]

    def cmd_search(self) -> list[Piece]:
        out: list[Piece] = [self.tag() + self.rng.choice([b" SEARCH", b" UID SEARCH"])]
        if self.chance(0.2):
            out.append(b" CHARSET UTF-8")
        for _ in range(self.rng.randint(1, 3)):
            out += self.search_key()
        return [*out, self.eol()]

    def cmd_fetch(self) -> list[Piece]:
        head = self.tag() + self.rng.choice([b" FETCH 1", b" UID FETCH 1:*"])
        if self.chance(0.4):
            return [head + b" (FLAGS)", self.eol()]
        return [head + b" (BODY.PEEK[HEADER.FIELDS (SUBJECT", *self.astring(), b")])",
                self.eol()]

    def cmd_status(self) -> list[Piece]:
        return [self.tag() + b" STATUS", *self.mailbox(), b" (MESSAGES)", *self.extra_args(),
                self.eol()]

    def cmd_list(self) -> list[Piece]:
        name = self.rng.choice([b" LIST", b" LSUB", b" LIST (SUBSCRIBED)"])
        return [self.tag() + name, *self.astring(), *self.astring(), self.eol()]

    def cmd_mailbox1(self) -> list[Piece]:
        name = self.rng.choice([b" SELECT", b" EXAMINE", b" CREATE", b" DELETE", b" SUBSCRIBE",
                                b" UNSUBSCRIBE"])
        if name in (b" CREATE", b" DELETE"):  # nothing that really changes bob's mailboxes
            box: list[Piece] = self.literal([b"fz-nx"]) if self.chance(0.5) else [b" fz-nx"]
            if name == b" CREATE":
                box = [b" INBOX"] if self.chance(0.5) else self.literal([b"INBOX"])
        else:
            box = self.mailbox()
        return [self.tag() + name, *box, *self.extra_args(), self.eol()]

    def cmd_mailbox2(self) -> list[Piece]:
        name = self.rng.choice([b" RENAME fz-nx", b" COPY 1", b" MOVE 1", b" UID COPY 1",
                                b" UID MOVE 1"])
        target = self.literal([b"fz-nx2"]) if self.chance(0.5) else [b" fz-nx2"]
        return [self.tag() + name, *target, *self.extra_args(), self.eol()]

    def message(self) -> list[Piece]:
        msg = b"Subject: fz\r\n\r\n" + (self.smuggle() if self.chance(0.5) else b"hi\r\n")
        return self.literal([msg])

    def cmd_append(self) -> list[Piece]:
        out: list[Piece] = [self.tag() + b" APPEND", *self.mailbox()]
        if self.chance(0.35):
            flag = self.rng.choice([b"\\Seen", b"\\Seen \\Flagged", b"foo", b"\\Bogus",
                                    b"\\Recent", b""])
            out.append(b" (" + flag + b")")
        if self.chance(0.2):
            out.append(self.rng.choice([b' "01-Jan-2024 00:00:00 +0000"', b' "bad date"']))
        if self.chance(0.08):  # a syntax error: APPEND parses the rest as a new command
            self.notes.append("append resume")
            hidden = self.smuggle()[:-2]
            return [*out, self.rng.choice([b" {", b' "', b" {1"]) + hidden, self.eol()]
        if self.chance(0.15):
            part = self.rng.choice([b" (TEXT", b' (URL "/INBOX/;UID=1" TEXT', b" (BOGUS"])
            out += [b" CATENATE" + part, *self.message(), b")"]
        else:
            out += self.message()
        for _ in range(self.rng.choice([0, 0, 0, 1, 2])):  # MULTIAPPEND
            if self.chance(0.2):
                out.append(self.rng.choice([b" (\\Bogus)", b" x", b" (\\Seen)"]))
            out += self.message()
        return [*out, self.eol()]

    def cmd_id(self) -> list[Piece]:
        return [self.tag() + b' ID ("name"', *self.astring(), b")", self.eol()]

    def cmd_enable(self) -> list[Piece]:
        return [self.tag() + b" ENABLE CONDSTORE", *self.extra_args(), self.eol()]

    def cmd_sort(self) -> list[Piece]:
        head = self.rng.choice([b" SORT (DATE) UTF-8", b" UID THREAD REFERENCES UTF-8"])
        return [self.tag() + head, *self.search_key(), self.eol()]

    def cmd_store(self) -> list[Piece]:
        return [self.tag() + b" STORE 1 +FLAGS (\\Seen", *self.extra_args(), b")", self.eol()]

    def cmd_idle(self) -> list[Piece]:
        out: list[Piece] = [self.tag() + b" IDLE", self.eol()]
        if self.chance(0.3):  # something other than DONE on IDLE's line
            self.notes.append("idle misuse")
            out += [self.tag() + b' LIST ""', *self.literal([self.smuggle()]), self.eol()]
        return [*out, b"DONE\r\n"]

    def cmd_reverse(self) -> list[Piece]:
        """A marker Dovecot reads but a naive framer does not (after ``)``, ``"`` or a
        literal, or with more than 25 digits), whose size is exactly the next command's
        first line: that command's own literal body then runs on Dovecot."""
        lead = self.rng.choice([b" SEARCH (ALL)", b' SEARCH SUBJECT "x"', b" SEARCH SUBJECT",
                                b" SEARCH SUBJECT x", b" SEARCH SUBJECT  "])
        pieces: list[Piece] = [self.tag() + lead]
        if lead.endswith(b"SUBJECT"):  # glued to a previous literal
            pieces += [b" ", Marker(follow=1, sync=self.chance(0.3)), b"abc"]
        zeros = self.rng.choice([0, 0, 26, 40])
        self.notes.append(f"lead {lead!r} zeros={zeros}")
        inner_tag = self.tag()
        inner: list[Piece] = [inner_tag + b' LIST "" ', Marker(follow=1), b"\r\n" + self.smuggle(),
                 b"\r\n"]
        return [*pieces, Marker(follow=2, sync=self.chance(0.3), zeros=zeros), *inner]

    def cmd_garbage(self) -> list[Piece]:
        n = self.rng.randint(1, 40)
        junk = bytes(self.rng.choice(_TEXT) for _ in range(n)).replace(b"\n", b"")
        return [junk, *self.literal(), self.eol()]

    def cmd_echo(self) -> list[Piece]:
        """A search key that is a string: Dovecot 2.3.19 answers ``BAD ... Unexpected string
        as search key: <the string>``, CR and LF included, so the string's lines reach the
        relay's response scanner as if they were responses: a ``+``, a tagged answer for
        this or a later command, an EXPUNGE."""
        n = self.n_cmd
        fake = self.rng.choice([
            b"+ x", b"+ OK", b"g%d OK x" % (n + self.rng.randint(1, 3)),
            b"g%d NO x" % (n + self.rng.randint(1, 3)), b"g%d BAD x" % max(1, n),
            b"f%d OK x" % self.rng.randint(1, 9), b"* 3 EXPUNGE",
        ])
        lines = [fake] + ([b"+ x"] if self.chance(0.3) else [])
        self.notes.append(f"echo {lines!r}")
        name = self.rng.choice([b" SEARCH", b" UID SEARCH", b" SORT (DATE) UTF-8"])
        return [self.tag() + name, *self.literal([b"\r\n" + b"\r\n".join(lines) + b"\r\n"]),
                self.eol()]

    def cmd_long(self) -> list[Piece]:
        """Text plus literals past Dovecot's 64 KiB line limit, then one more literal."""
        pad = self.rng.choice([2000, 6000, 66000])
        self.notes.append(f"long line pad={pad}")
        return [self.tag() + b" SEARCH SUBJECT", *self.literal([b"x" * 60000]),
                b" ALL" * (pad // 4), *self.literal([self.smuggle()]), self.eol()]


# -- splits ---------------------------------------------------------------------------------


def by_line(data: bytes) -> list[bytes]:
    """``data`` cut after every LF: how most clients write."""
    parts = data.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def splits(data: bytes, rng: random.Random, *, every_byte_limit: int = 1500,
           random_cuts: int = 3) -> list[list[bytes]]:
    """Ways to cut ``data`` into chunks: whole, line by line, byte by byte (short streams),
    ``random_cuts`` random cuts, and fixed-size chunks."""
    out = [[data], by_line(data)]
    if len(data) <= every_byte_limit:
        out.append([data[i:i + 1] for i in range(len(data))])
    for _ in range(random_cuts):
        if len(data) < 2:
            break
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 12))))
        out.append([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)])
    out.append([data[i:i + 7] for i in range(0, len(data), 7)])
    return out


# -- minimization ---------------------------------------------------------------------------


def minimize(data: bytes, fails: Callable[[bytes], bool], *, budget: int = 400,
             seconds: float = 30.0) -> bytes:
    """Shrink ``data`` while ``fails`` stays true: drop chunks, halving the chunk size down
    to single bytes (a ddmin-like greedy pass). At most ``budget`` calls of ``fails`` and
    about ``seconds`` of wall time: the best input so far is returned."""
    calls = 0
    deadline = time.monotonic() + seconds
    n = max(1, len(data) // 2)
    while n >= 1 and calls < budget and time.monotonic() < deadline:
        i = 0
        changed = False
        while i < len(data) and calls < budget and time.monotonic() < deadline:
            cand = data[:i] + data[i + n:]
            calls += 1
            if cand and fails(cand):
                data = cand
                changed = True
            else:
                i += n
        if not changed:
            n //= 2
    return data
