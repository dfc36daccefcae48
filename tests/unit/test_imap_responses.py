"""Backend->client scanner, capability rewriting and response builders."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.imap.capabilities import client_capabilities
from gateway.imap.responses import (
    ResponseReader,
    ResponseScanner,
    ServerResponse,
    capability_from_ok,
    continuation,
    parse_response,
    quote,
    rewrite_login_ok,
    tagged,
    untagged,
)

# Responses whose literals contain CRLF, "{", fake tagged lines and fake literal markers.
RESPONSES = [
    b"* 1 FETCH (UID 7 BODY[] {27}\r\nx\r\na OK fake\r\n{99}\r\n* 2 EXP)\r\n",
    b"* 2 EXPUNGE\r\n",
    b"* 3 FETCH (BODY[1] {0}\r\n BINARY[2] ~{4}\r\n\x00\r\n{ FLAGS (\\Seen))\r\n",
    b"a NO Mailbox doesn't exist: x {5}\r\n",  # text, not a literal
    b"* VANISHED (EARLIER) 1:3,9\r\n",
    b"+ idling\r\n",
    b"b OK [READ-ONLY] Done.\r\n",
]
STREAM = b"".join(RESPONSES)
ENDS = set()
_pos = 0
for _r in RESPONSES:
    _pos += len(_r)
    ENDS.add(_pos)


def check_split(pieces):
    scanner = ResponseScanner()
    fed = 0
    expunged = 0
    completed = []
    for p in pieces:
        fed += len(p)
        result = scanner.receive_data(p)
        assert result.at_line_boundary == (fed in ENDS), (pieces, fed)
        expunged += result.expunged
        completed += result.completed
    assert expunged == 1 + 4
    assert completed == [(b"a", "NO"), (b"b", "OK")]


def test_scanner_boundaries_in_every_split():
    check_split([STREAM])
    check_split([STREAM[i : i + 1] for i in range(len(STREAM))])
    for i in range(1, len(STREAM)):
        check_split([STREAM[:i], STREAM[i:]])


def test_scanner_reports_broken_stream_on_an_overlong_line():
    scanner = ResponseScanner(max_line=16)
    assert scanner.receive_data(b"* SEARCH " + b"1 " * 20).at_line_boundary is False
    assert scanner.broken is not None
    assert scanner.receive_data(b"\r\n").at_line_boundary is False


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 50))
def test_scanner_never_raises(data, size):
    scanner = ResponseScanner(max_line=128)
    for i in range(0, len(data), size):
        scanner.receive_data(data[i : i + size])


def test_client_capabilities_drop_what_the_gateway_owns():
    caps = "IMAP4rev1 SASL-IR STARTTLS LOGINDISABLED AUTH=PLAIN auth=login IDLE COMPRESS=DEFLATE MOVE"
    assert client_capabilities(caps.split()) == ["IMAP4rev1", "SASL-IR", "IDLE", "MOVE"]


def test_rewrite_login_ok():
    line = b"a1 OK [CAPABILITY IMAP4rev1 AUTH=PLAIN COMPRESS=DEFLATE IDLE] Logged in\r\n"
    assert rewrite_login_ok(line) == b"a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"
    for other in [b"a1 OK Logged in\r\n", b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n",
                  b"a1 NO [AUTHENTICATIONFAILED] no\r\n"]:
        assert rewrite_login_ok(other) == other


def test_capability_from_ok():
    assert capability_from_ok(b"* OK [CAPABILITY IMAP4rev1 ID] ready\r\n") == ["IMAP4rev1", "ID"]
    assert capability_from_ok(b"a OK [CAPABILITY X] done\r\n") == ["X"]
    assert capability_from_ok(b"a OK done\r\n") is None
    assert capability_from_ok(b"a NO [CAPABILITY X] no\r\n") is None


def test_quote_uses_literal_when_quoted_cannot_carry_the_value():
    assert quote('a "b" \\c') == b'"a \\"b\\" \\\\c"'
    assert quote("line\r\nbreak") == b"{11}\r\nline\r\nbreak"
    assert quote("Ünïcode") == b"{9}\r\n" + "Ünïcode".encode()


def test_builders_never_emit_caller_crlf():
    assert tagged(b"a", "NO", "bad\r\nb OK injected", "ALERT") == (
        b"a NO [ALERT] bad  b OK injected\r\n"
    )
    assert untagged("BYE", "Logging out") == b"* BYE Logging out\r\n"
    assert untagged("OK", "hi", "CAPABILITY X") == b"* OK [CAPABILITY X] hi\r\n"
    assert continuation("x\ny") == b"+ x y\r\n"


def test_parse_response():
    r = parse_response(b"* OK [CAPABILITY IMAP4rev1 SASL-IR] Dovecot ready.\r\n")
    assert (r.kind, r.tag, r.status, r.code, r.text) == (
        "untagged", None, "OK", "CAPABILITY IMAP4rev1 SASL-IR", "Dovecot ready."
    )
    assert r.capabilities == ["IMAP4rev1", "SASL-IR"]
    r = parse_response(b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    assert (r.kind, r.tag, r.status, r.code_word) == ("tagged", b"a1", "NO", "AUTHENTICATIONFAILED")
    r = parse_response(b"+ \r\n")
    assert (r.kind, r.text) == ("continuation", "")
    r = parse_response(b'* ID ("name" "Dovecot")\r\n')
    assert (r.kind, r.status, r.text) == ("untagged", None, 'ID ("name" "Dovecot")')
    assert parse_response(b"* CAPABILITY IMAP4rev1 IDLE\r\n").capabilities == ["IMAP4rev1", "IDLE"]
    assert parse_response(b"\r\n").kind == "invalid"
    assert parse_response(b"a1 WHAT\r\n").kind == "invalid"


@given(st.binary(max_size=200))
def test_parse_response_never_raises(data):
    parse_response(data)


def test_response_reader_reads_whole_responses_in_every_split():
    data = (b"* OK [CAPABILITY IMAP4rev1] hi\r\n* ID (\"name\" {12}\r\na1 OK lookalike)\r\n"
            b"a1 NO [AUTHENTICATIONFAILED] no\r\nleft")
    for cut in range(len(data) + 1):
        reader = ResponseReader()
        got = []
        for piece in (data[:cut], data[cut:]):
            reader.receive_data(piece)
            while isinstance(r := reader.next_response(), ServerResponse):
                got.append(r)
        assert [(r.kind, r.tag, r.status) for r in got] == [
            ("untagged", None, "OK"), ("untagged", None, None), ("tagged", b"a1", "NO")]
        assert got[1].raw.endswith(b"a1 OK lookalike)\r\n")  # a literal, not a tagged line
        assert reader.take_buffered() == b"left"
