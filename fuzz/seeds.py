"""Seed corpora and mutation dictionaries, per target (plain data, no gateway imports).

Seeds are realistic client sessions (what Thunderbird, Apple Mail, mutt, isync and attack
tools send) and realistic Dovecot output; the mutators break them from there.
"""

from __future__ import annotations

import base64


def _b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


_PLAIN = _b64(b"\x00alice@example.com\x00s3cret-Pa55")
_PLAIN_AUTHZ = _b64(b"admin\x00alice\x00pw")
_USER = _b64(b"alice@example.com")
_PASS = _b64(b"s3cret-Pa55 \xc3\xa9t\xc3\xa9")

MESSAGE = (
    b"From: Alice <alice@example.com>\r\nTo: bob@example.com\r\nSubject: hi {5}\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\n"
    b"a1 NOOP\r\nb2 STORE 1:* +FLAGS (\\Deleted)\r\nc3 EXPUNGE\r\n"
)

PREAUTH = [
    b"a1 CAPABILITY\r\na2 NOOP\r\na3 LOGOUT\r\n",
    b'a1 ID ("name" "Thunderbird" "version" "115.6.0" "os" "Linux")\r\n',
    b"a1 ID NIL\r\n",
    b'a1 ID ("name" {11}\r\nThunderbird "support-url" NIL)\r\n',
    b'a1 ID ("name" {11+}\r\nThunderbird)\r\n',
    b"a1 STARTTLS\r\n",
    b"a1 STARTTLS\r\na2 LOGIN alice s3cret\r\n",
    b"a1 LOGIN alice s3cret-Pa55\r\na2 SELECT INBOX\r\na3 FETCH 1:* (FLAGS)\r\n",
    b'a1 LOGIN "alice@example.com" "pa\\"ss\\\\word"\r\n',
    b"a1 LOGIN {17}\r\nalice@example.com {11}\r\ns3cret-Pa55\r\n",
    b"a1 LOGIN {17+}\r\nalice@example.com {11+}\r\ns3cret-Pa55\r\na2 NOOP\r\n",
    b"a1 LOGIN alice ~{3}\r\npw1\r\n",
    b"a1 AUTHENTICATE PLAIN\r\n" + _PLAIN + b"\r\n",
    b"a1 AUTHENTICATE PLAIN " + _PLAIN + b"\r\na2 IDLE\r\nDONE\r\n",
    b"a1 AUTHENTICATE PLAIN " + _PLAIN_AUTHZ + b"\r\n",
    b"a1 AUTHENTICATE PLAIN =\r\n",
    b"a1 AUTHENTICATE PLAIN\r\n*\r\na2 CAPABILITY\r\n",
    b"a1 AUTHENTICATE LOGIN\r\n" + _USER + b"\r\n" + _PASS + b"\r\n",
    b"a1 AUTHENTICATE LOGIN " + _USER + b"\r\n" + _PASS + b"\r\n",
    b"a1 AUTHENTICATE LOGIN\r\n" + _USER + b"\r\n*\r\n",
    b"a1 AUTHENTICATE XOAUTH2 dXNlcj1hbGljZQFhdXRoPUJlYXJlciB4AQE=\r\n",
    b"a1 AUTHENTICATE PLAIN\r\n{5}\r\nhello\r\n",
    b"a1 SELECT INBOX\r\na2 FOO\r\n\r\na3 LOGIN\r\n",
    b"* OK\r\n+ x\r\na1 UID FETCH 1 BODY[]\r\n",
    b"a1 CAPABILITY\na2 LOGIN alice pw\na3 LOGOUT\n",
    b"a1 NOOP {3+}\r\nabc\r\na2 NOOP\r\n",
    b"a1 ID (\"x\" \"" + b"y" * 40 + b"\")\r\n",
    b"a1 LOGIN alice " + b"p" * 200 + b"\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: mail.example.com\r\n\r\n",
]

