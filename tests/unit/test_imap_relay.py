"""The sans-IO relay: literal synchronisation, injected replies, end reasons, every split."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.imap.commands import CommandStream
from gateway.imap.relay import (
    BytesSeen,
    CommandSeen,
    End,
    Expunged,
    Refused,
    Relay,
    ToBackend,
    ToClient,
)

CAPS = b"IMAP4rev1 IDLE LITERAL+ MOVE"


def relay(**kw) -> Relay:
    return Relay(CommandStream(capability_line=CAPS), **kw)


class Wire:
    """What reached each side, plus the other actions, from one relay."""

    def __init__(self, r: Relay) -> None:
        self.r = r
        self.backend = bytearray()
        self.client = bytearray()
        self.other: list = []

    def take(self, actions) -> None:
        for a in actions:
            if isinstance(a, ToBackend):
                self.backend += a.data
            elif isinstance(a, ToClient):
                self.client += a.data
            else:
                self.other.append(a)

    def from_client(self, data: bytes) -> None:
        assert self.r.reading_client
        self.take(self.r.client_data(data))

    def from_backend(self, data: bytes) -> None:
        self.take(self.r.backend_data(data))


def splits(data: bytes, rng: random.Random, n: int = 6):
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for _ in range(n):
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 5))))
        yield [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_a_literal_waits_for_the_backends_plus_which_the_client_never_sees():
    rng = random.Random(3)
    for backend_pieces in splits(b"* 3 EXISTS\r\n+ OK\r\na OK [APPENDUID 1 2] done\r\n", rng):
        w = Wire(relay())
        w.from_client(b"a APPEND INBOX {5+}\r\nhello\r\n")
        assert bytes(w.backend) == b"a APPEND INBOX {5}\r\n"
        assert not w.r.reading_client
        for piece in backend_pieces:
            w.from_backend(piece)
        assert bytes(w.backend) == b"a APPEND INBOX {5}\r\nhello\r\n"
        assert bytes(w.client) == b"* 3 EXISTS\r\na OK [APPENDUID 1 2] done\r\n"
        assert w.r.reading_client


def test_a_client_that_waits_for_plus_gets_the_backends_plus():
    w = Wire(relay())
    w.from_client(b"a APPEND INBOX {5}\r\n")
    w.from_backend(b"+ OK\r\n")
    assert bytes(w.client) == b"+ OK\r\n" and w.r.reading_client
    w.from_client(b"hello\r\n")
    assert bytes(w.backend) == b"a APPEND INBOX {5}\r\nhello\r\n"


def test_a_tagged_answer_instead_of_plus_drops_the_body():
    w = Wire(relay())
    w.from_client(b"a SEARCH ({12+}\r\nc CREATE X\r\n)\r\nb NOOP\r\n")
    assert bytes(w.backend) == b"a SEARCH ({12}\r\n"
    w.from_backend(b"a BAD Error in IMAP command SEARCH\r\n")
    assert bytes(w.backend) == b"a SEARCH ({12}\r\nb NOOP\r\n"
    assert bytes(w.client) == b"a BAD Error in IMAP command SEARCH\r\n"
    names = [a.info.name for a in w.other if isinstance(a, CommandSeen)]
    assert names == ["SEARCH", "NOOP"]  # CREATE was never a command


def test_a_command_opening_with_a_literal_waits_until_earlier_commands_are_answered():
    w = Wire(relay())
    w.from_client(b"a NOOP\r\na APPEND INBOX {2+}\r\nhi\r\n")
    assert bytes(w.backend) == b"a NOOP\r\n"  # same tag: its OK must not look like a refusal
    w.from_backend(b"a OK NOOP completed\r\n")
    assert bytes(w.backend) == b"a NOOP\r\na APPEND INBOX {2}\r\n"
    w.from_backend(b"+ OK\r\n")
    assert bytes(w.backend).endswith(b"{2}\r\nhi\r\n")
    assert bytes(w.client) == b"a OK NOOP completed\r\n"


def test_idle_continuation_reaches_the_client():
    w = Wire(relay())
    w.from_client(b"a IDLE\r\n")
    w.from_backend(b"+ idling\r\n")
    assert bytes(w.client) == b"+ idling\r\n"
    w.from_client(b"DONE\r\n")
    assert bytes(w.backend) == b"a IDLE\r\nDONE\r\n"


def test_gateway_replies_wait_for_a_response_boundary():
    w = Wire(relay())
    w.from_client(b"f FETCH 1 BODY[]\r\n")
    w.from_backend(b"* 1 FETCH (BODY[] {10}\r\n01234")
    w.from_client(b"c CAPABILITY\r\n")
    assert bytes(w.client) == b"* 1 FETCH (BODY[] {10}\r\n01234"
    w.from_backend(b"56789)\r\n")
    assert bytes(w.client) == (b"* 1 FETCH (BODY[] {10}\r\n0123456789)\r\n"
                               b"* CAPABILITY " + CAPS + b"\r\nc OK Capability completed.\r\n")


def test_too_many_waiting_replies_stop_reading_the_client():
    w = Wire(relay(max_injected=100))
    w.from_client(b"f FETCH 1 BODY[]\r\n")
    w.from_backend(b"* 1 FETCH (BODY[] {10}\r\n0")
    w.from_client(b"c1 CAPABILITY\r\nc2 CAPABILITY\r\n")
    assert not w.r.reading_client
    w.from_backend(b"123456789)\r\n")
    assert w.r.reading_client
    assert bytes(w.client).count(b"OK Capability completed") == 2
    assert sum(isinstance(a, Refused) for a in w.other) == 0  # answers, not refusals


def test_end_reasons():
    w = Wire(relay())
    w.from_client(b"a LOGOUT\r\n")
    w.take(w.r.backend_closed())
    assert w.other[-1] == End("logout")
    w = Wire(relay())
    w.take(w.r.backend_closed())
    assert w.other[-1] == End("backend_closed")
    w = Wire(relay())
    w.take(w.r.client_closed())
    assert w.other[-1] == End("client_closed") and not w.r.reading_client
    w = Wire(relay())
    w.from_client(b"a SEARCH x{5}\r\n")
    assert w.other[-1] == End("bad_literal", b"* BYE Invalid literal marker.\r\n")


def test_expunges_and_volume_are_reported():
    w = Wire(relay(report_every=10))
    w.from_backend(b"* 3 EXPUNGE\r\n* VANISHED 5:7\r\n")
    assert Expunged(4) in w.other
    assert BytesSeen(29) in w.other


def _converse(client: list[bytes], answers: list[bytes], split) -> tuple[bytes, bytes, list]:
    """Feed the client's bytes while the relay reads them; whenever it waits (or the client
    is done), deliver the backend's next answer. ``split`` cuts each side's bytes."""
    w = Wire(relay())
    pending = [piece for chunk in client for piece in split(chunk)]
    answers = list(answers)
    while (pending or answers) and not w.r.ended:
        if pending and w.r.reading_client:
            w.from_client(pending.pop(0))
        elif answers:
            for piece in split(answers.pop(0)):
                w.from_backend(piece)
        else:
            break
    return bytes(w.backend), bytes(w.client), [a for a in w.other if isinstance(a, End)]


@settings(max_examples=300, deadline=None)
@given(
    client=st.lists(st.sampled_from([
        b"a NOOP\r\n", b"b APPEND INBOX {3+}\r\nabc\r\n", b"c APPEND INBOX {2}\r\n",
        b"hi\r\n", b"d SEARCH {1+}\r\nx {2+}\r\nyz\r\n", b"e IDLE\r\n", b"DONE\r\n",
        b"f CAPABILITY\r\n", b"g LOGIN {1+}\r\nx\r\n", b"\r\n", b"h SELECT INBOX\n",
        b"i SEARCH {0005+}\r\n", b"j NOOP {0}\r\n",
    ]), max_size=8),
    answers=st.lists(st.sampled_from([
        b"+ OK\r\n", b"* 1 EXISTS\r\n", b"b BAD no\r\n", b"d BAD no\r\n", b"a OK done\r\n",
        b"* 1 FETCH (BODY[] {6}\r\n+ OK\r\n)\r\n", b"+ idling\r\n",
    ]), max_size=12),
)
def test_any_conversation_never_raises_and_is_the_same_in_every_split(client, answers):
    whole = _converse(client, answers, lambda b: [b])
    bytewise = _converse(client, answers, lambda b: [b[i : i + 1] for i in range(len(b))])
    assert whole == bytewise
    # Nothing reaches the backend but what the client sent, with canonical markers.
    sent = b"".join(client)
    assert len(whole[0]) <= len(sent)


# -- drain (SIGTERM) --------------------------------------------------------------------------

BYE = b"* BYE Server shutting down.\r\n"


def test_drain_with_nothing_in_flight_ends_at_once_with_bye():
    r = relay()
    out = r.drain(BYE)
    assert [a for a in out if isinstance(a, End)] == [End("shutdown", BYE)]
    assert not r.reading_client


def test_drain_waits_for_the_response_in_flight_in_every_split():
    """The BYE comes after the whole FETCH answer and its tagged OK, never inside it."""
    body = b"x" * 300 + b"\r\nc OK not a tagged line: literal data\r\n"
    answer = (b"* 1 FETCH (BODY[] {%d}\r\n" % len(body)) + body + b")\r\nc OK Fetch done.\r\n"
    for parts in splits(answer, random.Random(7)):
        w = Wire(relay())
        w.from_client(b"c FETCH 1 BODY[]\r\n")
        w.take(w.r.drain(BYE))
        assert not any(isinstance(a, End) for a in w.other)
        for part in parts:
            assert not any(isinstance(a, End) for a in w.other), parts
            w.from_backend(part)
        ends = [a for a in w.other if isinstance(a, End)]
        assert ends == [End("shutdown", BYE)], parts
        assert bytes(w.client) == answer


def test_drain_drops_client_bytes_that_arrive_after_it():
    w = Wire(relay())
    w.from_client(b"a NOOP\r\n")
    w.take(w.r.drain(BYE))
    assert w.r.client_data(b"b DELETE INBOX\r\n") == []
    w.from_backend(b"a OK NOOP done.\r\n")
    assert bytes(w.backend) == b"a NOOP\r\n"
    assert [a for a in w.other if isinstance(a, End)] == [End("shutdown", BYE)]


def test_drain_during_idle_does_not_wait_for_done():
    w = Wire(relay())
    w.from_client(b"i IDLE\r\n")
    w.from_backend(b"+ idling\r\n")
    w.take(w.r.drain(BYE))
    assert [a for a in w.other if isinstance(a, End)] == [End("shutdown", BYE)]
