"""Train the 4-layer PixelShuffle ×3 network on public-domain / CC0 images from scikit-image.

Reproduces ``examples/weights/pixelshuffle_x3.pt`` (a plain state_dict, keys conv1..conv4) and
the example images in ``examples/images/`` in a few CPU minutes:

    pip install -e '.[train]'          # scikit-image, which carries the images offline
    python examples/train_pixelshuffle.py            # writes the weights and images, prints PSNR

Data (see examples/images/ATTRIBUTION.md): training on scikit-image's camera, coffee, rocket,
brick, grass, gravel and text images; astronaut and chelsea are held out for evaluation. Only
images whose scikit-image docstring states public domain or CC0 are used.

Degradation (how a low-resolution input is made, here and in the tests): the image is converted
with PIL to YCbCr (BT.601 full range), its Y plane cropped to a multiple of 3 and scaled to [0, 1],
downscaled ×1/3 with ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)``,
clamped to [0, 1] and quantised to 8 bits (as a PNG would store it). The network maps that Y
plane back to ×3; the reference is bicubic upscaling (``align_corners=False``) of the same input.

Training: fixed seed, one CPU thread, Adam on the MSE of 17×17 → 51×51 patches with random flips
and transposes, cosine learning-rate decay, orthogonal initialisation (as upstream's example).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from precompute.models.pixelshuffle import PixelShuffleSR  # noqa: E402

SCALE = 3
TRAIN = ["camera", "coffee", "rocket", "brick", "grass", "gravel", "text"]
HELD_OUT = ["astronaut", "chelsea"]


def skimage_rgb(name: str) -> Image.Image:
    """A scikit-image sample image as a PIL RGB image (gray images are repeated)."""
    import skimage.data

    arr = getattr(skimage.data, name)()
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def y_plane(image: Image.Image, scale: int = SCALE) -> torch.Tensor:
    """Y of PIL YCbCr in [0, 1] as (1, 1, H, W), cropped to multiples of ``scale``."""
    y = np.asarray(image.convert("YCbCr"))[:, :, 0].astype(np.float32) / 255.0
    h, w = y.shape
    return torch.from_numpy(y[: h - h % scale, : w - w % scale].copy())[None, None]


def degrade(hr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """The documented low-resolution input: antialiased bicubic ↓scale, 8-bit quantised."""
    h, w = hr.shape[-2:]
    lr = F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", antialias=True,
                       align_corners=False)
    return (lr.clamp(0, 1) * 255).round() / 255


def bicubic_up(lr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor, border: int = SCALE) -> float:
    """Luminance PSNR (dB, peak 1) ignoring ``border`` pixels on each side."""
    a = a[..., border:-border, border:-border].double()
    b = b[..., border:-border, border:-border].double()
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


def evaluate(model: torch.nn.Module, hr: torch.Tensor) -> tuple[float, float]:
    """(network PSNR, bicubic PSNR) of ×3 reconstruction of the Y plane ``hr``."""
    lr = degrade(hr)
    with torch.no_grad():
        sr = model(lr).clamp(0, 1)
    return psnr(sr, hr), psnr(bicubic_up(lr), hr)


def init_weights(model: PixelShuffleSR) -> None:
    """Orthogonal init, ReLU gain for conv1..3 and gain 1 for conv4 (as the upstream example)."""
    gain = torch.nn.init.calculate_gain("relu")
    for conv, g in ((model.conv1, gain), (model.conv2, gain), (model.conv3, gain), (model.conv4, 1.0)):
        torch.nn.init.orthogonal_(conv.weight, g)
        torch.nn.init.zeros_(conv.bias)


def write_example_images(out: Path) -> None:
    """Small committed test images (crops of the held-out images; see ATTRIBUTION.md)."""
    out.mkdir(parents=True, exist_ok=True)
    astro = skimage_rgb("astronaut")
    cat = skimage_rgb("chelsea")
    face = astro.crop((168, 60, 312, 204))  # 144×144 around the face (left, top, right, bottom)
    face.save(out / "astronaut-144.png", optimize=True)
    cat.crop((120, 40, 264, 184)).save(out / "chelsea-144.png", optimize=True)
    # The README example input: the face at 32×32 (antialiased bicubic ↓4.5 of the 144 crop).
    face.resize((32, 32), Image.BICUBIC, reducing_gap=None).save(out / "astronaut-32.png", optimize=True)
    # A 64×64 version for the EDSR / bicubic / CycleGAN examples.
    face.resize((64, 64), Image.BICUBIC).save(out / "astronaut-64.png", optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--patch", type=int, default=17, help="low-resolution patch side")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "weights" / "pixelshuffle_x3.pt")
    ap.add_argument("--images", type=Path, default=HERE / "images")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    pairs = []
    for name in TRAIN:
        hr = y_plane(skimage_rgb(name))
        pairs.append((degrade(hr)[0, 0], hr[0, 0]))
    held = {name: y_plane(skimage_rgb(name)) for name in HELD_OUT}

    model = PixelShuffleSR(SCALE)
    init_weights(model)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * s / args.steps))
    )
    p, P = args.patch, args.patch * SCALE
    weights = np.array([lr.numel() for lr, _ in pairs], dtype=np.float64)
    weights /= weights.sum()
    t0 = time.time()
    for step in range(1, args.steps + 1):
        xs, ys = [], []
        for k in rng.choice(len(pairs), size=args.batch, p=weights):
            lr, hr = pairs[k]
            i = int(rng.integers(0, lr.shape[0] - p + 1))
            j = int(rng.integers(0, lr.shape[1] - p + 1))
            x = lr[i:i + p, j:j + p]
            y = hr[SCALE * i:SCALE * i + P, SCALE * j:SCALE * j + P]
            flip, tr = rng.integers(0, 2, size=2)
            if flip:
                x, y = x.flip(-1), y.flip(-1)
            if tr:
                x, y = x.t(), y.t()
            xs.append(x)
            ys.append(y)
        x = torch.stack(xs)[:, None]
        y = torch.stack(ys)[:, None]
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == args.steps:
            model.eval()
            scores = {n: evaluate(model, hr) for n, hr in held.items()}
            model.train()
            line = "  ".join(f"{n} {a:.2f}/{b:.2f}" for n, (a, b) in scores.items())
            print(f"step {step:5d}  loss {loss.item():.5f}  held-out PSNR net/bicubic: {line}  "
                  f"({time.time() - t0:.0f} s)", flush=True)

    model.eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # A plain state_dict (float32, contiguous): loads with torch.load(weights_only=True).
    torch.save({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) in {time.time() - t0:.0f} s")
    write_example_images(args.images)
    for name, hr in held.items():
        net, bic = evaluate(model, hr)
        print(f"held-out {name} (full image, Y): network {net:.2f} dB, bicubic {bic:.2f} dB, "
              f"gain {net - bic:+.2f} dB")
    for png in sorted(args.images.glob("*-144.png")):
        net, bic = evaluate(model, y_plane(Image.open(png)))
        print(f"held-out crop {png.name}: network {net:.2f} dB, bicubic {bic:.2f} dB")


if __name__ == "__main__":
    main()
