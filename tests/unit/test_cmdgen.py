"""The differential test's own machinery (tests/support/cmdgen.py): sizes, determinism,
splits and minimization, without Dovecot."""

from __future__ import annotations

import random

from gateway.imap.commands import CommandStream, Verdict
from tests.support import cmdgen
from tests.support.cmdgen import Marker, serialize


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


def test_run_gateway_reports_forwarded_tags_and_sentinel():
    def make():
        return CommandStream(capability_line=b"IMAP4rev1",
                             command_filter=lambda info: Verdict.FORWARD)

    view = cmdgen.run_gateway(make, [b"a NOOP\r\nb XYZZY\r\nc SEARCH {3}\r\nabc\r\n"])
    assert view.tags == [b"a", b"c"]  # b is refused by the gateway itself
    assert view.sentinel == b"zz9a"
    assert view.forwarded == b"a NOOP\r\nc SEARCH {3+}\r\nabc\r\nzz9a NOOP\r\n"


def test_run_gateway_tells_a_refusal_from_an_earlier_command_with_the_same_tag():
    def make():
        return CommandStream(capability_line=b"IMAP4rev1")

    view = cmdgen.run_gateway(make, [b"s1 NOOP\r\n", b"s1 XYZZY\r\n"])
    assert view.tags == [b"s1"]
    view = cmdgen.run_gateway(make, [b"s1 NOOP\r\ns1 CAPABILITY\r\n"])
    assert view.tags == [b"s1"]  # the second one is answered by the gateway


def test_minimize_keeps_the_failure():
    data = b"junk " * 20 + b"NEEDLE" + b" more" * 20
    out = cmdgen.minimize(data, lambda d: b"NEEDLE" in d)
    assert out == b"NEEDLE"
