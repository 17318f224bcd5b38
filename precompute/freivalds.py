"""Freivalds checks of the filters a run writes: every unit of work proves itself (issue 15).

Compressed probing (:mod:`precompute.compressed`) decodes many filters out of one probe; it is
exact only if the structural support is. Before the tiles of a unit of work — a block of
compressed probes, or a tile of single impulses — go to the writer, the filters decoded for it,
*over their whole support* (not only what the windows keep), are checked against the network
itself by Freivalds' randomized test, for ``N_VECTORS`` random Gaussian vectors ``v``:

    Σ_j v_j · column_j   =?   F·v        (columns: v supported on the unit's input pixels)
    row_i · v            =?   (F·v)_i    (rows: v on the whole input, i the unit's output pixels)

— the right sides of every analysis of the unit in one forward pass (paper eq. 5). (Checking the
rows by ``Σ_i u_i · row_i = Fᵀ·u`` would need a backward pass at about twice the cost; ``R·v``
tests the same matrix R of the unit's rows from the other side, every entry included.)

A wrong decoding (two impulses of a probe reaching one output value, a value attributed to the
wrong impulse or dropped) changes the left side by a non-zero linear form in ``v``, which a
Gaussian ``v`` misses with probability 0; what remains is round-off, so the comparison uses the
gate's tolerance (:func:`precompute.interpreter.gate_tolerance`): the relative error
``‖lhs − rhs‖∞ / max(‖lhs‖∞, ‖rhs‖∞)``. The vectors are seeded by the unit (reproducible).

:class:`Sketch` accumulates the left side while the filters are decoded (the decoders call
:meth:`Sketch.add_own`, :meth:`Sketch.add_transposed` or :meth:`Sketch.add_full`);
:func:`check` runs the right side and raises :class:`FreivaldsError` above the tolerance.
``precompute verify`` runs the same test over the stored windows (:mod:`precompute.verify`).
"""

from __future__ import annotations

import numpy as np
import torch

from precompute.config import UserError

#: random vectors per unit of work and analysis (checked in one extra forward pass per unit)
N_VECTORS = 2


class FreivaldsError(UserError):
    """A unit's decoded filters disagree with the network beyond the gate's tolerance."""


