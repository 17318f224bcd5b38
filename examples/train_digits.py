"""Train LinearScope's digits classifiers on scikit-learn's bundled handwritten digits.

Reproduces ``examples/weights/digits.pt`` (a plain state_dict of
:class:`precompute.models.digits.DigitsNet`) and the held-out test digits in
``examples/images/digits/`` in about a CPU minute, bit for bit:

    pip install -e '.[train]'          # scikit-learn, which carries the digits offline
    python examples/train_digits.py    # writes the weights and images, prints the test accuracy

``--arch`` trains a model of the architecture zoo instead (:mod:`precompute.models.digits_zoo`:
digits-vgg, digits-vgg-bn, digits-resnet, digits-densenet) into ``examples/weights/<arch>.pt``,
with the same data, split, seed and schedule (each about a CPU minute; epochs per model in
``EPOCHS``); the held-out images it writes are the same files for every architecture.

Data: ``sklearn.datasets.load_digits`` (1,797 8×8 images, values 0…16, UCI "Optical Recognition
of Handwritten Digits"), scaled to [0, 1], upsampled ×4 to 32×32 (bilinear, half-pixel centres)
and quantised to 8 bits, as the PNGs store them. Split: 75 % training / 25 % test, stratified,
``train_test_split(random_state=0)``. Training: seed 0, one CPU thread, deterministic algorithms,
Adam 2·10⁻³ with cosine decay, batch 64, 40 epochs, random shifts of up to 2 pixels.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from precompute.models import digits_zoo  # noqa: E402
from precompute.models.digits import SIZE, DigitsNet  # noqa: E402

SEED = 0
#: Training epochs per architecture: as many as fit about a CPU minute (one thread).
EPOCHS = {"digits": 40, "digits-vgg": 40, "digits-vgg-bn": 30, "digits-resnet": 30,
          "digits-densenet": 20}
ARCHS = list(EPOCHS)
BATCH = 64
LR = 2e-3
SHIFT = 2


def digit_images() -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """(x, y, train indices, test indices): every digit as (N, 1, 32, 32) in [0, 1], 8-bit."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round() / 255
    y = torch.from_numpy(d.target.astype(np.int64))
    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=0.25, random_state=0, stratify=d.target)
    return x, y, np.sort(train), np.sort(test)


def shifted(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image moved by up to SHIFT pixels (zero fill): a digit is still that digit."""
    n, _, h, w = x.shape
    dy = torch.randint(-SHIFT, SHIFT + 1, (n,), generator=gen)
    dx = torch.randint(-SHIFT, SHIFT + 1, (n,), generator=gen)
    padded = F.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT))
    out = torch.empty_like(x)
    for a in range(-SHIFT, SHIFT + 1):  # out[y, x] = image[y − a, x − b]
        for b in range(-SHIFT, SHIFT + 1):
            m = (dy == a) & (dx == b)
            out[m] = padded[m][:, :, SHIFT - a:SHIFT - a + h, SHIFT - b:SHIFT - b + w]
    return out


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """(correct, total) of the model in eval mode."""
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[s:s + 256]).argmax(1) for s in range(0, len(x), 256)])
    return int((pred == y).sum()), len(y)


def build(arch: str) -> torch.nn.Module:
    """A fresh module of ``arch`` (initialised from the global seed)."""
    return DigitsNet() if arch == "digits" else digits_zoo.build(arch)


def train(x: torch.Tensor, y: torch.Tensor, log=print, arch: str = "digits") -> torch.nn.Module:
    torch.manual_seed(SEED)
    model = build(arch)
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    epochs = EPOCHS[arch]
    steps = epochs * -(-len(x) // BATCH)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for s in range(0, len(x), BATCH):
            b = order[s:s + BATCH]
            loss = F.cross_entropy(model(shifted(x[b], gen)), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
        if (epoch + 1) % 10 == 0:
            log(f"epoch {epoch + 1}: training loss {total / len(x):.4f}")
    return model.eval()


def held_out_examples(x, y, test) -> list[tuple[int, int]]:
    """(dataset index, label): the first test digit of each class, in label order."""
    picks = {}
    for i in test:
        picks.setdefault(int(y[i]), int(i))
    return [(picks[k], k) for k in sorted(picks)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=ARCHS, default="digits",
                    help="architecture to train (default: the shipped digits CNN)")
    ap.add_argument("--weights", type=Path, default=None,
                    help="output state_dict (default: examples/weights/<arch>.pt)")
    ap.add_argument("--images", type=Path, default=HERE / "images" / "digits")
    args = ap.parse_args(argv)
    if args.weights is None:
        args.weights = HERE / "weights" / f"{args.arch}.pt"
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    x, y, train_idx, test_idx = digit_images()
    model = train(x[train_idx], y[train_idx], arch=args.arch)
    correct, total = accuracy(model, x[test_idx], y[test_idx])
    args.weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.weights)
    args.images.mkdir(parents=True, exist_ok=True)
    for i, k in held_out_examples(x, y, test_idx):
        pixels = (x[i, 0] * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels, "L").save(args.images / f"{k}-{i:04d}.png")
    print(f"{args.arch} test accuracy: {correct}/{total} = {100 * correct / total:.2f} % "
          f"({len(train_idx)} training images; {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