COMMANDS = [
    b"a1 SELECT INBOX\r\na2 FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE)\r\n",
    b'a1 EXAMINE "Sent Items"\r\na2 UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)])\r\n',
    b"a1 UID STORE 5 +FLAGS.SILENT (\\Seen)\r\na2 STORE 1:3 -FLAGS (\\Flagged)\r\n",
    b"a1 SEARCH UNSEEN\r\na2 UID SEARCH CHARSET UTF-8 TEXT {4}\r\ntest\r\n",
    b"a1 UID SEARCH CHARSET UTF-8 SUBJECT {6+}\r\n\xc3\xa9t\xc3\xa9!\r\n",
    b"a1 APPEND INBOX (\\Seen) {%d}\r\n" % len(MESSAGE) + MESSAGE + b"\r\na2 NOOP\r\n",
    b'a1 APPEND "Drafts" (\\Draft) "01-Jan-2024 10:00:00 +0000" {%d+}\r\n' % len(MESSAGE)
    + MESSAGE + b"\r\n",
    b"a1 APPEND INBOX ~{%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n",
    b"a1 APPEND INBOX {3+}\r\nabc {2+}\r\nde\r\n",
    b'a1 APPEND INBOX CATENATE (URL "/INBOX;UIDVALIDITY=1/;UID=20" TEXT {5+}\r\nhello)\r\n',
    b"a1 IDLE\r\nDONE\r\na2 NOOP\r\n",
    b"a1 IDLE\r\nb2 NOOP\r\n",
    b'a1 LIST "" "*"\r\na2 LIST (SUBSCRIBED) "" ("INBOX" "Archive/%") RETURN (STATUS (MESSAGES))\r\n',
    b'a1 LSUB "" %\r\na2 LIST "" {5}\r\nINBOX\r\n',
    b"a1 STATUS INBOX (MESSAGES UNSEEN UIDNEXT)\r\na2 STATUS {7}\r\nArchive (UNSEEN)\r\n",
    b"a1 CREATE Archive/2024\r\na2 DELETE Junk\r\na3 RENAME Archive/a Archive/b\r\n",
    b"a1 CREATE {3}\r\nfoo\r\na2 RENAME {1}\r\na {1}\r\nb\r\n",
    b"a1 SUBSCRIBE INBOX\r\na2 UNSUBSCRIBE Secret\r\n",
    b"a1 COPY 1:3 Archive\r\na2 MOVE 4 Trash\r\na3 UID MOVE 1:* Archive/old\r\n",
    b"a1 UID COPY 1 {6+}\r\nSecret\r\n",
    b"a1 EXPUNGE\r\na2 UID EXPUNGE 1:5\r\na3 CLOSE\r\na4 UNSELECT\r\n",
    b"a1 NAMESPACE\r\na2 ENABLE QRESYNC CONDSTORE\r\na3 ID NIL\r\n",
    b"a1 NOOP\r\na2 CAPABILITY\r\na3 CHECK\r\n",
    b"a1 COMPRESS DEFLATE\r\na2 STARTTLS\r\na3 LOGIN a b\r\na4 AUTHENTICATE PLAIN\r\n",
    b"a1 UNAUTHENTICATE\r\na2 LOGIN alice pw\r\n",
    b"a1 GETQUOTAROOT INBOX\r\na2 GETQUOTA \"\"\r\na3 MYRIGHTS INBOX\r\n",
    b"a1 SETMETADATA INBOX (/private/comment {3}\r\nabc)\r\n",
    b"a1 NOTIFY SET (selected MessageNew) (personal MailboxName)\r\n",
    b"a1 SORT (DATE REVERSE) UTF-8 ALL\r\na2 THREAD REFS UTF-8 ALL\r\n",
    b"a1 UID SORT (ARRIVAL) US-ASCII SINCE 1-Jan-2024\r\n",
    b"a1 SELECT {5}\r\nINBOX\r\n",
    b"a1 SELECT INBOX (CONDSTORE)\r\n",
    b'a1 LIST "" ~{5+}\r\nz1 SELECT x\r\n\r\n',
    b"a1 NOOP {14+}\r\nb CAPABILITY\r\n\r\n",
    b"a1 FOO {5+}\r\nhello\r\n",
    b"a1 select inbox\nA2 fetch 1 body[]\n",
    b"a1 LOGOUT\r\n",
    b'a1 FETCH 1 (BODY.PEEK[1.2.MIME] BINARY[1]<0.100>)\r\n',
    b"a1 REPLACE 1 INBOX {5+}\r\nhello\r\n",
    b"\r\n\r\n* \r\n+\r\n",
]

