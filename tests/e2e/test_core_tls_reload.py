"""SIGHUP reloads the certificate for new handshakes without dropping live sessions;
a broken certificate file keeps the old one."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.support.imap import LineClient, tagged_status

pytestmark = pytest.mark.e2e


def _write_leaf(certs, directory, *identities):
    leaf = certs.ca.issue_cert(*identities)
    cert, key = directory / "server-cert.pem", directory / "server-key.pem"
    with open(cert, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return cert, key


def _peer_serial(client: LineClient) -> int:
    from cryptography import x509

    der = client.sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def test_sighup_swaps_the_certificate_and_keeps_live_sessions(gateway, certs, tmp_path):
    cert, key = _write_leaf(certs, tmp_path, "localhost", "127.0.0.1", "::1")
    gw = gateway(tls={"cert": str(cert), "key": str(key)})
    with LineClient.implicit(gw) as old:
        assert tagged_status(old.command("a", "LOGIN bob bobpass")[-1]) == b"OK"
        first = _peer_serial(old)

        _write_leaf(certs, tmp_path, "localhost", "127.0.0.1", "::1")  # a renewed cert
        os.kill(gw.pid, signal.SIGHUP)
        gw.wait_for_event("tls.reloaded")
        with LineClient.implicit(gw) as new:
            assert _peer_serial(new) != first

        # The session that was open across the reload still works.
        assert tagged_status(old.command("b", "NOOP")[-1]) == b"OK"


def test_broken_certificate_keeps_the_old_one(gateway, certs, tmp_path):
    cert, key = _write_leaf(certs, tmp_path, "localhost", "127.0.0.1", "::1")
    gw = gateway(tls={"cert": str(cert), "key": str(key)})
    with LineClient.implicit(gw) as c:
        before = _peer_serial(c)
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    os.kill(gw.pid, signal.SIGHUP)
    failed = gw.wait_for_event("tls.reload_failed")
    assert str(cert) in failed["error"]
    time.sleep(0.1)
    with LineClient.implicit(gw) as c:
        assert _peer_serial(c) == before
        assert c.greeting.startswith(b"* OK")
