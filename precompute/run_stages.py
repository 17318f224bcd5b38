"""The stages of one run that touch the store: plan (load and check everything, nothing written),
create (or adopt) the store under its lock, adopt added or changed whole-F analyses, finish
(timings and device into the attributes). The sweep between them is :mod:`precompute.sweep`."""

from __future__ import annotations

import datetime as _dt
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from precompute import probes as P
from precompute import layout as L
from precompute import store_create as SC
from precompute.config import Resolved
from precompute.errors import UserError
from precompute.inputs import (check_memory, describe_device, forward_checked, prepare,
                               resolve_device, say, set_precision)
from precompute.tile_store import open_tiles
from precompute.writer import store_lock
from precompute.existing import (check_disk, check_writable, existing_attrs, mismatch,
                                 store_damage, whole_f_changes)
from precompute.run_plan import Options, RunPlan, run_context, whole_f_analyses
from precompute.run_gate import gate, gate_whole
from precompute.run_probing import choose_probing, choose_batches, schedule, estimate


def layouts_of(c, a, spec, in_shape, out_shape, scale, offset, np_dtype) -> list[L.Layout]:
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
    layouts = layouts_of(c, res.analyses(vector), spec, in_shape, out_shape, scale, offset, np_dtype)
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

    choose_probing(rp, attrs)
    choose_batches(rp, attrs)
    arrays = None
    if rp.exists:
        arrays = SC.tiled_arrays(open_tiles(path).group("r"))
    schedule(rp, arrays)
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
    estimate(rp)
    if not rp.exists or any(rp.todo.values()):
        rp.checks = gate(rp)
        if not opts.dry_run and not rp.whole_checked:  # before the plan paragraph and the
            rp.checks |= gate_whole(rp)                 # lock: a failure writes nothing
    return rp


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
        choose_probing(rp, stored, notes=False)
        if c.batch == "auto":
            for lay in rp.layouts:
                rp.batches[lay.name] = int(g.attrs["analyses"][lay.name].get("batch",
                                                                             rp.batches[lay.name]))
        # tiles done since the plan (another process); a tile found done by the plan stays done
        arrays = SC.tiled_arrays(g)
        schedule(rp, arrays, None if created else rp.todo)
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
