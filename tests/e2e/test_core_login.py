"""Logins through the gateway: success, indistinguishable failures, and the client's
address reaching Dovecot (ID forwarding and PROXY v2 with the SSL TLV)."""

from __future__ import annotations

import imaplib
import re

import pytest

from tests.support.imap import (
    LineClient,
    ServerClosed,
    imaps,
    proxy_v2_header,
    sasl_plain,
)

pytestmark = pytest.mark.e2e

FAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"


def test_good_login_with_imaplib_over_implicit_tls(gateway):
    gw = gateway()
    m = imaps(gw)
    typ, _ = m.login("alice", "alicepass")
    assert typ == "OK"
    typ, data = m.select("INBOX")
    assert typ == "OK", data
    assert m.logout()[0] == "BYE"


def _failed_login(gw, user: str, password: str) -> bytes:
    with LineClient.implicit(gw) as c:
        r = c.command("a", f'LOGIN "{user}" "{password}"', timeout=15)[-1]
        try:
            c.command("z", "LOGOUT")
        except (ServerClosed, TimeoutError):
            pass
    return r


def test_wrong_password_and_unknown_user_get_the_same_answer(gateway):
    gw = gateway()
    wrong_password = _failed_login(gw, "alice", "not-alices-password")
    unknown_user = _failed_login(gw, "nosuchuser", "whatever")
    assert wrong_password == b"a " + FAILED
    assert unknown_user == b"a " + FAILED
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imaps(gw).login("alice", "wrong")


def test_client_ip_reaches_dovecot_via_id(gateway, dovecot):
    gw = gateway()  # backend.client_ip = "id", Dovecot's plain port
    mark = dovecot.mark()
    m = imaps(gw, source="127.0.0.2")
    port = m.sock.getsockname()[1]
    assert m.login("alice", "alicepass")[0] == "OK"
    sid = gw.session_id_for(port)
    line = dovecot.wait_for_log(r"Login: user=<alice>.*rip=127\.0\.0\.2, rport=(\d+),.*", since=mark)
    m.logout()
    assert int(line.group(1)) == port
    assert "real_rip=127.0.0.1" in line.group(0)
    # the gateway's session id is forwarded (x-session-id) so logs can be joined
    assert f"session=<{sid}>" in line.group(0)


def test_client_ip_reaches_dovecot_via_proxy_v2_with_ssl_tlv(gateway, dovecot):
    gw = gateway(backend={"address": f"127.0.0.1:{dovecot.proxy_port}",
                          "client_ip": "proxy-v2"})
    mark = dovecot.mark()
    m = imaps(gw, source="127.0.0.2")
    port = m.sock.getsockname()[1]
    # Dovecot: disable_plaintext_auth = yes and 127.0.0.2 is not trusted, so this login
    # only works if the gateway's PROXY header says "client used TLS" (PP2_TYPE_SSL).
    assert m.login("alice", "alicepass")[0] == "OK"
    line = dovecot.wait_for_log(r"Login: user=<alice>.*rip=127\.0\.0\.2, rport=(\d+),.*", since=mark)
    m.logout()
    assert int(line.group(1)) == port
    assert "real_rip=127.0.0.1" in line.group(0)


def test_control_dovecot_refuses_proxied_plaintext_login_without_ssl_tlv(dovecot):
    """Proves the premise of the proxy-v2 test: without the TLV, the same login fails."""
    header = proxy_v2_header("127.0.0.2", 40000, "127.0.0.1", dovecot.proxy_port)
    with LineClient("127.0.0.1", dovecot.proxy_port, read_greeting=False) as c:
        c.send(header)
        greeting = c.read_line()
        assert b"LOGINDISABLED" in greeting, greeting
        r = c.command("a", "AUTHENTICATE PLAIN " + sasl_plain("alice", "alicepass"))[-1]
        assert re.match(rb"a NO \[PRIVACYREQUIRED\]", r), r