def _rng(analysis: str, unit: tuple[int, int], salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([{"columns": 1, "rows": 2}[analysis], unit[0], unit[1], salt])


class Sketch:
    """The left side of Freivalds' test for the filters of one unit of work of ``lay``.

    Columns: ``acc = Σ_j v_j · column_j`` over the other (output) domain, for ``v`` over the input
    supported where ``mask`` (H, W) is true (every channel); compared with ``F·v`` everywhere.
    Rows: ``acc_i = row_i · v`` for the unit's output pixels ``i`` (``mask`` over the output),
    ``v`` over the whole input; compared with ``(F·v)_i`` there. Both need one forward pass
    (a backward pass ``Fᵀ·u`` would check rows as well, at about twice the cost); both check
    every entry of every filter, inside its window or not.

    A block that ran on a halo crop of x0 (:mod:`precompute.halo`) is checked on that crop
    (:meth:`place`): ``v``, ``acc`` and the mask cover the crop's input and output boxes (full-
    image coordinates ``(y0, y1, x0, x1)``), and ``F·v`` is a pass of the crop's interpreter —
    memory and time per block are the crop's, not the image's. ``mask`` may then be a function
    ``(box) -> bool array`` of the probe-domain box."""

    def __init__(self, lay, mask, unit: tuple[int, int], what: str, salt: int = 0):
        self.analysis, self.unit, self.what, self.salt = lay.name, unit, what, salt
        self.lay, self._mask = lay, mask
        self.engine = None  # the engine F·v is computed with (None: the caller's)
        if not callable(mask):  # the full image
            ins, outs = ((lay.probe_shape, lay.other_shape) if lay.name == "columns"
                         else (lay.other_shape, lay.probe_shape))
            self.place((0, ins[1], 0, ins[2]), (0, outs[1], 0, outs[2]))

    def place(self, in_box: tuple, out_box: tuple, engine=None) -> None:
        """Allocate ``v`` and ``acc`` on the input box ``in_box`` and output box ``out_box``
        (full-image coordinates); ``engine``: the interpreter of exactly those boxes."""
        lay = self.lay
        cols = lay.name == "columns"
        self.pbox, self.obox = (in_box, out_box) if cols else (out_box, in_box)
        py0, py1, px0, px1 = self.pbox
        oy0, oy1, ox0, ox1 = self.obox
        m = self._mask
        self.mask = m(self.pbox) if callable(m) else m[py0:py1, px0:px1]
        rng = _rng(lay.name, self.unit, self.salt)
        p_shape = (lay.probe_shape[0], py1 - py0, px1 - px0)
        o_shape = (lay.other_shape[0], oy1 - oy0, ox1 - ox0)
        if cols:
            self.v = rng.standard_normal((N_VECTORS,) + p_shape) * self.mask
            self.acc = np.zeros((N_VECTORS,) + o_shape)
        else:
            self.v = rng.standard_normal((N_VECTORS,) + o_shape)
            self.acc = np.zeros((N_VECTORS,) + p_shape)
        self.engine = engine

    # -- the left side, as filters are decoded ---------------------------------------------------
    def add_own(self, sub: np.ndarray, us: np.ndarray, vs: np.ndarray, ci: np.ndarray,
                cj: np.ndarray, channel: int) -> None:
        """Filters decoded from one probe of their own domain: the probe's output values ``sub``
        (C_other, nu, nv) at other-domain pixels ``us × vs`` belong to the filter of probed pixel
        (``channel``, ``ci[u]``, ``cj[v]``)."""
        ci, cj = ci - self.pbox[0], cj - self.pbox[2]     # box coordinates
        us, vs = us - self.obox[0], vs - self.obox[2]
        if self.analysis == "columns":
            w = self.v[:, channel][:, ci[:, None], cj[None, :]]           # (N, nu, nv)
            self.acc[:, :, us[:, None], vs[None, :]] += w[:, None] * sub[None]
            return
        # rows from backward probes: entries (·, us, vs) of the row of output pixel (channel, ci, cj)
        s = np.einsum("rauv,auv->ruv", self.v[:, :, us][:, :, :, vs], sub.astype(np.float64))
        h, w = self.acc.shape[2:]
        flat = (ci[:, None] * w + cj[None, :]).ravel()
        for r in range(N_VECTORS):
            self.acc[r, channel] += np.bincount(flat, s[r].ravel(), h * w).reshape(h, w)

    def add_transposed(self, sub: np.ndarray, us: np.ndarray, vs: np.ndarray, ci: np.ndarray,
                       cj: np.ndarray, channel: int) -> None:
        """Rows read out of a forward probe: ``sub`` (C', nu, nv) holds, for output pixel
        (``us[u]``, ``vs[v]``) and every output channel, ``F[(·, u, v), (channel, ci[u], cj[v])]``."""
        ci, cj = ci - self.obox[0], cj - self.obox[2]     # box coordinates
        us, vs = us - self.pbox[0], vs - self.pbox[2]
        w = self.v[:, channel][:, ci[:, None], cj[None, :]]               # (N, nu, nv)
        self.acc[:, :, us[:, None], vs[None, :]] += w[:, None] * sub[None]

    def add_full(self, full: torch.Tensor, channels, ys, xs) -> None:
        """Whole filters of single impulses: ``full`` (K, C_other, H_o, W_o) of probed pixels
        (``channels[k]``, ``ys[k]``, ``xs[k]``) on the full image's boxes."""
        assert self.pbox[0] == self.pbox[2] == self.obox[0] == self.obox[2] == 0
        f = full.flatten(1).to(torch.float64)
        if self.analysis == "columns":
            w = torch.as_tensor(self.v[:, channels, ys, xs], device=full.device)   # (N, K)
            self.acc += (w @ f).reshape(self.acc.shape).cpu().numpy()
            return
        v = torch.as_tensor(self.v.reshape(N_VECTORS, -1), device=full.device)
        self.acc[:, channels, ys, xs] += (v @ f.T).cpu().numpy()                  # (N, K)

    def compare(self, fv: np.ndarray) -> float:
        """The relative error against ``F·v`` (rows: at the unit's output pixels only)."""
        if self.analysis == "columns":
            return relative_error(self.acc, fv)
        m = np.broadcast_to(self.mask, self.acc.shape)
        return relative_error(self.acc[m], fv[m])


def check(engine, sketches: list, tolerance: float) -> list[float]:
    """The right sides ``F·v`` of every sketch in one forward pass, compared with the
    sketches; returns their relative errors, raises :class:`FreivaldsError` for the first one
    above ``tolerance``. The sketches of one call share their boxes; ``engine`` is used unless
    they were placed with their own (a halo crop's)."""
    engine = sketches[0].engine or engine
    v = torch.cat([torch.as_tensor(s.v) for s in sketches]).to(engine.device, engine.dtype)
    with torch.no_grad():
        fv = engine.apply(v, "columns").detach().to(torch.float64).cpu().numpy()
    errs = []
    for n, sk in enumerate(sketches):
        err = sk.compare(fv[n * N_VECTORS:(n + 1) * N_VECTORS])
        if not err <= tolerance:  # NaN fails too
            lhs = "Σ v·column" if sk.analysis == "columns" else "row·v"
            raise FreivaldsError(
                f"the {sk.analysis} of {sk.what} fail their Freivalds check: {lhs} differs from "
                f"F·v by {err:.2e} (relative) > tolerance {tolerance:.2g}; nothing of this block "
                "was written. Compressed probing decoded them wrongly for this model: set "
                "`probing: single` in the config (and please report the model)")
        errs.append(err)
    return errs


def relative_error(lhs: np.ndarray, rhs: np.ndarray) -> float:
    """``‖lhs − rhs‖∞ / max(‖lhs‖∞, ‖rhs‖∞)`` (0 when both vanish)."""
    scale = max(float(np.abs(lhs).max(initial=0.0)), float(np.abs(rhs).max(initial=0.0)))
    return float(np.abs(lhs - rhs).max(initial=0.0)) / scale if scale > 0 else 0.0


def block_sketch(lay, block) -> Sketch:
    """The sketch of one block of compressed probes: ``v`` on the block's selected pixels, placed
    (:meth:`Sketch.place`) on the boxes its passes ran on."""
    from precompute import compressed as Cm

    def mask(box):
        y0, y1, x0, x1 = box
        m = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        a0, a1, b0, b1 = max(block.y0, y0), min(block.y1, y1), max(block.x0, x0), min(block.x1, x1)
        if a1 > a0 and b1 > b0:
            sy = Cm._selected(lay.probe_shape[1], lay.selection, 0, a0, a1)
            sx = Cm._selected(lay.probe_shape[2], lay.selection, 1, b0, b1)
            m[a0 - y0:a1 - y0, b0 - x0:b1 - x0] = sy[:, None] & sx[None, :]
        return m

    return Sketch(lay, mask, (block.by, block.bx),
                  f"block ({block.by}, {block.bx}) (pixels y {block.y0}–{block.y1 - 1}, "
                  f"x {block.x0}–{block.x1 - 1})")


def tile_sketch(lay, tile) -> Sketch:
    """The sketch of one tile of single impulses: ``v`` on the tile's selected pixels."""
    from precompute import probes as P

    mask = np.zeros(lay.probe_shape[1:], dtype=bool)
    pixels = P.tile_pixels(tile, lay.selection)
    if pixels:
        ii, jj = zip(*pixels)
        mask[list(ii), list(jj)] = True
    return Sketch(lay, mask, (tile.ty, tile.tx),
                  f"tile ({tile.ty}, {tile.tx}) (pixels y {tile.y0}–{tile.y1 - 1}, "
                  f"x {tile.x0}–{tile.x1 - 1})", salt=1)


def tolerance(engine) -> float:
    """The gate's tolerance for the engine's dtype and device (TF32 included)."""
    from precompute.interpreter import gate_tolerance, tf32_enabled

    tf32 = engine.dtype == torch.float32 and tf32_enabled(engine.device)
    return gate_tolerance(engine.dtype, tf32)


class Tally:
    """The worst error and the count of checked units per analysis (``attrs.checks``), and the
    seconds the checks' passes took."""

    def __init__(self):
        self.worst: dict[str, float] = {}
        self.units: dict[str, int] = {}
        self.seconds = 0.0

    def check(self, engine, sketches: list) -> list[float]:
        """Check ``sketches`` (one unit's analyses) in one pass; raise on the first failure."""
        import time

        t0 = time.perf_counter()
        try:
            errs = check(engine, sketches, tolerance(engine))
        finally:
            self.seconds += time.perf_counter() - t0
        for sk, err in zip(sketches, errs):
            self.worst[sk.analysis] = max(self.worst.get(sk.analysis, 0.0), err)
            self.units[sk.analysis] = self.units.get(sk.analysis, 0) + 1
        return errs

    def merged(self, checks: dict) -> dict:
        """``checks`` with this process's results added (worst of both, units summed):
        ``freivalds_<analysis>_rel`` and ``freivalds_<analysis>_units``."""
        out = dict(checks)
        for a, err in self.worst.items():
            out[f"freivalds_{a}_rel"] = max(float(out.get(f"freivalds_{a}_rel", 0.0)), err)
            out[f"freivalds_{a}_units"] = float(out.get(f"freivalds_{a}_units", 0.0)) + self.units[a]
        return out


# --- `precompute verify`: the same test over the stored windows --------------------------------


def stored_tile(engine, lay, values: np.ndarray, origin: np.ndarray, outside: np.ndarray,
                tile, tolerance: float) -> tuple[float | None, int, int]:
    """Freivalds' test of one stored tile: ``Σ_j v_j · window_j`` (each window placed at its
    origin) against ``F·v`` (columns) or ``Fᵀ·u`` (rows), for ``N_VECTORS`` random ``v``
    supported on the tile's filters whose window holds the whole filter (stored outside
    fraction exactly 0: nothing of F lies outside, so the sum is the whole of ``F·v``).

    ``values`` (th, tw, C_probe, C_other, wh, ww), ``origin`` (th, tw, 2), ``outside``
    (th, tw, C_probe) are the tile's stored arrays. Returns (relative error or None when no
    window of the tile is full, filters checked, filters stored)."""
    th, tw = origin.shape[:2]
    wh, ww = lay.window
    stored = (origin[..., 0] >= 0)[..., None] & np.isfinite(outside)
    full = stored & (outside == 0)
    n_full, n_stored = int(full.sum()), int(stored.sum())
    if n_full == 0:
        return None, 0, n_stored
    rng = _rng(lay.name, (tile.ty, tile.tx), salt=2)
    v_tile = rng.standard_normal((N_VECTORS, th, tw, lay.probe_shape[0])) * full
    v = np.zeros((N_VECTORS,) + tuple(lay.probe_shape))
    v[:, :, tile.y0:tile.y0 + th, tile.x0:tile.x0 + tw] = v_tile.transpose(0, 3, 1, 2)
    lhs = np.zeros((N_VECTORS,) + tuple(lay.other_shape))
    for y, x in np.argwhere(full.any(-1)):
        oy, ox = origin[y, x]
        win = np.nan_to_num(values[y, x].astype(np.float64))          # (C_p, C_o, wh, ww)
        lhs[:, :, oy:oy + wh, ox:ox + ww] += np.einsum("rc,cohw->rohw", v_tile[:, y, x], win)
    vt = torch.as_tensor(v, device=engine.device).to(engine.dtype)
    with torch.no_grad():
        rhs = engine.apply(vt, lay.name).detach().to(torch.float64).cpu().numpy()
    return relative_error(lhs, rhs), n_full, n_stored
