"""A throw-away CA (trustme) and the gateway's server certificate, written to files.

The gateway reads PEM files from its config; clients (imaplib, curl --cacert, mbsync's
CertificateFile) trust ``ca_path``. The key file never leaves the test's temp dir.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

import trustme

IDENTITIES = ("localhost", "127.0.0.1", "::1")


@dataclass
class Certs:
    dir: Path
    ca_path: Path          # CA certificate PEM: what clients trust
    cert_path: Path        # server certificate chain PEM (leaf first)
    key_path: Path = field(repr=False)
    ca: trustme.CA = field(repr=False, default=None)

    def client_ssl_context(self, *, minimum_version: ssl.TLSVersion | None = None,
                           maximum_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        """A verifying client context that trusts only the test CA."""
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        if minimum_version is not None:
            ctx.minimum_version = minimum_version
        if maximum_version is not None:
            ctx.maximum_version = maximum_version
        return ctx


def make_certs(directory: Path) -> Certs:
    """Issue a server certificate for localhost, 127.0.0.1 and ::1 from a fresh CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="imap-gateway tests")
    leaf = ca.issue_cert(*IDENTITIES)
    ca_path = directory / "ca.pem"
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    leaf.private_key_pem.write_to_path(str(key_path))
    with open(cert_path, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    key_path.chmod(0o600)
    return Certs(dir=directory, ca_path=ca_path, cert_path=cert_path, key_path=key_path, ca=ca)
