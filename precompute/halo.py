"""Halo-cropped blocks: a block of compressed probing computed on a crop of x0 (block + margin).

Why it is exact. Let the structural support (:mod:`precompute.support`) say that output pixel p
depends on the input pixels of the box ``rf(p) = [row_lo(p), row_hi(p)]`` (per axis). Every unit
u of the network that feeds p structurally has ``rf(u) ⊆ rf(p)`` (an input reaching u reaches p
through u), and the frozen decision of u (a ReLU mask, a max-pool choice, paper eq. 3) is a
function of x0 on ``rf(u)``. So row p of F(x0) (eq. 5) — weights times decisions along the paths
into p — is a function of x0 on ``rf(p)`` only. On a crop of x0 that contains ``rf(p)`` and
starts on the network's translation lattice (a multiple ``A`` of every stride, found from the
support's period, :func:`alignment`), the crop's interpreter computes the same row: every unit on
a path into p sees the same inputs (a unit next to a crop edge that is not an image edge would
see padding instead of pixels, but then its own ``rf`` reaches beyond the crop and it does not
feed p; at an image edge the crop edge *is* the image edge and the padding is the same).

Hence a block needs a crop that contains, per axis,

* the input pixels that carry its impulses (forward probes) or that its rows are read at
  (backward probes), and
* ``rf(p)`` of every output pixel p it reads (the columns' footprints of its input pixels, or its
  own output pixels for rows),

which is the block plus about 2R input pixels (forward columns: footprint R/2 then its row
support R/2 on each side) — memory and time per block are those of the crop, independent of the
image, and the total cost is linear in pixels with the overhead ``((B + 4·R/2)/B)²``.

Fail closed: the crop's f(x0) must equal the full image's f(x0) at every output pixel the block
reads (to round-off, :data:`CHECK_EPS`); otherwise — a network that is not translation-equivariant
in a way the support cannot see (normalisation statistics frozen over the whole image, a stride
hidden in an index op) — the block runs on the full image and the run says so.

``LINEARSCOPE_HALO=off`` plans full-image blocks (new stores only; a store records its choice as
``attrs.probing.<analysis>.crop``): the reference the tests compare crops with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

#: largest translation period (input pixels) searched for; beyond, blocks run on the full image
MAX_ALIGN = 64
#: relative tolerance of the crop's f(x0) against the full image's (×eps of the dtype): a crop
#: on the wrong lattice or a global statistic gives errors of order 1
CHECK_EPS = 2**10


def _fraction(scale: float | None) -> Fraction | None:
    if scale is None:
        return None
    return Fraction(scale).limit_denominator(1000)


def _periodic(lo: np.ndarray, hi: np.ndarray, n_in: int, a: int, b: int) -> bool | None:
    """Is ``[lo(p), hi(p)]`` shifted by ``a`` input pixels when p moves by ``b`` output pixels,
    for every interior p (intervals at least one support width away from the image's edges)?
    None when the image has no interior long enough to tell (less than one period of pairs)."""
    width = int((hi - lo + 1).max(initial=1))
    ok = (lo <= hi) & (lo >= width) & (hi <= n_in - 1 - width)
    p = np.nonzero(ok[:-b] & ok[b:])[0] if b < len(ok) else np.array([], dtype=int)
    if len(p) < b:
        return None
    return bool(np.all(lo[p + b] == lo[p] + a) and np.all(hi[p + b] == hi[p] + a))


def alignment(support, scale: float | None, too_small: int | None = 0) -> int | None:
    """The smallest translation period A (input pixels, same on both axes) of the network: the
    support of output pixel p + A·scale is that of p shifted by A, in the interior of the image.
    0 when there is none up to :data:`MAX_ALIGN` (blocks then run on the full image), ``too_small``
    when the image has too little interior to tell. Crops start on multiples of A, so strided layers stay aligned."""
    s = _fraction(scale)
    if (support is None or support.is_global or s is None or s <= 0
            or os.environ.get("LINEARSCOPE_HALO") == "off"):
        return 0
    for a in range(1, MAX_ALIGN + 1):
        b = a * s
        if b.denominator != 1:
            continue
        votes = [_periodic(support.row_lo[ax], support.row_hi[ax], support.in_hw[ax], a,
                           int(b)) for ax in (0, 1)]
        if None in votes:
            return too_small
        if all(votes):
            return a
    return 0


@dataclass(frozen=True)
class Crop:
    """Input pixels ``[y0, y1) × [x0, x1)`` of x0 and, for the crop's output pixel (0, 0), the
    full image's output pixel ``(oy, ox)``; ``check``: the output box ``(y0, y1, x0, x1)``
    whose f(x0) the crop must reproduce."""

    y0: int
    y1: int
    x0: int
    x1: int
    oy: int
    ox: int
    check: tuple[int, int, int, int]

    @property
    def area(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)

    def is_full(self, in_hw: tuple[int, int]) -> bool:
        return (self.y0, self.x0, self.y1, self.x1) == (0, 0, *in_hw)

    def offset(self, domain: str) -> tuple[int, int]:
        """Full-image coordinates of the crop's pixel (0, 0) in the ``input``/``output`` domain."""
        return (self.y0, self.x0) if domain == "input" else (self.oy, self.ox)


def _hull(lo: np.ndarray, hi: np.ndarray, a: int, b: int) -> tuple[int, int] | None:
    """[min lo, max hi + 1) over indices [a, b) with a non-empty interval (None: none)."""
    if b <= a:
        return None
    l, h = lo[a:b], hi[a:b]
    ok = l <= h
    if not ok.any():
        return None
    return int(l[ok].min()), int(h[ok].max()) + 1


def _union(*ranges):
    rs = [r for r in ranges if r is not None and r[1] > r[0]]
    if not rs:
        return None
    return min(r[0] for r in rs), max(r[1] for r in rs)


def needs_axis(support, kind: str, method: str, ax: int, impulse: tuple, block_axis: tuple):
    """Along axis ``ax``: (input pixels, output pixels) one target of a block needs (see
    :func:`needs`; the support is separable, so the axes are independent)."""
    lo_i, hi_i = impulse
    if method == "from_columns":
        return (lo_i, hi_i), block_axis
    if kind == "columns":
        return (lo_i, hi_i), _hull(support.col_lo[ax], support.col_hi[ax], lo_i, hi_i)
    # compressed backward rows: output impulses, read at the inputs they reach
    return _hull(support.row_lo[ax], support.row_hi[ax], *block_axis), block_axis


def needs(support, kind: str, method: str, impulses: list, block_axes: list) -> tuple[list, list]:
    """Per axis, the input pixels and the output pixels one target of a block needs.

    ``impulses``: per axis the probe-domain range ``[lo, hi)`` that carries impulses;
    ``block_axes``: per axis the block's probe-domain range. Forward columns: the impulses'
    inputs and their footprints' outputs; rows read out of columns: the impulses (the halo) and
    the block's outputs; backward rows: the block's outputs and the inputs its rows are read at."""
    per = [needs_axis(support, kind, method, ax, impulses[ax], block_axes[ax]) for ax in (0, 1)]
    return [p[0] for p in per], [p[1] for p in per]


def crop_axis(support, align: int, ax: int, wants: list[tuple]) -> tuple[tuple, tuple]:
    """Along axis ``ax``: the crop's input range ``[c0, c1)`` and the output range it must
    reproduce, for targets whose needs along this axis are ``wants`` ((inputs, outputs) pairs)."""
    n = support.in_hw[ax]
    rng = _union(*[w[0] for w in wants],
                 *[_hull(support.row_lo[ax], support.row_hi[ax], *w[1])
                   for w in wants if w[1] is not None])
    outs = _union(*[w[1] for w in wants])
    if rng is None:
        rng = (0, n)
    c0 = (rng[0] // align) * align
    c1 = min(n, -(-rng[1] // align) * align)
    return (c0, c1), (outs if outs is not None else (0, 0))


def crop_for(support, align: int, scale: float, wants: list[tuple[list, list]]) -> Crop:
    """The crop of x0 that serves every target of a block (``wants``: their :func:`needs`):
    per axis the hull of their inputs and of ``rf(p)`` of their outputs, widened to multiples of
    ``align`` (clipped to the image)."""
    s = _fraction(scale)
    box, out_box = zip(*[crop_axis(support, align, ax, [(w[0][ax], w[1][ax]) for w in wants])
                         for ax in (0, 1)])
    (y0, y1), (x0, x1) = box
    oy, ox = y0 * s, x0 * s
    assert oy.denominator == 1 and ox.denominator == 1, "crop off the translation lattice"
    return Crop(y0, y1, x0, x1, int(oy), int(ox),
                (out_box[0][0], out_box[0][1], out_box[1][0], out_box[1][1]))


def crop_engine(engine, crop: Crop):
    """An engine of the interpreter at the crop of x0 (same model, rules and batch; the process's
    precision settings as they are)."""
    from precompute.engine import Engine
    from precompute.interpreter import LinearInterpreter

    li = engine.li
    x = li.x0[..., crop.y0:crop.y1, crop.x0:crop.x1]
    sub = LinearInterpreter(li.model, x, rule=li.rule, overrides=li.overrides, batch=li.batch,
                            exact=False)
    eng = Engine(sub, engine.device, engine.dtype)
    eng.max_k = engine.max_k
    return eng


def mismatch(engine, sub, crop: Crop) -> str | None:
    """None when the crop's f(x0) equals the full image's at the outputs the block reads (to
    ``CHECK_EPS``·eps relative), else what differs (the block then runs on the full image)."""
    y0, y1, x0, x1 = crop.check
    if y1 <= y0 or x1 <= x0:
        return None
    # the plain model's f(x0) when the engine has it (the whole image's scoped f(x0) would
    # need a pass of the whole image; the gate proves the two equal)
    ref = getattr(engine, "f_x0", None)
    full = (ref if ref is not None else engine.li.output)[:, y0:y1, x0:x1]
    h, w = sub.li.output.shape[1:]
    a0, b0 = y0 - crop.oy, x0 - crop.ox
    if a0 < 0 or b0 < 0 or a0 + (y1 - y0) > h or b0 + (x1 - x0) > w:
        return (f"the crop's output ({h}×{w} px from ({crop.oy}, {crop.ox})) does not cover the "
                f"output pixels [{y0}, {y1}) × [{x0}, {x1})")
    part = sub.li.output[:, a0:a0 + (y1 - y0), b0:b0 + (x1 - x0)]
    err = float((part - full).abs().max())
    ref = float(full.abs().max())
    eps = CHECK_EPS * torch.finfo(full.dtype).eps
    if err > eps * max(ref, 1e-300):
        return (f"f(x0) on the crop differs from the full image's by {err:.3g} (relative "
                f"{err / max(ref, 1e-300):.3g})")
    return None
