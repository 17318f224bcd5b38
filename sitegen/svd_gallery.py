"""The SVD gallery: every eigen-input / eigen-output pair of a run as a thumbnail, in the paper's
layout (Figures 5, 6, 12, 14, 15: a row of eigen-inputs over a row of eigen-outputs, i from low
to high, σ_i under each).

    data/<run>/svd-thumbs/v<i>.png    eigen-input v_i (input domain)
    data/<run>/svd-thumbs/u<i>.png    eigen-output u_i (output domain; image models only)

A thumbnail is a display image written at build time (a plain <img>, so it works from file://):
mid-grey is 0 and ±max |entry| of the vector is black/white per channel — the RGB composite of
the page's default view for three channels, the channel mean (grey) otherwise. Vectors larger
than :data:`THUMB` pixels on a side are shrunk by area averaging. A vector model's eigen-output
(class scores) has no image: the gallery names its largest entry instead.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from sitegen.util import png_bytes

THUMB = 96  # largest side of a thumbnail, in pixels


def thumb_rgb(vec: np.ndarray) -> np.ndarray:
    """A signed vector (C, H, W) → uint8 RGB (h, w, 3), mid-grey 0, ±max |entry| the extremes."""
    v = np.nan_to_num(np.asarray(vec, np.float64))
    if v.ndim == 2:
        v = v[None]
    if v.shape[0] != 3:
        v = np.repeat(v.mean(axis=0, keepdims=True), 3, axis=0)
    m = float(np.abs(v).max())
    img = 127.5 + (127.5 * v / m if m > 0 else 0 * v)
    rgb = np.clip(np.round(img), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    h, w = rgb.shape[:2]
    if max(h, w) > THUMB:
        z = THUMB / max(h, w)
        size = (max(1, round(w * z)), max(1, round(h * z)))
        rgb = np.asarray(Image.fromarray(rgb, "RGB").resize(size, Image.Resampling.BOX))
    return rgb


def thumb_bytes(side: int, shape) -> int:
    """Upper bound of a thumbnail's PNG bytes (3 bytes a pixel) for a vector of ``shape``."""
    h, w = shape[-2], shape[-1]
    z = min(1.0, side / max(h, w))
    return 3 * max(1, round(h * z)) * max(1, round(w * z)) + 200


def top_entry(u: np.ndarray, labels: list[str]) -> str:
    """A vector model's eigen-output in words: its largest entry by magnitude."""
    u = np.nan_to_num(np.asarray(u, np.float64).reshape(-1))
    j = int(np.argmax(np.abs(u)))
    name = labels[j] if j < len(labels) else f"class {j}"
    return f"{name} {u[j]:+.2f}"


def write_thumbs(w, rid: str, i: int, v: np.ndarray, u: np.ndarray, image_output: bool,
                 labels: list[str]) -> dict:
    """Write triplet i's thumbnails; returns its gallery entry (paths relative to the site)."""
    w.write(f"data/{rid}/svd-thumbs/v{i}.png", png_bytes(thumb_rgb(v)))
    entry = {"i": i, "v": f"data/{rid}/svd-thumbs/v{i}.png", "u": None, "top": None}
    if image_output:
        w.write(f"data/{rid}/svd-thumbs/u{i}.png", png_bytes(thumb_rgb(u)))
        entry["u"] = f"data/{rid}/svd-thumbs/u{i}.png"
    else:
        entry["top"] = top_entry(u, labels)
    return entry


def estimate(k: int, in_shape, out_shape, image_output: bool) -> int:
    per = thumb_bytes(THUMB, in_shape) + (thumb_bytes(THUMB, out_shape) if image_output else 0)
    return k * per + 2_000 * k  # the gallery's HTML, roughly
