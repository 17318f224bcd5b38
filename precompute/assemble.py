"""Tile assembly: full columns/rows of a tile's probes → stored windows, origins, outside fractions.

The probes of a tile (:mod:`precompute.probes`) run through the engine in passes; each full filter
is cropped to its window (FORMAT.md, "Geometry") on the device, in one gather per pass, and the
squared norm left outside the window is recorded.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from precompute import probes as P
from precompute import layout as L
from precompute.errors import UserError
from precompute.engine import Engine




def tile_arrays(engine: Engine, lay: L.Layout, tile: P.Tile, k: int, np_dtype,
                on_pass: Callable[[int], None] | None = None, sketch=None):
    """Compute one tile: its windows (cropped from full columns/rows), origins and outside
    fractions. Returns (block, origin, outside) shaped as the tile's region of the arrays.
    ``sketch`` (a :class:`precompute.freivalds.Sketch`) receives the whole filters."""
    c_probe, h, w = lay.probe_shape
    th, tw = tile.shape
    block = np.full((th, tw) + lay.chunk[2:], np.nan, dtype=np_dtype)
    origin = np.full((th, tw, 2), -1, dtype=np.int32)
    outside = np.full((th, tw, c_probe), np.nan, dtype=np_dtype)
    wh, ww = lay.window
    for group in P.passes(P.tile_probes(tile, c_probe, h, w, lay.selection), k):
        full = engine.probe([pr.flat for pr in group], lay.name)  # (K, C_other, H_o, W_o)
        if not torch.isfinite(full).all():
            bad = [(pr.c, pr.i, pr.j) for pr, ok in zip(group, torch.isfinite(full).flatten(1).all(1)) if not ok]
            raise UserError(
                f"the interpreter produced NaN/Inf for the {lay.name} of (channel, y, x) {bad[:3]}; "
                "nothing of this tile was stored"
            )
        if sketch is not None:
            sketch.add_full(full, [pr.c for pr in group], [pr.i for pr in group],
                            [pr.j for pr in group])
        # crop every window at once on the device (one gather, not K small kernels per probe)
        origins = [lay.origin(pr.i, pr.j) for pr in group]
        dev = full.device
        oy = torch.tensor([o[0] for o in origins], device=dev)
        ox = torch.tensor([o[1] for o in origins], device=dev)
        ky = oy[:, None] + torch.arange(wh, device=dev)  # (K, wh)
        kx = ox[:, None] + torch.arange(ww, device=dev)  # (K, ww)
        k_idx = torch.arange(len(group), device=dev)[:, None, None, None]
        c_idx = torch.arange(full.shape[1], device=dev)[None, :, None, None]
        crops_np = full[k_idx, c_idx, ky[:, None, :, None], kx[:, None, None, :]].cpu().numpy()
        # squared norm outside the window, summed directly (not total − inside), so that it is
        # exactly 0 when nothing lies outside
        ys = torch.arange(full.shape[2], device=dev)[None]
        xs = torch.arange(full.shape[3], device=dev)[None]
        in_y = (ys >= oy[:, None]) & (ys < oy[:, None] + wh)  # (K, H_o)
        in_x = (xs >= ox[:, None]) & (xs < ox[:, None] + ww)  # (K, W_o)
        sq = full.square()
        total = sq.sum(dim=(1, 2, 3))
        out_sq = sq.masked_fill((in_y[:, :, None] & in_x[:, None, :])[:, None], 0).sum(dim=(1, 2, 3))
        frac = torch.where(total > 0, out_sq / torch.where(total > 0, total, 1), 0).cpu().numpy()
        for n, pr in enumerate(group):
            y, x = pr.i - tile.y0, pr.j - tile.x0
            block[y, x, pr.c] = crops_np[n]
            outside[y, x, pr.c] = frac[n]
            origin[y, x] = origins[n]
        if on_pass is not None:
            on_pass(len(group))
    return block, origin, outside


