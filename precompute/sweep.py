"""The probe sweep of one windowed analysis (``columns`` or ``rows``) over its planned tiles.

For every unit of work left to do — a tile (one impulse per probe) or a block of tiles
(compressed probing, :mod:`precompute.compressed`) — its probes run through the engine in passes
(:mod:`precompute.engine`), the filters are cropped to windows (:mod:`precompute.assemble`, or
decoded from compressed probes) and every finished tile goes to the writer threads
(:mod:`precompute.writer`), which write it whole and atomically. The progress bar counts filters
(columns or rows: pixel × channel), not passes; nothing computed is lost on Ctrl-C (queued tiles
are finished).
"""

from __future__ import annotations

import time

from precompute import compressed as Cm
from precompute import store as S
from precompute.assemble import tile_arrays
from precompute.writer import Writer


class _Progress:
    """Advance a bar by a block's filters in proportion to its passes (whole numbers)."""

    def __init__(self, bar, filters: int):
        self.bar, self.filters, self.shown = bar, filters, 0

    def __call__(self, done: int, total: int) -> None:
        now = self.filters * done // max(total, 1)
        self.bar.update(now - self.shown)
        self.shown = now


def open_writer(rp) -> Writer:
    """One writer for every analysis of a run, so that writing one analysis's last tiles
    overlaps computing the next. Its queue holds up to 8 tiles (≤ 1 GiB) beyond a whole block of
    compressed probing (whose windows are in memory anyway)."""
    import zarr

    group = zarr.open_group(str(rp.path), mode="r+")
    itemsize = rp.np_dtype.itemsize
    depth = 1
    for lay in rp.layouts:
        tile_bytes = lay.tile * lay.tile * lay.bytes_per_pixel(itemsize)
        d = int(max(1, min(8, (1 << 30) // max(tile_bytes, 1))))
        blocks = rp.todo_blocks.get(lay.name) or []
        d += max((len(b.tiles) for b in blocks), default=0)
        depth = max(depth, d)
    return Writer(group, rp.opts.writer_threads, depth)


def sweep_analysis(rp, lay: S.Layout, writer: Writer | None = None) -> float:
    """Compute and write every tile of ``lay`` left in ``rp.todo``; return the seconds spent
    (with ``writer``, the caller closes it: tiles may still be in its queue)."""
    from tqdm import tqdm

    eng = rp.get_engine(max(rp.batches.values(), default=1))
    np_dtype = rp.np_dtype
    k = rp.batches[lay.name]
    plan = rp.probing[lay.name]
    own = writer is None
    if own:
        writer = open_writer(rp)
    bar = tqdm(total=rp.filters_todo[lay.name], desc=lay.name, unit="filter", dynamic_ncols=True,
               disable=rp.opts.quiet, smoothing=0.1)
    t0 = time.perf_counter()
    try:
        if plan.method == "single":
            for tile in rp.todo[lay.name]:
                block, origin, outside = tile_arrays(eng, lay, tile, k, np_dtype, bar.update)
                writer.put((lay, tile, block, origin, outside))
        else:
            support = rp.get_support()
            geo = Cm.geometry(lay, support, plan)
            left = {(t.ty, t.tx) for t in rp.todo[lay.name]}
            for blk in rp.todo_blocks[lay.name]:
                tiles = [t for t in blk.tiles if (t.ty, t.tx) in left]
                progress = _Progress(bar, Cm.filters(lay, tiles))
                buf = Cm.block_arrays(eng, support, lay, blk, plan, geo, k, np_dtype, progress)
                for t in tiles:
                    writer.put((lay, t, *buf.tile(t, np_dtype)))
    finally:
        bar.close()
        if own:
            writer.close()  # finish queued tiles even on Ctrl-C: nothing computed is lost
    return time.perf_counter() - t0
