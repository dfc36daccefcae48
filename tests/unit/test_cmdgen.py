"""The differential test's own machinery, without Dovecot: the stream generator, splits
and minimization (tests/support/cmdgen.py), and the relay driver with a scripted backend
(tests/support/relaydrive.py)."""

from __future__ import annotations

import random

from gateway.imap.commands import CommandInfo, Verdict
from gateway.imap.relay import Relay
from tests.support import cmdgen
from tests.support.cmdgen import Marker, serialize
from tests.support.relaydrive import (
    DRAIN_TAG,
    SENTINELS,
    ObservedStream,
    Responses,
    ScriptedBackend,
    drive,
)


def test_marker_measures_what_follows():
    data = serialize([b"a SEARCH ", Marker(follow=2), b"b LIST ", Marker(follow=1), b"xy",
                      b"\r\n"])
    # the inner marker renders first ({2+}), the outer one covers "b LIST {2+}\r\n"
    assert data == b"a SEARCH {13+}\r\nb LIST {2+}\r\nxy\r\n"


def test_marker_forms():
    assert Marker(sync=True, zeros=3).render(7) == b"{0007}\r\n"
    assert Marker(binary=True).render(0) == b"~{0+}\r\n"
    assert Marker(no_digits=True, sync=True).render(0) == b"{}\r\n"
    assert serialize([b"x ", Marker(follow=1, delta=-2), b"abcd"]) == b"x {2+}\r\nabcd"


def test_streams_are_reproducible_per_index():
    a, b = cmdgen.Generator(7), cmdgen.Generator(7)
    assert [a.stream(i).data for i in range(30)] == [b.stream(i).data for i in range(30)]
    assert a.stream(3).data == cmdgen.Generator(7).stream(3).data
    assert cmdgen.Generator(8).stream(3).data != a.stream(3).data


def test_splits_cover_the_same_bytes():
    data = b"a NOOP\r\nb SEARCH {3+}\r\nabc\r\n"
    for chunks in cmdgen.splits(data, random.Random(1)):
        assert b"".join(chunks) == data
    assert cmdgen.by_line(data) == [b"a NOOP\r\n", b"b SEARCH {3+}\r\n", b"abc\r\n"]


def _relay(command_filter=None):
    def make():
        stream = ObservedStream(capability_line=b"IMAP4rev1 LITERAL+",
                                command_filter=command_filter)
        return Relay(stream), stream
    return make


def test_drive_relays_through_the_backend_and_stops_at_the_sentinel():
    backend = ScriptedBackend()
    run = drive(_relay(), backend, [b"a NOOP\r\nb XYZZY\r\nc SEARCH {3+}\r\nabc\r\n"])
    assert run.outcome == "answered" and run.sentinel == b"zz9a"
    assert [t for t, _ in run.seen] == [b"a", b"c", b"zz9a"]  # XYZZY: refused unparsed
    assert run.forwarded == [b"a", b"c", b"zz9a"]
    assert run.answers == [True]  # the relay's {3} was answered "+"
    assert bytes(backend.received) == b"a NOOP\r\nc SEARCH {3}\r\nabc\r\nzz9a NOOP\r\n"
    assert run.backend.tags == [b"a", b"c", b"zz9a"] and not run.extra_backend_tags()
    assert run.client.continuations == []  # the "+" for the relay's own {3} is cut
    assert b"b BAD" in run.client.raw


def test_drive_tells_refused_commands_from_forwarded_ones_with_the_same_tag():
    def refuse_store(info: CommandInfo) -> Verdict:
        return Verdict.REFUSE(b"%s NO no\r\n" % info.tag) if info.name == "STORE" \
            else Verdict.FORWARD

    run = drive(_relay(refuse_store), ScriptedBackend(),
                [b"s1 NOOP\r\ns1 STORE 1 +FLAGS x\r\ns1 CAPABILITY\r\n"])
    assert [t for t, _ in run.seen] == [b"s1", b"s1", b"s1", b"zz9a"]
    assert run.forwarded == [b"s1", b"zz9a"]


def test_drive_literal_refused_by_the_backend_and_pauses():
    backend = ScriptedBackend()
    run = drive(_relay(), backend,
                [b"refuse1 SEARCH SUBJECT {9+}\r\n", b"", b"s1 NOOP\r\n\r\n"])
    assert run.outcome == "answered"
    assert run.answers == [False]
    assert b"s1" not in backend.received  # the body of a refused literal is dropped
    assert run.backend.tags == [b"refuse1", b"zz9a"]


def test_drive_ends_and_drains():
    backend = ScriptedBackend()
    run = drive(_relay(), backend, [b"a NOOP\r\nb SEARCH {x}\r\n"])
    assert run.outcome == "ended" and run.ended is not None
    assert run.drain == "answered" and run.backend.tags == [b"a", DRAIN_TAG]
    assert not run.extra_backend_tags()


def test_drive_pads_an_open_literal_before_the_last_sentinel():
    # message data: the only literal that may carry the padding's line breaks
    run = drive(_relay(), ScriptedBackend(), [b"a APPEND INBOX {200+}\r\nabc"])
    assert run.outcome == "answered" and run.sentinel == SENTINELS[-1]
    assert run.tail.endswith(b"\r\n" + SENTINELS[-1] + b" NOOP\r\n")


def test_responses_skip_literals_and_echoed_lines():
    r = Responses()
    data = (b"* 1 FETCH (BODY[] {12}\r\nx OK fake\r\n)\r\n+ OK\r\n"
            b"g1 BAD Error in IMAP command SEARCH: Unexpected string as search key: \r\n"
            b"f1 OK x\r\n+ x\r\n (0.001 + 0.000 secs).\r\n"
            b"g2 OK done (0.001 + 0.000 secs).\r\n* BYE bye\r\n")
    for i in range(len(data)):
        r.feed(data[i:i + 1])
    assert r.tagged == [(b"g1", b"BAD"), (b"g2", b"OK")]
    assert r.continuations == [b"+ OK\r\n"]
    assert r.echoed == 1 and r.byes == [b"* BYE bye\r\n"]


def test_echo_streams_only_when_asked():
    plain = [cmdgen.Generator(5).stream(i).data for i in range(40)]
    echo = [cmdgen.Generator(5, echo=True).stream(i).data for i in range(40)]
    assert not any(b"search key" in d for d in plain)
    assert any(b"\r\n+ x\r\n" in d or b"\r\n+ OK\r\n" in d for d in echo)
    assert not any(b"zz9" in d for d in plain + echo)  # the driver's own tags


def test_minimize_keeps_the_failure():
    data = b"junk " * 20 + b"NEEDLE" + b" more" * 20
    out = cmdgen.minimize(data, lambda d: b"NEEDLE" in d)
    assert out == b"NEEDLE"
