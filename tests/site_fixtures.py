"""Small stores that follow docs/FORMAT.md, written directly with zarr from a known dense F.

The site tests compare what the browser decodes against these arrays, so everything here is
computed from one dense filter matrix ``F`` (shape ``(C'·H'·W', C·H·W)``) kept on the returned
object: ``columns``/``rows`` are its windows exactly as FORMAT.md defines them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

IMAGE_SHA = hashlib.sha256(b"linearscope test image").hexdigest()


@dataclass
class FixtureStore:
    path: Path
    F: np.ndarray  # (C', H', W', C, H, W)
    scale: int
    col_window: int | None
    row_window: int | None
    missing_col_tiles: tuple = ()
    missing_row_tiles: tuple = ()
    extra: dict = field(default_factory=dict)

    def col_origin(self, i: int, j: int) -> tuple[int, int]:
        _, Ho, Wo, _, _, _ = self.F.shape
        w = self.col_window
        s = self.scale
        oy = min(max(math.floor(s * (i + 0.5) - w / 2), 0), Ho - w)
        ox = min(max(math.floor(s * (j + 0.5) - w / 2), 0), Wo - w)
        return oy, ox

    def row_origin(self, p: int, q: int) -> tuple[int, int]:
        _, _, _, _, H, W = self.F.shape
        w = self.row_window
        s = self.scale
        oy = min(max(math.floor((p + 0.5) / s - w / 2), 0), H - w)
        ox = min(max(math.floor((q + 0.5) / s - w / 2), 0), W - w)
        return oy, ox

    def column(self, i: int, j: int) -> np.ndarray:
        """Stored column window, shape (C, C', w, w) as in the store."""
        oy, ox = self.col_origin(i, j)
        w = self.col_window
        block = self.F[:, oy:oy + w, ox:ox + w, :, i, j]  # (C', w, w, C)
        return np.ascontiguousarray(block.transpose(3, 0, 1, 2))

    def row(self, p: int, q: int) -> np.ndarray:
        """Stored row window, shape (C', C, w, w)."""
        oy, ox = self.row_origin(p, q)
        w = self.row_window
        return np.ascontiguousarray(self.F[:, p, q, :, oy:oy + w, ox:ox + w])


def dense_filter(seed: int, C: int, H: int, W: int, Co: int, scale: int) -> np.ndarray:
    """A random F with local structure (Gaussian envelope around the diagonal), float32."""
    rng = np.random.default_rng(seed)
    Ho, Wo = H * scale, W * scale
    p = (np.arange(Ho) + 0.5)[:, None]
    i = scale * (np.arange(H) + 0.5)[None, :]
    dy = (p - i) / scale  # (Ho, H) distance in input pixels
    env_y = np.exp(-dy ** 2 / 2.0)
    q = (np.arange(Wo) + 0.5)[:, None]
    j = scale * (np.arange(W) + 0.5)[None, :]
    env_x = np.exp(-((q - j) / scale) ** 2 / 2.0)
    env = env_y[:, None, :, None] * env_x[None, :, None, :]  # (Ho, Wo, H, W)
    F = rng.standard_normal((Co, Ho, Wo, C, H, W)) * env[None, :, :, None, :, :]
    # a few exact zeros and a few tiny values, as real filters have
    F[np.abs(F) < 1e-3] = 0.0
    F[0, 0, 0, 0, 0, 0] = 3e-9
    return F.astype(np.float32)


def _arr(group, name, data, chunks, shards=None, fill=np.nan):
    compressors = [ZstdCodec(level=3), Crc32cCodec()]
    a = group.create_array(
        name=name, shape=data.shape, dtype=data.dtype, chunks=chunks, shards=shards,
        compressors=compressors, fill_value=fill,
        config={"write_empty_chunks": True} if shards else None,
    )
    return a


def make_store(
    path: Path,
    *,
    name: str = "testnet",
    model_id: str = "testnet",
    seed: int = 0,
    C: int = 3,
    H: int = 8,
    W: int = 8,
    scale: int = 2,
    columns: bool = True,
    rows: bool = True,
    col_window: int = 6,
    row_window: int = 4,
    tile: int = 4,
    image_sha: str = IMAGE_SHA,
    missing_col_tiles: tuple = (),
    missing_row_tiles: tuple = (),
    format_version: int = 1,
    crop: list | None = None,
) -> FixtureStore:
    """Write a store of a ``scale``× image model on a C×H×W input to ``path``."""
    Co = C
    Ho, Wo = H * scale, W * scale
    F = dense_filter(seed, C, H, W, Co, scale)
    fx = FixtureStore(Path(path), F, scale, col_window if columns else None,
                      row_window if rows else None, missing_col_tiles, missing_row_tiles)
    rng = np.random.default_rng(seed + 1000)
    x0 = rng.random((C, H, W), dtype=np.float32)
    resid = (0.01 * rng.standard_normal((Co, Ho, Wo))).astype(np.float32)
    y0 = (F.reshape(Co * Ho * Wo, -1) @ x0.reshape(-1)).reshape(Co, Ho, Wo) + resid
    analyses: dict = {"residual": True}
    if columns:
        analyses["columns"] = {"window": [col_window] * 2, "full": col_window == Ho,
                               "tile": tile, "region": [0, 0, H, W], "stride": 1, "batch": 16}
    if rows:
        analyses["rows"] = {"window": [row_window] * 2, "full": row_window == H,
                            "tile": tile, "region": [0, 0, Ho, Wo], "stride": 1, "batch": 16}
    attrs = {
        "format_version": format_version,
        "name": name,
        "config": {"name": name, "model": model_id},
        "model": {"id": model_id, "arch": model_id, "scale": scale,
                  "checkpoint": f"/ckpt/{model_id}.pt",
                  "checkpoint_sha256": hashlib.sha256(model_id.encode()).hexdigest(),
                  "kind": "image", "labels": None, "description": f"test model {model_id}"},
        "image": {"path": "/data/test.png", "sha256": image_sha, "crop": crop, "size": [H, W]},
        "interpreter": "freeze",
        "dtype": "float32",
        "geometry": {"scale": scale, "offset": 0},
        "checks": {"requirement3_abs": 1.5e-7, "requirement3_rel": 2.5e-8,
                   "reconstruction_abs": 1e-7, "reconstruction_rel": 3e-8,
                   "linearity_rel": 1e-7, "adjoint_rel": 2e-8},
        "analyses": analyses,
        "timings": {"residual": 0.1},
        "versions": {"python": "3.11", "torch": "2.14.1", "zarr": zarr.__version__,
                     "numpy": np.__version__, "linearscope": "0.1.0"},
        "device": "cpu",
        "created": "2026-11-27T12:00:00Z",
        "oom_splits": 0,
    }
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs.update(attrs)
    for nm, data in (("input", x0), ("output", y0.astype(np.float32)), ("residual", resid)):
        _arr(root, nm, data, data.shape)[...] = data
    rgb = (lambda a: np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a)  # display is (H, W, 3)
    disp_in = (np.clip(rgb(x0), 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    disp_out = (np.clip(rgb(y0), 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    disp = root.create_group("display")
    for nm, data in (("input", disp_in), ("output", disp_out)):
        _arr(disp, nm, data, data.shape, fill=0)[...] = data
    Fm = F.reshape(Co, Ho, Wo, C, H, W)
    if columns:
        w = col_window
        cols = np.full((H, W, C, Co, w, w), np.nan, np.float32)
        orig = np.full((H, W, 2), -1, np.int32)
        outside = np.full((H, W, C), np.nan, np.float32)
        for i in range(H):
            for j in range(W):
                if (i // tile, j // tile) in missing_col_tiles:
                    continue
                oy, ox = fx.col_origin(i, j)
                orig[i, j] = (oy, ox)
                cols[i, j] = fx.column(i, j)
                full = Fm[:, :, :, :, i, j].astype(np.float64)  # (C', H', W', C)
                tot = (full ** 2).sum(axis=(0, 1, 2))
                inside = (full[:, oy:oy + w, ox:ox + w] ** 2).sum(axis=(0, 1, 2))
                outside[i, j] = np.where(tot > 0, 1 - inside / np.where(tot > 0, tot, 1), 0)
        a = _arr(root, "columns", cols, (1, 1, C, Co, w, w), (tile, tile, C, Co, w, w))
        _arr(root, "columns_origin", orig, (tile, tile, 2), fill=-1)[...] = orig
        _arr(root, "columns_outside", outside, (tile, tile, C))[...] = outside
        _write_done_tiles(a, cols, tile, missing_col_tiles)
    if rows:
        w = row_window
        rws = np.full((Ho, Wo, Co, C, w, w), np.nan, np.float32)
        orig = np.full((Ho, Wo, 2), -1, np.int32)
        outside = np.full((Ho, Wo, Co), np.nan, np.float32)
        for p in range(Ho):
            for q in range(Wo):
                if (p // tile, q // tile) in missing_row_tiles:
                    continue
                oy, ox = fx.row_origin(p, q)
                orig[p, q] = (oy, ox)
                rws[p, q] = fx.row(p, q)
                full = Fm[:, p, q].astype(np.float64)  # (C', C, H, W)
                tot = (full ** 2).sum(axis=(1, 2, 3))
                inside = (full[:, :, oy:oy + w, ox:ox + w] ** 2).sum(axis=(1, 2, 3))
                outside[p, q] = np.where(tot > 0, 1 - inside / np.where(tot > 0, tot, 1), 0)
        a = _arr(root, "rows", rws, (1, 1, Co, C, w, w), (tile, tile, Co, C, w, w))
        _arr(root, "rows_origin", orig, (tile, tile, 2), fill=-1)[...] = orig
        _arr(root, "rows_outside", outside, (tile, tile, Co))[...] = outside
        _write_done_tiles(a, rws, tile, missing_row_tiles)
    return fx


def _write_done_tiles(arr, data, tile, missing):
    """Write whole shards, one per tile, leaving the missing ones absent (not computed)."""
    nty = -(-data.shape[0] // tile)
    ntx = -(-data.shape[1] // tile)
    for ty in range(nty):
        for tx in range(ntx):
            if (ty, tx) in missing:
                continue
            sl = (slice(ty * tile, (ty + 1) * tile), slice(tx * tile, (tx + 1) * tile))
            arr[sl] = data[sl]


def make_suite(root: Path) -> dict[str, FixtureStore]:
    """The stores the site tests use: both, columns only, rows only, and a second model."""
    root = Path(root)
    return {
        "both": make_store(root / "netA-test.zarr", name="netA", model_id="netA", seed=1,
                           missing_col_tiles=((1, 1),), missing_row_tiles=((3, 0),)),
        "cols": make_store(root / "colsonly-test.zarr", name="colsonly", model_id="colsonly",
                           seed=2, rows=False, image_sha="1" * 64),
        "rows": make_store(root / "rowsonly-test.zarr", name="rowsonly", model_id="rowsonly",
                           seed=3, columns=False, image_sha="2" * 64),
        "both2": make_store(root / "netB-test.zarr", name="netB", model_id="netB", seed=4,
                            col_window=16, row_window=8),
    }


def make_vector_store(path: Path, *, name: str = "classifier", K: int = 5, H: int = 8, W: int = 8,
                      image_sha: str = IMAGE_SHA) -> Path:
    """A classifier ("vector" model) store: scores only, no columns or rows (FORMAT.md)."""
    rng = np.random.default_rng(11)
    x0 = rng.random((3, H, W), dtype=np.float32)
    scores = rng.standard_normal(K).astype(np.float32)
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs.update({
        "format_version": 1, "name": name, "config": {"name": name},
        "model": {"id": "torchvision:tiny", "arch": "tiny", "scale": None, "checkpoint": None,
                  "checkpoint_sha256": None, "kind": "vector",
                  "labels": [f"class {k}" for k in range(K)], "description": "test classifier"},
        "image": {"path": "/data/test.png", "sha256": image_sha, "crop": None, "size": [H, W]},
        "interpreter": "freeze", "dtype": "float32", "geometry": None,
        "checks": {"requirement3_abs": 1e-6, "requirement3_rel": 1e-7},
        "analyses": {"residual": True}, "timings": {}, "versions": {}, "device": "cpu",
        "created": "2026-11-27T12:00:00Z", "oom_splits": 0,
    })
    for nm, data in (("input", x0), ("output", scores), ("residual", 0.1 * scores)):
        _arr(root, nm, data, data.shape)[...] = data
    disp = root.create_group("display")
    d = (x0 * 255).round().astype(np.uint8).transpose(1, 2, 0)
    _arr(disp, "input", d, d.shape, fill=0)[...] = d
    return Path(path)
