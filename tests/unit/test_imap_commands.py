"""Post-auth client->backend command stream (the relay's hot path)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.imap.capabilities import commands_for_capabilities
from gateway.imap.commands import (
    Close,
    Command,
    CommandInfo,
    CommandStream,
    Forward,
    ForwardLiteral,
    Reply,
    Verdict,
)

CAPS = b"IMAP4rev1 IDLE LITERAL+ MOVE"


def stream(**kw) -> CommandStream:
    return CommandStream(capability_line=CAPS, **kw)


BACKEND_PLUS = b"+ OK\r\n"


def run(s: CommandStream, pieces, accept: bool = True) -> tuple[bytes, bytes, list]:
    """(bytes to backend, bytes to client, Command/Close actions) -- split-independent.

    Plays the backend's part for literals: each ForwardLiteral is answered with a "+"
    (``accept``) or a tagged refusal, as the real backend would before the stream goes on.
    A "+" the client waits for itself reaches the client as BACKEND_PLUS.
    """
    backend, client, other = bytearray(), bytearray(), []

    def take(actions) -> None:
        for a in actions:
            if isinstance(a, Forward):
                backend.extend(a.data)
            elif isinstance(a, ForwardLiteral):
                backend.extend(a.data)
                assert a.data.rstrip(b"\r\n").endswith(b"}") and b"+}" not in a.data[-5:]
                if accept and a.pass_continuation:
                    client.extend(BACKEND_PLUS)
                elif not accept:
                    client.extend(a.tag + b" BAD Refused by backend.\r\n")
            elif isinstance(a, Reply):
                client.extend(a.data)
            else:
                other.append(a)

    for p in pieces:
        take(s.receive_data(p))
        while s.paused:
            take(s.literal_answered(accept))
    return bytes(backend), bytes(client), other


def every_split(data: bytes):
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]


def same_in_every_split(data: bytes, **kw):
    whole = run(stream(**kw), [data])
    for pieces in every_split(data):
        assert run(stream(**kw), pieces) == whole, pieces
    return whole


def test_a_chunk_forwarded_unchanged_is_one_forward_of_the_same_object():
    chunk = b"a SELECT INBOX\r\nb FETCH 1:* (FLAGS)\r\nc NOOP\r\n"
    actions = stream().receive_data(chunk)
    assert [type(a) for a in actions] == [Command, Command, Command, Forward]
    assert actions[-1].data is chunk
    assert actions[0].info == CommandInfo(b"a", "SELECT", "INBOX")


def test_append_with_1mb_non_sync_literal_flows_through_as_a_sync_literal():
    body = bytes(random.Random(7).getrandbits(8) for _ in range(4096)) * 256  # 1 MiB
    data = b"a APPEND INBOX (\\Seen) {1048576+}\r\n" + body + b"\r\nb NOOP\r\n"
    marker_end = data.index(b"\r\n") + 2
    cut_points = [1, marker_end - 3, marker_end - 1, marker_end, marker_end + 1,
                  len(data) - 12, len(data) - 9, len(data) - 1]
    rng = random.Random(1)
    splits = [[data]] + [[data[:c], data[c:]] for c in cut_points]
    for size in (7, 4096, 65536):
        splits.append([data[i : i + size] for i in range(0, len(data), size)])
    for _ in range(3):
        cuts = sorted(rng.sample(range(1, len(data)), 20))
        splits.append([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)])
    for pieces in splits:
        s = stream()
        forwards = []
        client = b""
        fed_ids = {id(p) for p in pieces}
        for p in pieces:
            actions = s.receive_data(p)
            while True:
                for a in actions:
                    if isinstance(a, Forward | ForwardLiteral):
                        forwards.append(a.data)
                    elif isinstance(a, Reply):
                        client += a.data
                if not s.paused:
                    break
                actions = s.literal_answered(True)
        assert b"".join(forwards) == data.replace(b"{1048576+}", b"{1048576}", 1)
        assert client == b""
        # Literal bytes travel as the fed chunks themselves or views of them: the only
        # copies are of line text (a few dozen bytes).
        copied = [f for f in forwards if not isinstance(f, memoryview) and id(f) not in fed_ids]
        assert sum(len(f) for f in copied) <= 100


def test_sync_literal_gets_the_backends_plus_once_the_backend_reads_it():
    data = b"a APPEND INBOX {5}\r\nhello\r\nb NOOP\r\n"
    backend, client, other = same_in_every_split(data)
    assert client == BACKEND_PLUS
    assert backend == b"a APPEND INBOX {5}\r\nhello\r\nb NOOP\r\n"
    assert [a.info.name for a in other] == ["APPEND", "NOOP"]


def test_every_literal_waits_for_the_backend_and_nothing_follows_before_its_answer():
    s = stream()
    actions = s.receive_data(b"a APPEND INBOX {0005+}\r\nhello\r\nb NOOP\r\n")
    assert [type(a) for a in actions] == [Command, ForwardLiteral]
    assert actions[1] == ForwardLiteral(b"a APPEND INBOX {5}\r\n", b"a", True, False)
    assert s.paused and s.receive_data(b"") == []
    rest = s.literal_answered(True)
    assert [a.info.name for a in rest if isinstance(a, Command)] == ["NOOP"]
    assert b"".join(bytes(a.data) for a in rest if isinstance(a, Forward)) == (
        b"hello\r\nb NOOP\r\n")
    assert not s.paused


def test_a_literal_the_backend_refuses_is_dropped_and_the_next_command_is_parsed():
    # Dovecot answers a tagged BAD instead of "+" and would run the body as commands.
    hidden = b"c CREATE X\r\n"
    data = b"a SEARCH {%d+}\r\n" % len(hidden) + hidden + b"\r\nb NOOP\r\n"
    backend, client, _ = run(stream(), [data], accept=False)
    assert backend == b"a SEARCH {12}\r\n\r\nb NOOP\r\n".replace(b"\r\n\r\n", b"\r\n")
    assert client == b"a BAD Refused by backend.\r\n"
    # a synchronizing literal: the client never sends the body; its next bytes are a command
    backend, client, other = run(stream(), [b"a SEARCH {12}\r\n", b"b NOOP\r\n"], accept=False)
    assert backend == b"a SEARCH {12}\r\nb NOOP\r\n"
    assert [a.info.name for a in other] == ["SEARCH", "NOOP"]


def test_multiappend_with_binary_literals():
    data = b"a APPEND box ~{3}\r\n\x00\x01\x02 (\\Seen) {2+}\r\nhi\r\n"
    backend, client, _ = same_in_every_split(data)
    assert client == BACKEND_PLUS
    assert backend == b"a APPEND box ~{3}\r\n\x00\x01\x02 (\\Seen) {2}\r\nhi\r\n"


def test_idle_done_is_not_a_command():
    data = b"a IDLE\r\nDONE\r\nb NOOP\r\n"
    backend, client, other = same_in_every_split(data)
    assert backend == data and client == b""
    assert [a.info.name for a in other] == ["IDLE", "NOOP"]


def test_a_line_after_idle_that_is_not_done_ends_the_session():
    # Dovecot reads it as raw text (no literal) and refuses it; the gateway would parse it as
    # a command with a literal -- the two would disagree, so the session ends.
    backend, _client, other = run(stream(), [b"a IDLE\r\ng2 LIST \"\" {9+}\r\ns1 NOOP\r\n"])
    assert backend == b"a IDLE\r\n"
    assert other[-1] == Close("idle_not_done", b"* BYE Expected DONE after IDLE.\r\n")


def test_a_tag_dovecot_refuses_is_refused_here_too():
    backend, client, _ = same_in_every_split(b"g1] SEARCH SUBJECT {9+}\r\ns1 NOOP\r\n\r\n")
    assert b"g1]" not in backend and b"s1 NOOP" not in backend
    assert client.startswith(b"* BAD ")


@pytest.mark.parametrize("line", [
    b"a APPEND INBOX {c SELECT Secret\r\n",
    b'a APPEND INBOX "c SELECT Secret\r\n',
    b"a APPEND INBOX (\\Seen) ) {3+}\r\nabc\r\n",
])
def test_append_that_does_not_tokenize_never_reaches_the_backend(line):
    # Dovecot's APPEND parser goes on reading the same line as a new command after an error.
    backend, client, _ = same_in_every_split(line + b"z NOOP\r\n")
    assert backend == b"z NOOP\r\n"
    assert client.startswith(b"a BAD ")


def test_a_later_append_segment_that_does_not_tokenize_ends_the_session():
    backend, _client, other = run(stream(), [b"a APPEND INBOX {5+}\r\nhello {c SELECT Secret\r\n"])
    assert b"SELECT" not in backend
    assert other[-1] == Close("bad_syntax", b"* BYE Invalid command syntax.\r\n")


def test_a_held_command_is_never_forwarded_as_received():
    # The first line of a fixed-arity command with a literal arrives alone: it is held, not
    # passed on by the "chunk unchanged" shortcut (and then again when complete).
    refuse = lambda info: (Verdict.REFUSE(info.tag + b" NO [NOPERM] no\r\n")  # noqa: E731
                           if info.name == "DELETE" else Verdict.FORWARD)
    backend, client, _ = run(stream(command_filter=refuse),
                             [b"g1 DELETE {6+}\r\n", b"xxxxxx\r\n", b"v NOOP\r\n"])
    assert backend == b"v NOOP\r\n"
    assert client == b"g1 NO [NOPERM] no\r\n"


def test_builtin_refusals():
    data = (
        b"a COMPRESS DEFLATE\r\nb STARTTLS\r\nc CAPABILITY\r\nd LOGIN u p\r\n"
        b"e AUTHENTICATE PLAIN\r\n"
    )
    backend, client, other = same_in_every_split(data)
    assert backend == b""
    assert client == (
        b"a NO [CANNOT] COMPRESS is not available through this gateway.\r\n"
        b"b BAD Already in TLS.\r\n"
        b"* CAPABILITY IMAP4rev1 IDLE LITERAL+ MOVE\r\nc OK Capability completed.\r\n"
        b"d BAD Already authenticated.\r\ne BAD Already authenticated.\r\n"
    )
    assert len(other) == 5


def test_refused_command_with_sync_literal_gets_no_plus_and_next_command_is_parsed():
    data = b"a LOGIN {3}\r\nb NOOP\r\n"
    backend, client, _ = same_in_every_split(data)
    assert client == b"a BAD Already authenticated.\r\n"
    assert backend == b"b NOOP\r\n"


def test_refused_command_with_non_sync_literal_drops_body_and_rest():
    data = b"a LOGIN {3+}\r\nb N {3+}\r\nOOP\r\nc NOOP\r\n"
    backend, client, _ = same_in_every_split(data)
    assert client == b"a BAD Already authenticated.\r\n"
    assert backend == b"c NOOP\r\n"  # nothing of the refused command, not even its literal


def test_unknown_command_literal_cannot_smuggle_a_command():
    smuggled = b"x COMPRESS DEFLATE\r\n"
    data = b"a XFOO {%d+}\r\n" % len(smuggled) + smuggled + b"\r\nb NOOP\r\n"
    backend, client, _ = same_in_every_split(data)
    assert client == b"a BAD Unknown command.\r\n"
    assert backend == b"b NOOP\r\n"


# Each of these makes Dovecot 2.3.19 run "b CAPABILITY" from inside the literal (probed).
SMUGGLERS = [
    b"NOOP", b"CHECK", b"CLOSE", b"EXPUNGE", b"UNSELECT", b"NAMESPACE", b"STATUS INBOX (MESSAGES)",
    b"CREATE x", b"DELETE x", b"SUBSCRIBE x", b"UNSUBSCRIBE x", b"RENAME a b", b"COPY 1 x",
    b"MOVE 1 x", b"UID EXPUNGE 1", b"UID MOVE 1 x", b"GETQUOTAROOT INBOX", b"MYRIGHTS INBOX",
    b"GETACL INBOX", b"ESEARCH x", b"X-CANCEL",
]


@pytest.mark.parametrize("command", SMUGGLERS)
def test_literal_the_backend_would_not_read_never_reaches_it(command):
    hidden = b"b CAPABILITY\r\n"
    for marker in (b"{%d+}" % len(hidden), b"{%d}" % len(hidden)):
        data = b"a " + command + b" " + marker + b"\r\n" + hidden + b"\r\nc NOOP\r\n"
        for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
            backend, client, _ = run(stream(), pieces)
            assert b"b CAPABILITY" not in backend, (command, marker)
            assert backend.endswith(b"c NOOP\r\n")
            assert client.startswith(b"a BAD "), client


def test_fixed_arity_command_with_literal_is_read_whole_then_forwarded():
    data = b"a RENAME {3}\r\nold {3+}\r\nnew\r\nb NOOP\r\n"
    backend, client, other = same_in_every_split(data)
    assert client == b"+ Ready for literal data\r\n"
    assert backend == b"a RENAME {3}\r\nold {3}\r\nnew\r\nb NOOP\r\n"
    assert other[0].info == CommandInfo(b"a", "RENAME", "old")


def test_fixed_arity_command_is_bounded_while_held():
    s = stream()
    backend, client, _ = run(s, [b"a CREATE {20000+}\r\n", b"x" * 20000, b"\r\nb NOOP\r\n"])
    assert client == b"a BAD [TOOBIG] Command too long.\r\n"
    assert backend == b"b NOOP\r\n"


def test_backend_capabilities_decide_which_commands_are_relayed():
    dovecot = commands_for_capabilities("IMAP4rev1 IDLE MOVE UIDPLUS THREAD=REFS QUOTA".split())
    assert {"IDLE", "MOVE", "UID MOVE", "UID EXPUNGE", "THREAD", "GETQUOTAROOT"} <= dovecot
    assert "GETACL" not in dovecot and "SORT" not in dovecot
    s = stream(known_commands=commands_for_capabilities(["IMAP4rev1"]))
    backend, client, _ = run(s, [b"a MOVE 1 x\r\n"])
    assert backend == b"" and client == b"a BAD Unknown command.\r\n"


def test_unterminated_quote_is_refused_here_so_backend_and_gateway_agree():
    data = b'a SELECT "x {5+}\r\nb CAPABILITY\r\n'
    backend, client, _ = same_in_every_split(data)
    assert backend == b""
    assert client.startswith(b"a BAD Unterminated quoted string.\r\n* CAPABILITY ")


def test_mailbox_extraction():
    cases = {
        b"a select Sent\r\n": ("SELECT", "Sent", False),
        b'a STATUS "My Box" (MESSAGES)\r\n': ("STATUS", "My Box", False),
        b"a UID MOVE 1:3 Archive\r\n": ("UID MOVE", "Archive", False),
        b"a COPY 1 {3+}\r\nabc\r\n": ("COPY", "abc", False),  # fixed arity: read whole
        b"a SELECT {3+}\r\n": ("SELECT", None, True),
        b'a LIST "" "INBOX.*"\r\n': ("LIST", "INBOX.*", False),
        b'a LIST (SUBSCRIBED) "" %\r\n': ("LIST", "%", False),
        b'a LIST "" ("a" "b")\r\n': ("LIST", None, True),
        b"a LIST {0+}\r\n": ("LIST", None, True),
        b"a RENAME old new\r\n": ("RENAME", "old", False),
        b"a FETCH 1 (BODY[HEADER.FIELDS (FROM)])\r\n": ("FETCH", None, False),
        b"a SELECT\r\n": ("SELECT", None, False),
    }
    for line, (name, mailbox, unknown) in cases.items():
        actions = stream().receive_data(line)
        info = actions[0].info
        assert (info.name, info.mailbox, info.mailbox_unknown) == (name, mailbox, unknown), line


def test_filter_refuse_and_rewrite():
    def scope(info: CommandInfo) -> Verdict:
        if info.mailbox_unknown or info.mailbox == "Secret":
            return Verdict.REFUSE(info.tag + b" NO [NOPERM] Not in scope.\r\n")
        if info.name == "SELECT":
            return Verdict.REWRITE(info.tag + b" EXAMINE " + info.mailbox.encode() + b"\r\n")
        return Verdict.FORWARD

    data = (
        b"a SELECT INBOX\r\nb SELECT Secret\r\nc APPEND {6+}\r\nSecret {2+}\r\nhi\r\n"
        b"d NOOP\r\n"
    )
    backend, client, _ = same_in_every_split(data, command_filter=scope)
    assert backend == b"a EXAMINE INBOX\r\nd NOOP\r\n"
    assert client == b"b NO [NOPERM] Not in scope.\r\nc NO [NOPERM] Not in scope.\r\n"


def test_rewrite_that_would_change_framing_refuses_the_command_instead():
    def bad_rewrite(info: CommandInfo) -> Verdict:
        return Verdict.REWRITE(b"a APPEND x\r\n") if info.name == "APPEND" else Verdict.FORWARD

    s = stream(command_filter=bad_rewrite)
    backend, client, _ = run(s, [b"a APPEND x {3+}\r\nabc\r\nb NOOP\r\n"])
    assert backend == b"b NOOP\r\n"
    assert client == b"a NO [SERVERBUG] Command not permitted.\r\n"


def test_rewrite_keeps_a_bare_lf_line_end():
    def examine(info: CommandInfo) -> Verdict:
        return Verdict.REWRITE(info.line.replace(b"SELECT", b"EXAMINE"))

    backend, client, _ = same_in_every_split(b"a SELECT INBOX\nb NOOP\n", command_filter=examine)
    assert backend == b"a EXAMINE INBOX\nb NOOP\n" and client == b""


def test_line_too_long_closes_the_session():
    s = stream(max_line=32)
    actions = s.receive_data(b"a FETCH " + b"1," * 20)
    assert actions == [Close("line_too_long", b"* BYE Line too long.\r\n")]
    assert s.receive_data(b"\r\n") == []


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=30),
            st.sampled_from([
                b"a APPEND x {3}\r\n", b"{2+}\r\n", b"a IDLE\r\n", b"DONE\r\n",
                b"a LOGIN {4+}\r\n", b"abcd\r\n", b"\r\n", b'"q {1}\r\n',
            ]),
        ),
        max_size=12,
    )
)
def test_arbitrary_input_never_raises_and_forwards_only_client_bytes(pieces):
    s = stream(max_line=64)
    fed = 0
    backend, client = 0, 0
    for p in pieces:
        fed += len(p)
        actions = s.receive_data(p)
        while True:
            for a in actions:
                if isinstance(a, Forward | ForwardLiteral):
                    backend += len(a.data)
                elif isinstance(a, Reply | Close):
                    client += len(a.data)
            if not s.paused:
                break
            actions = s.literal_answered(len(p) % 2 == 0)
    # Markers are rewritten canonically ({0005+} -> {5}): never longer than the client's.
    assert backend <= fed
    assert client <= 200 * (fed + 1)


# -- Dovecot runs the body of a literal it refuses to read ------------------------------------

SMUGGLED = b"z1 SELECT x\r\nz2 STORE 1:* +FLAGS (\\Deleted)\r\nz3 EXPUNGE\r\n"


def test_binary_literal_outside_append_is_refused_and_its_body_never_forwarded():
    # after the literal the client ends command a's line (CRLF); b is a new command
    data = b'a LIST "" ~{%d+}\r\n' % len(SMUGGLED) + SMUGGLED + b"\r\nb NOOP\r\n"
    backend, client, _ = same_in_every_split(data)
    assert backend == b"b NOOP\r\n"
    assert client == b"a BAD Binary literal not allowed here.\r\n"


def test_sync_binary_literal_gets_bad_instead_of_a_continuation():
    backend, client, _ = same_in_every_split(b"b ID ~{21}\r\n")
    assert backend == b""
    assert client == b"b BAD Binary literal not allowed here.\r\n"


def test_binary_literal_in_append_is_forwarded():
    data = b"a APPEND INBOX ~{5+}\r\nhello\r\n"
    backend, client, _ = same_in_every_split(data)
    assert backend == data.replace(b"+}", b"}") and client == b""


def test_binary_literal_after_a_forwarded_segment_closes_the_session():
    data = b'a LIST "" {1+}\r\nx ~{%d+}\r\n' % len(SMUGGLED) + SMUGGLED
    backend, _client, other = run(stream(), [data])
    assert SMUGGLED not in backend and b"z1" not in backend
    assert any(isinstance(a, Close) and a.reason == "literal_not_allowed" for a in other)


def test_catenate_refused_for_mailbox_scoped_streams_only():
    data = b'a APPEND INBOX CATENATE (URL "/Secret/;UID=1")\r\n'
    backend, client, _ = same_in_every_split(data, allow_catenate=False)
    assert backend == b"" and b"a NO [NOPERM]" in client
    backend, client, _ = same_in_every_split(data)
    assert backend == data and client == b""
    # the second message of a MULTIAPPEND
    multi = b'a APPEND INBOX {2+}\r\nhi CATENATE (URL "/Secret/;UID=1")\r\n'
    backend, _client, other = run(stream(allow_catenate=False), [multi])
    assert b"Secret" not in backend
    assert any(isinstance(a, Close) for a in other)


def test_unauthenticate_never_reaches_the_backend():
    caps = commands_for_capabilities(["IMAP4rev1", "UNAUTHENTICATE"])
    backend, client, _ = same_in_every_split(b"u UNAUTHENTICATE\r\n", known_commands=caps)
    assert backend == b"" and client.startswith(b"u NO [CANNOT]")


def test_a_literal_with_a_line_break_outside_message_data_ends_the_session():
    # Dovecot copies a bad search key into its BAD reply, line breaks included: the echoed
    # lines would pass for responses of their own.
    backend, _client, other = run(stream(), [b"g1 SEARCH {11+}\r\n\r\nf1 OK x\r\n\r\n"])
    assert b"f1 OK" not in backend
    assert other[-1] == Close("line_break_in_literal",
                              b"* BYE Line breaks are not allowed in this literal.\r\n")
    # APPEND's mailbox is such a literal too; its message is not
    backend, _client, other = run(stream(), [b"a APPEND {4+}\r\nIN\r\n {3+}\r\nx\r\n\r\n"])
    assert isinstance(other[-1], Close)
    msg = b"Subject: x\r\n\r\nbody\r\n"
    data = b"a APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n"
    backend, _client, other = same_in_every_split(data)
    assert backend == data.replace(b"+}", b"}") and not any(isinstance(a, Close) for a in other)
    # a fixed-arity command is read whole first: refused, nothing sent
    backend, client, _ = run(stream(), [b"a CREATE {4+}\r\nx\r\ny\r\nb NOOP\r\n"])
    assert backend == b"b NOOP\r\n" and client.startswith(b"a BAD ")


def test_a_command_the_backend_answers_early_is_dropped_and_the_backend_line_ended():
    s = stream()
    backend, _client, _ = run(s, [b"g1 APPEND {3+}\r\n\xff\xfe\xfd"])
    assert s.current_tag == b"g1"
    ended = s.command_answered()
    assert [bytes(a.data) for a in ended if isinstance(a, Forward)] == [b"\r\n"]
    rest, _client, other = run(s, [b" {9+}\r\ns1 NOOP\r\n\r\nb NOOP\r\n"])
    assert rest == b"b NOOP\r\n"
    assert [a.info.name for a in other if isinstance(a, Command)] == ["NOOP"]


# -- the shortcut for a whole line with an argument-less command --------------------------------

_SHORTCUT_LINES = [
    b"a NOOP\r\n", b"a1 noop\r\n", b"x.y Check\r\n", b"b IDLE\r\n", b"DONE\r\n", b"done\r\n",
    b"c LOGOUT\r\n", b"d CAPABILITY\r\n", b"e STARTTLS\r\n", b"f UNAUTHENTICATE\r\n",
    b"g NOOP extra\r\n", b"h  NOOP\r\n", b"i NOOP \r\n", b"j+ NOOP\r\n", b"k] NOOP\r\n",
    b"l NOOP\n", b"m NOOP\r\r\n", b"n NO\x00OP\r\n", b"o UID\r\n", b"p UID NOOP\r\n",
    b"q XYZZY\r\n", b"r NOOP {3}\r\n", b"s NOOP {3+}\r\n", b"abc\r\n", b"t CLOSE\r\n",
    b"u UNSELECT\r\n", b"v NAMESPACE\r\n", b"w EXPUNGE\r\n", b"\r\n", b"y COMPRESS DEFLATE\r\n",
    b"z APPEND x {3+}\r\n", b"NOOP\r\n", b"* NOOP\r\n", b'"a" NOOP\r\n', b"a\tNOOP\r\n",
]


class _GeneralPathOnly(CommandStream):
    """The stream without its shortcut: every line takes the general path."""

    __slots__ = ()

    def _simple_command(self, seg):
        return None


def _state(s: CommandStream) -> tuple:
    return (s.forwarded_commands, s.idling, s.paused, s.current_tag, s.closed)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_SHORTCUT_LINES), st.binary(max_size=12)),
                min_size=1, max_size=10),
       st.frozensets(st.sampled_from(["NOOP", "CHECK", "IDLE", "LOGOUT", "CLOSE"])))
def test_the_whole_line_shortcut_gives_what_the_general_path_gives(pieces, unknown):
    """Fed the same chunks, a stream with the shortcut and one without return the same
    actions and end in the same state (the shortcut only skips steps)."""
    known = commands_for_capabilities(("IMAP4rev1", "IDLE", "UNSELECT", "NAMESPACE",
                                       "LITERAL+")) - unknown
    fast = stream(known_commands=known)
    slow = _GeneralPathOnly(capability_line=CAPS, known_commands=known)
    for p in pieces:
        got, want = fast.receive_data(p), slow.receive_data(p)
        assert got == want, p
        assert _state(fast) == _state(slow)
        if fast.paused:
            assert fast.literal_answered(True) == slow.literal_answered(True)


def test_the_shortcut_takes_only_commands_the_built_in_rules_forward():
    from gateway.imap.commands import _FORWARDED_AS_IS

    s = stream()
    assert {"NOOP", "CHECK", "IDLE", "LOGOUT"} <= _FORWARDED_AS_IS
    for name in _FORWARDED_AS_IS:
        assert s._builtin(CommandInfo(b"a", name)) is None, name
