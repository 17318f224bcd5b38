"""Columns/s and rows/s of the sweep engine for a `precompute run` config.

    python benchmarks/bench_sweep.py examples/pixelshuffle.yaml [--batch 1 4 16 64] [--passes 4]

Loads the model and image exactly as `precompute run` does (config, crop, dtype, device,
precision), then times batched passes of impulses through the same engine the sweep uses
(`precompute.engine.Engine`): columns are forward passes of [x0, δ_1 … δ_K], rows one backward
pass per K rows. Writing is not included (it runs in separate threads during a real run; see
`--write` for the store throughput of one tile). Prints one Markdown table row per batch size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from precompute import probes as P
from precompute import layout as L
from precompute import store_create as SC
from precompute.tile_store import open_tiles
from precompute.local_tiles import LocalTileStore
from precompute import engine, inputs
from precompute.assemble import tile_arrays
from precompute.config import load_config
from timing import cpu_model


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--passes", type=int, default=3, help="timed passes per batch size (after one warm-up)")
    ap.add_argument("--device", default=None, help="override the config's device")
    ap.add_argument("--write", action="store_true", help="also time writing one full tile of columns")
    ap.add_argument("--random-weights", action="store_true",
                    help="seeded untrained weights instead of the checkpoint (speed only)")
    ap.add_argument("--crop", type=int, nargs=4, default=None, metavar=("TOP", "LEFT", "H", "W"),
                    help="override the config's crop")
    args = ap.parse_args()

    res = load_config(args.config)
    cfg = res.as_dict(res.images[0])
    if args.random_weights:
        cfg["model"]["checkpoint"] = None
    if args.crop:
        cfg["crop"] = args.crop
    device = inputs.resolve_device(args.device or cfg["device"])
    inputs.set_precision(device, cfg["precision"])
    prep = inputs.prepare(cfg, res.config_path.parent, device, random_weights=args.random_weights)
    from precompute.interpreter import LinearInterpreter

    li = LinearInterpreter(prep.spec.module, prep.x0, rule=cfg["interpreter"], batch=max(args.batch))
    eng = engine.Engine(li, device, prep.dtype)
    n_in, n_out = li.n_inputs, li.n_outputs
    dev = inputs.describe_device(device) if device.type == "cuda" else f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"
    print(f"{prep.spec.model_id}, x0 {tuple(prep.x0.shape[1:])} → {tuple(li.out_shape)}, {cfg['dtype']}, {dev}")
    print("| batch K | columns/s | rows/s |")
    print("|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for k in args.batch:
        rates = []
        for kind, n in (("columns", n_in), ("rows", n_out)):
            flats = [list(rng.choice(n, size=min(k, n), replace=False)) for _ in range(args.passes + 1)]
            eng.probe(flats[0], kind)  # warm-up
            t = sum(timed(lambda f=f: eng.probe(f, kind), device) for f in flats[1:])
            rates.append(args.passes * len(flats[0]) / t)
        print(f"| {k} | {rates[0]:.1f} | {rates[1]:.1f} |", flush=True)

    if args.write:
        a = cfg["analyses"]["columns"] or {"window": "full", "tile": "auto"}
        lay = L.make_layout("columns", a["window"], a["tile"], P.Selection(), li.in_shape, li.out_shape,
                            prep.spec.scale, prep.spec.offset, np.dtype(cfg["dtype"]).itemsize)
        tile = lay.tiles()[len(lay.tiles()) // 2]
        block, origin, outside = tile_arrays(eng, lay, tile, max(args.batch), np.dtype(cfg["dtype"]))
        with tempfile.TemporaryDirectory() as d:
            g = SC.create_store(open_tiles(Path(d) / "b.zarr"), attrs={}, dtype=cfg["dtype"],
                               input=prep.x0[0].cpu().numpy(), output=li.output.cpu().numpy(),
                               residual=None, display_input=np.zeros((1, 1, 3), np.uint8),
                               display_output=None, layouts=[lay])
            t0 = time.perf_counter()
            LocalTileStore(Path(d) / "b.zarr").write_tile(g, lay, tile, block, origin, outside)
            dt = time.perf_counter() - t0
            on_disk = sum(f.stat().st_size for f in (Path(d) / "b.zarr" / "columns").rglob("*") if f.is_file())
        print(f"writing one {tile.shape[0]}×{tile.shape[1]} tile of columns: {block.nbytes / 1e6:.1f} MB raw "
              f"in {dt:.2f} s ({block.nbytes / 1e6 / dt:.0f} MB/s, one thread), "
              f"{block.nbytes / max(on_disk, 1):.1f}× smaller on disk")


if __name__ == "__main__":
    main()
