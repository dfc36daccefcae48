"""TLS contexts for the client side (server role) and the backend side (client role).

The server context is held in a ``TLSContextHolder`` so SIGHUP can swap in a renewed
certificate: new handshakes use the new context, live sessions keep the one they were
established with, and nothing is dropped. A reload that fails keeps the old context.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509

# TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3 suites are all modern).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS"

_MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TLSSetupError(Exception):
    """The certificate or key could not be loaded; the message names the files."""


def server_context(cert: Path, key: Path, min_version: str = "1.2") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _MIN_VERSIONS[min_version]
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
    return ctx


def backend_context(ca_file: Path | None) -> ssl.SSLContext:
    """Client context for the gateway→backend leg; verifies the backend when a CA is given."""
    if ca_file is not None:
        ctx = ssl.create_default_context(cafile=str(ca_file))
    else:
        ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def certificate_not_after(cert: Path) -> float:
    """notAfter of the first certificate in the PEM file ``cert`` (the leaf, as
    ``load_cert_chain`` uses it), as a Unix timestamp."""
    try:
        chain = x509.load_pem_x509_certificates(cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise TLSSetupError(f"cannot read TLS certificate {cert}: {exc}") from None
    return chain[0].not_valid_after_utc.timestamp()


class TLSContextHolder:
    """The current server context; ``reload()`` replaces it only if the new files load.

    ``not_after`` is the expiry of the certificate the context serves (a metric and
    its alert watch it); it changes only together with the context.
    """

    def __init__(self, cert: Path, key: Path, min_version: str) -> None:
        self._args = (cert, key, min_version)
        self.context = server_context(cert, key, min_version)
        self.not_after = certificate_not_after(cert)

    def reload(self) -> None:
        context = server_context(*self._args)  # raises before replacing
        not_after = certificate_not_after(self._args[0])
        self.context, self.not_after = context, not_after
