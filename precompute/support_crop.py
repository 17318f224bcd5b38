"""The structural support of a large image from the analysis of a small one (translation).

The line probes of :func:`precompute.support.analyse` are whole images: at 1024² px they cost
minutes. But the support of a translation-equivariant network does not grow with the image: in
the interior, output pixel p + A·scale depends on the input pixels of p shifted by A (A the
network's translation period, :func:`precompute.halo.alignment`), and only the edges (where
padding acts) differ. So the network is analysed on an image of ``S × S`` px (S ≥ twice the
edge bands plus a few periods, and ``S ≡ H (mod A)`` so that its far edges sit on the lattice as
the image's do), and the image's support is assembled from it:

* output pixels of the first half of the small image's output: its intervals as they are (the
  start edges are the same);
* output pixels of its second half, moved to the end of the image: its intervals moved by
  ``H − S`` (the end edges are the same);
* every other output pixel: an interior interval of the middle of the small image moved by
  whole periods.

Checks, fail closed: the small image's interior must be periodic with period A over its whole
middle (else its edges reach too far: S doubles), the assembly must reproduce every interval of
the small image it could also have taken from the middle, and :func:`precompute.support.
cross_check` proves the small image's support against real columns and rows of the interpreter
on the image's top-left ``S × S`` crop of x0 (an image of that size, edges included). A network
without a detectable translation period, or whose small image's support is global, is analysed
on the full image.
"""

from __future__ import annotations

import numpy as np

from precompute import halo as H
from precompute import support as Sup

#: the first side tried for the small image (input px); doubled while too small
FIRST_SIDE = 96


def _side(n: int, want: int, align: int) -> int:
    """The smallest side ≥ ``want`` with ``side ≡ n (mod align)``, at most ``n``."""
    if want >= n:
        return n
    return min(n, want + (n - want) % align) if align else n


def _extend(lo: np.ndarray, hi: np.ndarray, s: int, n: int, a: int, b: int, n_out: int):
    """Intervals of an image of ``n`` px (``n_out`` output px) from those of one of ``s`` px
    (translation period ``a`` input px = ``b`` output px); None when the small image cannot
    vouch for them (its middle not periodic)."""
    s_out = len(lo)
    if s == n and s_out == n_out:
        return lo.astype(np.int64), hi.astype(np.int64)
    half = s_out // 2
    width = int((hi - lo + 1).max(initial=1))
    interior = (lo <= hi) & (lo >= width) & (hi <= s - 1 - width)
    # the reference period: b interior output pixels around the middle
    m = half - b // 2
    if m < 0 or m + 2 * b > s_out or not interior[m:m + 2 * b].all():
        return None
    if not (np.all(lo[m + b:m + 2 * b] == lo[m:m + b] + a)
            and np.all(hi[m + b:m + 2 * b] == hi[m:m + b] + a)):
        return None
    p = np.arange(n_out)
    k = (p - m) // b
    out_lo, out_hi = lo[m + (p - m) % b] + k * a, hi[m + (p - m) % b] + k * a
    # the small image's own intervals, wherever the middle rule could stand for them
    q = np.arange(s_out)
    kq = (q - m) // b
    mid_lo, mid_hi = lo[m + (q - m) % b] + kq * a, hi[m + (q - m) % b] + kq * a
    if not (np.all(mid_lo[interior] == lo[interior]) and np.all(mid_hi[interior] == hi[interior])):
        return None
    out_lo[:half], out_hi[:half] = lo[:half], hi[:half]
    shift_out, shift_in = n_out - s_out, n - s
    tail = slice(half, s_out)
    empty = lo[tail] > hi[tail]
    out_lo[half + shift_out:] = np.where(empty, lo[tail], lo[tail] + shift_in)
    out_hi[half + shift_out:] = np.where(empty, hi[tail], hi[tail] + shift_in)
    return out_lo.astype(np.int64), out_hi.astype(np.int64)


def analyse(model, in_shape, dtype, device, scale: float | None, out_hw: tuple[int, int],
            rule: str = "freeze", batch: int = 16, overrides: dict | None = None):
    """``(support, small)``: the support of ``model`` on ``in_shape`` (C, H, W), whose output is
    ``out_hw``, and the small image's support it was assembled from (None when it was analysed on
    the full image). The caller cross-checks ``small`` on the ``small.in_hw`` top-left crop of
    x0."""
    c, h, w = (int(v) for v in in_shape)
    s = H._fraction(scale)
    want = FIRST_SIDE
    align = 1
    for _ in range(8):
        if s is None or want >= max(h, w) // 2:
            break
        sy, sx = _side(h, want, align), _side(w, want, align)
        small = Sup.analyse(model, (c, sy, sx), dtype, device, rule=rule, batch=batch,
                            overrides=overrides)
        if small.is_global:
            break
        a = H.alignment(small, scale, too_small=None)
        if a is None:  # too little interior to tell: a larger small image
            want *= 2
            continue
        if not a:
            break
        if (h - sy) % a or (w - sx) % a:  # the far edges off the lattice: resize once
            align = a
            continue
        b = a * s
        ho, wo = out_hw
        # the far edges of the image are those of the small image moved by whole periods
        if b.denominator != 1 or any((n - m) * s != n_o - m_o for n, m, n_o, m_o in
                                     ((h, sy, ho, small.out_hw[0]), (w, sx, wo, small.out_hw[1]))):
            break
        axes = [_extend(small.row_lo[ax], small.row_hi[ax], (sy, sx)[ax], (h, w)[ax], a, int(b),
                        int((ho, wo)[ax])) for ax in (0, 1)]
        if None in axes:
            want *= 2
            align = a
            continue
        sup = Sup.Support((h, w), (int(ho), int(wo)))
        sup.row_lo, sup.row_hi = (axes[0][0], axes[1][0]), (axes[0][1], axes[1][1])
        cy, cyh = Sup._transpose(axes[0][0], axes[0][1], h)
        cx, cxh = Sup._transpose(axes[1][0], axes[1][1], w)
        sup.col_lo, sup.col_hi = (cy, cx), (cyh, cxh)
        sup.probes, sup.seconds = small.probes, small.seconds
        sup.notes = list(small.notes) + [
            f"analysed on a {sy}×{sx} image and extended by translation (period {a} px)"]
        return sup, small
    return Sup.analyse(model, in_shape, dtype, device, rule=rule, batch=batch,
                       overrides=overrides), None



