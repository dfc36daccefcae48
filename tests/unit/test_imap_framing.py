"""Layer 1 framing: lines, literals, caps -- driven byte by byte and in every split."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.imap.framing import (
    NEED_DATA,
    Framer,
    FramingError,
    LineSegment,
    Literal,
    LiteralData,
)


def drain(framer: Framer) -> list:
    out = []
    while (ev := framer.next_event()) is not NEED_DATA:
        out.append(ev)
        if isinstance(ev, FramingError) and not ev.recoverable:
            break
    return out


def frame(pieces: list[bytes], **kw) -> list:
    """Feed pieces; return events with literal pieces merged (split-independent form)."""
    framer = Framer(kw.pop("max_line", 1000), kw.pop("max_literal", None), **kw)
    events: list = []
    for p in pieces:
        framer.receive_data(p)
        events += drain(framer)
        if events and isinstance(events[-1], FramingError) and not events[-1].recoverable:
            break
    merged: list = []
    for ev in events:
        if isinstance(ev, LiteralData):
            data = bytes(ev.data)
            if merged and isinstance(merged[-1], tuple):
                data = merged.pop()[1] + data
            merged.append(("literal", data))
        else:
            merged.append(ev)
    return merged


def splits(data: bytes):
    """The whole input, byte by byte, and every two-piece split."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]


APPEND = b"a APPEND INBOX {11}\r\nhello\r\n{xy} ~{3+}\r\n\x00\r\n\r\nb NOOP\r\n"


def test_lines_and_literals_are_the_same_in_every_split():
    expected = [
        LineSegment(b"a APPEND INBOX {11}\r\n", Literal(11, True, False), True),
        ("literal", b"hello\r\n{xy}"),
        LineSegment(b" ~{3+}\r\n", Literal(3, False, True), False),
        ("literal", b"\x00\r\n"),
        LineSegment(b"\r\n", None, False),
        LineSegment(b"b NOOP\r\n", None, True),
    ]
    for pieces in splits(APPEND):
        assert frame(pieces) == expected, pieces


def test_literal_bodies_are_views_of_the_fed_bytes_not_copies():
    framer = Framer(100)
    head = b"a APPEND x {1048576+}\r\n"
    body = bytes(1024 * 1024)
    framer.receive_data(head)
    framer.receive_data(body)
    events = drain(framer)
    assert isinstance(events[0], LineSegment)
    assert len(events) == 2
    piece = events[1]
    assert isinstance(piece, LiteralData) and piece.remaining == 0
    assert piece.data.obj is body  # the very object fed in: no copy


def test_zero_length_literal_goes_straight_to_the_next_segment():
    assert frame([b"a X {0}\r\n)\r\n"]) == [
        LineSegment(b"a X {0}\r\n", Literal(0, True, False), True),
        LineSegment(b")\r\n", None, False),
    ]


def test_line_of_exactly_max_line_passes_and_one_more_byte_fails():
    ok = b"a" * 8 + b"\r\n"
    for pieces in splits(ok):
        assert frame(pieces, max_line=10) == [LineSegment(ok, None, True)]
    long = b"a" * 9 + b"\r\n"
    for pieces in splits(long):
        events = frame(pieces, max_line=10)
        assert [type(e) for e in events] == [FramingError]
        assert events[0].kind == "line_too_long"


def test_line_too_long_is_reported_before_the_line_end_arrives():
    framer = Framer(10)
    framer.receive_data(b"x" * 10)
    ev = framer.next_event()
    assert isinstance(ev, FramingError) and ev.kind == "line_too_long"
    assert framer.next_event() == ev  # final: stays failed


def test_too_large_sync_literal_is_recoverable_and_non_sync_is_final():
    framer = Framer(100, 10)
    framer.receive_data(b"a LOGIN {11}\r\nb NOOP\r\n")
    err = framer.next_event()
    assert isinstance(err, FramingError) and err.kind == "literal_too_large"
    assert err.recoverable and err.line == b"a LOGIN {11}\r\n"
    assert framer.next_event() == LineSegment(b"b NOOP\r\n", None, True)

    framer = Framer(100, 10)
    framer.receive_data(b"a LOGIN {11+}\r\nb NOOP\r\n")
    err = framer.next_event()
    assert isinstance(err, FramingError) and not err.recoverable
    assert framer.next_event() is err


