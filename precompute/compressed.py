"""Compressed probing: one probe carries many impulses, exactly (Curtis–Powell–Reid colouring).

The structural support (:mod:`precompute.support`) bounds, per axis, which input pixels can reach
each output pixel: ``F[(b, p, q), (a, i, j)] ≠ 0`` only if ``i ∈ [lo_y(p), hi_y(p)]`` and
``j ∈ [lo_x(q), hi_x(q)]``, intervals at most ``P = (P_y, P_x)`` wide. Impulses on a lattice of
period P (one lattice per channel, :class:`precompute.probes.Lattice`) therefore never reach a
common output pixel, and one probe ``Σ δ_(a, i, j)`` over a colour class gives every column of the
class at once: the value at output pixel (p, q) belongs to the unique impulse of the class inside
its support box (or is 0). Three methods use this (``attrs.probing.<analysis>.method``):

* ``compressed`` columns: forward probes ``F·Σδ`` (eq. 5), each output pixel decoded to its
  column (:func:`_decode_own`);
* ``compressed`` rows: backward probes ``Fᵀ·Σδ`` over output impulses (eq. 6) on the lattice of
  the column footprints, each input pixel decoded to its row (the same decoder, domains swapped);
* ``from_columns`` rows: forward probes over the input pixels that reach an output block (its
  halo included): the same numbers as the columns, read transposed into the rows of every output
  pixel of the block (:func:`_decode_rows_from_columns`) — no backward pass at all.

Columns are decoded over their whole support even where the stored window is smaller, so the
``*_outside`` fractions are those of the full filter. Work is cut into blocks of ``g × g`` tiles
(:class:`precompute.probes.Block`): a block is coloured on its own (for ``from_columns`` with the
halo of input pixels its rows need), its passes are fixed, its memory is bounded by its windows,
and its tiles go to the writer when the block is done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from precompute import halo as H
from precompute import probes as P
from precompute.errors import UserError

#: relative cost of a backward probe (a row pass keeps the forward's activations)
BACKWARD_COST = 2.0


@dataclass(frozen=True)
class ProbingPlan:
    """How one analysis (``columns`` or ``rows``) is probed: method, lattice period, block side
    in tiles and the kind of passes (``columns``: forward F·v, ``rows``: backward Fᵀ·u)."""

    analysis: str
    method: str
    period: tuple[int, int] = (1, 1)
    block: int = 1
    crop: int = 0  # blocks run on halo crops of x0 starting on multiples of this (0: full image)

    @property
    def kind(self) -> str:
        """The engine pass: forward (``columns``) or backward (``rows``)."""
        if self.method == "single":
            return self.analysis
        return "columns" if self.method in ("from_columns",) or self.analysis == "columns" \
            else "rows"

    def attrs(self) -> dict:
        d: dict = {"method": self.method}
        if self.method != "single":
            d.update(period=list(self.period), block=self.block)
            if self.crop:
                d["crop"] = self.crop
        return d

    @classmethod
    def from_attrs(cls, analysis: str, a: dict) -> "ProbingPlan":
        return cls(analysis, a["method"], tuple(a.get("period", (1, 1))), int(a.get("block", 1)),
                   int(a.get("crop", 0)))


# --- geometry of one axis ------------------------------------------------------------------


def _candidates(lo: np.ndarray, hi: np.ndarray, lat: P.Lattice, key: int) -> np.ndarray:
    """For every interval [lo[u], hi[u]]: its unique lattice pixel of colour ``key`` (intervals
    are at most ``lat.period`` wide), else −1."""
    k = np.maximum(0, -((lat.start - lo) // lat.step))  # first lattice index at or after lo
    k = k + (key - k) % lat.q
    i = lat.start + lat.step * k
    return np.where((i <= hi) & (lo <= hi), i, -1)


def _origins(rule, n: int, scale: float, offset: float, w: int, other: int) -> np.ndarray:
    return np.array([rule(i, scale, offset, w, other) for i in range(n)], dtype=np.int64)


@dataclass
class Geometry:
    """Per-axis tables of one analysis under one method: decode intervals and window origins."""

    lo: tuple[np.ndarray, np.ndarray]      # per index of the decoded domain: probe-domain interval
    hi: tuple[np.ndarray, np.ndarray]
    origin: tuple[np.ndarray, np.ndarray]  # per stored filter index: its window origin


def geometry(lay, support, plan: ProbingPlan) -> Geometry:
    """Decode tables for ``lay`` (a :class:`precompute.layout.Layout`) under ``plan``."""
    rule = P.column_origin if lay.name == "columns" else P.row_origin
    _, ho, wo = lay.other_shape
    _, hp, wp = lay.probe_shape
    origin = (_origins(rule, hp, lay.scale, lay.offset, lay.window[0], ho),
              _origins(rule, wp, lay.scale, lay.offset, lay.window[1], wo))
    if plan.method == "compressed" and lay.name == "rows":
        lo, hi = support.col_lo, support.col_hi  # input pixel → the output impulses reaching it
    else:
        lo, hi = support.row_lo, support.row_hi  # output pixel → the input impulses reaching it
    return Geometry(lo, hi, origin)


# --- the probes of a block -----------------------------------------------------------------


@dataclass(frozen=True)
class BlockProbe:
    """One probe: impulses in ``channel`` at every pixel of ``rows × cols`` (a colour class)."""

    key: tuple[int, int]
    channel: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]


def _lattices(lay, plan: ProbingPlan) -> tuple[P.Lattice, P.Lattice]:
    _, h, w = lay.probe_shape
    if plan.method == "from_columns":
        return P.Lattice(plan.period[0]), P.Lattice(plan.period[1])
    (sy, _, dy), (sx, _, dx) = (P.axis_selection(lay.selection, 0, h),
                                P.axis_selection(lay.selection, 1, w))
    return P.Lattice(plan.period[0], sy, dy), P.Lattice(plan.period[1], sx, dx)


def _impulse_range(lay, plan: ProbingPlan, support, axis: int, b0: int, b1: int) -> tuple[int, int]:
    """Probe-domain pixels [lo, hi) along ``axis`` that carry impulses for block range [b0, b1).

    ``compressed``: the block's selected pixels. ``from_columns``: the input pixels reaching the
    block's selected output pixels (the halo), from the support."""
    size = lay.probe_shape[1 + axis]
    start, stop, step = P.axis_selection(lay.selection, axis, size)
    if plan.method != "from_columns":
        return max(b0, start), min(b1, stop)
    lo, hi = support.row_lo[axis], support.row_hi[axis]
    first = max(b0, start)
    first += (start - first) % step
    us = np.arange(first, min(b1, stop), step)
    us = us[lo[us] <= hi[us]]
    if not len(us):
        return 0, 0
    return int(lo[us].min()), int(hi[us].max()) + 1


