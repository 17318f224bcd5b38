"""Encode filter tiles as classic scripts the page loads lazily (works from file://).

A tile script is one call ``LinearScope.tile(run, kind, ty, tx, {...})`` with one entry per
computed pixel: its window origin, the outside-energy fractions, a float32 ``scale`` and one
gzip + base64 blob of the filter block. Per-pixel blobs keep hover decoding at a few
milliseconds (docs: /work/shared/notes/site-and-store.md §3).

Payload of a blob: the block of shape ``(P, Q, wh, ww)`` (see :func:`channel_block`), C order,

- ``float16``: ``block / scale`` as little-endian float16, ``scale = max|block|``: the display
  copy (about 3 significant digits, exact zeros kept). Value = decoded · scale.
- ``float32``: the block itself as little-endian float32 (exact store values for float32 stores).

Bytes are shuffled (all first bytes, then all second bytes, ...) before gzip, which helps gzip on
floats. gzip uses ``mtime=0`` and a fixed level, so the same block always gives the same bytes.
"""

from __future__ import annotations

import base64
import gzip
import json

import numpy as np

MODES = ("full", "rgb", "lum")
PRECISIONS = ("float16", "float32")

MODE_TEXT = {
    "full": "full channel blocks: every (own channel, filter channel) pair",
    "rgb": "RGB composite: a grey impulse (columns: summed over input channels) or a grey "
           "read-out (rows: averaged over output channels), filter channels kept",
    "lum": "luminance: summed over input channels and averaged over output channels",
}


def channel_block(vals: np.ndarray, mode: str, kind: str) -> np.ndarray:
    """Reduce stored filters ``(..., own, other, wh, ww)`` to the site's channel mode.

    Columns are indexed by an input channel ``a`` (own) and show output channels ``b``; rows the
    other way round. The composite modes use the same scalar interpreter for both kinds:
    ``mean over output channels of the sum over input channels`` of F.

    Returns float32 ``(..., P, Q, wh, ww)`` with ``P = own`` (full) or 1, ``Q = other`` (full,
    rgb) or 1.
    """
    if mode == "full":
        return np.asarray(vals, dtype=np.float32)
    v = np.asarray(vals, dtype=np.float64)
    own_is_input = kind == "columns"
    own = v.sum(axis=-4, keepdims=True) if own_is_input else v.mean(axis=-4, keepdims=True)
    if mode == "rgb":
        return own.astype(np.float32)
    if mode == "lum":
        other = own.mean(axis=-3, keepdims=True) if own_is_input else own.sum(axis=-3, keepdims=True)
        return other.astype(np.float32)
    raise ValueError(f"unknown channel mode {mode!r}")


def _shuffle(a: np.ndarray) -> bytes:
    b = np.ascontiguousarray(a).view(np.uint8).reshape(-1, a.dtype.itemsize)
    return np.ascontiguousarray(b.T).tobytes()


def encode_block(block: np.ndarray, precision: str) -> tuple[float, str]:
    """One pixel's block → (scale, base64 of gzip of shuffled values)."""
    block = np.asarray(block, dtype=np.float32)
    m = float(np.max(np.abs(block))) if block.size else 0.0
    if precision == "float16":
        scale = np.float32(m)
        payload = (block / scale if m > 0 else np.zeros_like(block)).astype("<f2")
    elif precision == "float32":
        scale = np.float32(m)
        payload = block.astype("<f4")
    else:
        raise ValueError(f"unknown precision {precision!r}")
    z = gzip.compress(_shuffle(payload), compresslevel=6, mtime=0)
    return float(scale), base64.b64encode(z).decode("ascii")


def decode_block(scale: float, blob: str, shape, precision: str) -> np.ndarray:
    """Inverse of :func:`encode_block` (what the page does), for tests and checks."""
    raw = gzip.decompress(base64.b64decode(blob))
    isz = 2 if precision == "float16" else 4
    b = np.frombuffer(raw, np.uint8).reshape(isz, -1).T.copy()
    vals = b.view("<f2" if isz == 2 else "<f4").reshape(shape).astype(np.float32)
    return vals * np.float32(scale) if isz == 2 else vals


def _num(x: float) -> float:
    """A float that prints the same everywhere (6 significant digits)."""
    return float(f"{x:.6g}")


def tile_script(run_id: str, kind: str, ty: int, tx: int, pixels: list) -> bytes:
    """The JS of one tile. ``pixels``: [(y, x, oy, ox, outside list, scale, blob)], sorted."""
    entries = [[int(y), int(x), int(oy), int(ox), [_num(o) for o in outside], scale, blob]
               for (y, x, oy, ox, outside, scale, blob) in pixels]
    body = json.dumps({"px": entries}, separators=(",", ":"), allow_nan=False)
    head = json.dumps([run_id, kind, int(ty), int(tx)], separators=(",", ":"))[1:-1]
    return f"LinearScope.tile({head},{body});\n".encode("ascii")
