"""The protocol of a whole-F analysis, and the narrow run context it reads.

A whole-F analysis computes something about F as a whole (not per pixel) after, or beside, the
sweep of ``precompute run``: the SVD (:mod:`precompute.svd`, paper §3), the classifier
decompositions (:mod:`precompute.classify`, eq. 8 and 16). Each is one :class:`WholeF` subclass,
registered by name in :mod:`precompute.whole_f` (no import by name). The pipeline
(:mod:`precompute.run`) calls it in this order: ``planned`` (its entry in the store's
``analyses`` attribute) and ``describe`` (a sentence of the plan paragraph), ``disk_bytes`` (the
disk check), ``done`` (complete in the store), ``run`` (compute and write resumably; seconds).
``precompute info`` shows its ``info_lines`` and ``precompute verify`` its ``verify_lines``.

An analysis sees a :class:`RunContext`, the few facts of the run it reads, built from the
pipeline's plan in one place (:func:`precompute.run_plan.run_context`), never the plan itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch

from precompute.tile_store import TileStore, open_tiles


def group_complete(tiles: TileStore, name: str) -> bool:
    """The analysis group ``name`` is in the store and complete: its ``complete`` attribute is
    written last, in one atomic write (docs/FORMAT.md); a damaged group counts as not done, so
    it is computed again."""
    if not tiles.has_group(name):
        return False
    try:
        return bool(tiles.group("r")[name].attrs.get("complete"))
    except Exception:  # unreadable metadata: redo the group
        return False


@dataclass(frozen=True)
class RunContext:
    """What a whole-F analysis may read of a run."""

    path: Path                 # the store
    exists: bool               # the store existed before this run (resumed or extended)
    pending: frozenset         # analyses the config adds to, or changes in, the existing store
    device: torch.device
    config: object             # precompute.config.RunConfig: interpreter, precision, dtype, batch
    prep: object               # precompute.inputs.RunInput: the model spec, x0 and its dtype
    y0: torch.Tensor           # f(x0), (1, *out_shape)
    vector: bool               # a classifier (vector output)
    in_shape: tuple
    out_shape: tuple
    layouts: tuple             # the store's per-pixel analyses (precompute.store.Layout)
    support: object            # precompute.support.Support, or None when not computed
    quiet: bool

    @property
    def tiles(self) -> TileStore:
        """The store behind the storage seam (an analysis touches no path of it)."""
        return open_tiles(self.path)


class WholeF(ABC):
    """One whole-F analysis; ``cfg`` is its section of the config (``analyses.<name>``)."""

    name: str = ""

    @abstractmethod
    def planned(self, ctx: RunContext, cfg) -> dict:
        """Its resolved settings, stored as ``analyses.<name>`` (refuses impossible ones)."""

    @abstractmethod
    def describe(self, ctx: RunContext, cfg) -> str:
        """One sentence of the plan paragraph (``--dry-run`` shows it)."""

    def disk_bytes(self, ctx: RunContext, cfg) -> int:
        """The most it may write (result and resumable state), for the disk check."""
        return 0

    @abstractmethod
    def done(self, ctx: RunContext, cfg) -> bool:
        """Its result is complete in the store."""

    @abstractmethod
    def run(self, ctx: RunContext, cfg) -> float:
        """Compute and write the result (resumably, complete marker last); returns seconds."""

    def info_lines(self, st) -> list[str]:
        """``precompute info`` lines for a store (:class:`precompute.store.Store`)."""
        return []

    def verify_lines(self, st, prep, engine, tol: float, samples: int, seed: int
                     ) -> tuple[list[str], bool]:
        """``precompute verify``: lines and whether the stored result agrees with the model
        rebuilt from the store (``prep``; ``engine`` runs its interpreter)."""
        return [], True
