"""GPU check: exactness of float32 CUDA interpreters against float64 CPU Jacobians (TF32 off),
also through compressed probing (columns and rows read out of columns), then the benchmarks. Run
on a machine with a GPU:

    python benchmarks/device_check.py && python benchmarks/scope_overhead.py --device cuda
    python benchmarks/bench_methods.py --device cuda --size 64 128 256

Exits non-zero when a relative error exceeds 1e-5 (float32 rounding is ~1e-7). ``--device cpu``
runs the same checks on the CPU (a smoke test of the script itself).
"""

from __future__ import annotations

import copy
import sys

import torch
import torchvision
from torch.func import jvp, vjp

from precompute import LinearInterpreter
from precompute.models import load_model


def _errors(model, x0_cpu64, k=8):
    dev = torch.device("cuda")
    ref_model = copy.deepcopy(model).cpu().double()  # .cpu() would move the interpreter's model
    li = LinearInterpreter(model.to(dev).float(), x0_cpu64.to(dev).float(), batch=k)
    idx_c = list(range(0, x0_cpu64.numel(), max(1, x0_cpu64.numel() // k)))[:k]
    cols = li.columns(idx_c).double().cpu()
    refs = []
    for i in idx_c:
        e = torch.zeros(x0_cpu64.numel(), dtype=torch.float64)
        e[i] = 1
        refs.append(jvp(ref_model, (x0_cpu64,), (e.view_as(x0_cpu64),))[1][0])
    ref_c = torch.stack(refs)
    y, pull = vjp(ref_model, x0_cpu64)
    idx_r = list(range(0, y.numel(), max(1, y.numel() // k)))[:k]
    rows = li.rows(idx_r).double().cpu()
    ref_r = torch.stack([pull(torch.eye(y.numel(), dtype=torch.float64)[i].view_as(y))[0][0]
                         for i in idx_r])
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()  # noqa: E731
    return rel(cols, ref_c), rel(rows, ref_r), li.check()


def _compressed_errors(spec, x0_cpu64, dev, k=8):
    """Compressed columns and rows (from columns) on ``dev`` in float32 against float64 CPU
    Jacobian columns/rows of sampled pixels, over the stored windows (full support)."""
    import numpy as np

    from precompute import compressed as Cm
    from precompute import probes as P
    from precompute import layout as L
    from precompute.engine import Engine
    from precompute.support import analyse

    ref_model = copy.deepcopy(spec.module).cpu().double()
    model = spec.module.to(dev).float()
    x0 = x0_cpu64.to(dev).float()
    li = LinearInterpreter(model, x0, batch=32)
    eng = Engine(li, dev, torch.float32)
    sup = analyse(model, tuple(li.in_shape), torch.float32, dev)
    assert not sup.is_global, sup.global_reason
    ry, cy = sup.period_in[0], sup.period_out[0]
    y, pull = vjp(ref_model, x0_cpu64)
    worst = 0.0
    for name, win in (("columns", (cy + 2)), ("rows", (ry + 2))):
        lay = L.make_layout(name, win, "auto", P.Selection(), tuple(li.in_shape), tuple(li.out_shape),
                            spec.scale, spec.offset, 4)
        plan, _ = Cm.choose(lay, sup, 4, 1 << 30)
        assert plan.method != "single", plan
        geo = Cm.geometry(lay, sup, plan)
        c, h, w = lay.probe_shape
        for b in P.blocks(lay.tiles(), plan.block):
            buf = Cm.block_arrays(eng, sup, lay, b, plan, geo, 32, np.float32)
            for i in range(b.y0, b.y1, max(1, (b.y1 - b.y0) // 3)):
                j = (b.x0 + b.x1) // 2
                flat = (0 * h + i) * w + j
                e = torch.zeros(x0_cpu64.numel() if name == "columns" else y.numel(), dtype=torch.float64)
                e[flat] = 1
                if name == "columns":
                    full = jvp(ref_model, (x0_cpu64,), (e.view_as(x0_cpu64),))[1][0]
                else:
                    full = pull(e.view_as(y))[0][0]
                oy, ox = lay.origin(i, j)
                full = full.detach()
                ref = full[:, oy:oy + win, ox:ox + win].numpy()
                got = buf.values[i - b.y0, j - b.x0, 0]
                worst = max(worst, float(np.abs(got - ref).max() / max(np.abs(full.numpy()).max(), 1e-30)))
    return worst, plan.method


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    if args.device == "cpu":
        return _compressed_main(torch.device("cpu"))
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    print("device:", torch.cuda.get_device_name(0))
    worst = 0.0
    cases = [("resnet18 64×64", torchvision.models.resnet18(weights=None).eval(),
              torch.rand(1, 3, 64, 64, dtype=torch.float64))]
    for arch, scale, side in [("edsr-baseline", 2, 24), ("pixelshuffle", 3, 24)]:
        spec = load_model(arch, scale=scale, random_weights=True)
        lo, hi = spec.value_range
        cases.append((f"{arch} {side}×{side}", spec.module,
                      torch.rand(1, spec.in_channels, side, side, dtype=torch.float64) * (hi - lo) + lo))
    for label, model, x0 in cases:
        ec, er, checks = _errors(model, x0)
        worst = max(worst, ec, er)
        print(f"{label}: columns rel err {ec:.2e}, rows rel err {er:.2e}, checks {checks}")
    rc = _compressed_main(torch.device("cuda"))
    return 0 if worst < 1e-5 and rc == 0 else 1


def _compressed_main(dev) -> int:
    """Compressed probing on ``dev`` against float64 CPU Jacobians."""
    from precompute.inputs import set_precision

    set_precision(dev, "ieee")
    spec = load_model("pixelshuffle", scale=3, random_weights=True)
    x0 = torch.rand(1, 1, 40, 36, dtype=torch.float64)
    err, method = _compressed_errors(spec, x0, dev)
    print(f"pixelshuffle 40×36 compressed on {dev}: columns and rows ({method}) rel err {err:.2e}")
    return 0 if err < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
