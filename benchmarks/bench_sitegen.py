"""`sitegen build` stage by stage, with the direct shard reader or with zarr's.

    python benchmarks/bench_sitegen.py [STORES...] [--reader direct zarr] [--batch-size 1 4096]

Builds into a fresh temporary folder each time (no encode cache) and prints, per reader, the
wall seconds of each stage: opening the stores, planning (sample tiles encoded for the size
estimate), the filter tiles (of which reading ``columns`` / ``rows`` blocks, the rest being their
encoding), the pages and the whole build, plus the process's CPU seconds (all threads).
``--reader zarr`` reads every block with zarr (``precompute.shards.pixel_level`` says None:
the path sitegen took before the direct reader); ``--batch-size`` sets zarr's
``codec_pipeline.batch_size`` for it. torch-free, like sitegen.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="*", default=["runs"])
    ap.add_argument("--reader", nargs="+", default=["zarr", "direct"], choices=["zarr", "direct"])
    ap.add_argument("--batch-size", type=int, nargs="+", default=[1],
                    help="zarr's codec_pipeline.batch_size for --reader zarr (default 1, zarr's)")
    args = ap.parse_args()
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
