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


def watched_page(browser, **context):
    """A new page (in its own 1400×1000 context) and the list that collects everything that goes
    wrong while it is open: console errors and warnings, page errors, failed loads."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, **context)
    page = ctx.new_page()
    problems: list[str] = []
    page.on("console", lambda m: m.type in ("error", "warning") and
            problems.append(f"console {m.type}: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed load: {r.url}"))
    return ctx, page, problems
