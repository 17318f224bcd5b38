"""The structural support the analysis finds for every model of the zoo (docs/benchmarks.md).

    python benchmarks/support_table.py                 # all models, the sizes below
    python benchmarks/support_table.py --only bicubic pixelshuffle

Runs ``precompute.support.analyse`` (the support interpretation on line probes, float32, CPU)
with random weights: the support depends on the architecture only. EDSR (256 features) and the
CycleGAN generator (64 filters) run with their exact depth and layer geometry but 4 features,
so that the analysis takes seconds on a CPU (features change neither the support nor any
geometry); EDSR-baseline runs as is. Prints one Markdown table row per model.
"""

from __future__ import annotations

import argparse
import time

import torch

from precompute.support import analyse


def models():
    from precompute.models import load_model
    from precompute.models.cyclegan import ResnetGenerator
    from precompute.models.edsr import EDSR

    yield "pixelshuffle ×3 (shipped)", lambda: load_model(
        "pixelshuffle", checkpoint="examples/weights/pixelshuffle_x3.pt").module, (1, 48, 48)
    for s in (2, 3, 4):
        yield f"bicubic ×{s}", lambda s=s: load_model("bicubic", scale=s).module, (3, 32, 32)
    for s in (2, 3, 4):
        yield (f"EDSR-baseline ×{s} (16 blocks, 64 features)",
               lambda s=s: load_model("edsr-baseline", scale=s, random_weights=True).module,
               (3, 96, 96))
    for s in (2, 3, 4):
        yield (f"EDSR ×{s} (32 blocks; 4 of 256 features)",
               lambda s=s: EDSR(s, 32, 4, 0.1).eval(), (3, 160, 160))
    yield ("CycleGAN resnet_9blocks (ngf 4 of 64), freeze",
           lambda: ResnetGenerator(ngf=4).eval(), (3, 256, 256))
    yield ("CycleGAN resnet_9blocks (ngf 4 of 64), taylor",
           lambda: ResnetGenerator(ngf=4).eval(), (3, 256, 256))
    yield ("torchvision resnet18 (classifier)",
           lambda: __import__("torchvision").models.resnet18(weights=None).eval(), (3, 64, 64))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="substrings of model names to run")
    args = ap.parse_args()
    print("| model | input | row support (input px) | column footprint (output px) | line probes | s |")
    print("|---|---|---|---|---:|---:|")
    for name, build, shape in models():
        if args.only and not any(o.lower() in name.lower() for o in args.only):
            continue
        torch.manual_seed(0)
        net = build().float()
        rule = "taylor" if name.endswith("taylor") else "freeze"
        t0 = time.perf_counter()
        sup = analyse(net, shape, torch.float32, torch.device("cpu"), rule=rule, batch=16)
        dt = time.perf_counter() - t0
        if sup.is_global:
            rows, cols = "global", sup.global_reason
        else:
            rows = "{}×{}".format(*sup.period_in)
            cols = "{}×{}".format(*sup.period_out)
        print(f"| {name} | {shape[1]}×{shape[2]} | {rows} | {cols} | {sup.probes} | {dt:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
