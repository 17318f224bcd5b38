"""Cost per pixel and peak memory of `precompute run` as the image grows (issue 20).

    python benchmarks/bench_scale.py [--sizes 64 128 256 512 1024] [--plan 2048] [--batch 16]

Runs the shipped PixelShuffle ×3 (examples/weights/pixelshuffle_x3.pt, the model of
examples/pixelshuffle.yaml) on square crops of one photo (examples/images/chelsea-144.png,
resized bicubically to every size: the network's cost does not depend on the content), every
column and row (windows 36/12, residual, no SVD), float32 on the CPU — one `precompute run` per
size, each in its own process, one after the other. For every size: wall time, time per input
pixel, peak resident memory of the process (ru_maxrss), and the plan paragraph's method line.
``--plan`` sizes are only planned (`--dry-run`): the planning time and the plan's own estimate.
Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "images" / "chelsea-144.png"
WEIGHTS = REPO / "examples" / "weights" / "pixelshuffle_x3.pt"


def _config(work: Path, n: int, batch: str) -> Path:
    from PIL import Image

    img = work / f"photo-{n}.png"
    if not img.exists():
        Image.open(PHOTO).convert("RGB").resize((n, n), Image.BICUBIC).save(img)
    cfg = work / f"scale-{n}.yaml"
    cfg.write_text(
        f"name: scale-{n}\n"
        f"model: {{arch: pixelshuffle, scale: 3, checkpoint: {WEIGHTS}}}\n"
        f"image: {img.name}\ninterpreter: freeze\n"
        "analyses: {residual: true, columns: {window: 36}, rows: {window: 12}}\n"
        f"device: cpu\ndtype: float32\nbatch: {batch}\noutput: {work / 'runs'}/\n")
    return cfg


def _peak_rss(cfg: Path, *extra: str) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stderr) of one `precompute run` process, measured by a
    fresh helper process (getrusage of its only child: earlier sizes do not mask later ones)."""
    code = ("import os, resource, subprocess, sys, time; t=time.perf_counter(); "
            "p=subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "w=time.perf_counter()-t; "
            "r=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
            "sys.stderr.write(p.stderr); print(p.returncode, w, r)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "precompute.cli", "run",
                        *extra, str(cfg)], env=env, capture_output=True, text=True)
    rc, wall, rss = p.stdout.split()
    if int(rc) != 0:
        raise SystemExit(f"precompute run failed for {cfg}:\n{p.stderr[-2000:]}")
    return float(wall), int(rss) * 1024, p.stderr


def _method(err: str) -> str:
    m = re.search(r"columns: [^:]*: ([^.]*probes in [\d,]+ pass(?:es)? of ≤ \d+)", err)
    sup = re.search(r"Structural support \(found with (.*?)\): a row", err)
    est = re.search(r"estimated compute time ([^.(]*)", err)
    return "; ".join(x for x in (m and m.group(1), sup and "support: " + sup.group(1),
                                 est and "estimate " + est.group(1).strip()) if x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--plan", type=int, nargs="*", default=[2048],
                    help="sizes only planned (--dry-run)")
    ap.add_argument("--batch", default="auto")
    ap.add_argument("--work", default=None, help="folder for images and stores (default: temp)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"load average at the start: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} "
          "(1 / 5 / 15 min)", file=sys.stderr, flush=True)
    for n in args.sizes:
        wall, rss, err = _peak_rss(_config(work, n, args.batch))
        rows.append((f"{n}²", f"{wall:.0f} s", f"{1e3 * wall / n / n:.3f} ms",
                     f"{rss / 2**30:.2f} GiB", _method(err)))
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    for n in args.plan:
        wall, rss, err = _peak_rss(_config(work, n, args.batch), "--dry-run")
        rows.append((f"{n}² (plan only)", f"planned in {wall:.0f} s", "—",
                     f"{rss / 2**30:.2f} GiB (planning)", _method(err)))
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    print(f"load average at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"(1 / 5 / 15 min)")
    print("| image | wall time | time per input pixel | peak memory (RSS) | plan |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
