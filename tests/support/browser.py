"""Headless Chromium for browser tests: Debian's ``chromium`` driven by Playwright.

``playwright install`` downloads browser builds of its own, which CI cannot fetch; the
Debian package (``scripts/deps.sh``) is the browser, Playwright for Python (the test
extras) drives it. A missing browser is a failure, not a skip.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from playwright.sync_api import Browser, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def launch_chromium(**launch: Any) -> Iterator[Browser]:
    """A headless Chromium for the block's duration; closed (by Playwright) afterwards."""
    if shutil.which(CHROMIUM) is None:
        raise RuntimeError(f"{CHROMIUM} not found: apt-get install chromium (scripts/deps.sh)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, **launch)
        try:
            yield browser
        finally:
            browser.close()
