"""The headless browser every page test drives: Debian's chromium through Playwright for Python
(``playwright install`` cannot download browsers here), with the flags that keep it offline."""

from __future__ import annotations

import contextlib

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]


@contextlib.contextmanager
def chromium():
    """A headless chromium, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()
