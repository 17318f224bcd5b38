"""What the Freivalds checks of the sweep cost (issue 15, precompute.freivalds).

    python benchmarks/bench_freivalds.py                       # shipped PixelShuffle ×3, 48²
    python benchmarks/bench_freivalds.py --size 64 --probing single --dtype float32

Runs `precompute run` on ``examples/images/astronaut-144.png`` resized to SIZE×SIZE twice in one
process, alternating: with the checks (the default), and with them switched off (no sketches, no
extra pass). Reports the sweep's seconds (``attrs.timings``, columns + rows) of both, the
seconds of the checks' own passes (``Tally.seconds``) and the overhead. Timings are only
meaningful on a quiet machine; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import yaml
from PIL import Image

from precompute import freivalds as Fv
from timing import cpu_model

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "examples" / "images" / "astronaut-144.png"
SHIPPED = REPO / "examples" / "weights" / "pixelshuffle_x3.pt"


def _once(tmp: Path, name: str, size: int, probing: str, dtype: str, checks: bool):
    from precompute.run import Options, run_image
    from precompute.config import load_config

    cfg = {"name": name, "model": {"arch": "pixelshuffle", "checkpoint": str(SHIPPED)},
           "image": str(tmp / "img.png"), "dtype": dtype, "probing": probing,
           "output": str(tmp / "runs"),
           "analyses": {"residual": True, "columns": {"window": 36}, "rows": {"window": 12}}}
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    spent = [0.0]
    real_check, real_block, real_tile = Fv.Tally.check, Fv.block_sketch, Fv.tile_sketch

    def check(self, engine, sketches):
        if any(s is None for s in sketches):
            return [0.0] * len(sketches)
        t0 = self.seconds
        try:
            return real_check(self, engine, sketches)
        finally:
            spent[0] += self.seconds - t0

    Fv.Tally.check = check
    if not checks:
        Fv.block_sketch = Fv.tile_sketch = lambda *a, **k: None
    try:
        res = load_config(str(tmp / f"{name}.yaml"))
        run_image(res, res.images[0], Options(quiet=True, overwrite=True))
    finally:
        Fv.Tally.check, Fv.block_sketch, Fv.tile_sketch = real_check, real_block, real_tile
    import precompute

    t = precompute.open_store(tmp / "runs" / f"{name}.zarr").attrs["timings"]
    return t["columns"] + t["rows"], spent[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--probing", default="auto", choices=("auto", "single"))
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        Image.open(IMAGE).convert("RGB").resize((a.size, a.size), Image.BICUBIC).save(tmp / "img.png")
        on, off, spent = [], [], []
        for r in range(a.repeat):
            s, c = _once(tmp, f"on{r}", a.size, a.probing, a.dtype, True)
            on.append(s)
            spent.append(c)
            off.append(_once(tmp, f"off{r}", a.size, a.probing, a.dtype, False)[0])
    m_on, m_off, m_c = min(on), min(off), min(spent)
    print(f"{cpu_model()}, {torch.get_num_threads()} threads; pixelshuffle ×3 {a.size}², "
          f"probing {a.probing}, {a.dtype}, columns window 36 + rows window 12")
    print(f"sweep with checks {m_on:.2f} s, without {m_off:.2f} s (best of {a.repeat}); "
          f"the checks' passes {m_c:.2f} s = {100 * m_c / m_on:.1f} % of the sweep; "
          f"difference {100 * (m_on - m_off) / m_off:+.1f} %")


if __name__ == "__main__":
    main()
