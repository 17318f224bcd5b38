"""GPU check: exactness of float32 CUDA interpreters against float64 CPU Jacobians (TF32 off),
then the scope-overhead benchmark. Run on a machine with a GPU:

    python benchmarks/device_check.py && python benchmarks/scope_overhead.py --device cuda

Exits non-zero when a relative error exceeds 1e-5 (float32 rounding is ~1e-7).
"""

from __future__ import annotations

import sys

import torch
import torchvision
from torch.func import jvp, vjp

from precompute import LinearInterpreter
from precompute.models import load_model


def _errors(model, x0_cpu64, k=8):
    dev = torch.device("cuda")
    li = LinearInterpreter(model.to(dev).float(), x0_cpu64.to(dev).float(), batch=k)
    ref_model = model.cpu().double()
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


def main() -> int:
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
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
