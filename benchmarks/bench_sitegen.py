"""`sitegen build` stage by stage, with the direct shard reader or with zarr's.

    python benchmarks/bench_sitegen.py [STORES...] [--reader direct zarr] [--batch-size 1 4096]

Builds into a fresh temporary folder each time (no encode cache) and prints, per reader, the
wall seconds of each stage: opening the stores, planning (sample tiles encoded for the size
estimate), the filter tiles (of which reading ``columns`` / ``rows`` blocks, the rest being their
encoding), the pages and the whole build, plus the process's CPU seconds (all threads).
``--reader zarr`` reads every block with zarr (``precompute.shards.pixel_level`` says None:
the path sitegen took before the direct reader); ``--batch-size`` sets zarr's
``codec_pipeline.batch_size`` for it. torch-free, like sitegen.

    python benchmarks/bench_sitegen.py --synthetic 256

instead reads all rows of a synthetic PixelShuffle-like ``rows`` array (N×N output pixels, one
channel, 12×12 windows, shards of 16×16 written by precompute's writer) with both readers.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import zarr

import sitegen.build as B
from precompute import shards
from sitegen import reader
from sitegen.options import Options


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(acc: dict, key: str, fn):
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - t
    return wrapper


def run(sources: list[str], direct: bool) -> dict:
    acc: dict = {}
    saved = (B.open_runs, B.plan_and_estimate, B.filters.write, reader.Store.read_block,
             shards.pixel_level)
    B.open_runs = _timed(acc, "open", B.open_runs)
    B.plan_and_estimate = _timed(acc, "plan", B.plan_and_estimate)
    B.filters.write = _timed(acc, "tiles", B.filters.write)
    reader.Store.read_block = _timed(acc, "read", reader.Store.read_block)
    if not direct:
        shards.pixel_level = lambda array: None
    try:
        with tempfile.TemporaryDirectory() as out:
            t, c = time.perf_counter(), _cpu()
            B.build(sources, Path(out) / "site", Options(progress=False), echo=lambda *_: None)
            acc["total"], acc["cpu"] = time.perf_counter() - t, _cpu() - c
    finally:
        (B.open_runs, B.plan_and_estimate, B.filters.write, reader.Store.read_block,
         shards.pixel_level) = saved
    acc["pages"] = acc["total"] - acc["open"] - acc["plan"] - acc["tiles"]
    return acc


def synthetic(n: int) -> None:
    """All rows of an n×n, 1×1×12×12 ``rows`` array, directly and with zarr."""
    import numpy as np

    from precompute import probes as P
    from precompute import layout as L
    from precompute import store_create as SC
    from precompute.tile_store import open_tiles
    from precompute.local_tiles import LocalTileStore

    with tempfile.TemporaryDirectory() as tmp:
        lay = L.make_layout("rows", 12, 16, P.Selection(), (1, n // 3, n // 3), (1, n, n), 3.0,
                            0.0, 4)
        g = SC.create_store(open_tiles(Path(tmp) / "s.zarr"), attrs={}, dtype="float32",
                           input=np.zeros((1, n // 3, n // 3)), output=np.zeros((1, n, n)),
                           residual=None, display_input=np.zeros((2, 2, 3), np.uint8),
                           display_output=None, layouts=[lay])
        rng = np.random.default_rng(0)
        for t in lay.tiles():
            th, tw = t.shape
            LocalTileStore(Path(tmp) / "s.zarr").write_tile(
                g, lay, t, rng.standard_normal((th, tw, 1, 1, 12, 12), np.float32),
                np.zeros((th, tw, 2), np.int32), np.zeros((th, tw, 1), np.float32))
        arr = zarr.open_group(str(Path(tmp) / "s.zarr"), mode="r")["rows"]
        t = time.perf_counter()
        out = np.empty(arr.shape, np.float32)
        for tile in lay.tiles():
            f = Path(tmp) / "s.zarr" / "rows" / arr.metadata.encode_chunk_key(
                (tile.ty, tile.tx, 0, 0, 0, 0))
            b = shards.read_pixels(f, tuple(arr.shards), arr.dtype, 3, (0, tile.shape[0]),
                                   (0, tile.shape[1]))
            out[tile.y0:tile.y1, tile.x0:tile.x1] = b.reshape(*tile.shape, 1, 1, 12, 12)
        direct = time.perf_counter() - t
        t = time.perf_counter()
        ref = np.asarray(arr[...])
        slow = time.perf_counter() - t
        assert np.array_equal(out, ref)
        print(f"rows {n}×{n}×1×1×12×12 ({n * n} inner chunks): direct {direct:.2f} s, "
              f"zarr {slow:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="*", default=["runs"])
    ap.add_argument("--reader", nargs="+", default=["zarr", "direct"], choices=["zarr", "direct"])
    ap.add_argument("--batch-size", type=int, nargs="+", default=[1],
                    help="zarr's codec_pipeline.batch_size for --reader zarr (default 1, zarr's)")
    ap.add_argument("--synthetic", type=int, metavar="N",
                    help="read an N×N synthetic rows array instead of building a site")
    args = ap.parse_args()
    if args.synthetic:
        synthetic(args.synthetic)
        return
    cols = ["open", "plan", "read", "tiles", "pages", "total", "cpu"]
    print("| reader | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name in args.reader:
        for bs in (args.batch_size if name == "zarr" else [None]):
            with zarr.config.set({"codec_pipeline.batch_size": bs or 1}):
                acc = run(args.sources, direct=name == "direct")
            label = name if bs is None else f"zarr, batch_size {bs}"
            print(f"| {label} | " + " | ".join(f"{acc.get(c, 0.0):.1f}" for c in cols) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
