"""The top-k SVD three ways, side by side: network block Krylov, the paper's Algorithm 1, and the
F the store holds (issue 17).

    python benchmarks/bench_svd.py                       # quick: PixelShuffle 32², bicubic ×3 32²
    python benchmarks/bench_svd.py --cases ps32 ps64 ps144 bicubic32
    python benchmarks/bench_svd.py --cases ps144 --solvers store   # the stored F only

Cases (the shipped examples, `examples/pixelshuffle.yaml` and `examples/bicubic-x3.yaml`, with
their windows and tolerances, float32 on the CPU unless --device): ``ps32``, ``ps64``, ``ps144``
(PixelShuffle ×3 on astronaut-32/64/144.png) and ``bicubic32``. Each case first sweeps the columns
into a temporary store (timed: "sweep"), then runs, for the same k:

- ``network``: block Krylov on batched network passes (``operator: network, method: block``);
- ``power``: the paper's Algorithm 1 on network passes, one vector per pass; it is run for the
  first ``--power-triplets`` triplets only (default 2), each **capped** at ``--power-cap`` steps
  (default 150), and its passes and seconds are **extrapolated** linearly to k (marked so in the
  table, with "not converged" where the cap stopped it);
- ``store``: what ``method: auto`` does on the stored F (exact SVD via the Gram matrix, or block
  Krylov on sparse products); "assembly" is reading the store into a sparse matrix.

Every row's max residual is measured afterwards with one forward and one backward network pass
(not counted in the network rows; the store row reports it as "residual passes", since
``precompute run`` always measures it). Seconds depend on the machine and its load: compare
rows of one run, and CPU seconds (user + sys of this process, all threads) across runs.
``--network-cap P`` stops network block Krylov after P passes (marked "capped": for the
largest case, whose full run takes many minutes on a busy 2-core machine).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from precompute import inputs
from precompute import stored_operator as SO
from precompute import svd as S
from precompute.engine import Engine

REPO = Path(__file__).resolve().parents[1]
CASES = {
    "ps32": ("pixelshuffle.yaml", "astronaut-32.png"),
    "ps64": ("pixelshuffle.yaml", "astronaut-64.png"),
    "ps144": ("pixelshuffle.yaml", "astronaut-144.png"),
    "bicubic32": ("bicubic-x3.yaml", "astronaut-32.png"),
}


def case_config(case: str, out: Path, device: str | None) -> tuple[Path, dict]:
    example, image = CASES[case]
    cfg = yaml.safe_load((REPO / "examples" / example).read_text())
    if cfg["model"].get("checkpoint"):
        cfg["model"]["checkpoint"] = str(REPO / "examples" / cfg["model"]["checkpoint"])
    cfg["image"] = str(REPO / "examples" / "images" / image)
    svd = cfg["analyses"].pop("svd")
    cfg["analyses"]["rows"] = False  # the stored F needs the columns only
    cfg.update(name=case, output=str(out))
    if device:
        cfg["device"] = device
    path = out / f"{case}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, svd


def sweep(path: Path) -> float:
    from precompute.run import Options, run

    t0 = time.perf_counter()
    run(str(path), Options(quiet=True))
    return time.perf_counter() - t0


def row(case, F, solver, passes, products, seconds, cpu, residual, note=""):
    print(f"| {case} | {F} | {solver} | {passes} | {products} | {seconds} | {cpu} | "
          f"{residual:.1e} | {note} |", flush=True)


class Clock:
    """Wall and CPU seconds (this process, every thread) of a block."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["ps32", "bicubic32"], choices=list(CASES))
    ap.add_argument("--solvers", nargs="+", default=["network", "power", "store"],
                    choices=["network", "power", "store"])
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--power-triplets", type=int, default=2,
                    help="triplets Algorithm 1 computes before extrapolating to k")
    ap.add_argument("--power-cap", type=int, default=150,
                    help="Algorithm 1: at most this many steps (1 forward + 1 backward pass) "
                         "per triplet")
    ap.add_argument("--device", default=None, help="override the examples' device")
    ap.add_argument("--network-cap", type=int, default=None,
                    help="network block Krylov: at most this many passes (marked capped)")
    args = ap.parse_args()
    from precompute.config import load_config
    from precompute.interpreter import LinearInterpreter

    print(f"torch threads {torch.get_num_threads()}, k = {args.k}")
    print("| case | F (N × n) | solver | network passes (fwd + bwd) | sparse products | seconds "
          "| CPU s | max residual | notes |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for case in args.cases:
        with tempfile.TemporaryDirectory() as tmp:
            path, svd = case_config(case, Path(tmp), args.device)
            tol = svd.get("tol")
            res = load_config(str(path))
            cfg = res.as_dict(res.images[0])
            device = inputs.resolve_device(cfg["device"])
            inputs.set_precision(device, cfg["precision"])
            t_sweep = sweep(path) if "store" in args.solvers else 0.0
            prep = inputs.prepare(cfg, path.parent, device)
            li = LinearInterpreter(prep.spec.module, prep.x0, rule=cfg["interpreter"], batch=64,
                                   exact=cfg["precision"] == "ieee")
            n, N = li.n_inputs, li.n_outputs
            F = f"{N:,} × {n:,}"

            def network(p):
                li.batch = p.pass_size
                return S.Operator.from_engine(Engine(li, device, prep.dtype), p.pass_size)

            if "network" in args.solvers:
                p = S.make_plan(args.k, n, N, cfg["dtype"], "block", "auto", tol,
                                args.network_cap)
                op = network(p)
                with Clock() as c:
                    sol = S.solve(op, p)
                passes = dict(op.passes)
                tri = S.finish(op, sol)
                capped = args.network_cap is not None and not sol.converged
                row(case, F, f"network block Krylov (blocks of {p.block})",
                    f"{passes['forward']} + {passes['backward']}", "–", f"{c.wall:.1f}",
                    f"{c.cpu:.1f}", tri.residual.max(),
                    (f"capped at {args.network_cap} passes: not converged" if capped else
                     "" if sol.converged else "not converged"))
            if "power" in args.solvers:
                kp = min(args.k, args.power_triplets)
                p = S.make_plan(kp, n, N, cfg["dtype"], "power", "auto", tol,
                                2 * args.power_cap * kp)
                op = network(p)
                with Clock() as c:
                    sol = S.solve(op, p)
                passes = dict(op.passes)
                tri = S.finish(op, sol)
                f = args.k / kp
                row(case, F, "Algorithm 1 (power, 1 vector per pass)",
                    f"≈ {passes['forward'] * f:,.0f} + {passes['backward'] * f:,.0f}", "–",
                    f"≈ {c.wall * f:.0f}", f"≈ {c.cpu * f:.0f}", tri.residual.max(),
                    f"extrapolated ×{f:g} from {kp} triplets ({passes['forward']} + "
                    f"{passes['backward']} passes, {c.wall:.1f} s)"
                    + ("" if sol.converged else f", capped at {args.power_cap} steps per "
                       "triplet: not converged"))
            if "store" in args.solvers:
                store_row(args, case, F, Path(tmp), prep, device, cfg, tol, n, N, network,
                          t_sweep)


def store_row(args, case, F, tmp, prep, device, cfg, tol, n, N, network, t_sweep):
    """What `precompute run` does after the sweep: assemble the stored F, solve (`method:
    auto`), measure the residuals with one forward and one backward network pass."""
    import zarr

    from precompute import store as St

    store = tmp / f"{case}.zarr"
    st = St.open_store(store)
    with Clock() as asm:
        sf, why = SO.load_if_whole(store, zarr.open_group(str(store), mode="r"),
                                   list(st.layouts.values()), prep.dtype, device)
    if sf is None:
        print(f"| {case} | {F} | store | – | – | – | – | – | {why} |")
        return
    p = S.make_plan(args.k, n, N, cfg["dtype"], "auto", "auto", tol, operator="store")
    op = S.Operator(sf.F, sf.Ft, n, N, sf.dtype, sf.device, p.pass_size)
    with Clock() as c:
        sol = S.solve_stored(sf, op, p)
    net = network(p)
    with Clock() as fin:
        tri = S.finish(net, sol)
    how = {"dense": "exact SVD via the Gram matrix",
           "block": f"block Lanczos on the Gram matrix, blocks of {p.block}"}.get(p.method,
                                                                                 p.method)
    row(case, F, f"stored F ({how})", f"0 + 0 (+ {net.passes['forward']} + "
        f"{net.passes['backward']} residual)", f"{op.passes['forward']} + {op.passes['backward']}",
        f"{asm.wall + c.wall + fin.wall:.1f}", f"{asm.cpu + c.cpu + fin.cpu:.1f}",
        tri.residual.max(),
        f"after a sweep of {t_sweep:.1f} s: assembly {asm.wall:.1f} s ({asm.cpu:.1f} CPU; "
        f"{sf.nnz:,} entries), solver {c.wall:.1f} s ({c.cpu:.1f} CPU), residual passes "
        f"{fin.wall:.1f} s ({fin.cpu:.1f} CPU)")


if __name__ == "__main__":
    main()
