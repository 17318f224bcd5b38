"""Small helpers every part of the site generator shares: the build's error, sizes, names,
JSON for <script>, PNG bytes and atomic file writes.

They live here (not in build.py) so that page modules can use them without importing the build,
which imports the pages: imports go one way, util → pages → build.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image


class BuildError(Exception):
    """A build that cannot go ahead; the message is shown to the user as is."""


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def js_literal(obj) -> str:
    """JSON safe to embed in a <script> element."""
    s = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return s.replace("</", "<\\/")


def slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return s or "run"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` (a name in a real folder) through a fresh hidden temporary file and a
    rename: a link or leftover at the temporary name is removed, never written through, and
    the rename replaces a link at ``path`` itself, not its target."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def png_bytes(rgb: np.ndarray) -> bytes:
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = rgb[..., None]
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    rgb = rgb[..., :3]  # RGB only (notes §1: no alpha)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB").save(
        buf, format="PNG", compress_level=9)
    return buf.getvalue()


def residual_rgb(r: np.ndarray) -> tuple[np.ndarray, float]:
    """r (C', H', W') → mid-grey-centred RGB scaled by max|r|; returns the image and max|r|."""
    r = np.nan_to_num(np.asarray(r, np.float64))
    if r.ndim != 3:
        return np.zeros((1, 1, 3), np.uint8), 0.0
    if r.shape[0] != 3:
        r = np.repeat(r.mean(axis=0, keepdims=True), 3, axis=0)
    m = float(np.abs(r).max())
    img = 127.5 + (127.5 * r / m if m > 0 else 0 * r)
    return np.clip(np.round(img), 0, 255).astype(np.uint8).transpose(1, 2, 0), m


def fmt_float(v) -> str:
    if v is None:
        return "not measured"
    try:
        return f"{float(v):.2e}"
    except (TypeError, ValueError):
        return str(v)


def nice_number(v):
    """3.0 → 3 (scales are written as floats), anything else unchanged."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v
