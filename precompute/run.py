"""`precompute run`: one store per (model, image), in stages a reader can follow.

    plan      inputs (model, image, x0), layouts, batch sizes, what is left to do, the estimate
    describe  the plan paragraph (``--dry-run`` stops here)
    create    create the store under the lock (or adopt the existing one), remove leftovers
    sweep     every planned tile of ``columns`` and ``rows`` (:mod:`precompute.sweep`)
    whole-F   analyses of F as a whole — ``svd`` (:mod:`precompute.svd`) and ``classify``
              (:mod:`precompute.classify`) — in the process of shard 0
    finish    timings and device into the store's attributes

A whole-F analysis is a :class:`precompute.analysis.WholeF` registered in
:data:`precompute.whole_f.REGISTRY` (planned, describe, disk_bytes, done, run); it reads the
run through :func:`run_context` only.

The plan of probes is :mod:`precompute.probes`, their execution :mod:`precompute.engine`, tile
assembly :mod:`precompute.assemble` and writing :mod:`precompute.writer`. A run killed at any
moment resumes with the same command, repeating exactly the same passes (bitwise-identical
results); progress is the set of tile shards on disk (docs/FORMAT.md).
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from precompute import compressed as Cm
from precompute import probes as P
from precompute import layout as L
from precompute import store_create as SC
from precompute.config import Resolved
from precompute.errors import UserError
from precompute.engine import GPU_MAX_BATCH, Engine, choose_batch, mem_available
from precompute.inputs import (Prepared, check_images, check_memory, describe_device,
                               forward_checked, prepare, resolve_device, say, set_precision,
                               first_line)
from precompute.text import fmt_bytes, fmt_time  # noqa: F401  (re-exported: precompute.run.fmt_bytes)
from precompute.tile_store import open_tiles
from precompute.writer import store_lock
from precompute.analysis import RunContext, WholeF
from precompute.whole_f import REGISTRY
from precompute.existing import (WHOLE_F, check_disk, check_writable,  # noqa: F401  (WHOLE_F)
                                 existing_attrs, mismatch, store_damage, whole_f_changes)


@dataclass
class Options:
    overwrite: bool = False
    dry_run: bool = False
    shard: tuple[int, int] = (0, 1)
    quiet: bool = False
    writer_threads: int = 2




def _about(s: float) -> str:
    return fmt_time(s) if s < 1 else f"about {fmt_time(s)}"


def versions() -> dict:
    """Package versions (from metadata: importing torchvision just for its version takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    import precompute

    def v(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": v("torchvision"), "zarr": v("zarr"), "numpy": np.__version__,
            "linearscope": precompute.__version__}


# ---------------------------------------------------------------------------------------------
# Existing stores (the checks themselves: precompute/existing.py).


def adopt_whole_f(rp: "RunPlan") -> None:
    """Before the whole-F analyses of an existing store run: record the ones the config adds or
    changes in the store's attributes (``config.analyses.<name>``, ``analyses.<name>``), and
    delete the old result of a changed one — under the store lock, before any of its work, so
    that a run killed afterwards resumes the new analysis instead of starting over again."""
    if rp.attrs is None:
        return
    with store_lock(rp.path):
        attrs = existing_attrs(rp.path)
        if attrs is None:
            return
        added, changed = whole_f_changes(attrs, rp.cfg)
        if not added and not changed:
            return
        g = open_tiles(rp.path).group("r+")
        config = dict(g.attrs["config"])
        config["analyses"] = dict(config.get("analyses") or {})
        analyses = dict(g.attrs.get("analyses") or {})
        for name, mod, acfg in whole_f_analyses(rp):
            if name in added or name in changed:
                open_tiles(rp.path).remove(name)
                config["analyses"][name] = rp.cfg["analyses"][name]
                analyses[name] = mod.planned(run_context(rp), acfg)
        g.attrs.update({"config": config, "analyses": analyses})
    for name in added:
        say(f"{rp.path}: adding {name} to the finished store (its rows and columns are kept)")
    for name in changed:
        say(f"{rp.path}: computing {name} again with the new settings (--overwrite; its rows "
            "and columns are kept)")


# ---------------------------------------------------------------------------------------------
# Analyses of F as a whole (not per pixel).


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


# ---------------------------------------------------------------------------------------------
# Stage 1: the plan.


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
    prep: Prepared
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


def _layouts(c, a, spec, in_shape, out_shape, scale, offset, np_dtype) -> list[L.Layout]:
    """The windowed analyses ``a`` (columns, rows) of config ``c``, validated against the image."""
    vector = spec.kind != "image"
    if vector and (a.columns is not None or a.rows is not None):
        raise UserError(
            f"{spec.model_id} is a vector model (classifier): columns/rows of image layout do not "
            "apply; leave `columns`/`rows` out (or false) and use `analyses: {classify: {top_k: 5}}` "
            "for its class rows, contributions, discussions and votes"
        )
    layouts: list[L.Layout] = []
    for name, acfg in (("columns", a.columns), ("rows", a.rows)):
        if acfg is None:
            continue
        probe_shape = in_shape if name == "columns" else out_shape
        if acfg.pixels is not None:
            sel = P.Selection(acfg.pixels.region, acfg.pixels.stride)
            where = f"analyses.{name}.pixels"
        else:
            sel = P.Selection(c.pixels.region, c.pixels.stride)
            if name == "rows":
                sel = P.scaled_selection(sel, scale)
            where = "pixels"
        if sel.region is not None:
            top, left, h, w = sel.region
            H, W = probe_shape[1:]
            if top + h > H or left + w > W:
                unit = "input" if name == "columns" else "output"
                raise UserError(
                    f"`{where}` region {list(sel.region)} ([top, left, height, width]) leaves the "
                    f"{unit} image of {H}×{W} pixels (used for {name})"
                )
        layouts.append(L.make_layout(name, acfg.window, acfg.tile, sel, in_shape, out_shape,
                                     scale, offset, np_dtype.itemsize))
    return layouts


def plan(res: Resolved, image: Path, opts: Options) -> RunPlan:
    """Load and check everything, decide batches and the tiles left to do, estimate the time.

    Nothing is written (but the output directory's writability is checked first)."""
    cfg = res.as_dict(image)
    c = res.config
    path = res.store_path(image)
    shard_i, shard_n = opts.shard
    check_writable(path)
    device = resolve_device(c.device)
    set_precision(device, c.precision)
    prep = prepare(cfg, res.config_path.parent, device)
    check_memory(prep, res)  # before the first real forward
    y0 = forward_checked(prep)
    spec = prep.spec
    vector = spec.kind != "image"
    cfg = res.as_dict(image, vector)  # `auto` columns/rows resolved for this kind of model
    np_dtype = np.dtype(c.dtype)
    in_shape = tuple(prep.x0.shape[1:])
    out_shape = tuple(y0.shape[1:])
    scale, offset = (spec.scale, spec.offset) if not vector else (None, None)
    layouts = _layouts(c, res.analyses(vector), spec, in_shape, out_shape, scale, offset, np_dtype)
    attrs = existing_attrs(path)
    if attrs is None:  # a new store: refuse a plan bigger than the disk before listing its tiles
        check_disk(sum(L.selected_bytes(lay, np_dtype.itemsize) for lay in layouts) // shard_n,
                   open_tiles(path).free_bytes(), path.parent)

    # an existing store: same values, or --overwrite
    if attrs is not None:
        diff = mismatch(attrs, cfg, prep)
        if diff and not opts.overwrite:
            raise UserError(
                f"{path} was made with a different {', '.join(diff)}; resuming would mix two "
                "interpreters. Use --overwrite to start it again, or give the run another name"
            )
        _added, changed = whole_f_changes(attrs, cfg)
        if changed and not diff and not opts.overwrite:
            raise UserError(
                f"{path} holds {' and '.join(changed)} computed with other settings; use "
                f"--overwrite to compute {'them' if len(changed) > 1 else 'it'} again (the rows, "
                "columns and residual are kept), or give the run another name")
        broken = [] if diff else store_damage(path, attrs)
        if broken and not opts.overwrite:
            raise UserError(f"{path} is damaged ({broken[0]}{' and more' if len(broken) > 1 else ''}"
                            "); use --overwrite to compute it again")
        if diff or broken:
            attrs = None  # will be overwritten
    rp = RunPlan(res=res, image=image, path=path, cfg=cfg, opts=opts, device=device, prep=prep,
                 y0=y0, vector=vector, in_shape=in_shape, out_shape=out_shape, scale=scale,
                 offset=offset, layouts=layouts, attrs=attrs)

    _choose_probing(rp, attrs)
    _choose_batches(rp, attrs)
    arrays = None
    if rp.exists:
        arrays = SC.tiled_arrays(open_tiles(path).group("r"))
    _schedule(rp, arrays)
    for lay in layouts:
        bpp = lay.bytes_per_pixel(np_dtype.itemsize) + (2 * 4 + lay.probe_shape[0] * np_dtype.itemsize)
        for t in rp.todo[lay.name]:
            th, tw = t.shape
            rp.bytes_todo += th * tw * bpp
    if not rp.exists:
        rp.bytes_todo += (2 * math.prod(out_shape) + math.prod(in_shape)) * np_dtype.itemsize
    if rp.shard[0] == 0:  # whole-F analyses run in shard 0's process (svd: its solver state)
        rp.bytes_todo += sum(mod.disk_bytes(run_context(rp), acfg)
                             for _n, mod, acfg in whole_f_analyses(rp))
    rp.free = open_tiles(path).free_bytes()
    check_disk(rp.bytes_todo, rp.free, path.parent)
    _estimate(rp)
    if not rp.exists or any(rp.todo.values()):
        rp.checks = gate(rp)
        if not opts.dry_run and not rp.whole_checked:  # before the plan paragraph and the
            rp.checks |= gate_whole(rp)                 # lock: a failure writes nothing
    return rp


def gate(rp: RunPlan) -> dict:
    """The run-time gate (docs/INTERPRETER.md): the interpreter's identities, measured before
    anything is written; one above its tolerance stops the run with one line.

    When the support was analysed on a small image, every identity is measured on two halo
    crops of x0 (top-left and bottom-right, each an image with its edges; f(x0) of the plain
    model on the crop as the reference) — a network with a bounded support computes every unit
    on a crop as on the image — and those about the stored f(x0) and r(x0) again on the whole
    image by :func:`gate_whole` (a real run, not ``--dry-run``). Otherwise on the whole image."""
    rp.get_engine(max(rp.batches.values(), default=1))
    lis = _gate_interpreters(rp)
    if lis == [rp.li]:
        from precompute import memory

        x0 = rp.prep.x0
        memory.check_gate(rp.prep.memory, device=rp.device, what=f"{rp.prep.spec.model_id} on x0 "
                          f"{'×'.join(map(str, x0.shape[1:]))}")
        rp.whole_checked = True
        return {k: float(v) for k, v in
                _gated(rp, lambda: rp.li.enforce(rp.li.check(seed=0, reference=rp.y0))).items()}
    worst: dict[str, float] = {}
    for li in lis:
        def measure(li=li):
            with torch.no_grad():
                ref = rp.prep.spec.module(li.x0)
            return li.enforce(li.check(seed=0, reference=ref))

        worst = {k: max(float(v), worst.get(k, 0.0)) for k, v in _gated(rp, measure).items()}
    return worst


def gate_whole(rp: RunPlan) -> dict:
    """The identities about f(x0) and r(x0) as stored (F·x0 + r = f(x0), the scope's f(x0)
    against the plain model's), on the whole image: one constants pass and one pass of x0."""
    rp.get_engine(max(rp.batches.values(), default=1))
    rp.whole_checked = True
    return {k: float(v) for k, v in
            _gated(rp, lambda: rp.li.enforce(rp.li.check_whole(reference=rp.y0))).items()}


def _gate_interpreters(rp: RunPlan) -> list:
    """The interpreters :func:`gate` checks: of x0's top-left and bottom-right crops of the
    small image's size (on the translation lattice: its side ≡ the image's mod the period), or
    of the whole image."""
    from precompute import halo

    small = rp.support_small if rp.support is not None and not rp.support.is_global else None
    if small is None or tuple(small.in_hw) == tuple(rp.in_shape[1:]):
        return [rp.li]
    (h, w), (H, W) = small.in_hw, rp.in_shape[1:]
    s = halo._fraction(rp.scale)
    out = []
    for y0, x0 in ((0, 0), (H - h, W - w)):
        oy, ox = y0 * s, x0 * s
        if oy.denominator != 1 or ox.denominator != 1:
            return [rp.li]
        crop = halo.Crop(y0, y0 + h, x0, x0 + w, int(oy), int(ox), (0, 0, 0, 0))
        out.append(_gated(rp, lambda crop=crop: halo.crop_engine(rp.engine, crop)).li)
    return out


def _gated(rp: RunPlan, measure):
    """``measure()`` with the gate's failures as one-line UserErrors."""
    from precompute.interpreter import IdentityError
    from precompute.scope import ScopeError

    try:
        return measure()
    except IdentityError as e:
        raise UserError(f"{e.summary}; run `precompute audit {rp.res.config_path}` to list every "
                        "intercepted call") from None
    except ScopeError:
        raise
    except torch.OutOfMemoryError:
        raise UserError("out of memory while checking the interpreter's identities (passes of "
                        "up to 4 probes): free device memory or use a smaller crop") from None
    except Exception as e:  # noqa: BLE001 — a failed check must not hide the cause
        raise UserError(f"the interpreter's self-check failed: {first_line(e)}") from None


#: probes of the timed pass of the estimate (a few: the whole job may be only a few passes)
ESTIMATE_PROBES = 8


def _estimate(rp: RunPlan) -> None:
    """Time a short pass of each analysis (after a one-probe warm-up) and extrapolate."""
    k_max = max(rp.batches.values(), default=1)
    for lay in rp.layouts:
        if not rp.todo[lay.name]:
            continue
        eng = rp.get_engine(k_max)
        plan = rp.probing[lay.name]
        k = rp.batches[lay.name]
        if plan.method == "single":
            first = P.tile_probes(rp.todo[lay.name][0], *lay.probe_shape, lay.selection)
            items, kind = [pr.flat for pr in first], lay.name
            shape = eng.in_shape if kind == "columns" else eng.out_shape
            build = lambda part, shape=shape: eng._impulses(part, shape)  # noqa: E731
        else:
            blk = rp.todo_blocks[lay.name][0]
            items = Cm.block_probes(lay, plan, rp.get_support(), blk)
            kind = plan.kind
            # time a pass on the block's halo crop when it has one (what the sweep runs)
            eng, shift, _ = Cm.block_engine(eng, rp.get_support(), [Cm.Target(lay, plan, None, blk)])
            shape = eng.in_shape if kind == "columns" else eng.out_shape
            build = lambda part, shape=shape, eng=eng, shift=shift: Cm._build(  # noqa: E731
                part, shape, eng.dtype, eng.device, shift)
        n = min(k, ESTIMATE_PROBES, len(items))
        eng.run(items[:1], kind, build)  # warm-up (kernel selection, allocator)
        if rp.device.type == "cuda":
            torch.cuda.synchronize(rp.device)
        t0 = time.perf_counter()
        eng.run(items[:n], kind, build)
        if rp.device.type == "cuda":
            torch.cuda.synchronize(rp.device)
        per_probe = (time.perf_counter() - t0) / n
        rp.estimate[lay.name] = per_probe * rp.probes_todo[lay.name]


# ---------------------------------------------------------------------------------------------
# Probing: how each analysis is probed (precompute.compressed), its batch, its units of work.


def block_budget() -> int:
    """Bytes one block of compressed probing may hold (windows + norms): a quarter of the free
    RAM, at most 1 GiB (``LINEARSCOPE_BLOCK_BYTES`` overrides it). Recorded per store."""
    from precompute.environment import env_int

    env = env_int("LINEARSCOPE_BLOCK_BYTES")
    if env is not None:
        return env
    return int(min(1 << 30, mem_available() // 4))


def _choose_probing(rp: RunPlan, attrs: dict | None, notes: bool = True) -> None:
    """The probing method of every analysis: the store's (a resumed run with ``probing: auto``
    repeats it, so the result is bitwise identical), or the cheapest exact one now."""
    c = rp.res.config
    stored = (attrs or {}).get("probing") or {}
    rp.probing, rp.probing_costs = {}, {}
    rp.block_budget = block_budget()
    for lay in rp.layouts:
        st = stored.get(lay.name)
        if st is None and attrs is not None:
            st = {"method": "single"}  # stores made before compressed probing
        if st is not None:
            plan = Cm.ProbingPlan.from_attrs(lay.name, st)
            if c.probing == "single" and plan.method != "single":
                if notes:
                    say(f"note: probing: single differs from the store's {plan.method} "
                        f"{lay.name}: tiles computed now may differ from an uninterrupted run in "
                        "the last bits")
                plan = Cm.ProbingPlan(lay.name, "single")
        elif c.probing == "single":
            plan = Cm.ProbingPlan(lay.name, "single")
        else:
            plan, rp.probing_costs[lay.name] = Cm.choose(
                lay, rp.get_support(), rp.np_dtype.itemsize, rp.block_budget)
        rp.probing[lay.name] = plan
    _pair_blocks(rp, stored)


def _pair_blocks(rp: RunPlan, stored: dict) -> None:
    """New stores with columns and rows on halo crops: rows blocks of exactly the outputs of a
    columns block, so that the rows are read out of the columns' passes (no passes of their own)."""
    cols, rows = rp.probing.get("columns"), rp.probing.get("rows")
    if stored or not (cols and rows and cols.method == "compressed"
                      and rows.method == "from_columns" and cols.crop and rows.crop):
        return
    lays = {lay.name: lay for lay in rp.layouts}
    side = Cm.H._fraction(lays["columns"].scale) * cols.block * lays["columns"].tile
    if side.denominator != 1 or int(side) % lays["rows"].tile:
        return
    paired = Cm.ProbingPlan("rows", rows.method, rows.period, int(side) // lays["rows"].tile,
                            rows.crop)
    if Cm.pairs(lays["columns"], cols, lays["rows"], paired):
        rp.probing["rows"] = paired


def _choose_batches(rp: RunPlan, attrs: dict | None) -> None:
    """Probes per pass: the user's, the store's (same passes as before: bitwise-identical
    resume), or chosen from free memory for the kind of pass the method runs."""
    c = rp.res.config
    for lay in rp.layouts:
        plan = rp.probing[lay.name]
        stored = (attrs or {}).get("analyses", {}).get(lay.name, {}).get("batch")
        if c.batch != "auto":
            rp.batches[lay.name] = int(c.batch)
            if stored is not None and stored != c.batch:
                say(f"note: batch {c.batch} differs from the store's {stored}: tiles computed now "
                    "may differ from an uninterrupted run in the last bits (different passes)")
        elif stored is not None:
            rp.batches[lay.name] = int(stored)
        else:
            if plan.method == "single":
                per_unit = lay.tile * lay.tile * lay.probe_shape[0]
            else:  # at most the probes of a block
                per_unit = max(1, max(Cm.count_each(lay, plan, rp.get_support(),
                                                    P.blocks(lay.tiles(), plan.block)), default=1))
            # a pass runs on a block's halo crop of x0 when the plan has crops: size it for that
            side = _largest_crop(rp, lay, plan)
            x0 = rp.prep.x0[..., :side[0], :side[1]] if side else rp.prep.x0
            rp.batches[lay.name] = choose_batch(rp.get_engine(GPU_MAX_BATCH), plan.kind, per_unit,
                                                rp.prep.spec.module, x0)
    # rows read out of compressed columns: the same passes as the columns (precompute.sweep
    # shares them when the probes are the same), so the same batch
    cols, rows = rp.probing.get("columns"), rp.probing.get("rows")
    if (c.batch == "auto" and cols and rows and cols.method == "compressed"
            and rows.method == "from_columns" and not (attrs or {}).get("analyses")):
        rp.batches["columns"] = rp.batches["rows"] = max(rp.batches["columns"], rp.batches["rows"])


def _largest_crop(rp: RunPlan, lay: L.Layout, plan: Cm.ProbingPlan) -> tuple[int, int] | None:
    """The largest halo crop (height, width) of a block of ``plan`` (None: full-image passes)."""
    if plan.method == "single" or not plan.crop:
        return None
    return Cm.largest_crop(lay, plan, rp.get_support())


def _schedule(rp: RunPlan, group, candidates: dict[str, list[P.Tile]] | None = None) -> None:
    """This process's share (tiles; blocks of tiles for compressed probing: a block is never
    split between processes), what is left of it, and its probes, passes and filters.

    ``group``: the store's tiled arrays (``SC.tiled_arrays``), None for a new store. With
    ``candidates`` (the plan's tiles to do), only those are checked again: a tile the plan found
    done and intact stays done (its integrity was checked once)."""
    shard_i, shard_n = rp.shard
    tiles = open_tiles(rp.path)
    for lay in rp.layouts:
        plan = rp.probing[lay.name]
        planned = lay.tiles()
        rp.planned[lay.name] = planned
        if plan.method == "single":
            mine = P.share(planned, shard_i, shard_n)
        else:
            mine = [t for b in P.share(P.blocks(planned, plan.block), shard_i, shard_n)
                    for t in b.tiles]
        rp.mine[lay.name] = mine
        if candidates is not None:
            keep = {(t.ty, t.tx) for t in candidates.get(lay.name, [])}
            mine_left = [t for t in mine if (t.ty, t.tx) in keep]
        else:
            mine_left = mine
        todo = ([t for t in mine_left if not tiles.tile_done(group, lay, t)]
                if group is not None else list(mine_left))
        rp.todo[lay.name] = todo
        k = rp.batches[lay.name]
        rp.filters_todo[lay.name] = Cm.filters(lay, todo)
        if plan.method == "single":
            rp.todo_blocks[lay.name] = []
            counts = [P.tile_count(t, lay.selection) * lay.probe_shape[0] for t in todo]
        else:
            left = {(t.ty, t.tx) for t in todo}
            rp.todo_blocks[lay.name] = [b for b in P.blocks(planned, plan.block)
                                        if any((t.ty, t.tx) in left for t in b.tiles)]
            sup = rp.get_support() if rp.todo_blocks[lay.name] else None
            if sup is not None and not Cm.valid(plan, sup):
                # (a store started by a version whose analysis found a smaller support)
                say(f"note: the structural support found now does not allow the store's "
                    f"{plan.method} {lay.name} (period {plan.period[0]}×{plan.period[1]}); the "
                    "remaining tiles use one impulse per probe")
                rp.probing[lay.name] = Cm.ProbingPlan(lay.name, "single")
                return _schedule(rp, group, candidates)
            counts = Cm.count_each(lay, plan, sup, rp.todo_blocks[lay.name])
        rp.probes_todo[lay.name] = sum(counts)
        rp.passes_todo[lay.name] = sum(Cm.passes_of(n, k) for n in counts)


# ---------------------------------------------------------------------------------------------
# Stage 2: the plan paragraph.


def describe(rp: RunPlan) -> str:
    """The plan as one paragraph: what will be computed, how, and about how long."""
    c, cfg, spec = rp.res.config, rp.cfg, rp.prep.spec
    shard_i, shard_n = rp.shard
    mode = ("resuming" if rp.exists
            else ("overwriting" if rp.path.exists() and rp.opts.overwrite else "creating"))
    lines = [
        f"{mode} {rp.path}: {spec.model_id} on {rp.image.name}"
        + (f" crop {cfg['crop']}" if cfg.get("crop") else "")
        + f", x0 {'×'.join(map(str, rp.in_shape))} → f(x0) {'×'.join(map(str, rp.out_shape))},"
        + f" {c.interpreter} interpreter, {c.dtype} on {describe_device(rp.device)}"
        + (f", shard {shard_i}/{shard_n}" if shard_n > 1 else "") + "."
    ]
    if rp.layouts:
        lines.append(_describe_support(rp))
    for lay in rp.layouts:
        n_pl = len(rp.planned[lay.name])
        lines.append(
            f"{lay.name}: window {lay.window[0]}×{lay.window[1]}{' (full)' if lay.full else ''}, "
            f"{len(rp.todo[lay.name])} of {n_pl} tiles of {lay.tile}×{lay.tile} px to do"
            + (f" (this process's share: {len(rp.mine[lay.name])})" if shard_n > 1 else "")
            + f", {rp.filters_todo[lay.name]:,} filters: " + _describe_method(rp, lay)
            + (f", {_about(rp.estimate[lay.name])}" if lay.name in rp.estimate else "")
            + "."
        )
    whole = whole_f_analyses(rp)
    for _name, mod, acfg in whole:
        lines.append(mod.describe(run_context(rp), acfg))
    # the whole-F analyses state their passes above; only the per-pixel sweep is timed ahead
    what = " of the rows and columns" if whole and rp.layouts else ""
    lines.append(
        f"To write: {fmt_bytes(rp.bytes_todo)} before compression ({fmt_bytes(rp.free)} free); "
        f"estimated compute time{what} {fmt_time(sum(rp.estimate.values()))}"
        + (f" (the {', '.join(n for n, _, _ in whole)} passes above come on top)" if what else "")
        + "."
    )
    return " ".join(lines)


def _describe_support(rp: RunPlan) -> str:
    if rp.res.config.probing == "single" and rp.support is None:
        return "Probing: one impulse per probe (probing: single)."
    sup = rp.support
    if sup is None:
        return "Probing: as recorded in the store."
    small = next((n for n in sup.notes if n.startswith("analysed on a")), None)
    found = (f"(found with {sup.probes} line probes in {fmt_time(sup.seconds)}"
             + (f", {small}" if small else "") + ")")
    if sup.is_global:
        return (f"Probing: one impulse per probe, the structural support is global {found}: "
                f"{sup.global_reason}.")
    (ry, rx), (cy, cx) = sup.period_in, sup.period_out
    return (f"Structural support {found}: a row reaches at most {ry}×{rx} input px, a column "
            f"{cy}×{cx} output px.")


def _describe_method(rp: RunPlan, lay: L.Layout) -> str:
    plan = rp.probing[lay.name]
    k, probes, passes = rp.batches[lay.name], rp.probes_todo[lay.name], rp.passes_todo[lay.name]
    costs = rp.probing_costs.get(lay.name, {})
    direction = "forward" if plan.kind == "columns" else "backward"
    if plan.method == "single":
        how = f"one impulse per probe, {probes:,} {direction} probes"
    else:
        what = ("compressed probes" if plan.method == "compressed"
                else "read out of columns (no backward pass)")
        side = _largest_crop(rp, lay, plan)
        on = (f" on halo crops of x0 of ≤ {side[0]}×{side[1]} input px (crops start on "
              f"multiples of {plan.crop} px)" if side else "")
        how = (f"{what}, period {plan.period[0]}×{plan.period[1]} px, blocks of "
               f"{plan.block}×{plan.block} tiles ({len(rp.todo_blocks[lay.name])} to do){on}: "
               f"{probes:,} {direction} probes")
    how += f" in {passes:,} pass{'' if passes == 1 else 'es'} of ≤ {k}"
    if plan.method != "single" and "single" in costs:
        n_single = int(costs["single"] / (1 if lay.name == "columns" else Cm.BACKWARD_COST))
        how += f" (one impulse per probe: {n_single:,} {lay.name[:-1]} probes)"
    return how


# ---------------------------------------------------------------------------------------------
# Stage 3: create (or adopt) the store.


def _new_attrs(rp: RunPlan, checks: dict, seconds: float) -> dict:
    c = rp.res.config
    a = rp.res.analyses(rp.vector)
    return {
        "format_version": SC.FORMAT_VERSION,
        "name": rp.path.name.removesuffix(".zarr"),
        "config": rp.cfg,
        "model": rp.prep.model_attrs,
        "image": rp.prep.image_attrs,
        "interpreter": c.interpreter,
        "dtype": c.dtype,
        "geometry": None if rp.vector else {"scale": float(rp.scale), "offset": float(rp.offset)},
        "checks": checks,
        "analyses": ({"residual": True} if a.residual else {})
        | {lay.name: lay.attrs(rp.batches[lay.name]) for lay in rp.layouts}
        | {name: mod.planned(run_context(rp), acfg) for name, mod, acfg in whole_f_analyses(rp)},
        "probing": _probing_attrs(rp),
        "timings": {"residual": seconds, "columns": 0.0, "rows": 0.0},
        "versions": versions(),
        "device": describe_device(rp.device),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "oom_splits": 0,
    }


def _probing_attrs(rp: RunPlan) -> dict:
    """``attrs.probing`` (docs/FORMAT.md, "Probing"): the support found and each analysis's
    method, lattice period and block side."""
    d: dict = {"requested": rp.res.config.probing,
               "support": rp.support.attrs() if rp.support is not None else None}
    d.update({name: plan.attrs() for name, plan in rp.probing.items()})
    return d


def create(rp: RunPlan) -> None:
    """Create the store under the lock (unless another process did), then recount the tiles left.

    Another ``--shard`` process may have created the store meanwhile: its attributes (batch) win,
    so every tile is computed with the same passes as in a single-process run.
    """
    c = rp.res.config
    spec, prep = rp.prep.spec, rp.prep
    eng = rp.get_engine(max(rp.batches.values(), default=1))
    li = rp.li
    shard_i, shard_n = rp.shard
    tiles = open_tiles(rp.path)
    with tiles.lock():
        attrs_now = existing_attrs(rp.path)
        if attrs_now is not None and (mismatch(attrs_now, rp.cfg, prep) or (
                rp.opts.overwrite and store_damage(rp.path, attrs_now))):
            if not rp.opts.overwrite:
                raise UserError(f"{rp.path} was just created by another process with a different "
                                "config")
            attrs_now = None
        created = attrs_now is None
        if created:
            tiles.remove()
            t0 = time.perf_counter()
            checks = rp.checks if rp.checks is not None else gate(rp)
            if not rp.whole_checked:
                checks = checks | gate_whole(rp)
            residual = li.residual.detach().reshape(rp.out_shape)
            output = rp.y0[0].detach()
            if not (torch.isfinite(residual).all() and torch.isfinite(output).all()):
                raise UserError(f"{spec.model_id} produced NaN/Inf in f(x0) or r(x0); nothing was "
                                "stored")
            seconds = time.perf_counter() - t0
            disp_out = None if rp.vector else spec.display_output(rp.y0.detach().cpu().float(),
                                                                   prep.prepared)
            SC.create_store(
                tiles, attrs=_new_attrs(rp, checks, seconds), dtype=c.dtype,
                input=prep.x0[0].detach().cpu().numpy(), output=output.cpu().numpy(),
                residual=residual.cpu().numpy() if c.analyses.residual else None,
                display_input=spec.display_input(prep.prepared), display_output=disp_out,
                layouts=rp.layouts,
            )
        g = tiles.group("r")
        # the store's method, blocks and batches win (another --shard process may have made it)
        stored = dict(g.attrs)
        _choose_probing(rp, stored, notes=False)
        if c.batch == "auto":
            for lay in rp.layouts:
                rp.batches[lay.name] = int(g.attrs["analyses"][lay.name].get("batch",
                                                                             rp.batches[lay.name]))
        # tiles done since the plan (another process); a tile found done by the plan stays done
        arrays = SC.tiled_arrays(g)
        _schedule(rp, arrays, None if created else rp.todo)
        damaged = [f for lay in rp.layouts
                   for f in tiles.clear_damaged(arrays, lay, rp.todo[lay.name])]
        if damaged:
            say(f"{len(damaged)} damaged file(s) of unfinished tiles deleted, the tiles are "
                f"computed again: {', '.join(damaged[:4])}{' …' if len(damaged) > 4 else ''}")
        owned = {(n, t.ty, t.tx) for n in rp.todo for t in rp.mine[n]}
        removed = tiles.remove_partials([lay.name for lay in rp.layouts],
                                        owned if shard_n > 1 else None, root=shard_i == 0)
        if removed and not rp.opts.quiet:
            say(f"removed {removed} partial file(s) left by a killed run")
    del eng


# ---------------------------------------------------------------------------------------------
# Stage 5: finish.


def finish(rp: RunPlan, timings: dict[str, float]) -> None:
    """Add this process's compute time, device and out-of-memory splits to the attributes."""
    eng = rp.engine
    with store_lock(rp.path):
        g = open_tiles(rp.path).group("r+")
        t_old = dict(g.attrs.get("timings", {}))
        for k, v in timings.items():
            if k != "residual":
                t_old[k] = float(t_old.get(k, 0.0)) + v
        if rp.freivalds is not None and rp.freivalds.units:  # the sweep's Freivalds checks
            g.attrs["checks"] = rp.freivalds.merged(dict(g.attrs.get("checks") or {}))
        g.attrs.update({"timings": t_old, "device": describe_device(rp.device),
                        "oom_splits": int(g.attrs.get("oom_splits", 0)) + eng.oom_splits})
    if eng.oom_splits:
        say(f"note: {eng.oom_splits} pass(es) were split after running out of memory "
            "(attr oom_splits)")


# ---------------------------------------------------------------------------------------------
# The run.


def run_image(res: Resolved, image: Path, opts: Options) -> str:
    """Plan, create or resume, and sweep one store. Returns a one-line summary."""
    from precompute.sweep import open_writer, sweep

    rp = plan(res, image, opts)
    shard_n = rp.shard[1]
    if not opts.quiet or opts.dry_run:
        say(describe(rp))
    if opts.dry_run:
        return f"{rp.path}: dry run, nothing written"
    # whole-F analyses run in the process of shard 0 only
    whole = [w for w in whole_f_analyses(rp) if rp.shard[0] == 0]
    if rp.exists and all(not t for t in rp.todo.values()) and all(
            not rp.whole_f_pending(n) and mod.done(run_context(rp), acfg) for n, mod, acfg in whole):
        return (f"{rp.path}: already done (all planned tiles"
                f"{' of this shard' if shard_n > 1 else ''} are on disk)")
    create(rp)
    if whole:
        adopt_whole_f(rp)
    timings: dict[str, float] = {}
    if any(rp.todo.values()):
        writer = open_writer(rp)
        try:
            timings.update(sweep(rp, writer))
        finally:
            t0 = time.perf_counter()
            writer.close()  # finish queued tiles even on Ctrl-C: nothing computed is lost
            last = rp.layouts[-1].name
            if last in timings:
                timings[last] += time.perf_counter() - t0
    for name, mod, acfg in whole:
        if not mod.done(run_context(rp), acfg):
            timings[name] = mod.run(run_context(rp), acfg)
    finish(rp, timings)
    done = sum(len(t) for t in rp.todo.values())
    return f"{rp.path}: done ({done} tile(s) written{' by this shard' if shard_n > 1 else ''})"


def parse_shard(text: str | None) -> tuple[int, int]:
    """``I/N`` from --shard, else RANK/WORLD_SIZE (torchrun), else 0/1."""
    if text is None:
        from precompute.environment import env_shard

        return env_shard()
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard: expected I/N such as 0/2, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise UserError(f"--shard: expected 0 ≤ I < N, got {text!r}")
    return (i, n)


def run(config_paths: str | os.PathLike | Sequence[str | os.PathLike], opts: Options) -> list[str]:
    """Every run of the configs (each one run, or a `runs:` list: docs/RUN.md), in order, in one
    process (one start-up of torch for all). Every config is read and validated first, and no
    two runs may write the same store; each image and store of a config with several runs or
    images is checked before any work. One line per store and summary."""
    from precompute.config import load_configs

    paths = [config_paths] if isinstance(config_paths, (str, os.PathLike)) else list(config_paths)
    files = [load_configs(p) for p in paths]
    _distinct_stores([res for configs in files for res in configs])
    for configs in files:
        for res in configs:
            if len(res.images) > 1 or len(configs) > 1:  # every image and store checked first
                check_images(res, always=len(configs) > 1)
                for image in res.images:
                    existing_attrs(res.store_path(image))
    lines = []
    for configs in files:
        for res in configs:
            lines += run_config(res, opts)
    return lines


def _distinct_stores(runs: list[Resolved]) -> None:
    """Refuse two runs (of one config or of several) that would write the same store or the
    same dataset summary: the second would refuse the first's store after its work, or
    silently replace its summary."""
    from precompute.classify import summary_path

    seen: dict[Path, str] = {}

    def claim(path: Path, who: str) -> None:
        path = path.resolve()
        if path in seen:
            raise UserError(f"{who} and {seen[path]} would both write {path}; give the runs "
                            "different names or outputs")
        seen[path] = who

    for res in runs:
        for image in res.images:
            claim(res.store_path(image), f"{res.config_path} (run {res.config.name}, {image.name})")
        if res.config.analyses.classify is not None and (len(res.images) > 1 or res.dataset):
            claim(summary_path(res), f"{res.config_path} (run {res.config.name}, its summary)")


def run_config(res: Resolved, opts: Options) -> list[str]:
    """The stores of one run, then its dataset summary (classifiers with several images)."""
    lines = [run_image(res, image, opts) for image in res.images]
    if res.config.analyses.classify is not None and not opts.dry_run and opts.shard[0] == 0:
        from precompute.classify import summarize  # Table 4 / Figure 8 over the images

        line = summarize(res)
        if line:
            lines.append(line)
    return lines
