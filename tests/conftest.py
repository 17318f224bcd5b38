"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

from browser import chromium


@pytest.fixture(scope="module")
def browser():
    """One headless chromium per test module (tests/browser.py)."""
    with chromium() as b:
        yield b
