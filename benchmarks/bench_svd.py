"""Sequential batched passes and wall time of the SVD solvers to reach a residual, per k.

    python benchmarks/bench_svd.py examples/pixelshuffle.yaml --image examples/images/astronaut-64.png
    python benchmarks/bench_svd.py benchmarks/edsr-baseline-x4.yaml --random-weights --k 1 8
    python benchmarks/bench_svd.py CONFIG.yaml --k 1 8 32 --methods block power --tol 1e-3

Loads the model and image exactly as `precompute run` does (config, crop, dtype, device,
precision), builds the interpreter and runs `precompute.svd`'s solvers on it (the same code as
`analyses.svd`), without a store. For each (method, k) it prints one Markdown table row: the
forward and backward passes until every top-k residual estimate is ≤ tol (block: Ritz residuals;
power: each triplet's), the solver's wall time, and the largest residual measured afterwards
(one more forward and backward call, not counted). ``--max-calls`` caps each solve.
"""

from __future__ import annotations

import argparse
import time

import torch

from precompute import inputs
from precompute import svd as S
from precompute.config import load_config
from precompute.engine import Engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--methods", nargs="+", default=["block", "power"],
                    choices=["block", "power", "dense"])
    ap.add_argument("--tol", type=float, default=1e-3, help="relative residual to reach")
    ap.add_argument("--block", default="auto", help="vectors per block (auto: 2k in 32…64)")
    ap.add_argument("--max-calls", type=int, default=None,
                    help="pass budget per solve (default: the analysis' defaults)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="override the config's device")
    ap.add_argument("--image", default=None, help="override the config's image")
    ap.add_argument("--crop", type=int, nargs=4, default=None, metavar=("TOP", "LEFT", "H", "W"))
    ap.add_argument("--random-weights", action="store_true",
                    help="seeded untrained weights instead of the checkpoint")
    args = ap.parse_args()

    res = load_config(args.config)
    cfg = res.as_dict(res.images[0])
    if args.image:
        cfg["image"] = str(args.image)
    if args.crop:
        cfg["crop"] = args.crop
    if args.random_weights:
        cfg["model"]["checkpoint"] = None
    device = inputs.resolve_device(args.device or cfg["device"])
    inputs.set_precision(device, cfg["precision"])
    prep = inputs.prepare(cfg, res.config_path.parent, device, random_weights=args.random_weights)
    from precompute.interpreter import LinearInterpreter

    li = LinearInterpreter(prep.spec.module, prep.x0, rule=cfg["interpreter"], batch=64,
                           exact=cfg["precision"] == "ieee")
    n, N = li.n_inputs, li.n_outputs
    dev = inputs.describe_device(device)
    print(f"{prep.spec.model_id}, x0 {tuple(prep.x0.shape[1:])} → {tuple(li.out_shape)} "
          f"(F {N:,} × {n:,}), {cfg['dtype']}, {dev}, torch threads {torch.get_num_threads()}, "
          f"tol {args.tol:g}")
    print("| method | k | block | converged | forward passes | backward passes | wall s "
          "| max measured residual |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for method in args.methods:
        for k in args.k:
            p = S.make_plan(k, n, N, cfg["dtype"], method, args.block, args.tol, args.max_calls,
                            args.seed)
            li.batch = p.pass_size
            op = S.Operator.from_engine(Engine(li, device, prep.dtype), p.pass_size)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            sol = S.solve(op, p)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall = time.perf_counter() - t0
            calls = dict(op.passes)
            tri = S.finish(op, sol)
            print(f"| {method} | {k} | {p.block if method == 'block' else 1} | "
                  f"{'yes' if sol.converged else 'no'} | {calls['forward']} | {calls['backward']} "
                  f"| {wall:.1f} | {tri.residual.max():.1e} |", flush=True)


if __name__ == "__main__":
    main()
