"""Add an ``svd/`` group (docs/FORMAT.md, section SVD) to fixture stores, from a known dense F.

The SVD is numpy's (``np.linalg.svd`` of the fixture's F in float64), so the site tests compare
what the browser shows against values computed independently of precompute/svd.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec


def reference_svd(F: np.ndarray, k: int, dtype=np.float32):
    """Top-k (σ, u, v, residual) of F (N × n) with the store's sign convention and dtype."""
    U, s, Vh = np.linalg.svd(np.asarray(F, np.float64), full_matrices=False)
    u, v, s = U[:, :k].T.copy(), Vh[:k].copy(), s[:k]
    peak = v[np.arange(k), np.abs(v).argmax(axis=1)]
    sign = np.where(peak < 0, -1.0, 1.0)[:, None]
    u, v = (u * sign).astype(dtype), (v * sign).astype(dtype)
    s = s.astype(dtype)
    F64, u64, v64, s64 = (np.asarray(F, np.float64), u.astype(np.float64), v.astype(np.float64),
                          s.astype(np.float64))
    r1 = np.linalg.norm(v64 @ F64.T - s64[:, None] * u64, axis=1) / s64
    r2 = np.linalg.norm(u64 @ F64 - s64[:, None] * v64, axis=1) / s64
    return s, u, v, np.stack([r1, r2], 1).astype(dtype)


def add_svd(path: Path, F: np.ndarray, k: int, in_shape, out_shape, *, complete: bool = True,
            method: str = "dense", dtype=np.float32) -> dict:
    """Write ``svd/`` into the store at ``path`` and its plan into ``analyses.svd``."""
    s, u, v, res = reference_svd(F, k, dtype)
    root = zarr.open_group(str(path), mode="r+")
    analyses = dict(root.attrs["analyses"])
    plan = {"k": k, "method": method, "block": 32, "tol": 1e-4, "max_calls": None, "seed": 0}
    analyses["svd"] = plan
    root.attrs["analyses"] = analyses
    g = zarr.open_group(str(Path(path) / "svd"), mode="w", attributes={"complete": False})
    comp = [ZstdCodec(level=3), Crc32cCodec()]
    for name, data, shape in (("sigma", s, (k,)), ("u", u, (k, *out_shape)),
                              ("v", v, (k, *in_shape)), ("residual", res, (k, 2))):
        chunks = (1, *shape[1:]) if name in ("u", "v") else shape
        a = g.create_array(name, shape=shape, chunks=chunks, dtype=np.dtype(dtype).name,
                           fill_value=np.nan, compressors=comp)
        a[...] = data.reshape(shape)
    attrs = plan | {"calls": {"forward": 3, "backward": 0},
                    "residual_calls": {"forward": 1, "backward": 1}, "pass_size": 32,
                    "iterations": 0, "wall_time": 0.25, "converged": True,
                    "max_residual": float(res.max()),
                    "sign_convention": "the largest-magnitude entry of each v_i is positive",
                    "oom_splits": 0, "device": "cpu"}
    if complete:
        g.attrs.put(attrs | {"complete": True})
    return {"sigma": s, "u": u, "v": v, "residual": res}


def add_svd_to_fixture(fx, k: int, **kw) -> dict:
    """For a site_fixtures.FixtureStore (F of shape (C', H', W', C, H, W))."""
    Co, Ho, Wo, C, H, W = fx.F.shape
    return add_svd(fx.path, fx.F.reshape(Co * Ho * Wo, C * H * W), k, (C, H, W), (Co, Ho, Wo),
                   **kw)


def add_svd_to_vector_store(path: Path, k: int, seed: int = 3, labels: list | None = None) -> dict:
    """A vector store (site_fixtures.make_vector_store) gets a random F (K × n) and its SVD."""
    root = zarr.open_group(str(path), mode="r+")
    if labels is not None:
        model = dict(root.attrs["model"])
        model["labels"] = labels
        root.attrs["model"] = model
    x_shape = tuple(root["input"].shape)
    K = root["output"].shape[0]
    F = np.random.default_rng(seed).standard_normal((K, int(np.prod(x_shape))))
    return add_svd(path, F, k, x_shape, (K,))


def read_meta_js(path: Path) -> dict:
    """The JSON inside a data/<run>/svd/meta.js."""
    text = Path(path).read_text()
    assert text.startswith("LinearScope.svdRun(") and text.endswith(");\n")
    return json.loads(text[len("LinearScope.svdRun("):-3].replace("<\\/", "</"))
