"""Strict tokenizer and SASL codecs."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from gateway.imap.sasl import (
    PlainCredentials,
    SaslError,
    decode_login_response,
    decode_plain,
    encode_login_response,
    encode_plain,
)
from gateway.imap.tokens import (
    Atom,
    ListTok,
    Nil,
    ParsedCommand,
    ParseError,
    String,
    parse_command,
    tokenize,
)


def parse(line: bytes, *literals: bytes):
    """Split ``line`` at literal placeholders ``{}`` into parts."""
    texts = line.split(b"{}")
    parts = [(t, lit) for t, lit in zip(texts, [*literals, None], strict=True)]
    return parse_command(parts)


def test_full_command():
    cmd = parse(b'a1 id ("name" NIL "k" {}) \\Seen x%*] ()', b"lit\r\n")
    assert cmd == ParsedCommand(b"a1", "ID", (
        ListTok((String(b"name"), Nil(), String(b"k"), String(b"lit\r\n", literal=True))),
        Atom("\\Seen"), Atom("x%*]"), ListTok(()),
    ))
    assert parse(b"t uid fetch 1:* FLAGS").name == "UID FETCH"


def test_quoted_strings_are_strict_but_accept_utf8():
    assert tokenize([(b'"a\\"b\\\\c"', None)]) == [String(b'a"b\\c')]
    assert tokenize([('"Grüße"'.encode(), None)]) == [String("Grüße".encode())]
    for bad, msg in [
        (b'"a\\nb"', "Invalid escape"),
        (b'"a\x00b"', "NUL"),
        (b'"abc', "Unterminated"),
        (b'"\xff"', "not valid UTF-8"),
        (b"caf\xc3\xa9", "8-bit"),
    ]:
        err = tokenize([(bad, None)])
        assert isinstance(err, ParseError) and msg in err.message, bad


def test_syntax_errors_keep_the_tag_for_the_bad_reply():
    for line, msg in [
        (b"a NOOP  x", "Unexpected space"),  # double space: an empty token
        (b"a NOOP x ", "Trailing space"),
        (b"a NOOP (x", "Missing ')'"),
        (b"a NOOP x)", "Missing space"),
        (b"a NOOP \"x\"y", "Missing space"),
    ]:
        err = parse(line)
        assert isinstance(err, ParseError) and err.tag == b"a", line
        assert msg in err.message, (line, err.message)
    assert parse(b"+tag NOOP") == ParseError("Missing or invalid tag.")
    assert parse(b"") == ParseError("Empty command line.")


def test_max_tokens_reads_only_the_leading_arguments():
    parts = [(b'a COPY 1:3 dest (BODY[HEADER.FIELDS (A B)]', None)]
    assert tokenize(parts, start=6, max_tokens=2) == [Atom("1:3"), Atom("dest")]


@given(st.lists(st.tuples(st.binary(max_size=30), st.one_of(st.none(), st.binary(max_size=5))),
                max_size=4))
def test_tokenizer_never_raises(parts):
    parse_command(parts)


def test_plain_round_trip_and_repr_hides_password():
    b64 = encode_plain("", "user", "pä55")
    creds = decode_plain(b64)
    assert creds == PlainCredentials("", "user", "pä55")
    authzid, authcid, password = creds
    assert (authzid, authcid, password) == ("", "user", "pä55")
    assert "pä55" not in repr(creds)


def test_plain_errors_are_values_without_payload():
    for raw in [b"\x00user", b"a\x00\x00pw", b"a\x00b\x00c\x00d"]:
        err = decode_plain(base64.b64encode(raw))
        assert isinstance(err, SaslError) and "pw" not in err.message
    assert isinstance(decode_plain(b"not base64!"), SaslError)
    assert isinstance(decode_plain(b"dXNlcg"), SaslError)  # missing padding


def test_login_responses():
    assert decode_login_response(encode_login_response("user")) == "user"
    assert decode_login_response(b"=") == ""
    assert isinstance(decode_login_response(b"AA=="), SaslError)  # NUL
