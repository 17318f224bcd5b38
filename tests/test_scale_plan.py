"""Planning and checking a large image without image-sized work (issue 20).

* the plan's bookkeeping: a selection is separable, so a tile's selected pixels are counted per
  axis; the block-side cost of :func:`compressed.choose` is a sum over axis ranges — both equal
  to the per-pixel / per-block computation they replace (exactly, same float sums);
* the gate's rule identities run on two halo crops of x0 when the support came from a small
  image (a ``--dry-run`` never runs the whole image's constants pass), and still trip on a
  broken rule; F·x0 + r = f(x0) and the scope's f(x0) are checked on the whole image by a real
  run, before anything is written;
* the deferred constants pass of :class:`LinearInterpreter` gives the same f(x0), r(x0) and
  identities as the eager one;
* each block's Freivalds check runs on its halo crop, and a corrupted decoder still stops the
  run with nothing of that block written;
* a network with a global support says so and checks the whole image.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

import precompute
from precompute import compressed as Cm
from precompute import freivalds as Fv
from precompute import halo as H
from precompute import probes as P
from precompute import rules
from precompute import layout as L
from precompute.interpreter import LinearInterpreter
from sweep_helpers import REPO, cli, make_image, write_config

SUPPORT = REPO / "tests" / "fixtures" / "support_models.py"
POOL = f"python:{REPO / 'tests' / 'fixtures' / 'index_models.py'}:local_pool"


def _load(arch):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"scale_plan_{arch}", SUPPORT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, arch)().double()


def test_tile_pixels_and_counts_follow_the_selection():
    rng = random.Random(0)
    for _ in range(400):
        h, w = rng.randint(1, 30), rng.randint(1, 30)
        if rng.random() < 0.4:
            sel = P.Selection(None, rng.randint(1, 4))
        else:
            top, left = rng.randint(0, h - 1), rng.randint(0, w - 1)
            sel = P.Selection((top, left, rng.randint(1, h - top), rng.randint(1, w - left)),
                              rng.randint(1, 4))
        for t in P.tiles(h, w, rng.randint(1, 7)):
            want = [(i, j) for i in range(t.y0, t.y1) for j in range(t.x0, t.x1)
                    if sel.contains(i, j)]
            assert P.tile_pixels(t, sel) == want, (t, sel)
            assert P.tile_count(t, sel) == len(want)
        assert P.planned_tiles(h, w, 5, sel) == [t for t in P.tiles(h, w, 5)
                                                 if any(sel.contains(i, j)
                                                        for i in range(t.y0, t.y1)
                                                        for j in range(t.x0, t.x1))]


@pytest.mark.parametrize("arch, hw, name, sel", [
    ("cycle_like", (40, 38), "columns", P.Selection()),
    ("cycle_like", (40, 38), "rows", P.Selection((3, 5, 30, 27), 2)),
    ("half", (40, 36), "rows", P.Selection()),
    ("three_halves", (30, 28), "columns", P.Selection((1, 2, 25, 20), 3)),
])
def test_block_costs_and_crops_per_axis_equal_those_per_block(arch, hw, name, sel):
    from precompute.support import analyse

    net = _load(arch)
    out_hw = tuple(net(torch.zeros((1, 3) + hw, dtype=torch.float64)).shape[2:])
    sup = analyse(net, (3,) + hw, torch.float64, torch.device("cpu"))
    lay = L.make_layout(name, 5, 4, sel, (3,) + hw, (3,) + out_hw, net.scale, 0.0, 8)
    tiles = lay.tiles()
    grid = Cm._tile_grid(tiles)
    assert grid is not None
    align = H.alignment(sup, lay.scale)
    assert align >= 1
    methods = [("compressed", sup.period_in)] if name == "columns" else \
        [("from_columns", sup.period_in), ("compressed", sup.period_out)]
    for method, period in methods:
        for g in (1, 2, 3, 5):
            plan = Cm.ProbingPlan(name, method, tuple(period), g, align)
            blocks = P.blocks(tiles, g)
            per_block = sum(
                Cm.count_probes(lay, plan, sup, [b])
                * (H.crop_for(sup, align, lay.scale, [Cm.target_needs(lay, plan, sup, b)]).area
                   / (hw[0] * hw[1])) for b in blocks)
            assert Cm._plan_cost(lay, plan, sup, tiles, grid) == pytest.approx(per_block,
                                                                               rel=1e-13)
            assert Cm._plan_cost(lay, plan, sup, tiles, None) == per_block
            assert Cm.count_each(lay, plan, sup, blocks) == [
                Cm.count_probes(lay, plan, sup, [b]) for b in blocks]
            crops = [Cm.block_crop(sup, [Cm.Target(lay, plan, None, b)]) for b in blocks]
            want = (None if any(c is None for c in crops) else
                    (max(c.y1 - c.y0 for c in crops), max(c.x1 - c.x0 for c in crops)))
            assert Cm.largest_crop(lay, plan, sup) == want


def test_deferred_constants_pass_gives_the_same_interpreter():
    net = _load("cycle_like")
    x0 = torch.rand((1, 3, 20, 18), generator=torch.Generator().manual_seed(4),
                    dtype=torch.float64)
    eager = LinearInterpreter(net, x0)
    lazy = LinearInterpreter(net, x0, out_shape=eager.out_shape)
    assert lazy._output is None and lazy._residual is None  # nothing ran yet
    assert torch.equal(lazy.output, eager.output) and torch.equal(lazy.residual, eager.residual)
    ref = net(x0)
    assert eager.check(reference=ref) == lazy.check(reference=ref)
    assert set(lazy.check_local()) | set(lazy.check_whole(ref)) == set(eager.check(reference=ref))
    with pytest.raises(Exception, match="not the"):
        LinearInterpreter(net, x0, out_shape=(3, 5, 5)).output


def _relu_config(tmp_path, name="s", hw=(52, 50), analyses=None):
    make_image(tmp_path / "img.png", *hw, seed=11)
    an = analyses or {"residual": True, "columns": {"window": 5, "tile": 16}, "rows": False}
    return write_config(tmp_path / f"{name}.yaml", name=name,
                        model={"arch": f"python:{SUPPORT}:relu_same"}, image="img.png",
                        dtype="float64", batch=16, output=str(tmp_path / "runs"), analyses=an)


def _plan(cfg, dry_run=True):
    from precompute import run as R
    from precompute.config import load_configs

    (res,) = load_configs(str(cfg))
    return R.plan(res, res.images[0], R.Options(dry_run=dry_run, quiet=True))


def test_a_dry_run_checks_the_rules_on_two_crops_and_never_the_whole_image(tmp_path,
                                                                           monkeypatch):
    from precompute import run as R
    from precompute import support_crop as SC

    monkeypatch.setattr(SC, "FIRST_SIDE", 12)  # 12×12 has too little interior: 24×24
    R._SUPPORTS.clear()
    rp = _plan(_relu_config(tmp_path))
    assert rp.support_small is not None and rp.support_small.in_hw == (24, 24)
    lis = R._gate_interpreters(rp)
    assert [tuple(li.x0.shape[2:]) for li in lis] == [(24, 24), (24, 24)]
    assert torch.equal(lis[1].x0, rp.prep.x0[..., 52 - 24:, 50 - 24:])  # bottom-right corner
    assert rp.li._output is None and not rp.whole_checked  # no constants pass of the image
    assert set(rp.checks) == {"requirement3_abs", "requirement3_rel", "linearity_rel",
                              "adjoint_rel", "column_row_rel", "reconstruction_abs",
                              "reconstruction_rel", "output_rel"}  # on the crops
    assert max(v for k, v in rp.checks.items() if not k.endswith("_abs")) < 1e-12
    # a real run's plan adds the whole image's identities before anything is written
    measured = []
    real = LinearInterpreter.check_whole
    monkeypatch.setattr(LinearInterpreter, "check_whole",
                        lambda li, reference=None: measured.append(li.x0.shape)
                        or real(li, reference))
    rp = _plan(_relu_config(tmp_path), dry_run=False)
    assert measured[-1] == (1, 3, 52, 50) and rp.whole_checked
    assert rp.checks["reconstruction_rel"] < 1e-12 and rp.checks["output_rel"] < 1e-12
    assert not (tmp_path / "runs" / "s.zarr").exists()


def test_the_gate_on_crops_trips_on_a_broken_rule(tmp_path, monkeypatch):
    from precompute import run as R
    from precompute import support_crop as SC

    monkeypatch.setattr(SC, "FIRST_SIDE", 12)
    R._SUPPORTS.clear()
    cfg = _relu_config(tmp_path)
    original = rules.RULES["piecewise_linear"]

    def freeze(call):  # 10 % too much gain in every ReLU: y0 stays right, the probes do not
        f = original.freeze(call)
        return dataclasses.replace(f, linear=lambda x1, lin=f.linear: 1.1 * lin(x1))

    monkeypatch.setattr(rules, "RULES", {**rules.RULES, "piecewise_linear": dataclasses.replace(
        original, freeze=freeze)})
    r = cli("run", "--dry-run", cfg)
    assert r.exit_code == 2, r.output + r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    # the ReLU's x0 branch takes the gain too: the crop's f(x0) against the plain model's
    assert len(err) == 1 and "output_rel" in err[0] and "audit" in err[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_freivalds_checks_a_block_on_its_crop_and_a_corruption_still_stops_the_run(tmp_path,
                                                                                   monkeypatch):
    make_image(tmp_path / "img.png", 48, 48, seed=5)
    cfg = write_config(tmp_path / "c.yaml", name="s", model={"arch": POOL}, image="img.png",
                       dtype="float64", batch=16, output=str(tmp_path / "runs"),
                       analyses={"residual": True, "columns": {"window": 5, "tile": 8},
                                 "rows": {"window": 5, "tile": 8}})
    env = {"LINEARSCOPE_BLOCK_BYTES": "1"}  # blocks of one tile: corner, edge, interior crops
    boxes = []
    real_check = Fv.check

    def spy(engine, sketches, tol):
        boxes.append([(sk.analysis, sk.pbox, sk.obox, sk.v.shape) for sk in sketches])
        return real_check(engine, sketches, tol)

    monkeypatch.setattr(Fv, "check", spy)
    r = cli("run", "-q", cfg, env=env)
    assert r.exit_code == 0, r.stderr
    st = precompute.open_store(tmp_path / "runs" / "s.zarr")
    assert st.attrs["probing"]["columns"]["crop"] and st.checks["freivalds_columns_units"] == 36
    # every block checked on a crop smaller than the image, its v the size of the crop
    assert len(boxes) == 36
    for unit in boxes:
        for analysis, pbox, obox, shape in unit:
            (y0, y1, x0, x1) = pbox if analysis == "columns" else obox  # the input box
            assert (y1 - y0) * (x1 - x0) < 48 * 48 and shape[2:] == (y1 - y0, x1 - x0)
    # a corrupted decoded value in an interior block: the crop's check stops the run
    real = Cm._decode_own
    bad = (2, 3)

    def decode(buf, geo, lat, y, pr, off=(0, 0)):
        if (buf.block.by, buf.block.bx) == bad:
            y = y.copy()
            y[0, pr.rows[0] - off[0], pr.cols[0] - off[1]] += 1.0
        return real(buf, geo, lat, y, pr, off)

    monkeypatch.setattr(Cm, "_decode_own", decode)
    monkeypatch.setattr(Fv, "check", real_check)
    (tmp_path / "b").mkdir()
    make_image(tmp_path / "b" / "img.png", 48, 48, seed=5)
    cfg2 = write_config(tmp_path / "b" / "c.yaml", name="s", model={"arch": POOL},
                        image="img.png", dtype="float64", batch=16,
                        output=str(tmp_path / "b" / "runs"),
                        analyses={"residual": True, "columns": {"window": 5, "tile": 8},
                                  "rows": False})
    r = cli("run", "-q", cfg2, env=env)
    assert r.exit_code == 2, r.output + r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "columns of block (2, 3)" in err[0] and "Freivalds" in err[0], err
    org = precompute.open_store(tmp_path / "b" / "runs" / "s.zarr").array("columns_origin")
    assert (org[16:24, 24:32, 0] < 0).all()  # nothing of the failing block was written
    assert (org[:8, :8, 0] >= 0).all()       # blocks checked before it were kept


def test_a_global_support_says_so_and_checks_the_whole_image(tmp_path):
    from precompute import run as R

    make_image(tmp_path / "img.png", 20, 18, seed=2)
    cfg = write_config(tmp_path / "g.yaml", name="g",
                       model={"arch": f"python:{SUPPORT}:global_mean"}, image="img.png",
                       dtype="float64", batch=16, output=str(tmp_path / "runs"),
                       analyses={"residual": True, "columns": {"window": 5, "tile": 8},
                                 "rows": False})
    r = cli("run", "--dry-run", cfg)
    assert r.exit_code == 0, r.stderr
    assert "one impulse per probe, the structural support is global" in r.stderr, r.stderr
    rp = _plan(cfg)
    assert rp.support.is_global and R._gate_interpreters(rp) == [rp.li]
    assert rp.probing["columns"].method == "single"


@pytest.mark.slow
def test_a_large_image_run_on_crops_equals_the_full_image_run(tmp_path, monkeypatch):
    # everything on crops (support from a 24×24 image, the gate on two crops, blocks and their
    # Freivalds checks on halo crops) against LINEARSCOPE_HALO=off (support, gate, blocks and
    # checks on the whole image): the same store, float64
    from precompute import run as R
    from precompute import support_crop as SC
    from test_halo import assert_same_store

    monkeypatch.setattr(SC, "FIRST_SIDE", 12)
    monkeypatch.setenv("LINEARSCOPE_BLOCK_BYTES", "60000")
    an = {"residual": True, "columns": {"window": 5, "tile": 8}, "rows": {"window": 4, "tile": 8}}
    stores = {}
    for name, halo in (("crop", None), ("full", "off")):
        if halo:
            monkeypatch.setenv("LINEARSCOPE_HALO", halo)
        R._SUPPORTS.clear()
        r = cli("run", _relu_config(tmp_path, name=name, analyses=an))
        assert r.exit_code == 0, r.stderr
        stores[name] = precompute.open_store(tmp_path / "runs" / f"{name}.zarr")
    crop, full = stores["crop"], stores["full"]
    assert set(crop.layouts) == set(an) - {"residual"}
    assert all(crop.attrs["probing"][n]["crop"] for n in crop.layouts)
    assert not any(full.attrs["probing"][n].get("crop") for n in full.layouts)
    assert crop.checks["freivalds_columns_units"] > 1
    assert_same_store(crop, full)
    for arr in ("output", "residual"):
        np.testing.assert_array_equal(crop.array(arr), full.array(arr))
    assert set(crop.checks) == set(full.checks)
