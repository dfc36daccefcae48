"""The mailbox-scope filter on backend responses: removes only what it must."""

from __future__ import annotations

from gateway.auth.scopes import mailbox_matcher
from gateway.imap.listfilter import ListResponseFilter

ALLOWED = mailbox_matcher(["INBOX", "Archive/*"])

RESPONSES = (
    b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
    b'* LIST (\\HasChildren) "/" Archive\r\n'
    b'* LIST (\\HasNoChildren) "/" "Archive/2024"\r\n'
    b'* LIST (\\HasNoChildren) "/" Secret\r\n'
    b'* LIST (\\HasNoChildren) "/" {7}\r\nPrivate\r\n'
    b'* LIST (\\HasNoChildren) "/" {5}\r\nINBOX\r\n'
    b'* STATUS Secret (MESSAGES 3)\r\n'
    b'* STATUS "INBOX" (MESSAGES 3)\r\n'
    b'* 1 FETCH (BODY[] {24}\r\n* LIST () "/" Secret\r\n)\r\n'
    b"a1 OK List completed.\r\n"
)
EXPECTED = (
    b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
    b'* LIST (\\HasChildren) "/" Archive\r\n'
    b'* LIST (\\HasNoChildren) "/" "Archive/2024"\r\n'
    b'* LIST (\\HasNoChildren) "/" {5}\r\nINBOX\r\n'
    b'* STATUS "INBOX" (MESSAGES 3)\r\n'
    b'* 1 FETCH (BODY[] {24}\r\n* LIST () "/" Secret\r\n)\r\n'
    b"a1 OK List completed.\r\n"
)


def test_whole_feed():
    f = ListResponseFilter(ALLOWED)
    assert f.receive_data(RESPONSES) == EXPECTED
    assert f.at_line_boundary


def test_byte_by_byte_gives_the_same_output():
    f = ListResponseFilter(ALLOWED)
    out = b"".join(f.receive_data(RESPONSES[i:i + 1]) for i in range(len(RESPONSES)))
    assert out == EXPECTED


def test_every_two_piece_split():
    for cut in range(len(RESPONSES)):
        f = ListResponseFilter(ALLOWED)
        assert f.receive_data(RESPONSES[:cut]) + f.receive_data(RESPONSES[cut:]) == EXPECTED


def test_boundary_is_false_inside_a_held_response():
    f = ListResponseFilter(ALLOWED)
    f.receive_data(b'* LIST () "/" {7}\r\nPriv')
    assert not f.at_line_boundary
