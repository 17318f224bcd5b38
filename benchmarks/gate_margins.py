"""How far correct interpreters stay below the run-time gate's tolerance (docs/INTERPRETER.md).

    python benchmarks/gate_margins.py [--device cpu|cuda] [--tf32] [--side 16] [--models edsr …]

For every zoo model with random (seeded) weights, on a random image of ``side`` × ``side`` pixels
in the model's value range, measures the gate's identities (``LinearInterpreter.check``) in
float32 and float64, and prints one Markdown row per (model, dtype): each identity in units of
that dtype's machine epsilon, the worst one, and the margin to ``gate_tolerance``. Accuracy, not
speed: the numbers do not depend on the machine's load (they may on the device and its kernels).
"""

from __future__ import annotations

import argparse
import warnings

import torch

from precompute.interpreter import IDENTITIES, LinearInterpreter, gate_tolerance
from precompute.models import load_model
from precompute.models.classifiers import CLASSIFIERS

SR = {"edsr": 2, "edsr-baseline": 2, "pixelshuffle": 3, "bicubic": 2, "cyclegan": None}


def _model(arch: str):
    if arch in SR:
        return load_model(arch, scale=SR[arch], random_weights=True)
    return load_model(f"torchvision:{arch}", random_weights=True)


def measure(arch: str, side: int, dtype: torch.dtype, device: torch.device, seed: int = 0,
            tf32: bool = False):
    spec = _model(arch)
    lo, hi = spec.value_range
    side = max(side, {"inception_v3": 75, "alexnet": 63}.get(arch, side))
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(1, spec.in_channels, side, side, generator=g, dtype=torch.float64)
    x0 = (x0 * (hi - lo) + lo).to(device, dtype)
    model = spec.module.to(device, dtype).eval()
    with torch.no_grad():
        reference = model(x0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        li = LinearInterpreter(model, x0, batch=8, exact=not tf32)
        return li.check(seed=seed, reference=reference)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--side", type=int, default=16)
    ap.add_argument("--models", nargs="*", default=list(SR) + sorted(CLASSIFIERS))
    ap.add_argument("--dtypes", nargs="*", default=["float32", "float64"])
    ap.add_argument("--tf32", action="store_true", help="CUDA: float32 convolutions in TF32")
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        mode = "tf32" if a.tf32 else "ieee"
        torch.backends.cudnn.conv.fp32_precision = mode
        torch.backends.cuda.matmul.fp32_precision = mode
    keys = list(IDENTITIES)
    print("| model | dtype | " + " | ".join(k.removesuffix("_rel") for k in keys)
          + " | worst / eps | tolerance / worst |")
    print("|---|---|" + "---|" * (len(keys) + 2))
    for arch in a.models:
        for name in a.dtypes:
            dtype = getattr(torch, name)
            eps = torch.finfo(dtype).eps
            checks = measure(arch, a.side, dtype, device, tf32=a.tf32)
            worst = max(checks[k] for k in keys)
            cells = " | ".join(f"{checks[k] / eps:.3g}" for k in keys)
            tol = gate_tolerance(dtype, a.tf32 and device.type == "cuda")
            margin = tol / worst if worst else float("inf")
            print(f"| {arch} | {name} | {cells} | {worst / eps:.3g} | {margin:.3g} |", flush=True)


if __name__ == "__main__":
    main()