def _axis_keys(lay, plan, support, axis: int, b0: int, b1: int, lat: P.Lattice) -> list[int]:
    lo, hi = _impulse_range(lay, plan, support, axis, b0, b1)
    return lat.keys(lo, hi) if hi > lo else []


def block_probes(lay, plan: ProbingPlan, support, block: P.Block) -> list[BlockProbe]:
    """The probes of one block, in a fixed order: colour (y, x), then channel."""
    lat = _lattices(lay, plan)
    ranges = [_impulse_range(lay, plan, support, 0, block.y0, block.y1),
              _impulse_range(lay, plan, support, 1, block.x0, block.x1)]
    channels = lay.other_shape[0] if plan.method == "from_columns" else lay.probe_shape[0]
    out = []
    for ky in (lat[0].keys(*ranges[0]) if ranges[0][1] > ranges[0][0] else []):
        rows = tuple(lat[0].members(*ranges[0], ky))
        for kx in (lat[1].keys(*ranges[1]) if ranges[1][1] > ranges[1][0] else []):
            cols = tuple(lat[1].members(*ranges[1], kx))
            for a in range(channels):
                out.append(BlockProbe((ky, kx), a, rows, cols))
    return out


def count_probes(lay, plan: ProbingPlan, support, blocks: list[P.Block]) -> int:
    """Probes of ``blocks`` without building them (colours per axis × channels)."""
    return sum(count_each(lay, plan, support, blocks))


def count_each(lay, plan: ProbingPlan, support, blocks: list[P.Block],
               axes: "AxisMemo | None" = None) -> list[int]:
    """The probes of every block of ``blocks`` (as :func:`count_probes` of each alone)."""
    axes = axes or AxisMemo(lay, plan, support)
    channels = lay.other_shape[0] if plan.method == "from_columns" else lay.probe_shape[0]
    return [axes.keys(0, b.y0, b.y1) * axes.keys(1, b.x0, b.x1) * channels for b in blocks]