RESPONSES = [
    b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS "
    b"AUTH=PLAIN] Dovecot ready.\r\n",
    b"a1 OK [CAPABILITY IMAP4rev1 SASL-IR ID ENABLE IDLE SORT THREAD=REFERENCES MOVE "
    b"COMPRESS=DEFLATE] Logged in\r\n",
    b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n* 3 EXISTS\r\n* 0 RECENT\r\n"
    b"* OK [UIDVALIDITY 1700000000] UIDs valid\r\na2 OK [READ-WRITE] Select completed.\r\n",
    b"* 1 FETCH (UID 5 FLAGS (\\Seen) BODY[] {%d}\r\n" % len(MESSAGE) + MESSAGE + b")\r\n"
    b"a3 OK Fetch completed.\r\n",
    b"* 1 FETCH (BODY[HEADER] {12}\r\nFrom: a\r\n\r\n BODY[TEXT] {0}\r\n)\r\na4 OK done\r\n",
    b"* 2 EXPUNGE\r\n* 2 EXPUNGE\r\n* VANISHED (EARLIER) 1:5,7,9:10\r\na5 OK Expunge done\r\n",
    b"* VANISHED 300:1\r\n* 5 expunge\r\n",
    b'* LIST (\\HasNoChildren) "/" INBOX\r\n* LIST (\\HasChildren) "/" "Archive"\r\n'
    b'* LIST () "/" {6}\r\nSecret\r\n* LIST (\\Noselect) "/" "Archive/2024"\r\na6 OK List done\r\n',
    b'* LSUB () "." Secret\r\n* XLIST (\\Inbox) "/" "INBOX"\r\n',
    b"* STATUS INBOX (MESSAGES 3 UNSEEN 1)\r\n* STATUS {6}\r\nSecret (MESSAGES 1)\r\n",
    b"* STATUS \"Archive/a\" (UIDNEXT 4)\r\na7 OK Status completed.\r\n",
    b"+ idling\r\n* 4 EXISTS\r\na8 OK Idle completed.\r\n",
    b"a9 NO Mailbox doesn't exist: x {5}\r\n* BYE Server shutting down {3}\r\n",
    b"* ESEARCH (TAG \"a10\") UID ALL 1:3,5\r\na10 OK Search done\r\n",
    b"* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n* ID (\"name\" \"Dovecot\")\r\n",
    b"* 1 FETCH (ENVELOPE (\"Mon, 1 Jan 2024\" {3}\r\nabc NIL NIL NIL NIL NIL NIL NIL NIL))\r\n",
    b"a11 BAD Error in IMAP command: Unknown command\r\n",
    b"* PREAUTH ready\r\n* CAPABILITY IMAP4rev1\n",
]

SASL = [
    _PLAIN,
    _PLAIN_AUTHZ,
    _USER,
    _PASS,
    b"=",
    b"",
    _b64(b"\x00\x00"),
    _b64(b"a\x00b\x00c\x00d"),
    _b64(b"\x00\xff\xfe\x00\xc3("),
    b"YWxpY2U",
    b"YWxpY2U=\r",
    b"YW xpY2U=",
    b"YWxpY2U=YWxpY2U=",
    _b64(b"x" * 300),
]

#: Raw field bytes for the PROXY v2 builder; the target turns them into addresses.
PROXY = [
    bytes([0, 203, 0, 113, 7, 127, 0, 0, 1, 0x9c, 0x41, 0x03, 0xE1, 1]) + b"TLSv1.3",
    bytes([1]) + bytes(range(32)) + b"\x00\x05\x03\xe1\x01TLSv1.2",
    bytes([2, 10, 0, 0, 1]) + bytes(16) + b"\xff\xff\x00\x00\x00",
    bytes([3]) + bytes(16) + b"\x7f\x00\x00\x01\x12\x34\x56\x78",
    bytes([4]) + b"\xfe\x80" + bytes(14) + b"\x01\x02\x03\x04\x00\x01\x00\x01\x01",
    b"",
]

