"""The pure probe plan (precompute.probes): tiles, selections, passes, shares, origins."""

from __future__ import annotations

import math

from precompute import probes as P


def test_tiles_cover_the_grid_once():
    ts = P.tiles(7, 5, 3)
    assert [(t.ty, t.tx) for t in ts] == [(y, x) for y in range(3) for x in range(2)]
    covered = [(i, j) for t in ts for i in range(t.y0, t.y1) for j in range(t.x0, t.x1)]
    assert sorted(covered) == [(i, j) for i in range(7) for j in range(5)]
    assert ts[-1].shape == (1, 2)


def test_selection_region_stride_and_planned_tiles():
    sel = P.Selection((2, 1, 5, 4), 2)
    assert [p for t in P.tiles(8, 8, 4) for p in P.tile_pixels(t, sel)] == [
        (2, 1), (2, 3), (4, 1), (4, 3), (6, 1), (6, 3)]
    # only tiles holding a selected pixel are planned
    assert [(t.ty, t.tx) for t in P.planned_tiles(8, 8, 4, sel)] == [(0, 0), (1, 0)]
    assert P.scaled_selection(sel, 3.0) == P.Selection((6, 3, 15, 12), 2)


def test_probes_and_passes_are_fixed_per_tile():
    t = P.tiles(4, 4, 2)[3]  # pixels (2..3, 2..3)
    pr = P.tile_probes(t, 2, 4, 4, P.Selection())
    assert [(p.i, p.j, p.c) for p in pr[:3]] == [(2, 2, 0), (2, 2, 1), (2, 3, 0)]
    assert all(p.flat == (p.c * 4 + p.i) * 4 + p.j for p in pr)
    groups = P.passes(pr, 3)
    assert [len(g) for g in groups] == [3, 3, 2] and sum(groups, ()) == tuple(pr)


def test_shares_are_disjoint_and_complete():
    items = list(range(11))
    parts = [P.share(items, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == items and parts[1] == [1, 4, 7, 10]


def test_origins_exact_rational_rule():
    # column: clip(floor(s(i + 1/2) + o − w/2), 0, H' − w); row: clip(floor((p + 1/2 − o)/s − w/2), 0, H − w)
    for s in (1, 2, 3, 4):
        for w in (1, 4, 5, 12):
            n = 10
            for i in range(n):
                want = min(max(math.floor(s * (i + 0.5) - w / 2), 0), n * s - w)
                assert P.column_origin(i, float(s), 0.0, w, n * s) == want
            for p in range(n * s):
                # (p + 1/2)/s − w/2 = (2p + 1 − s·w)/(2s): integer arithmetic, no rounding
                want = min(max((2 * p + 1 - s * w) // (2 * s), 0), n - w)
                assert P.row_origin(p, float(s), 0.0, w, n) == want
    assert P.window_side("full", 9) == 9 and P.window_side(48, 9) == 9 and P.window_side(4, 9) == 4
    assert P.auto_tile(10, 100, 100) == 16 and P.auto_tile(2**20, 100, 100) == 8
    assert P.auto_tile(10, 3, 3) == 4
