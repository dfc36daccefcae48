import socket
import threading

import pytest

from bench.imapclient import Conn, ImapError
from bench.workloads import make_message


@pytest.mark.parametrize("size", [300, 1000, 1001, 1002, 102400, 102401])
def test_make_message_has_exact_size_and_crlf_lines(size):
    msg = make_message(7, size)
    assert len(msg) == size
    assert msg.endswith(b"\r\n")
    assert b"\n" not in msg.replace(b"\r\n", b"") and b"\r" not in msg.replace(b"\r\n", b"")


def _serve(sock: socket.socket, data: bytes) -> threading.Thread:
    def run():
        sock.recv(100)  # the command
        sock.sendall(data)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_response_skips_literals_even_when_they_contain_the_tag():
    a, b = socket.socketpair()
    body = b"f OK fake\r\n" * 3  # a literal that looks like the tagged reply must not end the read
    reply = (
        (b"* 1 FETCH (BODY[] {%d}\r\n" % len(body)) + body + b")\r\n" + b"f OK Fetch completed.\r\n"
    )
    t = _serve(b, reply)
    conn = Conn(a)
    tagged, untagged = conn.command(b"f", b"FETCH 1 BODY.PEEK[]")
    t.join()
    assert tagged == b"f OK Fetch completed.\r\n"
    assert conn.literals == 1
    assert conn.received == len(reply)
    conn.close()
    b.close()


def test_command_raises_on_no_without_echoing_the_command():
    a, b = socket.socketpair()
    t = _serve(b, b"l NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    conn = Conn(a)
    with pytest.raises(ImapError, match="LOGIN answered") as e:
        conn.command(b"l", b'LOGIN "bob" "secret-pw"')
    t.join()
    assert "secret-pw" not in str(e.value)
    conn.close()
    b.close()


def test_closed_connection_is_an_error_not_a_hang():
    a, b = socket.socketpair()
    b.close()
    conn = Conn(a)
    with pytest.raises(ImapError, match="closed"):
        conn.response(b"x")
    conn.close()