IMAP_TOKENS = [
    b"\r\n", b"\n", b"\r", b" ", b"(", b")", b'"', b"\\", b"{", b"}", b"~", b"+", b"*", b"%",
    b"]", b"[", b"\x00", b"\x7f", b"\x80", b"\xff", b"\xc3\xa9",
    b"{0}\r\n", b"{1}\r\n", b"{5}\r\n", b"{5+}\r\n", b"~{5}\r\n", b"~{3+}\r\n", b"{0+}\r\n",
    b"{4294967296}\r\n", b"{9223372036854775807}\r\n", b"{9223372036854775808}\r\n",
    b"{99999999999999999999}\r\n", b"{1234567890123456789012345}\r\n", b"{-1}\r\n",
    b"NIL", b"INBOX", b"DONE\r\n", b"UID ", b"a1 ", b"* ", b"+ ", b'""', b"()",
    b"CAPABILITY", b"NOOP", b"LOGOUT", b"STARTTLS", b"LOGIN", b"AUTHENTICATE", b"PLAIN",
    b"ID", b"SELECT", b"EXAMINE", b"FETCH", b"STORE", b"COPY", b"MOVE", b"APPEND", b"IDLE",
    b"LIST", b"LSUB", b"STATUS", b"CREATE", b"DELETE", b"RENAME", b"EXPUNGE", b"CATENATE",
    b"COMPRESS", b"UNAUTHENTICATE", b"SETACL", b"ENABLE", b"NAMESPACE", b"CLOSE",
    b"SUBSCRIBE", b"SEARCH", b"SORT", b"THREAD", b"REPLACE", b"GETQUOTAROOT",
    b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH", b"EXISTS", b"VANISHED", b"(EARLIER)",
    b"[CAPABILITY ", b"AUTH=PLAIN", b"COMPRESS=DEFLATE", b"1:*", b"1:4294967295",
    b"Archive/", b"Secret", _PLAIN, _USER, b"=",
]

# -- OAuth (OAUTHBEARER, RFC 7628; XOAUTH2) -----------------------------------------------------

_JWT = (b"eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhbGljZSIsImVtYWlsIjoiYWxpY2VAZXhh"
        b"bXBsZS5jb20ifQ.c2lnbmF0dXJl")
_OAUTHBEARER = _b64(b"n,a=alice@example.com,\x01host=mail.example.com\x01port=993\x01"
                    b"auth=Bearer " + _JWT + b"\x01\x01")
_OAUTHBEARER_NO_A = _b64(b"n,,\x01auth=Bearer " + _JWT + b"\x01\x01")
_XOAUTH2 = _b64(b"user=alice@example.com\x01auth=Bearer " + _JWT + b"\x01\x01")

#: Pre-auth sessions for a listener that offers OAUTHBEARER and XOAUTH2 (the shell's
#: "fail" verdict answers them with the RFC 7628 error challenge, which wants a ^A back).
PREAUTH_OAUTH = [
    b"a1 CAPABILITY\r\na2 AUTHENTICATE OAUTHBEARER " + _OAUTHBEARER + b"\r\nAQ==\r\n",
    b"a1 AUTHENTICATE OAUTHBEARER\r\n" + _OAUTHBEARER + b"\r\nAQ==\r\na2 NOOP\r\n",
    b"a1 AUTHENTICATE OAUTHBEARER " + _OAUTHBEARER_NO_A + b"\r\n*\r\n",
    b"a1 AUTHENTICATE XOAUTH2 " + _XOAUTH2 + b"\r\nAQ==\r\na2 LOGOUT\r\n",
    b"a1 AUTHENTICATE XOAUTH2\r\n" + _XOAUTH2 + b"\r\n\r\na2 SELECT INBOX\r\n",
    b"a1 AUTHENTICATE OAUTHBEARER\r\n*\r\na2 AUTHENTICATE XOAUTH2\r\n*\r\n",
    # a= with RFC 5801 escapes, p= channel binding, y flag, no auth=, bad scheme
    b"a1 AUTHENTICATE OAUTHBEARER " + _b64(b"y,a=a=2Cb=3Dc,\x01auth=Bearer tok\x01\x01") + b"\r\n",
    b"a1 AUTHENTICATE OAUTHBEARER " + _b64(b"p=tls-unique,,\x01auth=Bearer tok\x01\x01") + b"\r\n",
    b"a1 AUTHENTICATE OAUTHBEARER " + _b64(b"n,a=bob,\x01host=x\x01\x01") + b"\r\n",
    b"a1 AUTHENTICATE OAUTHBEARER " + _b64(b"n,a=bob,\x01auth=Basic dG9r\x01\x01") + b"\r\n",
    b"a1 AUTHENTICATE OAUTHBEARER " + _b64(b"n,a=b=ob,\x01auth=Bearer tok\x01") + b"\r\n",
    b"a1 AUTHENTICATE XOAUTH2 " + _b64(b"user=\x01auth=Bearer tok\x01\x01") + b"\r\n",
    b"a1 AUTHENTICATE XOAUTH2 " + _b64(b"user=a\x01user=b\x01auth=Bearer t\x01\x01") + b"\r\n",
    b"a1 AUTHENTICATE XOAUTH2 " + _XOAUTH2[:-2] + b"\r\n",  # bad padding
    b"a1 AUTHENTICATE XOAUTH2 " + _XOAUTH2 + b"=\r\n",
    b"a1 AUTHENTICATE OAUTHBEARER " + _b64(b"n,,\x01auth=Bearer " + b"A" * 3000 + b"\x01\x01")
    + b"\r\n",
    b"a1 AUTHENTICATE OAUTHBEARER {40}\r\n" + _OAUTHBEARER[:40] + b"\r\n",
    b"a1 AUTHENTICATE OAUTHBEARER " + _OAUTHBEARER + b"\r\nAQ== extra\r\na2 NOOP\r\n",
    b"a1 AUTHENTICATE OAUTHBEARER " + _OAUTHBEARER + b"\r\n{1}\r\n\x01\r\na2 NOOP\r\n",
    b"a1 LOGIN alice@example.com " + _JWT + b"\r\n",
]
OAUTH_TOKENS = [_OAUTHBEARER, _XOAUTH2, b"AQ==", b"*", b"OAUTHBEARER", b"XOAUTH2",
                b"AUTHENTICATE", _b64(b"\x01"), _b64(b"n,,\x01auth=Bearer x\x01\x01"), b"\r\n"]

