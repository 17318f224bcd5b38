"""Train a small CycleGAN generator (instance norm) for photo → toon painting on scikit-image photos.

Reproduces ``examples/weights/toon.pt``, a plain state_dict with upstream CycleGAN key names
(``model.1.weight`` …, ``ResnetGenerator`` at ngf 16 with 4 residual blocks), in a few CPU minutes:

    pip install -e '.[train]'          # scikit-image, which carries the photos offline
    python examples/train_toon.py      # writes the weights, prints held-out PSNR vs baselines

The task (paired image-to-image translation, like the paper's photo → Ukiyo-e and photo → label
generators, Figure 7): a 32×32 RGB photo becomes a "toon" painting (:func:`paint`) in a palette
of its own — colours and contrast set by the crop's statistics (:func:`auto_levels`), flat colour
regions (strong total-variation smoothing) and dark ink outlines drawn along the regions' edges.
The network must *move* content (a region's colour comes from the whole region, and a face's
features are erased) and *create* content (outlines where the photo has none, colours that the
photo does not have), which is what the paper's I2I figures show. The target is computed on each
32×32 crop itself, so the task is a fixed function of the crop.

Data (see examples/images/ATTRIBUTION.md): random 32×32 crops of scikit-image's coffee, rocket,
immunohistochemistry and camera photos, downscaled ×2 … ×8 (PIL bicubic) so that objects are a few
dozen pixels wide, with random flips and transposes; astronaut and chelsea are held out. Quality is
measured on every non-overlapping 32×32 tile of the held-out photos downscaled ×4 and ×8, against
two baselines: the identity (the photo itself) and the per-channel affine colour map fitted by
least squares on the training crops.

Training: fixed seed, one CPU thread, deterministic algorithms, a fixed set of 1,024 crops, Adam
(10⁻³, cosine decay) on the L1 loss (as pix2pix), batch 8, 1,500 steps, PyTorch's default
initialisation. (CycleGAN's N(0, 0.02) initialisation with Adam β1 = 0.5 trained no better.)
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

from precompute.models.cyclegan import ResnetGenerator  # noqa: E402

NGF, N_BLOCKS = 16, 4
SIDE = 32  # crop side: the example's image size, and the instance norms' statistics extent
TRAIN = ["coffee", "rocket", "immunohistochemistry", "camera"]
HELD_OUT = ["astronaut", "chelsea"]
TRAIN_SCALES = (2, 3, 4, 6, 8)
EVAL_SCALES = (4, 8)


def skimage_rgb(name: str) -> Image.Image:
    """A scikit-image sample image as a PIL RGB image (gray images are repeated)."""
    import skimage.data

    arr = getattr(skimage.data, name)()
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def downscale(image: Image.Image, factor: int) -> np.ndarray:
    """PIL bicubic ↓factor (as ``astronaut-32.png`` was made), as uint8 (H, W, 3)."""
    w, h = image.size
    return np.asarray(image.resize((w // factor, h // factor), Image.BICUBIC, reducing_gap=None))


def auto_levels(rgb: np.ndarray) -> np.ndarray:
    """Each channel's mean moved to ½ and the contrast (one σ for all channels) set to 0.25.

    A CycleGAN generator cannot see what this removes: its first instance norm cancels a constant
    added to each input channel and a positive factor common to all channels (they only shift and
    scale the first convolution's output channels), so its output is the same for x and a·x + c.
    A target that is learnable from a crop has to be invariant in the same way.
    """
    d = rgb - rgb.mean(axis=(0, 1), keepdims=True)
    return np.clip(0.5 + 0.25 * d / (np.sqrt((d * d).mean()) + 1e-3), 0, 1)


def paint(rgb: np.ndarray) -> np.ndarray:
    """The toon target of an RGB image in [0, 1] (H, W, 3), float64 in [0, 1].

    :func:`auto_levels`, then total-variation smoothing (Chambolle, weight 0.2, 50 iterations)
    flattens regions, and where the flattened image's Sobel gradient exceeds 0.08 an ink line
    darkens it (up to 90 %).
    """
    from skimage.filters import sobel
    from skimage.restoration import denoise_tv_chambolle

    flat = denoise_tv_chambolle(auto_levels(rgb), weight=0.2, channel_axis=-1, max_num_iter=50)
    ink = np.clip((sobel(flat.mean(-1)) - 0.08) * 6, 0, 1)
    return flat * (1 - 0.9 * ink[..., None])


def to_model(rgb: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) in [0, 1] → (N, 3, H, W) float32 in [−1, 1], CycleGAN's input range."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2) * 2 - 1)).float()


def training_crops(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n random (photo, toon) crops in [0, 1], each (SIDE, SIDE, 3); the photo is 8-bit."""
    images = [downscale(skimage_rgb(name), s) for name in TRAIN for s in TRAIN_SCALES]
    area = np.array([(a.shape[0] - SIDE + 1) * (a.shape[1] - SIDE + 1) for a in images], np.float64)
    xs = np.empty((n, SIDE, SIDE, 3)), np.empty((n, SIDE, SIDE, 3))
    for k, idx in enumerate(rng.choice(len(images), size=n, p=area / area.sum())):
        a = images[idx]
        i = int(rng.integers(0, a.shape[0] - SIDE + 1))
        j = int(rng.integers(0, a.shape[1] - SIDE + 1))
        x = a[i:i + SIDE, j:j + SIDE] / 255.0
        flip, tr = rng.integers(0, 2, size=2)
        if flip:
            x = x[:, ::-1]
        if tr:
            x = x.transpose(1, 0, 2)
        xs[0][k] = x
        xs[1][k] = paint(np.ascontiguousarray(x))
    return xs


def held_out_tiles() -> tuple[np.ndarray, np.ndarray]:
    """Every non-overlapping SIDE×SIDE tile of the held-out photos at ↓4 and ↓8, with targets."""
    tiles = []
    for name in HELD_OUT:
        for s in EVAL_SCALES:
            a = downscale(skimage_rgb(name), s) / 255.0
            for i in range(0, a.shape[0] - SIDE + 1, SIDE):
                for j in range(0, a.shape[1] - SIDE + 1, SIDE):
                    tiles.append(a[i:i + SIDE, j:j + SIDE])
    x = np.stack(tiles)
    return x, np.stack([paint(t) for t in x])


def fit_affine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The per-channel affine colour map y_c ≈ a_c·x_c + b_c (least squares), as (3, 2)."""
    return np.array([np.polyfit(x[..., c].ravel(), y[..., c].ravel(), 1) for c in range(3)])


def apply_affine(ab: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.clip(x * ab[:, 0] + ab[:, 1], 0, 1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """RGB PSNR in dB, peak 1, over all pixels of all tiles."""
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - b) ** 2)))


def translate(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """The network's toon of photos (N, H, W, 3) in [0, 1], one crop at a time (instance norm)."""
    with torch.no_grad():
        y = torch.cat([model(to_model(x[k:k + 1])) for k in range(len(x))])
    return ((y.double().permute(0, 2, 3, 1).numpy() + 1) / 2).clip(0, 1)


def scores(model: torch.nn.Module, affine: np.ndarray) -> dict[str, float]:
    """Held-out PSNR of the network and of the two baselines."""
    x, y = held_out_tiles()
    return {"network": psnr(translate(model, x), y), "identity": psnr(x, y),
            "affine": psnr(apply_affine(affine, x), y), "tiles": len(x)}


def write_example_image(out: Path) -> None:
    """``images/astronaut-16.png``, the input of ``toon.yaml``: the held-out astronaut's face crop
    (as ``astronaut-32.png``, see ATTRIBUTION.md) at 16×16, small enough that every row and
    column of the square F (768 × 768) and its SVD take seconds."""
    out.mkdir(parents=True, exist_ok=True)
    face = skimage_rgb("astronaut").crop((168, 60, 312, 204))
    face.resize((16, 16), Image.BICUBIC, reducing_gap=None).save(out / "astronaut-16.png", optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crops", type=int, default=1024, help="size of the fixed training set")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "weights" / "toon.pt")
    ap.add_argument("--images", type=Path, default=HERE / "images")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)

    t0 = time.time()
    photos, toons = training_crops(args.crops, rng)
    affine = fit_affine(photos, toons)
    x_all, y_all = to_model(photos), to_model(toons)
    print(f"{args.crops} training crops in {time.time() - t0:.0f} s", flush=True)

    model = ResnetGenerator(ngf=NGF, n_blocks=N_BLOCKS)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * s / args.steps))
    )
    for step in range(1, args.steps + 1):
        idx = torch.from_numpy(rng.choice(args.crops, size=args.batch, replace=False))
        loss = F.l1_loss(model(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == args.steps:
            model.eval()
            s = scores(model, affine)
            model.train()
            print(f"step {step:5d}  loss {loss.item():.4f}  held-out PSNR network {s['network']:.2f} "
                  f"({time.time() - t0:.0f} s)", flush=True)

    model.eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # A plain state_dict (float32, contiguous): loads with torch.load(weights_only=True).
    torch.save({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) in {time.time() - t0:.0f} s")
    write_example_image(args.images)
    s = scores(model, affine)
    print(f"held-out tiles: {s['tiles']} ({SIDE}×{SIDE}, {', '.join(HELD_OUT)} at "
          f"↓{' and ↓'.join(map(str, EVAL_SCALES))})")
    print(f"held-out PSNR: network {s['network']:.2f} dB, identity {s['identity']:.2f} dB, "
          f"affine colour map {s['affine']:.2f} dB")


if __name__ == "__main__":
    main()