def test_absurd_literal_sizes_are_errors_not_exceptions():
    for marker in (b"{" + b"9" * 30 + b"}", b"{99999999999999999999}", b"{9223372036854775808}"):
        for max_literal in (None, 100):
            ev = frame([b"a X " + marker + b"\r\n"], max_literal=max_literal)
            assert isinstance(ev[0], FramingError) and ev[0].kind == "bad_literal", marker


def test_leading_zeros_are_a_literal_as_dovecot_reads_them():
    zeros = b"0" * 40
    ev = frame([b"a SEARCH {" + zeros + b"17+}\r\n" + b"c CREATE X\r\nd SEL\r\n" + b"\r\n"])
    assert ev[0].literal == Literal(17, False, False)
    assert ev[0].text_end == len(b"a SEARCH ")


def test_markers_that_are_not_literals():
    for line in [
        b'a SELECT "x {5}\r\n',  # inside an unterminated quoted string
        b'a SELECT "x \\" {5}\r\n',  # escaped quote: still inside
        b"a SELECT {5} \r\n",  # not the last thing on the line: Dovecot refuses the line
        b"a SELECT {5}\r\r\n",
    ]:
        assert frame([line]) == [LineSegment(line, None, True)], line
    line = b'a SELECT "x\\\\" {5}\r\n'  # escaped backslash closes the quote: literal
    assert frame([line])[0].literal == Literal(5, True, False)


def test_markers_dovecot_reads_without_a_space_are_literals_too():
    # Dovecot starts an argument right after ")", a closing quote or a literal's body.
    for line in [b"a SEARCH (x){5}\r\n", b'a SEARCH "x"{5}\r\n', b"a SEARCH ({5}\r\n"]:
        assert frame([line])[0].literal == Literal(5, True, False), line
    ev = frame([b"a SEARCH {1}\r\nx{2+}\r\nab\r\n"])
    assert ev[2] == LineSegment(b"{2+}\r\n", Literal(2, False, False), False)


def test_a_brace_the_framer_cannot_place_is_an_error_never_data():
    for line in [
        b"a SELECT x{5}\r\n",  # inside an atom
        b"{5}\r\n",  # where the tag should be
        b"a SEARCH {1a}\r\n",
        b"a SEARCH {}\r\n",  # Dovecot reads "{}" as a zero-length literal
        b"a SEARCH {+}\r\n",
        b"a SEARCH {5++}\r\n",
        b"a SEARCH x~{5}\r\n",
    ]:
        ev = frame([line])
        assert isinstance(ev[0], FramingError) and ev[0].kind == "bad_literal", line
        assert not ev[0].recoverable


def test_server_text_responses_never_carry_literals():
    for line in [
        b"a NO Mailbox doesn't exist: x {5}\r\n",
        b"* OK [ALERT] see {5}\r\n",
        b"* bye {5}\r\n",
        b"+ {5}\r\n",
    ]:
        assert frame([line], role="server") == [LineSegment(line, None, True)]
    data = b'* 1 FETCH (BODY[] {5}\r\nab\r\nc)\r\n'
    assert frame([data], role="server")[0].literal == Literal(5, True, False)


def test_bare_lf_ends_a_line_like_dovecot_does():
    assert frame([b"a NOOP\nb NOOP\r\n"]) == [
        LineSegment(b"a NOOP\n", None, True),
        LineSegment(b"b NOOP\r\n", None, True),
    ]