class AxisMemo:
    """Per-axis facts of the blocks of one plan, each computed once per block range: colours
    (probes are their product times the channels) and the halo crop's input range (a crop is
    the product of its axes' ranges, :func:`halo.crop_axis`). Planning a large image visits
    thousands of blocks whose ranges repeat along rows and columns."""

    def __init__(self, lay, plan: ProbingPlan, support):
        self.lay, self.plan, self.support = lay, plan, support
        self.lat = _lattices(lay, plan)
        self._keys: dict = {}
        self._crop: dict = {}

    def keys(self, axis: int, b0: int, b1: int) -> int:
        key = (axis, b0, b1)
        if key not in self._keys:
            self._keys[key] = len(_axis_keys(self.lay, self.plan, self.support, axis, b0, b1,
                                             self.lat[axis]))
        return self._keys[key]

    def crop(self, axis: int, b0: int, b1: int) -> tuple[int, int]:
        """The halo crop's input range ``[c0, c1)`` along ``axis`` for the block range."""
        key = (axis, b0, b1)
        if key not in self._crop:
            imp = _impulse_range(self.lay, self.plan, self.support, axis, b0, b1)
            want = H.needs_axis(self.support, self.plan.kind, self.plan.method, axis, imp, (b0, b1))
            self._crop[key] = H.crop_axis(self.support, self.plan.crop, axis, [want])[0]
        return self._crop[key]

    def crop_hw(self, block: P.Block) -> tuple[int, int]:
        (y0, y1), (x0, x1) = self.crop(0, block.y0, block.y1), self.crop(1, block.x0, block.x1)
        return y1 - y0, x1 - x0


def largest_crop(lay, plan: ProbingPlan, support) -> tuple[int, int] | None:
    """The largest halo crop (height, width) of a block of ``plan`` (None: full-image passes,
    also when some block's crop is the whole image, as :func:`block_crop` then says)."""
    if plan.method == "single" or not plan.crop or support is None or support.is_global:
        return None
    axes = AxisMemo(lay, plan, support)
    tiles = lay.tiles()
    grid = _tile_grid(tiles)
    if grid is None:
        sides = {axes.crop_hw(b) for b in P.blocks(tiles, plan.block)}
    else:  # every pair of a row range and a column range is a block
        ys, xs = ({b1 - b0 for b0, b1 in (axes.crop(ax, *r)
                                          for r in _grouped(grid[ax], plan.block))}
                  for ax in (0, 1))
        sides = {(h, w) for h in ys for w in xs}
    if not sides or tuple(support.in_hw) in sides:
        return None
    return max(h for h, _ in sides), max(w for _, w in sides)


# --- choosing a method ---------------------------------------------------------------------


def block_bytes(lay, g: int, itemsize: int) -> int:
    """Memory of one block of ``g × g`` tiles: windows, origins and float64 norms."""
    side = g * lay.tile
    per_pixel = lay.bytes_per_pixel(itemsize) + 8 + 16 * lay.probe_shape[0]
    return side * side * per_pixel


#: with halo crops, the plan takes the smallest block whose cost is within this factor of the
#: cheapest block that fits the memory budget (margin overhead traded for memory per block)
BLOCK_SLACK = 1.15


def target_needs(lay, plan: ProbingPlan, support, block: P.Block) -> tuple[list, list]:
    """Input and output pixels (per axis) that one block of ``lay`` needs (:func:`halo.needs`)."""
    axes = [(block.y0, block.y1), (block.x0, block.x1)]
    impulses = [_impulse_range(lay, plan, support, ax, *axes[ax]) for ax in (0, 1)]
    return H.needs(support, plan.kind, plan.method, impulses, axes)


def block_crop(support, targets: list) -> "H.Crop | None":
    """The halo crop of x0 serving ``targets`` (one block, or a columns block and the rows block
    sharing its passes); None when their plan runs on the full image or the crop is the image."""
    align = targets[0].plan.crop
    if (not align or support is None or support.is_global
            or any(t.plan.crop != align for t in targets)):
        return None
    crop = H.crop_for(support, align, targets[0].lay.scale,
                      [target_needs(t.lay, t.plan, support, t.block) for t in targets])
    return None if crop.is_full(support.in_hw) else crop


