"""The plan of one run (store): what is decided before any work, and what analyses may read of it.

:class:`RunPlan` holds the inputs (model, x0, f(x0)), the layouts, the batches, the probing plan,
the tiles left to do and the gate's results; it builds the :class:`LinearInterpreter` and the
structural support on first use. :func:`run_context` is the one place a whole-F analysis's
:class:`precompute.analysis.RunContext` is made from it. The stages that fill it are in
:mod:`precompute.run_stages` (plan, create, finish), :mod:`precompute.run_probing` and
:mod:`precompute.run_gate`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from precompute import compressed as Cm
from precompute import probes as P
from precompute import layout as L
from precompute.config import Resolved
from precompute.engine import Engine
from precompute.inputs import RunInput
from precompute.analysis import RunContext, WholeF
from precompute.whole_f import REGISTRY
from precompute.existing import whole_f_changes


@dataclass
class Options:
    overwrite: bool = False
    dry_run: bool = False
    shard: tuple[int, int] = (0, 1)
    quiet: bool = False
    writer_threads: int = 2


def whole_f_analyses(rp: "RunPlan") -> list[tuple[str, WholeF, object]]:
    """(name, analysis, config) of every whole-F analysis the config asks for, in order."""
    a = rp.res.analyses(rp.vector)
    return [(name, an, getattr(a, name)) for name, an in REGISTRY.items()
            if getattr(a, name) is not None]


def run_context(rp: "RunPlan") -> RunContext:
    """What a whole-F analysis may read of the plan (:class:`precompute.analysis.RunContext`),
    as it stands now: built in this one place."""
    added, changed = whole_f_changes(rp.attrs, rp.cfg) if rp.attrs is not None else ([], [])
    return RunContext(path=rp.path, exists=rp.exists, pending=frozenset(added + changed),
                      device=rp.device, config=rp.res.config, prep=rp.prep, y0=rp.y0,
                      vector=rp.vector, in_shape=tuple(rp.in_shape),
                      out_shape=tuple(rp.out_shape), layouts=tuple(rp.layouts),
                      support=rp.support, quiet=rp.opts.quiet)


#: structural supports found in this process (model, input shape, dtype, device, rule)
_SUPPORTS: dict = {}


@dataclass
class RunPlan:
    """Everything decided before any work: what the store holds and what is left to do."""

    res: Resolved
    image: Path
    path: Path
    cfg: dict                      # the resolved config of this image (as stored)
    opts: Options
    device: torch.device
    prep: RunInput
    y0: torch.Tensor               # f(x0), (1, *out_shape)
    vector: bool
    in_shape: tuple
    out_shape: tuple
    scale: float | None
    offset: float | None
    layouts: list[L.Layout]
    attrs: dict | None             # the existing store's attributes (None: to be created)
    batches: dict[str, int] = field(default_factory=dict)
    planned: dict[str, list[P.Tile]] = field(default_factory=dict)
    mine: dict[str, list[P.Tile]] = field(default_factory=dict)
    todo: dict[str, list[P.Tile]] = field(default_factory=dict)
    probes_todo: dict[str, int] = field(default_factory=dict)
    passes_todo: dict[str, int] = field(default_factory=dict)
    bytes_todo: int = 0
    free: int = 0
    estimate: dict[str, float] = field(default_factory=dict)
    li: object = None              # the LinearInterpreter, built on first use
    engine: Engine | None = None
    checks: dict | None = None     # the gate's measured identities (stored as `checks`)
    whole_checked: bool = False    # F·x0 + r = f(x0) and output_rel measured on the whole image
    freivalds: object = None       # precompute.freivalds.Tally of this process's sweep
    # probing (precompute.compressed): method per analysis, the structural support, blocks
    probing: dict[str, Cm.ProbingPlan] = field(default_factory=dict)
    probing_costs: dict[str, dict[str, float]] = field(default_factory=dict)
    support: object = None         # precompute.support.Support, computed on first use
    support_small: object = None   # the small image's support it was extended from (or None)
    block_budget: int = 0
    todo_blocks: dict[str, list[P.Block]] = field(default_factory=dict)
    filters_todo: dict[str, int] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return self.attrs is not None

    def whole_f_pending(self, name: str) -> bool:
        """Is the whole-F analysis ``name`` to be added to, or computed again in, the existing
        store (whatever its old result says)?"""
        if self.attrs is None:
            return False
        added, changed = whole_f_changes(self.attrs, self.cfg)
        return name in added or name in changed

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.res.config.dtype)

    @property
    def shard(self) -> tuple[int, int]:
        return self.opts.shard

    def get_engine(self, k: int) -> Engine:
        """The batched engine (and its LinearInterpreter), built once with passes of ``k``."""
        if self.engine is None:
            from precompute.interpreter import LinearInterpreter

            c = self.res.config
            # the constants pass (scoped f(x0), r(x0)) of the whole image runs on first use
            # (the store's residual, the whole-image gate): planning only cuts crops out of it
            self.li = LinearInterpreter(self.prep.spec.module, self.prep.x0, rule=c.interpreter,
                                        batch=k, exact=c.precision == "ieee",
                                        out_shape=self.out_shape)
            self.engine = Engine(self.li, self.device, self.prep.dtype)
            self.engine.f_x0 = self.y0[0]  # halo crops reproduce the plain model's f(x0)
        return self.engine

    def get_support(self):
        """The structural support of the model at this input size (computed once per model,
        size, dtype and rule in a process: several images of one config share it)."""
        if self.support is None:
            import json

            from precompute.support import cross_check

            key = (json.dumps(self.prep.model_attrs, sort_keys=True, default=str), self.in_shape,
                   str(self.prep.dtype), self.device.type, self.res.config.interpreter)
            from precompute import support_crop

            sup, small = _SUPPORTS.get(key, (None, None))
            if sup is None:
                batch = 64 if self.device.type == "cuda" else 16
                # a large image: analysed on a small one and extended by translation
                sup, small = support_crop.analyse(
                    self.prep.spec.module, self.in_shape, self.prep.dtype, self.device,
                    self.scale, self.out_shape[1:], rule=self.res.config.interpreter, batch=batch)
            self.support_small = small
            # the cross-check is data-dependent (this x0's columns): run it for every image —
            # for an assembled support, on the small image's size (x0's top-left crop of it)
            eng = self.get_engine(max(self.batches.values(), default=16))
            eps = 1e-12 if self.prep.dtype == torch.float64 else 1e-5
            if not sup.is_global:
                _SUPPORTS[key] = (sup, small)
            checked, ceng = sup, eng
            if small is not None:
                try:
                    checked, ceng = small, _top_left(eng, small)
                except Exception:  # noqa: BLE001 — the crop does not run: check on the image
                    checked, ceng = sup, eng
            checked = cross_check(copy.copy(checked), lambda flat: ceng.probe(flat, "columns"),
                                  ceng.in_shape, eps, lambda flat: ceng.probe(flat, "rows"),
                                  ceng.out_shape)
            self.support = copy.copy(sup)
            self.support.global_reason = checked.global_reason
        return self.support


def _top_left(eng: Engine, small) -> Engine:
    """The engine of x0's top-left crop of the small image's size (its own image, edges too)."""
    from precompute import halo

    h, w = small.in_hw
    return halo.crop_engine(eng, halo.Crop(0, h, 0, w, 0, 0, (0, 0, 0, 0)))
