"""The auth-policy endpoint attacked from outside (anyone who can reach its port): oversized,
slow, malformed and unauthenticated requests against a running gateway. Each must get an
answer within the endpoint's bound, never a crash, and never count as a failed login
against a real user.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
from pathlib import Path

import pytest

from gateway.web.app import REQUEST_DEADLINE
from tests.support.attack import fast_limits, metrics_on
from tests.support.net import free_port
from tests.support.scrape import sample_value, scrape

pytestmark = pytest.mark.e2e

TOKEN = "f00d" * 16


def body(**attrs: object) -> bytes:
    base: dict[str, object] = {"login": "alice", "pwhash": "07cb", "remote": "192.0.2.7",
                               "protocol": "pop3", "session_id": "s1", "tls": False}
    base.update(attrs)
    return json.dumps(base).encode()


def post(port: int, path: str, data: bytes, *, key: str | None = TOKEN,
         extra: bytes = b"", timeout: float = 30.0) -> tuple[int, bytes]:
    """One HTTP/1.1 POST with Content-Length; (status, body)."""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n").encode()
    if key is not None:
        head += f"X-API-Key: {key}\r\n".encode()
    return exchange(port, head + extra + b"\r\n" + data, timeout)


def exchange(port: int, request: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        return read_response(s)


def read_response(s: socket.socket) -> tuple[int, bytes]:
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), data[:200]
    return int(head.split()[1]), rest


@pytest.fixture
def policy_gw(gateway, tmp_path: Path):
    token_file = tmp_path / "auth-policy.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    gw = gateway(auth_policy={"address": f"127.0.0.1:{port}", "token_file": str(token_file)},
                 limits=fast_limits(user_fail_threshold=3, ip_fail_threshold=3),
                 metrics=metrics_on())
    return gw, port


def test_oversized_and_malformed_bodies_are_refused_not_crashed(policy_gw):
    gw, port = policy_gw
    # chunked, no Content-Length, past MAX_BODY (64 KiB): 413
    chunk = b"x" * 16384
    chunked = b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(8)) + b"0\r\n\r\n"
    status, _ = exchange(port, b"POST /?command=allow HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               b"Connection: close\r\nTransfer-Encoding: chunked\r\n"
                               + f"X-API-Key: {TOKEN}\r\n\r\n".encode() + chunked)
    assert status == 413
    for data in (b"\xff\xfe\x00{", b"[" * 30000 + b"]" * 30000, b'{"a":' * 9000 + b"1"
                 + b"}" * 9000, b'{"login":"alice\\ud800","remote":"192.0.2.7",'
                 b'"success":false,"policy_reject":false}'):
        status, answer = post(port, "/?command=report", data)
        assert status == 400, (data[:40], answer[:200])
    # a huge login is cut to 256 characters and answered
    status, answer = post(port, "/?command=allow", body(login="a" * 60000))
    assert status == 200 and json.loads(answer)["status"] == 0
    assert "request_crashed" not in gw.log_text()


def test_a_slow_body_is_cut_off_at_the_request_deadline(policy_gw):
    """A body sent a byte at a time is answered 408 once REQUEST_DEADLINE has passed,
    while the client is still sending (the handler's time is bounded)."""
    _gw, port = policy_gw
    data = body()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"POST /?command=allow HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                  + f"X-API-Key: {TOKEN}\r\nContent-Length: {len(data)}\r\n\r\n".encode())
        s.settimeout(1.0)
        sent, answered = 0, b""
        for _ in range(int(REQUEST_DEADLINE) * 6):  # up to 6x the deadline of dripping
            s.sendall(data[sent:sent + 1])
            sent += 1
            try:
                answered = s.recv(65536)
                break
            except TimeoutError:
                continue
        assert answered.startswith(b"HTTP/1.1 408"), answered[:200]
        assert sent < len(data)


def test_garbage_never_counts_against_a_real_user(policy_gw):
    """Reports with an address that is no IP, a wrong or missing API key, or a bad body,
    as many as the user lockout threshold (3) and more: alice is still allowed."""
    gw, port = policy_gw
    for n in range(6):
        assert post(port, "/?command=report",
                    body(remote="not-an-ip", pwhash=f"{n:04x}", success=False,
                         policy_reject=False))[0] == 200
        assert post(port, "/?command=report", body(success=False, policy_reject=False,
                                                   pwhash=f"a{n:03x}"), key=None)[0] == 401
        assert post(port, "/?command=report", body(success=False, policy_reject=False,
                                                   pwhash=f"b{n:03x}"), key="x" * 64)[0] == 401
        assert post(port, "/?command=report", body(success="no"))[0] == 400
    status, answer = post(port, "/?command=allow", body(remote="198.51.100.4"))
    assert status == 200 and json.loads(answer)["status"] == 0, answer
    text = scrape(gw)
    assert sample_value(text, "imap_gateway_auth_policy_unauthorized_total") == 12
    assert sample_value(text, "imap_gateway_auth_policy_reports_total", result="failure") == 0
    assert TOKEN not in gw.log_text()


def test_many_concurrent_requests_are_all_answered(policy_gw):
    gw, port = policy_gw

    def one(n: int) -> int:
        return post(port, "/?command=allow", body(login=f"user{n}",
                                                   remote=f"192.0.2.{n % 250 + 1}"))[0]

    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        statuses = list(pool.map(one, range(400)))
    assert statuses == [200] * 400, {s: statuses.count(s) for s in set(statuses)}
    assert post(port, "/?command=allow", body())[0] == 200  # still serving
    assert "request_crashed" not in gw.log_text()
