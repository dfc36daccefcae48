"""Real clients users run, through the gateway: imaplib, curl (implicit TLS and
STARTTLS with --ssl-reqd), and mbsync syncing a 200-message mailbox."""

from __future__ import annotations

import email
import uuid

import pytest

from tests.support.clients import curl, maildir_files, mbsync
from tests.support.imap import imaps, make_message, starttls_client

pytestmark = pytest.mark.e2e


@pytest.fixture
def bob_box(dovecot) -> str:
    """A fresh mailbox of bob's with 3 known messages (make_message(i, 3000, box))."""
    box = f"cli-{uuid.uuid4().hex[:8]}"
    assert dovecot.populate("bob", box, 3, 3000, tag=box) == 3
    return box


def test_imaplib_lists_and_fetches(gateway, bob_box):
    gw = gateway()
    m = imaps(gw)
    m.login("bob", "bobpass")
    typ, boxes = m.list()
    assert typ == "OK"
    assert any(bob_box.encode() in b for b in boxes), boxes
    m.select(bob_box, readonly=True)
    typ, data = m.uid("FETCH", "2", "(BODY.PEEK[])")
    assert typ == "OK"
    assert data[0][1] == make_message(1, 3000, bob_box)
    m.logout()


def test_imaplib_starttls_login_and_fetch(gateway, bob_box):
    gw = gateway()
    m = starttls_client(gw)  # STARTTLS with certificate verification already done
    assert m.login("bob", "bobpass")[0] == "OK"
    m.select(bob_box, readonly=True)
    typ, data = m.uid("FETCH", "1", "(BODY.PEEK[])")
    assert typ == "OK"
    assert data[0][1] == make_message(0, 3000, bob_box)
    m.logout()


def test_curl_imaps_lists_and_fetches(gateway, certs, bob_box):
    gw = gateway()
    base = f"imaps://127.0.0.1:{gw.implicit_port}"
    p = curl(f"{base}/", user="bob", password="bobpass", cacert=certs.ca_path)
    assert p.returncode == 0, p.stderr
    assert b" INBOX\r\n" in p.stdout and bob_box.encode() in p.stdout, p.stdout
    p = curl(f"{base}/{bob_box};UID=1", user="bob", password="bobpass", cacert=certs.ca_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == make_message(0, 3000, bob_box)


def test_curl_starttls_ssl_reqd_lists_and_fetches(gateway, certs, bob_box):
    gw = gateway()
    base = f"imap://127.0.0.1:{gw.starttls_port}"
    p = curl(f"{base}/", user="bob", password="bobpass", cacert=certs.ca_path,
             extra=["--ssl-reqd"])
    assert p.returncode == 0, p.stderr
    assert b" INBOX\r\n" in p.stdout, p.stdout
    p = curl(f"{base}/{bob_box};UID=3", user="bob", password="bobpass", cacert=certs.ca_path,
             extra=["--ssl-reqd"])
    assert p.returncode == 0, p.stderr
    assert p.stdout == make_message(2, 3000, bob_box)


def test_curl_refuses_gateway_with_untrusted_certificate(gateway, dovecot):
    """Control: curl really verifies (with Dovecot's unrelated cert as the only CA)."""
    gw = gateway()
    p = curl(f"imaps://127.0.0.1:{gw.implicit_port}/", user="bob", password="bobpass",
             cacert=dovecot.cert_path)
    assert p.returncode != 0


def test_mbsync_syncs_200_messages(gateway, dovecot, certs, tmp_path):
    gw = gateway()
    box = f"sync-{uuid.uuid4().hex[:8]}"
    assert dovecot.populate("bob", box, 200, 2000, tag=box) == 200
    # isync checks DNS names only, so connect as "localhost" (the cert has it; /etc/hosts
    # maps it to 127.0.0.1, where the gateway listens)
    proc, local = mbsync(tmp_path / "mbsync", host="localhost", port=gw.implicit_port,
                         user="bob", password="bobpass", cacert=certs.ca_path, mailbox=box)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = maildir_files(local)
    assert len(files) == 200
    subjects = {email.message_from_bytes(f.read_bytes())["Subject"] for f in files}
    assert subjects == {f"{box} message {i}" for i in range(200)}
