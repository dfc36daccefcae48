"""A real headless Chromium for the portal's end-to-end tests, driven by Playwright.

Debian's ``chromium`` package (``scripts/deps.sh``) rather than Playwright's own build:
``playwright install`` downloads a browser, which this project's machines cannot do.
Every launch gets a fresh user-data-dir (no cookies, cache or settings carried between
tests) and the flags that keep Chromium from calling home (updates, sync, field trials)
or needing a GPU or a sandbox (the suite runs as root).

The gateway's certificate comes from the test CA, which Chromium does not trust. Rather
than turning certificate checks off, the browser is told to accept exactly that
certificate's public key (``--ignore-certificate-errors-spki-list``): any other
certificate still fails, and the origin stays a secure context, so ``Secure`` and
``__Host-`` cookies and the clipboard API behave as they do for users.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.sync_api import Browser, BrowserContext, sync_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class BrowserMissing(RuntimeError):
    """Chromium is not installed where the tests expect it (scripts/deps.sh installs it)."""


def spki_hash(cert_pem: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the first certificate in ``cert_pem``:
    the form ``--ignore-certificate-errors-spki-list`` takes."""
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@contextlib.contextmanager
def chromium(trust_cert: Path, *, viewport: tuple[int, int] = (1200, 860),
             scale: float = 1.0, extra_args: tuple[str, ...] = ()) -> Iterator[BrowserContext]:
    """A headless Chromium context (fresh profile) that accepts the certificate in
    ``trust_cert``; closed, with its profile removed, on exit. ``extra_args``: more
    command-line flags (e.g. ``--enable-features=...``)."""
    if shutil.which(CHROMIUM) is None:
        raise BrowserMissing(f"{CHROMIUM} not found: run scripts/deps.sh (Debian package chromium)")
    profile = tempfile.mkdtemp(prefix="igw-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=[*FLAGS, f"--ignore-certificate-errors-spki-list={spki_hash(trust_cert)}",
                      *extra_args],
                viewport={"width": viewport[0], "height": viewport[1]},
                device_scale_factor=scale,
                locale="en-GB",
                timezone_id="UTC",
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@contextlib.contextmanager
def launch_chromium(**launch: Any) -> Iterator[Browser]:
    """A bare headless Chromium (same binary and flags) for tests that make their own
    contexts; closed afterwards."""
    if shutil.which(CHROMIUM) is None:
        raise BrowserMissing(f"{CHROMIUM} not found: apt-get install chromium (scripts/deps.sh)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, **launch)
        try:
            yield browser
        finally:
            browser.close()
