"""bench.floor: its login splice, and one whole connection against a scripted backend.

No Dovecot: the backend is a few lines of trio here, so this runs in well under a second
(the bench run itself is the end-to-end test against Dovecot).
"""

import ssl
from functools import partial
from pathlib import Path

import trio

from bench import floor, rig
from gateway.proxy import relay


def test_reads_with_the_gateway_relays_sizes():
    # the floor would be a different relay if its reads were not the gateway's
    assert floor.CLIENT_RECEIVE_SIZE == relay.CLIENT_RECEIVE_SIZE
    assert floor.BACKEND_RECEIVE_SIZE == relay.BACKEND_RECEIVE_SIZE


def test_backend_commands_pipeline_id_and_the_clients_command():
    assert floor.backend_commands(("192.0.2.7", 40123), b'LOGIN "bob" "pw"\r\n') == (
        b'g1 ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "40123")\r\n'
        b'g2 LOGIN "bob" "pw"\r\n'
    )


def test_tagged_reply_waits_for_the_whole_g2_line():
    assert floor.tagged_reply(b"* ID NIL\r\ng1 OK ID\r\n") is None
    assert floor.tagged_reply(b"* ID NIL\r\ng1 OK ID\r\ng2 OK Log") is None
    assert floor.tagged_reply(b"* ID NIL\r\ng1 OK\r\ng2 OK Logged in\r\n") == b"g2 OK Logged in\r\n"
    assert floor.tagged_reply(b"g2 NO [AUTHENTICATIONFAILED] no\r\n") == (
        b"g2 NO [AUTHENTICATIONFAILED] no\r\n"
    )
    # bytes after the tagged line are kept for the client, not dropped
    assert floor.tagged_reply(b"g1 OK\r\ng2 OK in\r\n* 1 EXISTS\r\n") == b"g2 OK in\r\n* 1 EXISTS\r\n"
    # a "g2 " inside a line is not the tagged line
    assert floor.tagged_reply(b"* OK xg2 \r\n") is None


def _config(tmp_path: Path, backend_port: int) -> Path:
    rd = rig.RunDir(tmp_path)
    (tmp_path / "tls").mkdir()
    rd.make_cert()
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        '[tls]\ncert = "tls/cert.pem"\nkey = "tls/key.pem"\nmin_version = "1.2"\n\n'
        '[[listener]]\naddress = "127.0.0.1:1"\nmode = "implicit-tls"\n\n'
        f'[backend]\naddress = "127.0.0.1:{backend_port}"\ntls = "none"\n'
    )
    return cfg


async def _line(stream: trio.abc.Stream, buf: bytearray) -> bytes:
    while b"\r\n" not in buf:
        data = await stream.receive_some()
        assert data, f"closed before a line; got {bytes(buf)!r}"
        buf += data
    line, _, rest = bytes(buf).partition(b"\r\n")
    buf[:] = rest
    return line + b"\r\n"


def test_one_login_and_relay_through_the_floor(tmp_path):
    """A login reaches the scripted backend as ID + LOGIN, the reply comes back under the
    client's tag, bytes are relayed both ways, and a client that goes away mid-handshake
    does not stop the server."""
    seen: list[bytes] = []
    backend_eof = trio.Event()

    async def backend(stream: trio.SocketStream) -> None:
        await stream.send_all(b"* OK fake ready\r\n")
        buf = b""
        while buf.count(b"\r\n") < 2:
            buf += await stream.receive_some()
        seen.append(buf)
        await stream.send_all(b"* ID NIL\r\ng1 OK ID done\r\n")  # the tagged g2 line later
        await stream.send_all(b"g2 OK Logged in\r\n")
        while data := await stream.receive_some():
            await stream.send_all(data.replace(b"NOOP", b"OK NOOP"))
        backend_eof.set()

    async def main() -> None:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                (b_listener,) = await nursery.start(partial(trio.serve_tcp, backend, 0, host="127.0.0.1"))
                cfg = _config(tmp_path, b_listener.socket.getsockname()[1])
                f = floor.Floor(cfg)
                (f_listener,) = await nursery.start(partial(trio.serve_tcp, f.handle, 0, host="127.0.0.1"))
                addr = f_listener.socket.getsockname()

                rude = await trio.open_tcp_stream(*addr)  # not TLS, then gone
                await rude.send_all(b"\x16\x03\x01garbage")
                await rude.aclose()

                ctx = ssl.create_default_context(cafile=str(tmp_path / "tls" / "cert.pem"))
                client = trio.SSLStream(await trio.open_tcp_stream(*addr), ctx,
                                        server_hostname="localhost")
                buf = bytearray()
                assert (await _line(client, buf)).startswith(b"* OK")
                await client.send_all(b'l LOGIN "bob" "pw"\r\n')
                assert await _line(client, buf) == b"l OK Logged in\r\n"
                await client.send_all(b"x NOOP\r\n")
                assert await _line(client, buf) == b"x OK NOOP\r\n"
                port = client.transport_stream.socket.getsockname()[1]
                await client.aclose()
                await backend_eof.wait()  # the floor closed the backend when the client left
                nursery.cancel_scope.cancel()
        assert seen == [
            b'g1 ID ("x-originating-ip" "127.0.0.1" "x-originating-port" "%d")\r\n'
            b'g2 LOGIN "bob" "pw"\r\n' % port
        ]

    trio.run(main)
