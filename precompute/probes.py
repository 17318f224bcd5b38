"""The probe plan: pure functions, no torch, no I/O.

Which pixels are computed, how they are cut into tiles (one tile = one shard of the store),
which probes share a pass, and where each stored window lies. The execution lives in
:mod:`precompute.engine` and :mod:`precompute.sweep`.

A *probe* here is one impulse δ_k (paper §3, "Residual and Columns" / "Transposed System and
Rows"): for columns an impulse at input entry (a, i, j) fed as x1 (eq. 5, column = F·δ_k), for
rows an impulse at output entry (b, p, q) fed as y2 (eq. 6, row = Fᵀ·δ_k). Compressed probing
(:mod:`precompute.compressed`) lets one probe carry every impulse of a colour class: its plan —
blocks of tiles and the lattice colours of one axis — is at the end of this module.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

# Shards above this size make the writer hold too much memory and compress slowly per call.
SHARD_BYTES_LIMIT = 64 * 2**20


@dataclass(frozen=True)
class Tile:
    """Pixels [y0, y1) × [x0, x1) of one domain; (ty, tx) is its index in the shard grid."""

    ty: int
    tx: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0)


@dataclass(frozen=True)
class Probe:
    """One impulse: pixel (i, j) and channel ``c`` of the probed domain; ``flat`` its C-order
    index in (C, H, W)."""

    i: int
    j: int
    c: int
    flat: int


@dataclass(frozen=True)
class Selection:
    """Pixels to compute: those in ``region`` [top, left, h, w] (None: all) on the ``stride``
    lattice anchored at the region's top-left corner."""

    region: tuple[int, int, int, int] | None = None
    stride: int = 1

    def contains(self, i: int, j: int) -> bool:
        top, left = (self.region[0], self.region[1]) if self.region else (0, 0)
        if self.region is not None:
            _, _, h, w = self.region
            if not (top <= i < top + h and left <= j < left + w):
                return False
        return (i - top) % self.stride == 0 and (j - left) % self.stride == 0

    def as_list(self, height: int, width: int) -> list[int]:
        """The region as stored in attrs (the whole domain when None)."""
        return list(self.region) if self.region is not None else [0, 0, height, width]


def scaled_selection(sel: Selection, scale: float) -> Selection:
    """The output-pixel selection covering an input-pixel selection (rows use output pixels)."""
    if sel.region is None:
        return Selection(None, sel.stride)
    top, left, h, w = sel.region
    s = Fraction(scale)
    return Selection(
        (
            math.floor(top * s),
            math.floor(left * s),
            math.ceil((top + h) * s) - math.floor(top * s),
            math.ceil((left + w) * s) - math.floor(left * s),
        ),
        sel.stride,
    )