def test_take_buffered_returns_partial_line_and_unread_chunks():
    framer = Framer(100)
    framer.receive_data(b"a NOOP\r\nb LO")
    assert drain(framer) == [LineSegment(b"a NOOP\r\n", None, True)]
    framer.receive_data(b"GIN x y\r\n")
    assert framer.take_buffered() == b"b LOGIN x y\r\n"
    assert framer.at_boundary and framer.buffered_len == 0


def test_one_byte_feeding_costs_linear_time():
    """Re-feeding in 1-byte pieces must not rescan the buffer (O(n), not O(n^2))."""

    def run(n: int) -> float:
        best = float("inf")
        for _ in range(3):
            framer = Framer(n + 10)
            t0 = time.perf_counter()
            for _ in range(n):
                framer.receive_data(b"x")
                framer.next_event()
            best = min(best, time.perf_counter() - t0)
        return best

    small, big = run(20_000), run(80_000)
    assert big / small < 10  # 4x input: ~4x time when linear, ~16x when quadratic


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6), st.booleans())
def test_arbitrary_bytes_never_raise_and_bytes_are_conserved(data, cuts, server):
    framer = Framer(64, 50, role="server" if server else "client")
    cuts = sorted({c for c in cuts if c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    out = bytearray()
    failed = False
    for p in pieces:
        framer.receive_data(p)
        for ev in drain(framer):
            if isinstance(ev, LineSegment):
                assert len(ev.data) <= 64
                out += ev.data
            elif isinstance(ev, LiteralData):
                out += ev.data
            elif isinstance(ev, FramingError):
                if ev.recoverable:
                    out += ev.line
                else:
                    failed = True
        if failed:
            break
    if not failed:
        assert framer.partial_len < 64
        assert bytes(out) + framer.take_buffered() == data


_WHOLE_LINE_PIECES = [b"a NOOP", b"* 3 EXISTS", b"+ go", b"b OK done", b"x {3}", b"y {3+}",
                      b'z "}"', b"w }", b"v ~{2}", b"", b"u \r", b"t " + b"x" * 40]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_WHOLE_LINE_PIECES), min_size=1, max_size=5),
       st.lists(st.sampled_from([b"\r\n", b"\n"]), min_size=5, max_size=5),
       st.sampled_from(["client", "server"]),
       st.sampled_from([b"", b"c NOOP\r", b"d APPEND x {2}\r\nab", b"e {1}\r\n"]))
def test_whole_lines_gives_what_the_general_path_gives(texts, eols, role, before):
    """The relay's fast path frames a chunk of whole lines at once; whenever it takes a
    chunk, the events and the framer's state afterwards are those of feeding the chunk and
    reading events, and when it declines, nothing changed."""
    data = b"".join(t + e for t, e in zip(texts, eols, strict=False))
    fast, slow = Framer(32, role=role), Framer(32, role=role)
    for f in (fast, slow):
        f.receive_data(before)
        drain(f)
    got = fast.whole_lines(data)
    slow.receive_data(data)
    expected = drain(slow)
    if got is None:
        fast.receive_data(data)
        assert drain(fast) == expected
    else:
        assert got == expected
        assert all(isinstance(ev, LineSegment) and ev.literal is None for ev in got)
        # a single line is passed on as the very object that came in
        assert len(got) > 1 or got[0].data is data
    assert (fast.at_boundary, fast.at_line_start, fast.buffered_len) == (
        slow.at_boundary, slow.at_line_start, slow.buffered_len)
    for f in (fast, slow):
        f.receive_data(b"n NOOP\r\n")
    assert drain(fast) == drain(slow)


def test_whole_lines_takes_plain_commands_and_leaves_literals_alone():
    framer = Framer(1000)
    assert framer.whole_lines(b"a NOOP\r\nb CHECK\r\n") == [
        LineSegment(b"a NOOP\r\n", None, True, 6), LineSegment(b"b CHECK\r\n", None, True, 7)]
    assert framer.whole_lines(b"a LOGIN {3}\r\n") is None
    assert framer.whole_lines(b"a NOOP") is None
    assert Framer(5).whole_lines(b"a NOOP\r\n") is None  # over max_line: the error path
