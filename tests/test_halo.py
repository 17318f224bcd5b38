"""Halo-cropped blocks (precompute/halo.py): a block of compressed probing computed on its crop
of x0 gives the same store (float64, to round-off) as the same block on the full image — on
models with zero and reflection padding, strides, transposed convolutions, max pooling, a pixel
shuffle and a ×0.5 encoder (compressed backward rows), with corner, edge and interior blocks, and
split between shards; a network whose frozen statistics span the image falls back to full-image
blocks and says so.

The reference (``LINEARSCOPE_HALO=off``) is today's full-image block, itself tested against
torch.func Jacobians and one-impulse-per-probe stores in tests/test_compressed.py; one model here
is also compared with its Jacobian directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import precompute
from precompute import halo as H
from precompute.support import analyse
from sweep_helpers import REPO, cli, make_image, run_shards, write_config

SUPPORT = REPO / "tests" / "fixtures" / "support_models.py"
HALO = REPO / "tests" / "fixtures" / "halo_models.py"


def _load(fix, arch):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"halo_oracle_{arch}", fix)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, arch)().double()


@pytest.mark.parametrize("fix, arch, scale, align", [
    (SUPPORT, "relu_same", 1, 1), (SUPPORT, "half", 0.5, 2), (SUPPORT, "cycle_like", 1, 2),
    (SUPPORT, "three_halves", 1.5, 2), (HALO, "pool_shuffle", 1, 2)])
def test_alignment_is_the_translation_period(fix, arch, scale, align):
    sup = analyse(_load(fix, arch), (3, 40, 40), torch.float64, torch.device("cpu"))
    assert H.alignment(sup, scale) == align


def _store(tmp_path, name, fix, arch, hw, analyses, env, shards=None):
    img = tmp_path / "img.png"
    if not img.exists():
        make_image(img, *hw, seed=11)
    cfg = write_config(tmp_path / f"{name}.yaml", name=name, model={"arch": f"python:{fix}:{arch}"},
                       image="img.png", dtype="float64", batch=16, output=str(tmp_path / "runs"),
                       analyses=analyses)
    if shards:
        run_shards(cfg, shards)
        r = None
    else:
        r = cli("run", cfg, env=env)
        assert r.exit_code == 0, r.stderr
    return precompute.open_store(tmp_path / "runs" / f"{name}.zarr"), r


def assert_same_store(a, b, rtol=1e-12):
    for name in a.layouts:
        for arr in (name, f"{name}_origin", f"{name}_outside"):
            x, y = a.array(arr), b.array(arr)
            if x.dtype.kind == "f":
                assert np.array_equal(np.isnan(x), np.isnan(y)), arr
            scale = np.nanmax(np.abs(y)) if np.isfinite(y).any() else 1.0
            np.testing.assert_allclose(np.nan_to_num(x), np.nan_to_num(y), rtol=0,
                                       atol=rtol * max(float(scale), 1e-300), err_msg=arr)


def _crops(st) -> dict:
    return {n: st.attrs["probing"][n].get("crop", 0) for n in st.layouts}


CASES = [
    # (fixture, model, image, analyses, block bytes): blocks of 1–2 tiles, so that corner, edge
    # and interior blocks all run on crops smaller than the image
    (SUPPORT, "relu_same", (26, 23),
     {"residual": True, "columns": {"window": 5, "tile": 8}, "rows": {"window": 4, "tile": 8}},
     "60000"),
    (SUPPORT, "half", (30, 28),
     {"residual": True, "columns": {"window": 3, "tile": 8}, "rows": {"window": 6, "tile": 4}},
     "60000"),
]


@pytest.mark.slow
@pytest.mark.parametrize("fix, arch, hw, an, budget", CASES, ids=[c[1] for c in CASES])
def test_cropped_blocks_equal_full_image_blocks(tmp_path, monkeypatch, fix, arch, hw, an, budget):
    monkeypatch.setenv("LINEARSCOPE_BLOCK_BYTES", budget)
    crop, r = _store(tmp_path, "crop", fix, arch, hw, an, None)
    assert "on halo crops of x0" in r.stderr, r.stderr
    full, _ = _store(tmp_path, "full", fix, arch, hw, an, {"LINEARSCOPE_HALO": "off"})
    assert all(_crops(crop).values()) and not any(_crops(full).values())
    blocks = {n: crop.attrs["probing"][n]["block"] for n in crop.layouts}
    tiles = {n: crop.layouts[n].tile for n in crop.layouts}
    for n in crop.layouts:  # several blocks per axis: corners, edges (and interior) are cropped
        side = blocks[n] * tiles[n]
        assert side * 2 < max(crop.layouts[n].probe_shape[1:]), (n, side)
    assert_same_store(crop, full)
    if arch == "relu_same":
        # rows read out of the columns' passes: a rows block is a columns block's outputs
        assert blocks["rows"] * tiles["rows"] == blocks["columns"] * tiles["columns"]


def _block_setup(fix, arch, hw, name, window, tile):
    from precompute import probes as P
    from precompute import layout as L
    from precompute.engine import Engine
    from precompute.interpreter import LinearInterpreter

    net = _load(fix, arch)
    x0 = torch.rand((1, 3) + hw, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eng = Engine(LinearInterpreter(net, x0), torch.device("cpu"), torch.float64)
    sup = analyse(net, (3,) + hw, torch.float64, torch.device("cpu"))
    lay = L.make_layout(name, window, tile, P.Selection(), (3,) + hw, eng.out_shape,
                        net.scale, 0.0, 8)
    return eng, sup, lay


BLOCK_CASES = [
    # (fixture, model, image, analysis, method, window, tile): reflection padding + stride-2
    # convolution + ×2 transposed convolution; max pool + pixel shuffle with zero padding; a
    # ×1.5 network (crops on multiples of 2 input = 3 output px); a ×0.5 encoder's rows by
    # compressed backward passes
    (SUPPORT, "cycle_like", (40, 38), "columns", "compressed", 7, 8),
    (SUPPORT, "cycle_like", (40, 38), "rows", "from_columns", 5, 8),
    (HALO, "pool_shuffle", (40, 42), "columns", "compressed", 6, 8),
    (SUPPORT, "three_halves", (30, 28), "rows", "from_columns", 5, 12),
    (SUPPORT, "half", (40, 36), "rows", "compressed", 6, 4),
]


@pytest.mark.slow
@pytest.mark.parametrize("fix, arch, hw, name, method, window, tile", BLOCK_CASES,
                         ids=[f"{c[1]}-{c[4]}" for c in BLOCK_CASES])
def test_corner_edge_and_interior_blocks_on_crops(fix, arch, hw, name, method, window, tile):
    from precompute import compressed as Cm
    from precompute import probes as P

    eng, sup, lay = _block_setup(fix, arch, hw, name, window, tile)
    period = sup.period_out if method == "compressed" and name == "rows" else sup.period_in
    align = H.alignment(sup, lay.scale)
    assert align >= 1
    cropped = Cm.ProbingPlan(name, method, tuple(period), 1, align)
    full = Cm.ProbingPlan(name, method, tuple(period), 1, 0)
    blocks = P.blocks(lay.tiles(), 1)
    ny, nx = max(b.by for b in blocks) + 1, max(b.bx for b in blocks) + 1
    assert ny >= 3 and nx >= 3
    picks = {(0, 0), (0, nx // 2), (ny // 2, nx // 2), (ny - 1, nx - 1), (ny - 1, 0)}
    geo = Cm.geometry(lay, sup, cropped)
    _jac: dict = {}
    for b in (b for b in blocks if (b.by, b.bx) in picks):
        crop = Cm.block_crop(sup, [Cm.Target(lay, cropped, geo, b)])
        assert crop is not None and crop.area < hw[0] * hw[1], (b.by, b.bx)
        stats: dict = {}
        mine = Cm.block_arrays(eng, sup, lay, b, cropped, geo, 16, np.float64, stats=stats)
        assert "crop_fallback" not in stats and stats["crop_pixels"] == crop.area
        ref = Cm.block_arrays(eng, sup, lay, b, full, geo, 16, np.float64)
        scale = np.nanmax(np.abs(ref.values))
        assert scale > 0
        np.testing.assert_allclose(np.nan_to_num(mine.values), np.nan_to_num(ref.values),
                                   rtol=0, atol=1e-12 * scale, err_msg=f"block {b.by},{b.bx}")
        assert np.array_equal(np.isnan(mine.values), np.isnan(ref.values))
        np.testing.assert_array_equal(mine.origin, ref.origin)
        np.testing.assert_allclose(mine.total, ref.total, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(mine.outside_sq, ref.outside_sq, rtol=1e-10,
                                   atol=1e-24 * scale ** 2)
        if arch == "pool_shuffle":  # and the Jacobian (piecewise-linear: F is the Jacobian)
            J = _jac.setdefault(0, torch.func.jacfwd(lambda x: eng.li.model(x[None])[0])(
                eng.li.x0[0]).detach().numpy())
            wh, ww = lay.window
            for i, j in np.argwhere(mine.origin[..., 0] >= 0):
                oy, ox = mine.origin[i, j]
                want = J[:, oy:oy + wh, ox:ox + ww, :, b.y0 + i, b.x0 + j].transpose(3, 0, 1, 2)
                np.testing.assert_allclose(mine.values[i, j], want, rtol=0, atol=1e-12 * scale)


@pytest.mark.slow
def test_shards_hand_out_cropped_blocks(tmp_path, monkeypatch):
    fix, arch, hw, an, budget = CASES[0]
    monkeypatch.setenv("LINEARSCOPE_BLOCK_BYTES", budget)
    full, _ = _store(tmp_path, "full", fix, arch, hw, an, {"LINEARSCOPE_HALO": "off"})
    sharded, _ = _store(tmp_path, "sharded", fix, arch, hw, an, None, shards=2)
    assert sharded.is_complete() and all(_crops(sharded).values())
    assert_same_store(sharded, full)


@pytest.mark.slow
def test_global_statistics_fall_back_to_the_full_image_and_say_so(tmp_path, monkeypatch):
    an = {"residual": True, "columns": {"window": 5, "tile": 8}, "rows": False}
    monkeypatch.setenv("LINEARSCOPE_BLOCK_BYTES", "60000")
    crop, r = _store(tmp_path, "crop", HALO, "frozen_stats", (24, 24), an, None)
    assert "halo crop of x0 does not reproduce the full image" in r.stderr, r.stderr
    assert "run on the full image" in r.stderr
    full, _ = _store(tmp_path, "full", HALO, "frozen_stats", (24, 24), an,
                     {"LINEARSCOPE_HALO": "off"})
    assert_same_store(crop, full)


@pytest.mark.slow
@pytest.mark.parametrize("fix, arch, scale, hw", [
    (SUPPORT, "relu_same", 1, (101, 90)), (SUPPORT, "half", 0.5, (105, 99)),
    (SUPPORT, "cycle_like", 1, (103, 98)), (SUPPORT, "three_halves", 1.5, (100, 98)),
    (HALO, "pool_shuffle", 1, (100, 105))])
def test_support_from_a_small_image_equals_the_full_analysis(monkeypatch, fix, arch, scale, hw):
    from precompute import support as Sup
    from precompute import support_crop as SC

    monkeypatch.setattr(SC, "FIRST_SIDE", 24)
    net = _load(fix, arch)
    out_hw = tuple(net(torch.zeros((1, 3) + hw, dtype=torch.float64)).shape[2:])
    sup, small = SC.analyse(net, (3,) + hw, torch.float64, torch.device("cpu"), scale, out_hw)
    assert small is not None and max(small.in_hw) < min(hw) // 2 + 2, small
    assert any("extended by translation" in n for n in sup.notes)
    full = Sup.analyse(net, (3,) + hw, torch.float64, torch.device("cpu"))
    assert not full.is_global and not sup.is_global
    for ax in (0, 1):
        for mine, ref in ((sup.row_lo, full.row_lo), (sup.row_hi, full.row_hi),
                          (sup.col_lo, full.col_lo), (sup.col_hi, full.col_hi)):
            np.testing.assert_array_equal(mine[ax], ref[ax])


def test_global_support_is_found_on_the_full_image(monkeypatch):
    from precompute import support_crop as SC

    monkeypatch.setattr(SC, "FIRST_SIDE", 16)
    net = _load(SUPPORT, "global_mean")
    sup, small = SC.analyse(net, (3, 64, 60), torch.float64, torch.device("cpu"), 1, (64, 60))
    assert small is None and sup.in_hw == (64, 60)
    assert sup.global_reason.startswith("one pixel reaches the whole 64×60 image")


@pytest.mark.slow
def test_run_with_the_support_of_a_small_image_equals_the_full_analysis(tmp_path, monkeypatch):
    from precompute import run as R
    from precompute import support_crop as SC

    an = {"residual": True, "columns": {"window": 5, "tile": 16}, "rows": False}
    monkeypatch.setattr(SC, "FIRST_SIDE", 12)  # 12×12 has too little interior: 24×24
    small, r = _store(tmp_path, "small", SUPPORT, "relu_same", (52, 50), an, None)
    assert "analysed on a 24×24 image and extended by translation" in r.stderr, r.stderr
    monkeypatch.setattr(SC, "FIRST_SIDE", 10**6)
    R._SUPPORTS.clear()
    full, r2 = _store(tmp_path, "full", SUPPORT, "relu_same", (52, 50), an, None)
    assert "extended by translation" not in r2.stderr
    assert small.attrs["probing"]["support"] == full.attrs["probing"]["support"]
    assert_same_store(small, full)
