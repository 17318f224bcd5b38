"""What the classifier analyses cost (`analyses.classify`), stage by stage, against plain passes.

    python benchmarks/bench_classify.py [--device cuda] [--cases digits resnet18] [--repeat 3]

For each model: the contributions pass (one forward + one backward of [x0, top_k + 1 probes]
with a scalar leaf per constant site: rows, terms and back-projected biases of the top labels)
against a plain forward + input-gradient of the same batch; the rows of all K labels for the votes
(backward passes of --batch rows, through the engine), in rows per second; and the whole
analysis (`precompute.classify.analyse`). Random weights (speed does not depend on them). Prints a
Markdown table; copy it into docs/benchmarks.md with the machine's name and load.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from precompute.classify import analyse, top_labels
from precompute.contributions import decompose
from precompute.engine import Engine
from precompute.interpreter import LinearInterpreter
from precompute.models import load_model
from timing import cpu_model, seconds, sync

CASES = {  # name: (zoo id, input side)
    "digits": ("digits", 32),
    "resnet18": ("torchvision:resnet18", 64),
    "vgg19": ("torchvision:vgg19", 64),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cases", nargs="*", default=["digits", "resnet18"], choices=list(CASES))
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64, help="rows per backward pass of the votes")
    ap.add_argument("--labels", type=int, default=None, help="vote over the first N labels only")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"device: {device} ({name}), torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    print("| model | input | K | sites | contributions pass s | plain fwd+bwd s | rows/s (votes) "
          "| whole analysis s |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        arch, side = CASES[case]
        spec = load_model(arch, random_weights=True)
        model = spec.module.to(device).eval()
        c = spec.in_channels
        x0 = torch.rand(1, c, side, side, device=device)
        with torch.no_grad():
            scores = model(x0)[0]
        K = scores.numel() if args.labels is None else min(args.labels, scores.numel())
        top = top_labels(scores[:K], args.top_k)
        d = decompose(model, x0, top)
        t_pass = seconds(lambda: decompose(model, x0, top), args.repeat, device)

        def plain():
            x = torch.cat([x0, torch.zeros((len(top) + 1, c, side, side), device=device)])
            x.requires_grad_(True)
            y = model(x)
            torch.autograd.grad(y[1:, 0].sum(), x)

        t_plain = seconds(plain, args.repeat, device)
        eng = Engine(LinearInterpreter(model, x0, batch=args.batch), device, x0.dtype)
        labels = list(range(min(args.batch, K)))
        t_rows = seconds(lambda: eng.probe(labels, "rows"), args.repeat, device)
        t0 = time.perf_counter()
        analyse(model, x0, scores[:K] if args.labels else scores, min(args.top_k, K), "freeze",
                eng, args.batch)
        sync(device)
        t_all = time.perf_counter() - t0
        print(f"| {arch} | {c}×{side}×{side} | {K} | {len(d.terms)} | {t_pass:.3f} | "
              f"{t_plain:.3f} | {len(labels) / t_rows:.1f} | {t_all:.2f} |")


if __name__ == "__main__":
    main()
