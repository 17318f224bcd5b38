"""Fixtures shared by the test modules."""

from __future__ import annotations

import os

import pytest

from browser import chromium


def pytest_configure(config):
    """Under pytest-xdist (pyproject's addopts), share the cores among the workers: each
    worker's torch would otherwise start one thread per core, and the workers would fight
    (OpenMP threads spin waiting for each other on a busy machine)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        share = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(share)
        # the same share in the processes tests start (`precompute run` in a subprocess): a
        # store made in this process and one made in a child must sum in the same order to be
        # bitwise equal (thread count changes reduction order)
        os.environ["OMP_NUM_THREADS"] = str(share)


@pytest.fixture(scope="module")
def browser():
    """One headless chromium per test module (tests/browser.py)."""
    with chromium() as b:
        yield b
