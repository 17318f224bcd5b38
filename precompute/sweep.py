"""The probe sweep of one windowed analysis (``columns`` or ``rows``) over its planned tiles.

For every tile left to do: its probes run through the engine in passes (:mod:`precompute.engine`),
the full filters are cropped to windows (:mod:`precompute.assemble`), and the finished tile goes
to the writer threads (:mod:`precompute.writer`), which write it whole and atomically. The
progress bar counts probes; nothing computed is lost on Ctrl-C (queued tiles are finished).
"""

from __future__ import annotations

import time

from precompute import store as S
from precompute.assemble import tile_arrays
from precompute.writer import Writer


def sweep_analysis(rp, lay: S.Layout) -> float:
    """Compute and write every tile of ``lay`` left in ``rp.todo``; return the seconds spent."""
    import zarr
    from tqdm import tqdm

    group = zarr.open_group(str(rp.path), mode="r+")
    eng = rp.get_engine(max(rp.batches.values(), default=1))
    np_dtype = rp.np_dtype
    tile_bytes = lay.tile * lay.tile * lay.bytes_per_pixel(np_dtype.itemsize)
    depth = int(max(1, min(8, (1 << 30) // max(tile_bytes, 1))))
    writer = Writer(group, rp.opts.writer_threads, depth)
    bar = tqdm(total=rp.probes_todo[lay.name], desc=lay.name, unit="probe", dynamic_ncols=True,
               disable=rp.opts.quiet, smoothing=0.1)
    t0 = time.perf_counter()
    try:
        for tile in rp.todo[lay.name]:
            block, origin, outside = tile_arrays(eng, lay, tile, rp.batches[lay.name], np_dtype,
                                                 bar.update)
            writer.put((lay, tile, block, origin, outside))
    finally:
        bar.close()
        writer.close()  # finish queued tiles even on Ctrl-C: nothing computed is lost
    return time.perf_counter() - t0
