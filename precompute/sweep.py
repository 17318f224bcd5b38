"""The probe sweep: every windowed analysis (``columns``, ``rows``) over its planned tiles.

For every unit of work left to do — a tile (one impulse per probe) or a block of tiles
(compressed probing, :mod:`precompute.compressed`) — its probes run through the engine in passes
(:mod:`precompute.engine`), the filters are cropped to windows (:mod:`precompute.assemble`, or
decoded from compressed probes) and every finished tile goes to the writer threads
(:mod:`precompute.writer`), which write it whole and atomically. A columns block and a rows block
whose probes are the same (rows read out of the columns of the same pixels, typically one block
covering the image) share their passes. Progress bars count filters (columns or rows: pixel ×
channel), not passes; nothing computed is lost on Ctrl-C (queued tiles are finished).
"""

from __future__ import annotations

import time

from precompute import compressed as Cm
from precompute import freivalds as Fv
from precompute.assemble import tile_arrays
from precompute.tile_store import open_tiles
from precompute.writer import Writer


class _Progress:
    """Advance bars by blocks' filters in proportion to their passes (whole numbers)."""

    def __init__(self, parts: list[tuple[object, int]]):
        self.parts = [[bar, filters, 0] for bar, filters in parts]

    def __call__(self, done: int, total: int) -> None:
        for part in self.parts:
            bar, filters, shown = part
            now = filters * done // max(total, 1)
            bar.update(now - shown)
            part[2] = now


def open_writer(rp) -> Writer:
    """One writer for every analysis of a run, so that writing one analysis's last tiles
    overlaps computing the next. Its queue holds up to 8 tiles (≤ 1 GiB) beyond whole blocks of
    compressed probing (whose windows are in memory anyway). Tiles go through the store's tile
    store (:mod:`precompute.tile_store`)."""
    tiles = open_tiles(rp.path)
    group = tiles.group("r+")
    itemsize = rp.np_dtype.itemsize
    depth = 1
    for lay in rp.layouts:
        tile_bytes = lay.tile * lay.tile * lay.bytes_per_pixel(itemsize)
        depth += int(max(1, min(8, (1 << 30) // max(tile_bytes, 1))))
        depth += max((len(b.tiles) for b in rp.todo_blocks.get(lay.name) or []), default=0)
    return Writer(group, rp.opts.writer_threads, depth, tiles)


def _shared_rows(rp) -> dict:
    """Rows blocks left to do whose probes are those of a columns block left to do (same
    passes: same probes and batch), by the columns block's probes."""
    cols, rows = rp.probing.get("columns"), rp.probing.get("rows")
    if not (cols and rows and cols.method == "compressed" and rows.method == "from_columns"
            and rp.batches["columns"] == rp.batches["rows"] and rp.todo.get("rows")
            and rp.todo_blocks.get("rows")):
        return {}
    lay = next(x for x in rp.layouts if x.name == "rows")
    support = rp.get_support()
    col_lay = next(x for x in rp.layouts if x.name == "columns")
    if Cm.pairs(col_lay, cols, lay, rows):  # halo crops: the rows block of a columns block
        return {("paired", b.by, b.bx): b for b in rp.todo_blocks["rows"]}
    return {tuple(Cm.block_probes(lay, rows, support, b)): b for b in rp.todo_blocks["rows"]}


def _note_fallback(rp, stats: dict) -> None:
    """Say once per run that a block's halo crop was refused (it ran on the full image)."""
    why = stats.get("crop_fallback")
    if why and not getattr(rp, "_crop_fallback_said", False):
        import sys

        print(f"note: a block's halo crop of x0 does not reproduce the full image ({why}): the "
            "network is not translation-equivariant there (e.g. statistics frozen over the whole "
            "image); such blocks run on the full image (exact, not bounded in memory)",
            file=sys.stderr, flush=True)
        rp._crop_fallback_said = True


def sweep(rp, writer: Writer) -> dict[str, float]:
    """Compute every tile left in ``rp.todo`` and hand it to ``writer``; return the seconds
    spent per analysis (passes shared by both analyses count for ``columns``)."""
    from tqdm import tqdm

    eng = rp.get_engine(max(rp.batches.values(), default=1))
    np_dtype = rp.np_dtype
    lays = {lay.name: lay for lay in rp.layouts}
    bars = {name: tqdm(total=rp.filters_todo[name], desc=name, unit="filter", position=n,
                       dynamic_ncols=True, disable=rp.opts.quiet, smoothing=0.1)
            for n, name in enumerate(n for n in lays if rp.todo[n])}
    timings: dict[str, float] = {}
    shared = _shared_rows(rp)
    done_rows: set = set()
    if getattr(rp, "freivalds", None) is None:
        rp.freivalds = Fv.Tally()
    tally = rp.freivalds
    try:
        for name, bar in bars.items():
            lay, plan, k = lays[name], rp.probing[name], rp.batches[name]
            t0 = time.perf_counter()
            if plan.method == "single":
                for tile in rp.todo[name]:
                    sketch = Fv.tile_sketch(lay, tile)
                    block, origin, outside = tile_arrays(eng, lay, tile, k, np_dtype, bar.update,
                                                         sketch)
                    tally.check(eng, [sketch])  # before the writer: a failing tile is not written
                    writer.put((lay, tile, block, origin, outside))
                timings[name] = time.perf_counter() - t0
                continue
            support = rp.get_support()
            left = {(name, t.ty, t.tx) for t in rp.todo[name]}
            for blk in rp.todo_blocks[name]:
                if (name, blk.by, blk.bx) in done_rows:
                    continue
                probes = Cm.block_probes(lay, plan, support, blk)
                targets = [Cm.Target(lay, plan, Cm.geometry(lay, support, plan), blk)]
                partner = (shared.get(tuple(probes)) or shared.get(("paired", blk.by, blk.bx))
                           if name == "columns" else None)
                if partner is not None and ("paired", blk.by, blk.bx) in shared:
                    probes = Cm.paired_probes(lay, plan, lays["rows"], rp.probing["rows"],
                                              support, blk, partner)
                if partner is not None:
                    rows_lay, rows_plan = lays["rows"], rp.probing["rows"]
                    targets.append(Cm.Target(rows_lay, rows_plan,
                                             Cm.geometry(rows_lay, support, rows_plan), partner))
                    done_rows.add(("rows", partner.by, partner.bx))
                    left |= {("rows", t.ty, t.tx) for t in rp.todo["rows"]}
                tiles = {t.lay.name: [x for x in t.block.tiles if (t.lay.name, x.ty, x.tx) in left]
                         for t in targets}
                progress = _Progress([(bars[t.lay.name], Cm.filters(t.lay, tiles[t.lay.name]))
                                      for t in targets])
                for t in targets:
                    t.sketch = Fv.block_sketch(t.lay, t.block)
                stats: dict = {}
                Cm.run_probes(eng, support, probes, targets, k, np_dtype, progress, stats)
                _note_fallback(rp, stats)
                # every target proves itself before any tile is written: one pass of F·v on the
                # boxes its probes ran on (the block's halo crop: exact there by the halo
                # argument, so per-block cost stays the crop's), independent of the decoding
                tally.check(targets[0].engine, [t.sketch for t in targets])
                for t in targets:
                    for tile in tiles[t.lay.name]:
                        writer.put((t.lay, tile, *t.buf.tile(tile, np_dtype)))
            timings[name] = time.perf_counter() - t0
    finally:
        for bar in bars.values():
            bar.close()
    return timings