def _crop_share(lay, plan: ProbingPlan, support, block: P.Block,
                axes: "AxisMemo | None" = None) -> float:
    """The fraction of the image one pass of ``block`` runs on (1 without a crop)."""
    if not plan.crop:
        return 1.0
    h, w = support.in_hw
    ch, cw = (axes or AxisMemo(lay, plan, support)).crop_hw(block)
    return (ch * cw) / (h * w)


def _tile_grid(tiles: list[P.Tile]):
    """The planned tiles as a product of tile rows ``{ty: (y0, y1)}`` and columns (a selection
    is separable, so they always are); None if they were not."""
    ys = {t.ty: (t.y0, t.y1) for t in tiles}
    xs = {t.tx: (t.x0, t.x1) for t in tiles}
    return (ys, xs) if len(ys) * len(xs) == len(tiles) else None


def _grouped(ranges: dict, g: int) -> list[tuple[int, int]]:
    """Block ranges along one axis: tile ranges grouped by ``index // g`` (as :func:`P.blocks`)."""
    out: dict[int, tuple[int, int]] = {}
    for i, (a, b) in sorted(ranges.items()):
        lo, hi = out.get(i // g, (a, b))
        out[i // g] = (min(lo, a), max(hi, b))
    return [out[k] for k in sorted(out)]


def _plan_cost(lay, plan: ProbingPlan, support, tiles, grid) -> float:
    """Probes of every block of ``plan`` weighted by their crop's share of the image, in block
    order (the blocks of a product grid are pairs of axis ranges: no Block is built — planning
    a large image tries every block side over thousands of tiles)."""
    axes = AxisMemo(lay, plan, support)
    if grid is None:
        bs = P.blocks(tiles, plan.block)
        return sum(n * _crop_share(lay, plan, support, b, axes)
                   for n, b in zip(count_each(lay, plan, support, bs, axes), bs))
    # Σ_blocks probes · crop area / image area, with both factors products of their axes':
    # (Σ_rows k_y·h_y)·(Σ_cols k_x·w_x)·channels / (H·W), in exact integers, one division
    channels = lay.other_shape[0] if plan.method == "from_columns" else lay.probe_shape[0]
    sums = []
    for ax in (0, 1):
        total = 0
        for b0, b1 in _grouped(grid[ax], plan.block):
            c = axes.crop(ax, b0, b1) if plan.crop else (0, 1)
            total += axes.keys(ax, b0, b1) * (c[1] - c[0])
        sums.append(total)
    area = support.in_hw[0] * support.in_hw[1] if plan.crop else 1
    return sums[0] * sums[1] * channels / area


def choose(lay, support, itemsize: int, budget: int) -> tuple[ProbingPlan, dict[str, float]]:
    """The cheapest exact way to probe ``lay`` given the support (None or global: single).

    Cost = forward probes + ``BACKWARD_COST`` × backward probes, over the planned tiles, each
    probe weighted by the share of the image its pass runs on (a halo crop, :mod:`precompute.halo`,
    when the network has a translation period; else the whole image). The block side: the one
    that minimises the cost within ``budget`` bytes per block — with crops, the smallest within
    ``BLOCK_SLACK`` of that minimum (the margin overhead ``((B + 4R)/B)²`` falls with the side
    B, memory per block grows with it). For rows this compares reading them out of forward probes
    (whether or not columns are stored: the columns are decoded internally, over their whole
    support) with compressed backward passes, which win only for networks that shrink the image.
    Returns the plan and the cost of every candidate method (for the plan paragraph)."""
    tiles = lay.tiles()
    n_single = filters(lay, tiles)
    costs = {"single": n_single * (1.0 if lay.name == "columns" else BACKWARD_COST)}
    best = ProbingPlan(lay.name, "single")
    if support is None or support.is_global or not tiles:
        return best, costs
    align = H.alignment(support, lay.scale)
    candidates = []
    if lay.name == "columns":
        candidates.append(("compressed", support.period_in, 1.0))
    else:
        candidates.append(("from_columns", support.period_in, 1.0))
        candidates.append(("compressed", support.period_out, BACKWARD_COST))
    nty = max(t.ty for t in tiles) + 1
    ntx = max(t.tx for t in tiles) + 1
    g_max = max(nty, ntx)
    grid = _tile_grid(tiles)
    for method, period, weight in candidates:
        found: list[tuple[int, float]] = []
        for g in range(1, g_max + 1):
            if g > 1 and block_bytes(lay, g, itemsize) > budget:
                break
            plan = ProbingPlan(lay.name, method, tuple(period), g, align)
            found.append((g, _plan_cost(lay, plan, support, tiles, grid)))
        low = min(c for _, c in found)
        slack = BLOCK_SLACK if align else 1.0
        best_g, cost = next((g, c) for g, c in found if c <= slack * low)
        costs[method] = cost * weight
        if costs[method] < costs[best.method]:
            best = ProbingPlan(lay.name, method, tuple(period), best_g, align)
    return best, costs


# --- execution -----------------------------------------------------------------------------


def _build(probes: list[BlockProbe], shape: tuple, dtype, device,
           shift: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """The probes as vectors of ``shape``; ``shift``: the full-image pixel of the vectors' pixel
    (0, 0) (a halo crop)."""
    v = torch.zeros((len(probes),) + tuple(shape), dtype=dtype, device=device)
    for k, pr in enumerate(probes):
        r = np.asarray(pr.rows, dtype=np.int64) - shift[0]
        c = np.asarray(pr.cols, dtype=np.int64) - shift[1]
        if len(r) and len(c) and (r.min() < 0 or c.min() < 0 or r.max() >= shape[1]
                                  or c.max() >= shape[2]):
            raise AssertionError("an impulse of a probe lies outside the block's crop")
        v[k, pr.channel, torch.as_tensor(r, device=device)[:, None],
          torch.as_tensor(c, device=device)[None, :]] = 1
    return v


def _take(y: np.ndarray, us: np.ndarray, vs: np.ndarray, off: tuple[int, int]) -> np.ndarray:
    """``y[:, us][:, :, vs]`` for full-image pixels of a probe output that starts at ``off``
    (a halo crop); a pixel outside it is an internal error, never a wrapped-around index."""
    a, b = us - off[0], vs - off[1]
    if (len(a) and (a.min() < 0 or a.max() >= y.shape[1])) or \
            (len(b) and (b.min() < 0 or b.max() >= y.shape[2])):
        raise AssertionError("a decoded pixel lies outside the block's crop")
    return y[:, a][:, :, b]


def _selected(n: int, sel: P.Selection, axis: int, b0: int, b1: int) -> np.ndarray:
    start, stop, step = P.axis_selection(sel, axis, n)
    idx = np.arange(b0, b1)
    return (idx >= start) & (idx < stop) & ((idx - start) % step == 0)


class BlockBuffer:
    """The stored windows of one block being decoded, with origins and float64 norms."""

    def __init__(self, lay, block: P.Block, geo: Geometry, np_dtype):
        self.lay, self.block = lay, block
        bh, bw = block.y1 - block.y0, block.x1 - block.x0
        c_probe = lay.probe_shape[0]
        self.sel_y = _selected(lay.probe_shape[1], lay.selection, 0, block.y0, block.y1)
        self.sel_x = _selected(lay.probe_shape[2], lay.selection, 1, block.x0, block.x1)
        sel = self.sel_y[:, None] & self.sel_x[None, :]
        self.values = np.zeros((bh, bw) + lay.chunk[2:], dtype=np_dtype)
        self.values[~sel] = np.nan
        self.origin = np.full((bh, bw, 2), -1, dtype=np.int32)
        oy = geo.origin[0][block.y0:block.y1]
        ox = geo.origin[1][block.x0:block.x1]
        self.origin[..., 0] = np.where(sel, oy[:, None], -1)
        self.origin[..., 1] = np.where(sel, ox[None, :], -1)
        self.total = np.zeros((bh, bw, c_probe), dtype=np.float64)
        self.outside_sq = np.zeros((bh, bw, c_probe), dtype=np.float64)
        self.selected = sel
        self.sketch = None  # a precompute.freivalds.Sketch fed by the decoders (None: no check)

    def tile(self, t: P.Tile, np_dtype):
        """(values, origin, outside) of one tile of the block, as :func:`tile_arrays` returns."""
        b = self.block
        ys, xs = slice(t.y0 - b.y0, t.y1 - b.y0), slice(t.x0 - b.x0, t.x1 - b.x0)
        tot, out = self.total[ys, xs], self.outside_sq[ys, xs]
        frac = np.where(tot > 0, out / np.where(tot > 0, tot, 1), 0).astype(np_dtype)
        frac[~self.selected[ys, xs]] = np.nan
        return self.values[ys, xs], self.origin[ys, xs], frac


def _decode_own(buf: BlockBuffer, geo: Geometry, lat, y: np.ndarray, pr: BlockProbe,
                off: tuple[int, int] = (0, 0)) -> None:
    """Filters of the probed pixels (columns from forward probes, rows from backward ones).

    ``y`` (C_other, H_o, W_o) is the probe's output; output pixel (u, v) belongs to the impulse
    (i, j) = (candidate of u, candidate of v) of the probe's colour, if both exist."""
    b = buf.block
    wh, ww = buf.lay.window
    cand = []
    for axis, (b0, b1) in enumerate(((b.y0, b.y1), (b.x0, b.x1))):
        c = _candidates(geo.lo[axis], geo.hi[axis], lat[axis], pr.key[axis])
        sel = (c >= b0) & (c < b1)
        if sel.any():
            sel[sel] = (_selected_at(buf, axis, c[sel] - b0))
        cand.append(np.where(sel, c, -1))
    us, vs = np.nonzero(cand[0] >= 0)[0], np.nonzero(cand[1] >= 0)[0]
    if not len(us) or not len(vs):
        return
    sub = _take(y, us, vs, off)                                # (C_o, nu, nv)
    sq = np.square(sub, dtype=np.float64).sum(0)               # (nu, nv)
    bi, bj = cand[0][us] - b.y0, cand[1][vs] - b.x0
    if buf.sketch is not None:  # the whole decoded filters, before windowing (Freivalds)
        buf.sketch.add_own(sub, us, vs, cand[0][us], cand[1][vs], pr.channel)
    dy = us - geo.origin[0][cand[0][us]]
    dx = vs - geo.origin[1][cand[1][vs]]
    iny, inx = (dy >= 0) & (dy < wh), (dx >= 0) & (dx < ww)
    bw = b.x1 - b.x0
    flat = (bi[:, None] * bw + bj[None, :]).ravel()
    n = buf.total.shape[0] * bw
    a = pr.channel
    buf.total[..., a] += np.bincount(flat, sq.ravel(), n).reshape(buf.total.shape[:2])
    outside = sq * ~(iny[:, None] & inx[None, :])
    buf.outside_sq[..., a] += np.bincount(flat, outside.ravel(), n).reshape(buf.total.shape[:2])
    ui, vi = np.nonzero(iny)[0], np.nonzero(inx)[0]
    if len(ui) and len(vi):
        buf.values[bi[ui][:, None], bj[vi][None, :], a, :, dy[ui][:, None], dx[vi][None, :]] = \
            sub[:, ui][:, :, vi].transpose(1, 2, 0)


def _selected_at(buf: BlockBuffer, axis: int, local: np.ndarray) -> np.ndarray:
    return (buf.sel_y if axis == 0 else buf.sel_x)[local]


def _decode_rows_from_columns(buf: BlockBuffer, geo: Geometry, lat, y: np.ndarray,
                              pr: BlockProbe, off: tuple[int, int] = (0, 0)) -> None:
    """Rows of the block's output pixels from a forward probe: output pixel (u, v) holds
    ``F[(b, u, v), (a, i, j)]`` for the probe's impulse (i, j) inside its row support."""
    b = buf.block
    wh, ww = buf.lay.window
    cand, local = [], []
    for axis, (b0, b1) in enumerate(((b.y0, b.y1), (b.x0, b.x1))):
        c = _candidates(geo.lo[axis][b0:b1], geo.hi[axis][b0:b1], lat[axis], pr.key[axis])
        c = np.where(buf.sel_y if axis == 0 else buf.sel_x, c, -1)
        cand.append(c)
        local.append(np.nonzero(c >= 0)[0])
    us, vs = local
    if not len(us) or not len(vs):
        return
    sub = _take(y, b.y0 + us, b.x0 + vs, off)                  # (C', nu, nv)
    if buf.sketch is not None:  # the whole decoded rows, before windowing (Freivalds)
        buf.sketch.add_transposed(sub, b.y0 + us, b.x0 + vs, cand[0][us], cand[1][vs],
                                  pr.channel)
    sq = np.square(sub, dtype=np.float64).transpose(1, 2, 0)   # (nu, nv, C')
    ey = cand[0][us] - geo.origin[0][b.y0 + us]
    ex = cand[1][vs] - geo.origin[1][b.x0 + vs]
    iny, inx = (ey >= 0) & (ey < wh), (ex >= 0) & (ex < ww)
    grid = np.ix_(us, vs)
    buf.total[grid] += sq
    buf.outside_sq[grid] += sq * ~(iny[:, None] & inx[None, :])[..., None]
    ui, vi = np.nonzero(iny)[0], np.nonzero(inx)[0]
    if len(ui) and len(vi):
        buf.values[us[ui][:, None], vs[vi][None, :], :, pr.channel, ey[ui][:, None],
                   ex[vi][None, :]] = sub[:, ui][:, :, vi].transpose(1, 2, 0)


@dataclass
class Target:
    """One block of one analysis decoded from a list of probes."""

    lay: object
    plan: ProbingPlan
    geo: Geometry
    block: P.Block
    buf: BlockBuffer | None = None
    sketch: object = None  # precompute.freivalds.Sketch: checked before the tiles are written
    engine: object = None  # the engine its passes ran on (the block's halo crop or the image)


def run_probes(engine, support, probes: list[BlockProbe], targets: list[Target], k: int,
               np_dtype, on_pass: Callable[[int, int], None] | None = None,
               stats: dict | None = None) -> list[Target]:
    """Run ``probes`` in passes of ``k`` (fixed) and decode every pass into every target's
    block (several targets share passes when their probes are the same: a columns block and the
    rows block read out of the same columns)."""
    import time

    stats = {} if stats is None else stats
    kind = targets[0].plan.kind
    engine, shift, off = block_engine(engine, support, targets, stats)
    shape = engine.in_shape if kind == "columns" else engine.out_shape
    # full-image boxes of the passes' input and output (the crop's, or the whole image)
    (iy, ix), (oy, ox) = (shift, off) if kind == "columns" else (off, shift)
    in_box = (iy, iy + engine.in_shape[1], ix, ix + engine.in_shape[2])
    out_box = (oy, oy + engine.out_shape[1], ox, ox + engine.out_shape[2])
    decoders = []
    for t in targets:
        t.engine = engine
        t.buf = BlockBuffer(t.lay, t.block, t.geo, np_dtype)
        if t.sketch is not None:  # checked on the boxes the block ran on (Freivalds)
            t.sketch.place(in_box, out_box, engine)
        t.buf.sketch = t.sketch
        decoders.append((_decode_rows_from_columns if t.plan.method == "from_columns"
                         else _decode_own, t, _lattices(t.lay, t.plan)))
    done = 0
    for group in P.passes(probes, k):
        t0 = time.perf_counter()
        out = engine.run(list(group), kind,
                         lambda part: _build(part, shape, engine.dtype, engine.device, shift))
        if not torch.isfinite(out).all():
            b = targets[0].block
            raise UserError(f"the interpreter produced NaN/Inf in a compressed "
                            f"{targets[0].lay.name} probe (block {b.by}, {b.bx}); nothing of "
                            "this block was stored")
        y = out.detach().cpu().numpy()
        t1 = time.perf_counter()
        for n, pr in enumerate(group):
            for decode, t, lat in decoders:
                decode(t.buf, t.geo, lat, y[n], pr, off)
        t2 = time.perf_counter()
        stats["passes"] = stats.get("passes", 0.0) + t1 - t0
        stats["decode"] = stats.get("decode", 0.0) + t2 - t1
        done += len(group)
        if on_pass is not None:
            on_pass(done, len(probes))
    return targets


def pairs(cols_lay, cols_plan: ProbingPlan, rows_lay, rows_plan: ProbingPlan) -> bool:
    """Can rows read out of columns share the passes of the columns blocks on halo crops? Both
    on crops of one lattice and period, every input pixel selected (one lattice for both), and a
    rows block that covers exactly the outputs of a columns block (integer scale)."""
    s = H._fraction(cols_lay.scale)
    return (cols_plan.method == "compressed" and rows_plan.method == "from_columns"
            and cols_plan.crop and cols_plan.crop == rows_plan.crop
            and tuple(cols_plan.period) == tuple(rows_plan.period)
            and cols_lay.selection == P.Selection() and s is not None and s.denominator == 1
            and rows_plan.block * rows_lay.tile == s * cols_plan.block * cols_lay.tile)


def paired_probes(cols_lay, cols_plan: ProbingPlan, rows_lay, rows_plan: ProbingPlan, support,
                  cblk: P.Block, rblk: P.Block) -> list[BlockProbe]:
    """The probes a columns block and its rows block share: every colour of the lattice over
    the union of the columns' impulses and the rows' halo, per axis (an impulse outside a block
    is harmless to its decoder: footprints of one colour never meet)."""
    lat = _lattices(cols_lay, cols_plan)
    ranges = []
    for ax, (c, r) in enumerate((((cblk.y0, cblk.y1), (rblk.y0, rblk.y1)),
                                 ((cblk.x0, cblk.x1), (rblk.x0, rblk.x1)))):
        rng = H._union(_impulse_range(cols_lay, cols_plan, support, ax, *c),
                       _impulse_range(rows_lay, rows_plan, support, ax, *r))
        ranges.append(rng or (0, 0))
    out = []
    for ky in (lat[0].keys(*ranges[0]) if ranges[0][1] > ranges[0][0] else []):
        rows = tuple(lat[0].members(*ranges[0], ky))
        for kx in (lat[1].keys(*ranges[1]) if ranges[1][1] > ranges[1][0] else []):
            cols = tuple(lat[1].members(*ranges[1], kx))
            for a in range(cols_lay.probe_shape[0]):
                out.append(BlockProbe((ky, kx), a, rows, cols))
    return out


def block_engine(engine, support, targets: list, stats: dict | None = None):
    """(engine, shift, offset) for the passes of ``targets``: the interpreter on the block's halo
    crop of x0 (:mod:`precompute.halo`) with the full-image pixel of the crop's (0, 0) in the
    probe domain (``shift``) and in the probes' output domain (``offset``), or the full image's
    engine and (0, 0) twice when the plan has no crop or the crop's f(x0) differs from the full
    image's (``stats["crop_fallback"]`` then says why)."""
    crop = block_crop(support, targets)
    if crop is None:
        return engine, (0, 0), (0, 0)
    sub = H.crop_engine(engine, crop)
    why = H.mismatch(engine, sub, crop)
    if why is not None:
        if stats is not None:
            stats.setdefault("crop_fallback", why)
        return engine, (0, 0), (0, 0)
    if stats is not None:
        stats["crop_pixels"] = max(stats.get("crop_pixels", 0), crop.area)
    forward = targets[0].plan.kind == "columns"
    return (sub, crop.offset("input" if forward else "output"),
            crop.offset("output" if forward else "input"))


def block_arrays(engine, support, lay, block: P.Block, plan: ProbingPlan, geo: Geometry, k: int,
                 np_dtype, on_pass: Callable[[int, int], None] | None = None,
                 stats: dict | None = None) -> BlockBuffer:
    """Compute one block: its probes in passes of ``k`` (fixed), decoded into its windows.

    ``on_pass(done, total)`` is called after every pass with the probes done so far; ``stats``
    (optional) accumulates seconds in ``passes`` (the engine, including the copy to the host)
    and ``decode``."""
    probes = block_probes(lay, plan, support, block)
    (t,) = run_probes(engine, support, probes, [Target(lay, plan, geo, block)], k, np_dtype,
                      on_pass, stats)
    return t.buf


def filters(lay, tiles) -> int:
    """Filters (pixel × channel of the probed domain) stored by ``tiles``."""
    return sum(P.tile_count(t, lay.selection) for t in tiles) * lay.probe_shape[0]


def passes_of(n_probes: int, k: int) -> int:
    return math.ceil(n_probes / max(k, 1))


def valid(plan: ProbingPlan, support) -> bool:
    """Does ``support`` allow ``plan``'s lattice (for a store started earlier)?"""
    if plan.method == "single":
        return True
    if support is None or support.is_global:
        return False
    need = support.period_out if (plan.method == "compressed" and plan.analysis == "rows") \
        else support.period_in
    return all(n <= p for n, p in zip(need, plan.period))
