"""How much a LinearScope costs over the plain network: probes per second for columns (F·δ) and
rows (Fᵀ·δ) against plain forward and forward+backward passes of the same batch size.

    python benchmarks/scope_overhead.py [--device cuda] [--batch 16 64] [--repeat 3]

Models use random weights (speed does not depend on the values). Results go to stdout as a
Markdown table; copy them into docs/benchmarks.md with the machine's name.
"""

from __future__ import annotations

import argparse

import torch

from precompute import LinearInterpreter
from precompute.models import load_model
from timing import cpu_model, seconds

CASES = [  # (label, arch, scale, input side)
    ("PixelShuffle ×3, 32×32", "pixelshuffle", 3, 32),
    ("EDSR-baseline ×2, 32×32", "edsr-baseline", 2, 32),
    ("EDSR ×4, 32×32", "edsr", 4, 32),
    ("CycleGAN, 64×64", "cyclegan", None, 64),
]


def _rate(fn, k, repeat, device):
    return k / seconds(fn, repeat, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cases", nargs="*", help="labels' arch ids to run (default: all)")
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| model | K | columns/s | plain fwd probes/s | rows/s | plain fwd+bwd probes/s |")
    print("|---|---|---|---|---|---|")
    for label, arch, scale, side in CASES:
        if args.cases and arch not in args.cases:
            continue
        spec = load_model(arch, scale=scale, random_weights=True)
        model = spec.module.to(device)
        lo, hi = spec.value_range
        x0 = torch.rand(1, spec.in_channels, side, side, device=device) * (hi - lo) + lo
        for k in args.batch:
            li = LinearInterpreter(model, x0, batch=k)
            N = li.n_outputs
            cols = _rate(lambda: li.columns(range(k)), k, args.repeat, device)
            rows = _rate(lambda: li.rows(range(0, N, max(1, N // k))[:k]), k, args.repeat, device)
            xb = torch.rand((k,) + li.in_shape, device=device, requires_grad=True)

            def fwd():
                with torch.no_grad():
                    model(xb)

            def fwd_bwd():
                torch.autograd.grad(model(xb).sum(), xb)

            plain_f = _rate(fwd, k, args.repeat, device)
            plain_fb = _rate(fwd_bwd, k, args.repeat, device)
            print(f"| {label} | {k} | {cols:.1f} | {plain_f:.1f} | {rows:.1f} | {plain_fb:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
