"""How each windowed analysis is probed (:mod:`precompute.compressed`), its batch, this process's
tiles left to do and their probes and passes, and the timed estimate of the plan paragraph."""

from __future__ import annotations

import time

import torch

from precompute import compressed as Cm
from precompute import probes as P
from precompute import layout as L
from precompute.engine import GPU_MAX_BATCH, choose_batch, mem_available
from precompute.inputs import say
from precompute.tile_store import open_tiles
from precompute.run_plan import RunPlan


#: probes of the timed pass of the estimate (a few: the whole job may be only a few passes)
ESTIMATE_PROBES = 8


def estimate(rp: RunPlan) -> None:
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


def block_budget() -> int:
    """Bytes one block of compressed probing may hold (windows + norms): a quarter of the free
    RAM, at most 1 GiB (``LINEARSCOPE_BLOCK_BYTES`` overrides it). Recorded per store."""
    from precompute.environment import env_int

    env = env_int("LINEARSCOPE_BLOCK_BYTES")
    if env is not None:
        return env
    return int(min(1 << 30, mem_available() // 4))


def choose_probing(rp: RunPlan, attrs: dict | None, notes: bool = True) -> None:
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


def choose_batches(rp: RunPlan, attrs: dict | None) -> None:
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
            side = largest_crop(rp, lay, plan)
            x0 = rp.prep.x0[..., :side[0], :side[1]] if side else rp.prep.x0
            rp.batches[lay.name] = choose_batch(rp.get_engine(GPU_MAX_BATCH), plan.kind, per_unit,
                                                rp.prep.spec.module, x0)
    # rows read out of compressed columns: the same passes as the columns (precompute.sweep
    # shares them when the probes are the same), so the same batch
    cols, rows = rp.probing.get("columns"), rp.probing.get("rows")
    if (c.batch == "auto" and cols and rows and cols.method == "compressed"
            and rows.method == "from_columns" and not (attrs or {}).get("analyses")):
        rp.batches["columns"] = rp.batches["rows"] = max(rp.batches["columns"], rp.batches["rows"])


def largest_crop(rp: RunPlan, lay: L.Layout, plan: Cm.ProbingPlan) -> tuple[int, int] | None:
    """The largest halo crop (height, width) of a block of ``plan`` (None: full-image passes)."""
    if plan.method == "single" or not plan.crop:
        return None
    return Cm.largest_crop(lay, plan, rp.get_support())


def schedule(rp: RunPlan, group, candidates: dict[str, list[P.Tile]] | None = None) -> None:
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
                return schedule(rp, group, candidates)
            counts = Cm.count_each(lay, plan, sup, rp.todo_blocks[lay.name])
        rp.probes_todo[lay.name] = sum(counts)
        rp.passes_todo[lay.name] = sum(Cm.passes_of(n, k) for n in counts)
