"""The pre-auth session machine: the security-critical part, driven byte by byte."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.imap.preauth import (
    CAPS_TLS,
    Authenticated,
    ClientIdentified,
    CloseConnection,
    CommandRejected,
    LoginRequest,
    PlaintextLoginRefused,
    PreauthConnection,
    PreauthLimits,
    PreauthState,
    PreauthStateError,
    SendData,
    StartTLS,
    privacy_text,
)

PRIVACY = b"NO [PRIVACYREQUIRED] Plaintext authentication is disabled; use STARTTLS or port 993.\r\n"
SECRET = "s3cret-Pa55"


def test_privacy_text_names_the_implicit_tls_ports_it_is_given():
    assert privacy_text([10993]) == (
        "Plaintext authentication is disabled; use STARTTLS or port 10993.")
    assert privacy_text([994, 993, 994]) == (
        "Plaintext authentication is disabled; use STARTTLS or port 993 or 994.")
    assert privacy_text([]) == "Plaintext authentication is disabled; use STARTTLS."
    c = PreauthConnection(tls_active=False, starttls_allowed=True, limits=PreauthLimits(),
                          privacy_text=privacy_text([10993]))
    sent, _ = run(c, [b"a LOGIN alice secret\r\n"])
    assert sent == b"a NO [PRIVACYREQUIRED] Plaintext authentication is disabled; use " \
                   b"STARTTLS or port 10993.\r\n"


def conn(tls: bool = True, **limits) -> PreauthConnection:
    return PreauthConnection(
        tls_active=tls, starttls_allowed=not tls, limits=PreauthLimits(**limits)
    )


def run(c: PreauthConnection, pieces) -> tuple[bytes, list]:
    """Feed pieces; return (all bytes sent to the client, the other events in order)."""
    sent = bytearray()
    other = []
    for p in pieces:
        for ev in c.receive_data(p):
            if isinstance(ev, SendData):
                sent += ev.data
            else:
                other.append(ev)
    return bytes(sent), other


def every_split(data: bytes):
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]


def assert_same_in_every_split(data: bytes, tls: bool = True, **limits):
    whole = run(conn(tls, **limits), [data])
    for pieces in every_split(data):
        assert run(conn(tls, **limits), pieces) == whole, pieces
    return whole


# -- greeting and capabilities ------------------------------------------------------------------


def test_greeting_before_tls_disables_login_and_offers_no_mechanism():
    (ev,) = conn(tls=False).initial_events()
    assert ev == SendData(
        b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID ENABLE IDLE LITERAL+ STARTTLS LOGINDISABLED]"
        b" imap-gateway ready.\r\n"
    )
    assert b"AUTH=" not in ev.data


def test_capability_with_tls_offers_plain_and_login():
    sent, _ = run(conn(), [b"a CAPABILITY\r\n"])
    assert sent == b"* CAPABILITY " + CAPS_TLS.encode() + b"\r\na OK Capability completed.\r\n"


# -- STARTTLS -------------------------------------------------------------------------------------


def test_starttls_discards_pipelined_commands():
    """CVE-2011-0411 class: b LOGIN sent in the same packet must never be executed."""
    c = conn(tls=False)
    injected = b"b LOGIN x y\r\n"
    sent, other = run(c, [b"a STARTTLS\r\n" + injected])
    assert sent == b"a OK Begin TLS negotiation now.\r\n"
    assert other == [StartTLS(discarded=len(injected))]
    assert c.state is PreauthState.STARTTLS_PENDING
    # Bytes that arrive before the handshake is done are dropped too.
    assert c.receive_data(b"c LOGIN x y\r\n") == []
    assert c.discarded == len(injected) + 13
    assert c.tls_started() == []  # no second greeting
    sent, other = run(c, [b"d CAPABILITY\r\n"])
    assert CAPS_TLS.encode() in sent and other == []


def test_starttls_injection_in_every_split_never_yields_a_login():
    data = b"a STARTTLS\r\nb LOGIN x y\r\n"
    for pieces in every_split(data):
        c = conn(tls=False)
        sent, other = run(c, pieces)
        assert sent == b"a OK Begin TLS negotiation now.\r\n"
        assert [type(e) for e in other] == [StartTLS]
        assert other[0].discarded + (c.discarded - other[0].discarded) == 13
        assert c.discarded == 13


def test_starttls_refused_when_tls_active_or_not_offered():
    sent, other = run(conn(tls=True), [b"a STARTTLS\r\n"])
    assert sent == b"a BAD TLS is already active.\r\n"
    assert [type(e) for e in other] == [CommandRejected]
    plain = PreauthConnection(tls_active=False, starttls_allowed=False, limits=PreauthLimits())
    sent, _ = run(plain, [b"a STARTTLS\r\n"])
    assert sent.startswith(b"a BAD ")
    assert b"STARTTLS" not in plain.initial_events()[0].data


# -- no credentials before TLS ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"a LOGIN user " + SECRET.encode() + b"\r\n",
        b"a AUTHENTICATE PLAIN " + base64.b64encode(b"\0user\0" + SECRET.encode()) + b"\r\n",
        b"a AUTHENTICATE PLAIN\r\n",
        b"a AUTHENTICATE LOGIN\r\n",
        b"a AUTHENTICATE GSSAPI\r\n",
    ],
)
def test_plaintext_login_is_refused_without_asking_for_more(line):
    sent, other = assert_same_in_every_split(line, tls=False)
    assert sent == b"a " + PRIVACY  # no "+" continuation, nothing else
    assert [type(e) for e in other] == [PlaintextLoginRefused]


def test_plaintext_login_with_sync_literal_gets_no_instead_of_plus():
    c = conn(tls=False)
    sent, other = run(c, [b"a LOGIN user {11}\r\n"])
    assert sent == b"a " + PRIVACY
    assert other == [PlaintextLoginRefused("LOGIN")]
    # The client must not send the literal; its next line is a new command.
    sent, _ = run(c, [b"b NOOP\r\n"])
    assert sent == b"b OK NOOP completed.\r\n"
    assert c.bad_commands == 0


def test_plaintext_login_with_non_sync_literal_is_consumed_then_refused():
    data = b"a LOGIN user {11+}\r\n" + SECRET.encode() + b"\r\nb NOOP\r\n"
    sent, other = assert_same_in_every_split(data, tls=False)
    assert sent == b"a " + PRIVACY + b"b OK NOOP completed.\r\n"
    assert other == [PlaintextLoginRefused("LOGIN")]


# -- LOGIN ------------------------------------------------------------------------------------------


def test_login_with_sync_literals_in_every_split():
    data = b"a LOGIN {4}\r\nuser {11}\r\n" + SECRET.encode() + b"\r\n"
    sent, other = assert_same_in_every_split(data)
    assert sent == b"+ Ready for literal data\r\n" * 2
    assert other == [LoginRequest(b"a", "LOGIN", "user", SECRET)]


def test_login_with_non_sync_literal_and_quoted_string():
    data = b'a LOGIN "us\\"er" {11+}\r\n' + SECRET.encode() + b"\r\n"
    sent, other = assert_same_in_every_split(data)
    assert sent == b""
    assert other == [LoginRequest(b"a", "LOGIN", 'us"er', SECRET)]


def test_login_refusal_is_uniform_and_pipelined_commands_run_after():
    c = conn()
    _, other = run(c, [b"a LOGIN user pw\r\nb NOOP\r\n"])
    assert [type(e) for e in other] == [LoginRequest]
    assert c.state is PreauthState.LOGGING_IN
    assert run(c, [b"c NOOP\r\n"]) == (b"", [])  # held, not executed yet
    events = c.login_failed()
    assert events == [
        SendData(b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
        SendData(b"b OK NOOP completed.\r\n"),
        SendData(b"c OK NOOP completed.\r\n"),
    ]
    assert c.bad_commands == 0 and c.state is PreauthState.NOT_AUTHENTICATED


def test_login_refusal_with_an_alert_for_a_device_awaiting_approval():
    c = conn()
    run(c, [b"a LOGIN user pw\r\nb NOOP\r\n"])
    text = "New device: approve it at https://mail-gw.example.org:8443 after signing in"
    assert c.login_failed(alert=text) == [
        SendData(b"a NO [ALERT] " + text.encode() + b"\r\n"),
        SendData(b"b OK NOOP completed.\r\n"),
    ]
    assert c.state is PreauthState.NOT_AUTHENTICATED
    # the text comes from the configuration; one that would break the line is refused
    run(c, [b"c LOGIN user pw\r\n"])
    for bad in ("", "two\r\nlines", "caf\u00e9"):
        with pytest.raises(ValueError, match="printable ASCII"):
            c.login_failed(alert=bad)
    assert c.state is PreauthState.LOGGING_IN


def test_login_success_hands_over_pipelined_bytes():
    c = conn()
    run(c, [b"a LOGIN user pw\r\nb SELECT INBOX\r\nc FE"])
    run(c, [b"TCH 1 (FLAGS)\r\n"])
    assert c.login_succeeded() == [Authenticated(b"b SELECT INBOX\r\nc FETCH 1 (FLAGS)\r\n")]
    assert c.state is PreauthState.AUTHENTICATED
    with pytest.raises(PreauthStateError):
        c.receive_data(b"x")


def test_bytes_held_during_login_are_bounded():
    c = conn(max_line=100)
    run(c, [b"a LOGIN user pw\r\n"])
    sent, other = run(c, [b"x" * 401])
    assert sent.startswith(b"* BYE ")
    assert other == [CloseConnection("line_too_long")]
    assert c.login_failed() == []  # a late verdict after close is harmless


def test_login_arguments_are_checked():
    sent, other = run(conn(), [b"a LOGIN onlyuser\r\n"])
    assert sent == b"a BAD LOGIN expects a user name and a password.\r\n"
    assert [type(e) for e in other] == [CommandRejected]


# -- AUTHENTICATE -----------------------------------------------------------------------------------


def b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def test_authenticate_plain_with_initial_response():
    data = b"a AUTHENTICATE PLAIN " + b64(b"admin\0user\0" + SECRET.encode()) + b"\r\n"
    sent, other = assert_same_in_every_split(data)
    assert sent == b""
    assert other == [LoginRequest(b"a", "PLAIN", "user", SECRET, authzid="admin")]


def test_authenticate_plain_with_continuation():
    data = b"a authenticate plain\r\n" + b64(b"\0user\0" + SECRET.encode()) + b"\r\n"
    sent, other = assert_same_in_every_split(data)
    assert sent == b"+ \r\n"
    assert other == [LoginRequest(b"a", "PLAIN", "user", SECRET)]


def test_authenticate_cancel_and_bad_base64():
    sent, other = assert_same_in_every_split(b"a AUTHENTICATE PLAIN\r\n*\r\nb NOOP\r\n")
    assert sent == b"+ \r\na BAD Authentication cancelled.\r\nb OK NOOP completed.\r\n"
    assert [type(e) for e in other] == [CommandRejected]
    sent, _ = run(conn(), [b"a AUTHENTICATE PLAIN\r\n%%%\r\n"])
    assert sent == b"+ \r\na BAD Invalid base64 data.\r\n"
    sent, _ = run(conn(), [b"a AUTHENTICATE PLAIN =\r\n"])  # empty IR is not a PLAIN message
    assert sent.startswith(b"a BAD Invalid SASL PLAIN message")


def test_authenticate_login_prompts():
    data = b"a AUTHENTICATE LOGIN\r\n" + b64(b"user") + b"\r\n" + b64(SECRET.encode()) + b"\r\n"
    sent, other = assert_same_in_every_split(data)
    assert sent == b"+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n"
    assert other == [LoginRequest(b"a", "AUTH-LOGIN", "user", SECRET)]
    sent, other = run(conn(), [b"a AUTHENTICATE LOGIN " + b64(b"user") + b"\r\n"])
    assert sent == b"+ UGFzc3dvcmQ6\r\n" and other == []


def test_unknown_mechanism_counts_as_bad_command():
    c = conn()
    sent, other = run(c, [b"a AUTHENTICATE CRAM-MD5\r\n"])
    assert sent == b"a NO Unsupported authentication mechanism.\r\n"
    assert [type(e) for e in other] == [CommandRejected] and c.bad_commands == 1


def test_no_secret_in_any_event_repr():
    data = (
        b"a LOGIN user " + SECRET.encode() + b"\r\n"
    )
    _, other = run(conn(), [data])
    plain = b"b AUTHENTICATE PLAIN " + b64(b"\0user\0" + SECRET.encode()) + b"\r\n"
    _, other2 = run(conn(), [plain])
    for ev in other + other2:
        assert isinstance(ev, LoginRequest) and ev.password == SECRET
        assert SECRET not in repr(ev) and SECRET not in str(ev)


# -- ID ---------------------------------------------------------------------------------------------


def test_id_records_client_fields():
    c = conn(tls=False)
    sent, other = run(c, [b'a ID ("name" "Thunderbird" "version" NIL)\r\n'])
    assert sent == b'* ID ("name" "imap-gateway")\r\na OK ID completed.\r\n'
    assert other == [ClientIdentified({"name": "Thunderbird", "version": ""})]
    sent, _ = run(c, [b"b ID NIL\r\n"])
    assert sent.endswith(b"b OK ID completed.\r\n")


def test_id_is_bounded():
    too_many = b"a ID (" + b" ".join(b'"k%d" "v"' % i for i in range(31)) + b")\r\n"
    sent, _ = run(conn(), [too_many])
    assert sent.startswith(b"a BAD ")
    sent, _ = run(conn(), [b'a ID ("name" "' + b"v" * 1025 + b'")\r\n'])
    assert sent == b"a BAD ID field or value too long.\r\n"


# -- limits -----------------------------------------------------------------------------------------


def test_bad_commands_close_the_connection_past_the_limit():
    c = conn(max_bad_commands=2)
    sent, other = run(c, [b"a SELECT INBOX\r\n", b"\r\n"])
    assert sent == (
        b"a BAD SELECT is not allowed before authentication.\r\n* BAD Empty command line.\r\n"
    )
    assert c.state is PreauthState.NOT_AUTHENTICATED
    sent, other = run(c, [b"garbage\r\nd NOOP\r\n"])
    assert sent == b"garbage BAD Missing command.\r\n* BYE Too many invalid commands.\r\n"
    assert other[-1] == CloseConnection("too_many_bad_commands")
    assert c.receive_data(b"e NOOP\r\n") == []


def test_line_too_long_closes():
    c = conn(max_line=20)
    sent, other = run(c, [b"a NOOP " + b"x" * 30])
    assert sent == b"* BYE Line too long.\r\n"
    assert other == [CloseConnection("line_too_long")]


def test_too_large_sync_literal_gets_bad_without_plus_and_session_goes_on():
    c = conn(max_literal=10)
    sent, other = run(c, [b"a LOGIN {11}\r\nb NOOP\r\n"])
    assert sent == b"a BAD [TOOBIG] Literal too large.\r\nb OK NOOP completed.\r\n"
    assert [type(e) for e in other] == [CommandRejected] and c.bad_commands == 1


def test_too_large_non_sync_literal_closes():
    c = conn(max_literal=10)
    sent, other = run(c, [b"a LOGIN {11+}\r\n"])
    assert sent == b"* BYE [TOOBIG] Literal too large.\r\n"
    assert other == [CloseConnection("literal_too_large")]


def test_literal_on_a_command_that_takes_none_is_refused_without_plus():
    sent, other = run(conn(), [b"a NOOP {3}\r\nb NOOP\r\n"])
    assert sent == b"a BAD NOOP does not take a literal here.\r\nb OK NOOP completed.\r\n"


def test_logout_eof_and_timeout():
    sent, other = run(conn(), [b"a LOGOUT\r\nb NOOP\r\n"])
    assert sent == b"* BYE Logging out\r\na OK Logout completed.\r\n"
    assert other == [CloseConnection("logout")]
    assert conn().receive_data(b"") == [CloseConnection("eof")]
    events = conn().timed_out()
    assert events[0].data.startswith(b"* BYE ") and events[1] == CloseConnection("timeout")


def test_shell_calls_out_of_order_are_explicit_errors():
    c = conn()
    with pytest.raises(PreauthStateError, match="login_failed.*not_authenticated"):
        c.login_failed()
    with pytest.raises(PreauthStateError, match="tls_started"):
        c.tls_started()


# -- a whole session, and arbitrary input ---------------------------------------------------------------


def test_whole_session_is_the_same_in_every_split():
    data = (
        b'a ID ("name" "x")\r\nb CAPABILITY\r\nc FOO\r\nd AUTHENTICATE LOGIN\r\n*\r\n'
        b"e LOGIN {4}\r\nuser {2+}\r\npw\r\nf NOOP\r\n"
    )
    sent, other = assert_same_in_every_split(data)
    assert [type(e) for e in other] == [
        ClientIdentified, CommandRejected, CommandRejected, LoginRequest
    ]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from([
                b"a LOGIN {3}\r\n", b"x\r\n", b"{5+}\r\n", b"a AUTHENTICATE PLAIN\r\n",
                b"*\r\n", b"a STARTTLS\r\n", b"a ID (", b'"k" "v")\r\n', b"\r\n",
            ]),
        ),
        max_size=12,
    ),
    st.booleans(),
)
def test_arbitrary_input_never_raises_and_output_is_bounded(pieces, tls):
    c = conn(tls, max_line=64, max_literal=32, max_bad_commands=3)
    total_in = 0
    sent = 0
    for p in pieces:
        total_in += len(p)
        for ev in c.receive_data(p):
            if isinstance(ev, SendData):
                sent += len(ev.data)
        if c.state is PreauthState.LOGGING_IN:
            for ev in c.login_failed():
                if isinstance(ev, SendData):
                    sent += len(ev.data)
        if c.state is PreauthState.STARTTLS_PENDING:
            c.tls_started()
    assert sent <= 200 * (total_in + 1)
    assert c.bad_commands <= 4


def test_nul_in_a_login_literal_is_refused_before_any_login_request():
    """A NUL would split the SASL PLAIN message built for the backend, so
    the policy would check one user name and the backend log in another."""
    data = b"a LOGIN {15+}\r\nalice\x00alicepass {8+}\r\nwhatever\r\n"
    sent, events = assert_same_in_every_split(data)
    assert sent.startswith(b"a BAD")
    assert not any(isinstance(e, LoginRequest) for e in events)