# -- Dovecot auth-policy request bodies (gateway.authpolicy.protocol.parse_request) ----------

#: As Dovecot 2.3 sends them (auth_policy_request_attributes as in the README, plus its own
#: "tls" and, on a report, "success" and "policy_reject"), and broken ones.
AUTHPOLICY = [
    b'{"login":"alice@example.com","pwhash":"3fa1","remote":"203.0.113.7",'
    b'"real_remote":"10.0.0.5","protocol":"imap","session_id":"ab12CD34",'
    b'"device_id":"","tls":true}',
    b'{"login":"alice@example.com","pwhash":"3fa1","remote":"2001:db8::7",'
    b'"protocol":"pop3","session_id":"x","tls":false,"success":false,"policy_reject":false}',
    b'{"login":"bob","remote":"198.51.100.9","protocol":"submission","success":true,'
    b'"policy_reject":false,"tls":true}',
    b'{"login":"","remote":"","protocol":"","tls":false}',
    b'{"login":"a","remote":"fe80::1%eth0","real_remote":"::ffff:10.0.0.5","protocol":"IMAP"}',
    b'{"login":"a","remote":"not-an-ip","protocol":"imap","success":false}',
    b'{"login":"\\u00e9\\ud800","remote":"192.0.2.1","pwhash":"ZZ","success":false}',
    b'{"login":1,"remote":"192.0.2.1"}',
    b'{"attrs":{"x":"y"},"login":"a","remote":"192.0.2.1","success":"false"}',
    b'[{"login":"a"}]',
    b'{"login":"a","login":"b","remote":"192.0.2.1"}',
    b'{"remote":"192.0.2.1","success":false,"policy_reject":null}',
    b"\xff\xfe{}",
    b'{"login":"' + b"x" * 400 + b'"}',
    b"[" * 2000 + b"]" * 2000,
    b'{"a":' * 1500 + b"1" + b"}" * 1500,
    b'{"n":' + b"9" * 5000 + b"}",
    b'{"login":"a","remote":"192.0.2.1",',
    b"",
]
AUTHPOLICY_TOKENS = [b'"login":', b'"remote":', b'"real_remote":', b'"success":', b'true',
                     b'false', b'null', b'"protocol":"imap"', b'"192.0.2.1"', b'"::1"', b"{",
                     b"}", b"[", b"]", b'"\\ud800"', b'"\\u0000"', b","]

SASL_TOKENS = [b"=", b"==", b"+", b"/", b"A", b"AA", b"AAA", b"AAAA", b"\x00", b"\r", b"\n",
               b" ", b"-", b"_", b"*", b"\xff", _PLAIN, _USER]


def libfuzzer_dict(tokens: list[bytes]) -> str:
    """``tokens`` in libFuzzer's -dict file format."""
    lines = []
    for tok in tokens:
        esc = "".join(
            chr(c) if 0x20 <= c < 0x7F and c not in (0x22, 0x5C) else f"\\x{c:02x}" for c in tok
        )
        lines.append(f'"{esc}"')
    return "\n".join(lines) + "\n"
