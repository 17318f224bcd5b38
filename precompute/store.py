"""Reading a LinearScope store (docs/FORMAT.md is the contract; keep them together).

A store is a Zarr v3 group holding one linear interpreter y = F(x0)·x + r(x0) (paper eq. 5),
opened read-only by :class:`Store` after its attributes, version and format are checked. Creating
and writing a store is :mod:`precompute.store_create`, resuming one :mod:`precompute.store_resume`,
the checksums of its files :mod:`precompute.integrity`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from precompute import integrity
from precompute import probes as P
from precompute import store_format
from precompute.errors import StoreError
from precompute.layout import Layout
from precompute.store_create import ANALYSES, CREATING, FORMAT_VERSION, tiled_arrays
from precompute.tile_store import open_tiles


def read_whole(arr) -> np.ndarray:
    """``arr[...]`` of an array written whole, once :func:`integrity.missing_chunks` finds nothing wrong
    (else a one-line :class:`StoreError`)."""
    problem = integrity.missing_chunks(arr)
    if problem:
        raise StoreError(f"{arr.store.root}: {problem}; the store is damaged")
    return arr[...]


def read_attrs(path: Path) -> dict:
    """The group attributes of the store at ``path``, with a one-line StoreError for anything
    unreadable (missing, empty, truncated, not a group)."""
    return open_tiles(path).read_attrs()


def _check_version(attrs: dict, path: Path) -> None:
    problem = store_format.version_problem(attrs, path)
    if problem:
        raise StoreError(problem)


class Store:
    """A store opened read-only. See docs/FORMAT.md for the meaning of every field."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tiles = open_tiles(self.path)  # where the bytes are (precompute/tile_store.py)
        self.attrs: dict[str, Any] = self.tiles.read_attrs()
        _check_version(self.attrs, self.path)
        try:
            self.group = self.tiles.group("r")
            # attributes (schema), links, array metadata, arrays written whole: once, here
            problem = self.tiles.format_problem(self.group, self.attrs)
            if problem:
                raise StoreError(f"{self.path}: {problem}; the store is damaged or not a "
                                 "LinearScope store")
            self.in_shape = tuple(self.group["input"].shape)
            self.out_shape = tuple(self.group["output"].shape)
            self.layouts: dict[str, Layout] = {}
            self.arrays = tiled_arrays(self.group)  # opened once for the per-tile checks
            geometry = self.attrs.get("geometry")
            for name in ANALYSES:
                a = self.attrs.get("analyses", {}).get(name)
                if a is not None and name in self.group:
                    self.layouts[name] = Layout.from_attrs(name, a, self.in_shape, self.out_shape,
                                                           geometry)
        except KeyError as e:
            raise StoreError(f"{self.path}: array {e} is missing; the store is damaged") from None
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 — damaged metadata surfaces as many types
            raise StoreError(f"{self.path}: the store is damaged ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:100] if str(e) else ''})") from None

    # provenance ---------------------------------------------------------------------------
    @property
    def format_version(self) -> int:
        return self.attrs["format_version"]

    @property
    def checks(self) -> dict:
        """Errors measured at run time (requirement (3), reconstruction, linearity, adjoint)."""
        return dict(self.attrs.get("checks", {}))

    @property
    def provenance(self) -> dict:
        """Everything recorded about how the store was made (all attributes but the checks)."""
        return {k: v for k, v in self.attrs.items() if k != "checks"}

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.attrs["dtype"])

    def array(self, name: str) -> np.ndarray:
        """A whole array (``input``, ``residual``, ``svd/u``, …), read only when its chunks are
        all on disk."""
        return read_whole(self.group[name])

    # progress -----------------------------------------------------------------------------
    def planned_tiles(self, analysis: str) -> list[P.Tile]:
        return self.layouts[analysis].tiles()

    def done_tiles(self, analysis: str) -> list[P.Tile]:
        """Tiles whose shard exists with an intact index (finished, whatever happened later to
        the run); the checksums of their chunks are checked by :meth:`check_integrity`."""
        lay = self.layouts[analysis]
        return [t for t in lay.tiles() if self.tiles.tile_done(self.arrays, lay, t, full=False)]

    def check_integrity(self) -> "integrity.Report":
        """Every file of the store checked against its checksums (reads the whole store)."""
        return self.tiles.check()

    def is_complete(self) -> bool:
        return all(len(self.done_tiles(a)) == len(self.planned_tiles(a)) for a in self.layouts)

    # filters ------------------------------------------------------------------------------
    def window(self, analysis: str, i: int, j: int) -> tuple[int, int, int, int] | None:
        """(oy, ox, wh, ww) of the stored window of pixel (i, j), or None if not computed."""
        oy, ox = (int(v) for v in self.group[f"{analysis}_origin"][i, j])
        if oy < 0:
            return None
        wh, ww = self.layouts[analysis].window
        return (oy, ox, wh, ww)

    def _full(self, analysis: str, i: int, j: int, channel: int | None) -> np.ndarray:
        lay = self.layouts[analysis]
        c_other, h, w = lay.other_shape
        win = self.window(analysis, i, j)
        n_probe = lay.probe_shape[0]
        out = np.zeros((n_probe, c_other, h, w), dtype=self.dtype)
        if win is None:
            out[...] = np.nan
        else:
            oy, ox, wh, ww = win
            out[:, :, oy:oy + wh, ox:ox + ww] = self.group[analysis][i, j]
        return out if channel is None else out[channel]

    def column(self, i: int, j: int, channel: int | None = None) -> np.ndarray:
        """Column(s) of input pixel (i, j) as full output-size images: (C, C', H', W'), or
        (C', H', W') for one input ``channel``. Zeros outside the window, NaN if not computed;
        ``outside`` tells how much of the column the window cut off."""
        return self._full("columns", i, j, channel)

    def row(self, p: int, q: int, channel: int | None = None) -> np.ndarray:
        """Row(s) of output pixel (p, q) as full input-size images: (C', C, H, W), or (C, H, W)
        for one output ``channel``. Zeros outside the window, NaN if not computed."""
        return self._full("rows", p, q, channel)

    def outside(self, analysis: str, i: int, j: int) -> np.ndarray:
        """Fraction of each filter's squared norm outside its window (per probed channel)."""
        return self.group[f"{analysis}_outside"][i, j]

    def dense(self) -> np.ndarray:
        """The whole filter matrix F (N × n, FORMAT.md index order) of a small store.

        Built from full-window columns if all are computed, else from full-window rows; any
        other store holds only part of F and this raises StoreError.
        """
        n = math.prod(self.in_shape)
        big = n * math.prod(self.out_shape) * self.dtype.itemsize
        if big > 2**31:
            raise StoreError(f"F would take {big / 2**30:.1f} GiB; dense() is for small stores")
        for name, order in (("columns", (3, 4, 5, 2, 0, 1)), ("rows", (2, 0, 1, 3, 4, 5))):
            lay = self.layouts.get(name)
            if lay is None or not lay.full:
                continue
            if lay.selection != P.Selection(None, 1) or not self.is_analysis_complete(name):
                continue
            a = read_whole(self.group[name])
            return np.ascontiguousarray(a.transpose(order)).reshape(math.prod(self.out_shape), n)
        raise StoreError(
            f"{self.path} holds no complete full-window columns or rows of every pixel, so it "
            "does not determine the whole F"
        )

    def classify(self, adversarial: bool = False) -> dict | None:
        """The classifier analyses (FORMAT.md "Classifier analyses") as ``{"attrs": {...},
        <array name>: array, ...}``; ``adversarial`` for the FGSM copy. None when the store has
        none, or they are incomplete (a killed run)."""
        name = "classify/adversarial" if adversarial else "classify"
        if not self.tiles.has_group(name):
            return None
        g = self.group[name]
        attrs = dict(g.attrs)
        if not attrs.get("complete"):
            return None
        return {"attrs": attrs} | {k: a[...] for k, a in g.arrays()}

    def is_analysis_complete(self, analysis: str) -> bool:
        return len(self.done_tiles(analysis)) == len(self.planned_tiles(analysis))

    # svd (precompute/svd.py) --------------------------------------------------------------
    @property
    def svd_attrs(self) -> dict | None:
        """Attributes of the ``svd/`` group (method, calls, converged, ...), or None if absent."""
        return dict(self.group["svd"].attrs) if "svd" in self.group else None

    def has_svd(self) -> bool:
        """True when the ``svd/`` result is complete (its ``complete`` attribute is written last)."""
        a = self.svd_attrs
        return bool(a and a.get("complete"))

    def svd(self) -> dict[str, np.ndarray]:
        """The complete SVD result: ``sigma`` (k), ``u`` (k, C', H', W') or (k, K), ``v``
        (k, C, H, W), ``residual`` (k, 2); StoreError if it is absent or incomplete."""
        if not self.has_svd():
            raise StoreError(f"{self.path} holds no complete SVD (analyses.svd not run or not "
                             "finished: run the same `precompute run` to finish it)")
        return {name: read_whole(self.group[f"svd/{name}"])
                for name in ("sigma", "u", "v", "residual")}


def open_store(path: str | os.PathLike) -> Store:
    """Open a store written by ``precompute run`` read-only (see docs/FORMAT.md)."""
    return Store(path)


def model_code(attrs: dict) -> str | None:
    """The Python code a store names as its model (``python:FILE:FUNC`` / ``python:pkg.mod:FUNC``
    in ``config.model.arch``, what ``verify`` would import), or None for a zoo model."""
    arch = ((attrs.get("config") or {}).get("model") or {}).get("arch")
    if not isinstance(arch, str):
        return None
    return arch if arch.startswith("python:") else None
