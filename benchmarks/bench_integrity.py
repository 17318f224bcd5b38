"""How long the integrity checks of a store take, against reading it through zarr.

    python benchmarks/bench_integrity.py STORE.zarr [--repeat 3]
    python benchmarks/bench_integrity.py --make DIR [--tiles 4] [--tile 16] [--window 32]

For every tile of ``columns`` / ``rows`` it times, over the whole store:

* ``exists``  the old "done" test (the shard file exists);
* ``index``   what ``precompute info`` and sitegen-facing ``done_tiles`` do: one small read at the
              end of each shard, its index checksum and bounds (catches empty/truncated shards);
* ``full``    what ``precompute run`` does on resume: read every shard, origin and outside chunk and
              check the crc32c of every (inner) chunk, nothing decompressed;
* ``decode``  reading every tile through zarr (decompress + checksum), for comparison;

and ``verify``: :func:`precompute.integrity.check_store` over every file. Files are read from the
page cache after the first repeat (the best of ``--repeat`` is printed): cold-cache numbers are
bounded by the disk, which every variant but ``exists``/``index`` reads whole.

``--make DIR`` first writes a synthetic store (random float32 filters, which compress ~1:1 like
real mantissas) with ``--tiles``² tiles of ``--tile``² pixels and ``--window``² windows, 3×3
channels, through :func:`precompute.store_create.create_store` and ``write_tile``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import zarr

from precompute import integrity
from precompute import probes as P
from precompute import layout as L
from precompute import store_create as SC
from precompute.tile_store import open_tiles
from precompute.local_tiles import LocalTileStore


def make_store(directory: Path, tiles: int, tile: int, window: int) -> Path:
    n = tiles * tile
    shape = (3, n, n)
    lay = L.make_layout("columns", window, tile, P.Selection(), shape, shape, 1.0, 0.0, 4)
    path = directory / "bench.zarr"
    rng = np.random.default_rng(0)
    x = rng.random(shape, dtype=np.float32)
    SC.create_store(open_tiles(path), attrs={"format_version": SC.FORMAT_VERSION}, dtype="float32", input=x,
                   output=x, residual=x, display_input=np.zeros((n, n, 3), np.uint8),
                   display_output=np.zeros((n, n, 3), np.uint8), layouts=[lay])
    g = zarr.open_group(str(path), mode="r+")
    for t in lay.tiles():
        th, tw = t.shape
        block = rng.standard_normal((th, tw, *lay.chunk[2:]), dtype=np.float32)
        LocalTileStore(path).write_tile(g, lay, t, block, np.zeros((th, tw, 2), np.int32),
                                        np.zeros((th, tw, 3), np.float32))
    return path


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", nargs="?")
    ap.add_argument("--make", type=Path, default=None, help="write a synthetic store in DIR first")
    ap.add_argument("--tiles", type=int, default=4, help="tiles per side (--make)")
    ap.add_argument("--tile", type=int, default=16, help="tile side in pixels (--make)")
    ap.add_argument("--window", type=int, default=32, help="window side (--make)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    path = make_store(args.make, args.tiles, args.tile, args.window) if args.make else Path(args.store)
    g = zarr.open_group(str(path), mode="r")
    arrays = SC.tiled_arrays(g)
    tiles = [(name, t) for name in integrity.ANALYSES if name in arrays
             for t in P.tiles(arrays[name].shape[0], arrays[name].shape[1], arrays[name].shards[0])]
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    local = LocalTileStore(path)

    def exists():
        for name, t in tiles:
            local.has(SC.shard_key(arrays[name], name, t))

    def check(full):
        for name, t in tiles:
            integrity.tile_problem(path, arrays, name, t.ty, t.tx, full=full)

    def decode():
        for name, t in tiles:
            arrays[name][t.y0:t.y1, t.x0:t.x1]

    rows = {"exists": exists, "index": lambda: check(False), "full": lambda: check(True),
            "decode": decode, "verify": lambda: integrity.check_store(path)}
    print(f"store {path}: {size / 1e6:.1f} MB on disk, {len(tiles)} tiles")
    print("| check | seconds | MB/s |\n|---|---:|---:|")
    for name, fn in rows.items():
        s = best(fn, args.repeat)
        print(f"| {name} | {s:.3f} | {size / 1e6 / s:.0f} |")


if __name__ == "__main__":
    main()
