"""Helpers shared by the model families: image <-> tensor conversions and Y-channel display."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from PIL import Image

from precompute.models.base import ModelError, Prepared


def rgb_tensor(image: Image.Image, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """PIL image -> (1, 3, H, W) float32 RGB, 8-bit values mapped linearly onto [lo, hi].

    Computed in float64 and rounded once, so 0..255 gives exact integers (as EDSR's own
    ``np2Tensor``) and [0, 1] gives the correctly rounded v/255.
    """
    arr = np.asarray(image.convert("RGB"), dtype=np.float64) * ((hi - lo) / 255.0) + lo
    return torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1).unsqueeze(0).contiguous()


def prepare_y(image: Image.Image, scale: int) -> Prepared:
    """Y-channel input of a luminance super-resolution network.

    Follows the PyTorch super-resolution example: ``image.convert("YCbCr")`` (PIL's full-range
    ITU-R BT.601), x0 = Y / 255 as (1, 1, H, W). Cb and Cr are kept in ``extra``: at input size
    (``"cbcr"``, to show x0 in colour) and upscaled by ``scale`` with PIL bicubic
    (``"cbcr_up"``, only to show the output in colour; they never enter the network).
    """
    ycbcr = image.convert("RGB").convert("YCbCr")  # via RGB: alpha, palette and gray modes alike
    y, cb, cr = ycbcr.split()
    x0 = torch.from_numpy(np.asarray(y, dtype=np.float32) / 255.0)[None, None].contiguous()
    w, h = ycbcr.size
    up = (w * scale, h * scale)
    cbcr = np.stack([np.asarray(cb), np.asarray(cr)], axis=-1)
    cbcr_up = np.stack(
        [np.asarray(cb.resize(up, Image.BICUBIC)), np.asarray(cr.resize(up, Image.BICUBIC))],
        axis=-1,
    )
    return Prepared(x0, {"cbcr": cbcr, "cbcr_up": cbcr_up})


def y_to_rgb(y: torch.Tensor, cbcr: np.ndarray | None) -> np.ndarray:
    """A Y plane in [0, 1] ((1, 1, H, W) or (1, H, W)) plus uint8 Cb/Cr (H, W, 2) -> RGB uint8.

    Without matching Cb/Cr (None, or another size) the Y plane is shown as gray.
    """
    t = y.detach().to("cpu", torch.float64).reshape(y.shape[-2], y.shape[-1])
    y8 = (t * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    if cbcr is None or cbcr.shape[:2] != y8.shape:
        return np.repeat(y8[:, :, None], 3, axis=2)
    ycc = np.concatenate([y8[:, :, None], cbcr.astype(np.uint8)], axis=2)
    return np.asarray(Image.fromarray(ycc, mode="YCbCr").convert("RGB")).copy()


def positive_int_scale(model_id: str, scale, allowed: tuple[int, ...] | None = None) -> int:
    """Validate an upscaling factor given in a config."""
    if isinstance(scale, float) and scale.is_integer():
        scale = int(scale)
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ModelError(f"{model_id}: scale must be a positive integer, got {scale!r}")
    if allowed is not None and scale not in allowed:
        raise ModelError(
            f"{model_id}: scale {scale} is not available (choose one of "
            f"{', '.join(map(str, allowed))})"
        )
    return scale


@contextlib.contextmanager
def seeded(seed: int = 0):
    """Deterministic untrained weights (``random_weights=True``) without touching the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