def tile_grid(height: int, width: int, t: int) -> tuple[int, int]:
    return (-(-height // t), -(-width // t))


def tiles(height: int, width: int, t: int) -> list[Tile]:
    """All tiles of side ``t`` covering a height × width grid, row-major (the last ones may be
    smaller)."""
    nty, ntx = tile_grid(height, width, t)
    return [
        Tile(ty, tx, ty * t, min(height, (ty + 1) * t), tx * t, min(width, (tx + 1) * t))
        for ty in range(nty)
        for tx in range(ntx)
    ]


def axis_members(sel: Selection, axis: int, lo: int, hi: int) -> range:
    """Selected coordinates in [lo, hi) along ``axis`` (0: y, 1: x). A selection is separable
    (region × stride lattice per axis), so a tile's pixels are the product of two of these."""
    start = sel.region[axis] if sel.region is not None else 0
    stop = start + sel.region[axis + 2] if sel.region is not None else hi
    first = max(lo, start)
    first += (start - first) % sel.stride
    return range(first, min(hi, stop), sel.stride)


def tile_pixels(tile: Tile, sel: Selection) -> list[tuple[int, int]]:
    """Selected pixels of a tile, row-major."""
    ys = axis_members(sel, 0, tile.y0, tile.y1)
    xs = axis_members(sel, 1, tile.x0, tile.x1)
    return [(i, j) for i in ys for j in xs]


def tile_count(tile: Tile, sel: Selection) -> int:
    """How many pixels of a tile are selected (``len(tile_pixels(tile, sel))``, in O(1))."""
    return len(axis_members(sel, 0, tile.y0, tile.y1)) * len(axis_members(sel, 1, tile.x0, tile.x1))


def planned_tiles(height: int, width: int, t: int, sel: Selection) -> list[Tile]:
    """Tiles with at least one selected pixel; only these are ever written."""
    return list(_planned(height, width, t, sel))


@functools.lru_cache(maxsize=16)
def _planned(height: int, width: int, t: int, sel: Selection) -> tuple[Tile, ...]:
    # a plan asks for the tiles of an analysis a dozen times: 150,000 of them for the rows of a
    # 2048² image (×3); tiles are frozen, the list handed out is a fresh one
    ys = [(ty, ty * t, min(height, (ty + 1) * t)) for ty in range(-(-height // t))]
    xs = [(tx, tx * t, min(width, (tx + 1) * t)) for tx in range(-(-width // t))]
    ys = [y for y in ys if len(axis_members(sel, 0, y[1], y[2]))]
    xs = [x for x in xs if len(axis_members(sel, 1, x[1], x[2]))]
    return tuple(Tile(ty, tx, y0, y1, x0, x1) for ty, y0, y1 in ys for tx, x0, x1 in xs)


def tile_probes(tile: Tile, channels: int, height: int, width: int, sel: Selection) -> list[Probe]:
    """The impulses of one tile: selected pixels row-major, channels innermost."""
    return [
        Probe(i, j, c, (c * height + i) * width + j)
        for (i, j) in tile_pixels(tile, sel)
        for c in range(channels)
    ]


def passes(probes: Sequence[Probe], k: int) -> list[tuple[Probe, ...]]:
    """Consecutive groups of at most ``k`` probes; each group is one batched pass.

    The grouping depends only on the tile and ``k``, so a resumed run repeats exactly the passes
    of an uninterrupted one (batched kernels may round differently for different batch sizes).
    """
    if k < 1:
        raise ValueError("k must be ≥ 1")
    return [tuple(probes[s : s + k]) for s in range(0, len(probes), k)]


def share(items: Sequence, index: int, count: int) -> list:
    """Round-robin share ``index`` of ``count`` (``--shard I/N``); shares are disjoint and cover
    all items, and neighbouring tiles go to different processes (balances borders/centre)."""
    if not (0 <= index < count):
        raise ValueError(f"shard index {index} not in 0…{count - 1}")
    return [x for n, x in enumerate(items) if n % count == index]


# ---------------------------------------------------------------------------------------------
# Windows (docs/FORMAT.md, "Geometry").


def window_side(window: int | str, size: int) -> int:
    """Stored window side along one axis: ``size`` for 'full', else clamped to ``size``."""
    return size if window == "full" else min(int(window), size)


def _origin(centre: Fraction, w: int, size: int) -> int:
    return min(max(math.floor(centre - Fraction(w, 2)), 0), size - w)


def column_origin(i: int, scale: float, offset: float, w: int, out_size: int) -> int:
    """Column window origin on one axis: clip(floor(s·(i + ½) + o − w/2), 0, H' − w).

    Computed with exact rationals so that no float rounding moves a window by one pixel.
    """
    s, o = Fraction(scale), Fraction(offset)
    return _origin(s * (i + Fraction(1, 2)) + o, w, out_size)


def row_origin(p: int, scale: float, offset: float, w: int, in_size: int) -> int:
    """Row window origin on one axis: clip(floor((p + ½ − o)/s − w/2), 0, H − w)."""
    s, o = Fraction(scale), Fraction(offset)
    return _origin((p + Fraction(1, 2) - o) / s, w, in_size)


def auto_tile(bytes_per_pixel: int, height: int, width: int, limit: int = SHARD_BYTES_LIMIT) -> int:
    """Largest power-of-two tile side ≤ 16 whose shard stays under ``limit`` bytes, and no larger
    than needed to cover the domain."""
    t = 16
    while t > 1 and (t * t * bytes_per_pixel > limit or (t // 2 >= max(height, width))):
        t //= 2
    return t


# ---------------------------------------------------------------------------------------------
# Compressed probing (docs/FORMAT.md, "Probing"): blocks of tiles, lattice colours.


@dataclass(frozen=True)
class Block:
    """``g × g`` tiles computed together (one colouring); (by, bx) is its index in the block grid.

    Pixels [y0, y1) × [x0, x1) of the probed domain; ``tiles`` are its planned tiles, row-major.
    Blocks are the unit of work of compressed probing, as tiles are of single probing: a block is
    always computed whole (the same passes however much of it is already on disk), so a resumed
    run repeats exactly the passes of an uninterrupted one.
    """

    by: int
    bx: int
    y0: int
    y1: int
    x0: int
    x1: int
    tiles: tuple[Tile, ...]


def blocks(planned: Sequence[Tile], g: int) -> list[Block]:
    """Group planned tiles into blocks of ``g × g`` tiles (row-major; only non-empty blocks)."""
    groups: dict[tuple[int, int], list[Tile]] = {}
    for t in planned:
        groups.setdefault((t.ty // g, t.tx // g), []).append(t)
    out = []
    for (by, bx), ts in sorted(groups.items()):
        out.append(Block(by, bx, min(t.y0 for t in ts), max(t.y1 for t in ts),
                         min(t.x0 for t in ts), max(t.x1 for t in ts), tuple(ts)))
    return out


def axis_selection(sel: Selection, axis: int, size: int) -> tuple[int, int, int]:
    """(start, stop, step) of the selected pixels along ``axis`` (0: y, 1: x)."""
    if sel.region is None:
        return 0, size, sel.stride
    start, extent = sel.region[axis], sel.region[axis + 2]
    return start, start + extent, sel.stride


@dataclass(frozen=True)
class Lattice:
    """Colours of one axis: the pixel ``start + step·k`` has colour ``k mod q`` with
    ``q = ceil(period / step)``, so two pixels of one colour are at least ``period`` apart —
    further than any support (``period``): their footprints never meet."""

    period: int
    start: int = 0
    step: int = 1

    @property
    def q(self) -> int:
        return max(1, -(-self.period // self.step))

    def _k_range(self, lo: int, hi: int) -> tuple[int, int]:
        """Lattice indices k with lo ≤ start + step·k < hi (and k ≥ 0)."""
        k0 = max(0, -((self.start - lo) // self.step))
        k1 = -((self.start - hi) // self.step)
        return k0, max(k0, k1)

    def keys(self, lo: int, hi: int) -> list[int]:
        """Sorted colours of the lattice pixels in [lo, hi)."""
        k0, k1 = self._k_range(lo, hi)
        return sorted({k % self.q for k in range(k0, min(k1, k0 + self.q))})

    def members(self, lo: int, hi: int, key: int) -> list[int]:
        """Lattice pixels of colour ``key`` in [lo, hi)."""
        k0, k1 = self._k_range(lo, hi)
        first = k0 + (key - k0) % self.q
        return [self.start + self.step * k for k in range(first, k1, self.q)]
