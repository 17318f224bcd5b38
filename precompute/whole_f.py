"""The registry of whole-F analyses (:mod:`precompute.analysis`), in the order a run computes them.

Adding an analysis: its module (a :class:`~precompute.analysis.WholeF` subclass), its config model
in :mod:`precompute.config` (``analyses.<name>``), one line here, its section in docs/FORMAT.md
and its tests. ``precompute run``, ``precompute info`` and ``precompute verify`` reach it only
through :data:`REGISTRY`.
"""

from __future__ import annotations

from precompute.analysis import WholeF
from precompute.classify import ClassifyAnalysis
from precompute.svd import SvdAnalysis

REGISTRY: dict[str, WholeF] = {a.name: a for a in (SvdAnalysis(), ClassifyAnalysis())}


def info_lines(st) -> list[str]:
    """``precompute info`` lines of every registered analysis (nothing for one a store lacks)."""
    return [line for a in REGISTRY.values() for line in a.info_lines(st)]


def verify_lines(st, prep, engine, tol: float, samples: int, seed: int) -> tuple[list[str], bool]:
    """``precompute verify`` lines of every registered analysis, and whether all agree."""
    lines, ok = [], True
    for a in REGISTRY.values():
        more, good = a.verify_lines(st, prep, engine, tol, samples, seed)
        lines += more
        ok &= good
    return lines, ok
