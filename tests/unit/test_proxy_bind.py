"""bind_all: every address or none, and an error that names the config key.

The gateway binds its listeners, metrics endpoint and admin API before it serves any of
them; when one address cannot be bound, the ones bound before it must be free again
(a half-started gateway would hold ports it never serves).
"""

from __future__ import annotations

import errno
import socket

import pytest
import trio

from gateway.proxy.bind import BindError, BindRequest, bind_all, close_all
from tests.support.net import free_ports


def _held() -> socket.socket:
    """A listening socket on a loopback port the kernel chose (another process, in effect)."""
    return socket.create_server(("127.0.0.1", 0))


def _address(sock: socket.socket | trio.socket.SocketType) -> str:
    return f"127.0.0.1:{sock.getsockname()[1]}"


def _is_free(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_server((host, int(port))):
            return True
    except OSError as exc:
        assert exc.errno == errno.EADDRINUSE
        return False


def test_binds_every_address_in_order():
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]

    async def main() -> None:
        bound = await bind_all([BindRequest("[[listener]] address", addresses[0], backlog=16),
                                BindRequest("[metrics] address", addresses[1])])
        try:
            assert [[_address(s.socket) for s in group] for group in bound] \
                == [[addresses[0]], [addresses[1]]]
            assert not _is_free(addresses[0]) and not _is_free(addresses[1])
        finally:
            close_all(bound)  # trio sockets: closed inside trio.run
        assert _is_free(addresses[0]) and _is_free(addresses[1])

    trio.run(main)


def test_an_address_in_use_names_key_and_address_and_frees_what_was_bound():
    with _held() as first, _held() as taken:
        first_address = _address(first)
        first.close()  # free again: bind_all gets it, then must give it back
        wanted = [BindRequest("[[listener]] address", first_address),
                  BindRequest("[admin] address", _address(taken))]
        with pytest.raises(BindError) as caught:
            trio.run(bind_all, wanted)
        err = caught.value
        assert (err.key, err.address) == ("[admin] address", _address(taken))
        assert str(err) == (f"[admin] address {_address(taken)}: cannot listen: "
                            "Address already in use")
        assert _is_free(first_address)


def test_an_address_this_host_does_not_have():
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never assigned to a host; bind() fails
    # locally, nothing is sent anywhere.
    with pytest.raises(BindError) as caught:
        trio.run(bind_all, [BindRequest("[metrics] address", "192.0.2.1:9143")])
    assert str(caught.value) == ("[metrics] address 192.0.2.1:9143: cannot listen: "
                                 "Cannot assign requested address")


def test_reuseport_binds_one_listening_set_per_worker_that_all_accept():
    from gateway.proxy.bind import bind_reuseport

    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    groups = bind_reuseport(BindRequest("[[listener]] address", address), 2)
    try:
        assert [len(g) for g in groups] == [1, 1]
        socks = [g[0] for g in groups]
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in socks)
        assert all(s.get_inheritable() for s in socks)  # handed to the worker processes
        for s in socks:
            s.settimeout(0.05)
        # The kernel spreads connections over both sets (hash of the client port).
        seen = set()
        clients = []
        for _ in range(64):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            for i, s in enumerate(socks):
                try:
                    s.accept()[0].close()
                    seen.add(i)
                except TimeoutError:
                    pass
        assert seen == {0, 1}
        for c in clients:
            c.close()
    finally:
        for g in groups:
            for s in g:
                s.close()
    assert _is_free(address)


def test_reuseport_refuses_an_address_another_socket_holds_and_closes_what_it_bound():
    from gateway.proxy.bind import bind_reuseport

    held = _held()
    try:
        with pytest.raises(BindError) as info:
            bind_reuseport(BindRequest("[[listener]] address", _address(held)), 2)
        assert str(info.value) == (f"[[listener]] address {_address(held)}: cannot listen: "
                                   "Address already in use")
    finally:
        held.close()
