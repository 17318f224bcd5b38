"""Compressed probing end to end (`precompute run`): stores equal to one-impulse-per-probe stores
and to torch.func Jacobians (float64), on the shipped model, an EDSR-baseline architecture,
CycleGAN-like padding/stride/transposed convolutions, non-integer scales, borders, regions and
strides; a global op falls back and says so.

For piecewise-linear networks F is the Jacobian (jacfwd, no LinearScope involved); networks with
frozen normalisation statistics are compared with single-impulse stores only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import precompute
from sweep_helpers import REPO, cli, make_image, write_config

FIX = REPO / "tests" / "fixtures" / "support_models.py"
SHIPPED = REPO / "examples" / "weights" / "pixelshuffle_x3.pt"


def _model(arch: str) -> dict:
    if arch == "pixelshuffle":
        return {"arch": "pixelshuffle", "checkpoint": str(SHIPPED)}
    if arch.startswith("bicubic"):
        return {"arch": "bicubic", "scale": int(arch[-1])}
    return {"arch": f"python:{FIX}:{arch}"}


def _run(tmp_path: Path, arch: str, hw, analyses, probing="auto", pixels=None, batch=16,
         quiet=True, name=None):
    img = tmp_path / "img.png"
    if not img.exists():
        make_image(img, *hw, seed=7)
    name = name or probing
    extra = {"pixels": pixels} if pixels else {}
    cfg = write_config(tmp_path / f"{name}.yaml", name=name, model=_model(arch), image="img.png",
                       dtype="float64", batch=batch, probing=probing,
                       output=str(tmp_path / "runs"), analyses=analyses, **extra)
    r = cli("run", *(["-q"] if quiet else []), cfg)
    assert r.exit_code == 0, r.output + r.stderr
    return precompute.open_store(tmp_path / "runs" / f"{name}.zarr"), r


def _net(arch: str):
    if arch == "pixelshuffle":
        from precompute.models import load_model

        return load_model("pixelshuffle", checkpoint=SHIPPED).module.double()
    import importlib.util

    spec = importlib.util.spec_from_file_location("support_models_oracle", FIX)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, arch)().double()


def _jacobian(arch: str, st) -> np.ndarray:
    """(C', H', W', C, H, W) at the store's x0, by forward-mode AD."""
    net, x0 = _net(arch), torch.from_numpy(st.array("input"))
    return torch.func.jacfwd(lambda x: net(x[None])[0])(x0).detach().numpy()


def assert_same_filters(a, b, rtol=1e-12):
    """Two stores hold the same windows, origins and outside fractions (NaN where not computed)."""
    for name in a.layouts:
        for arr in (name, f"{name}_origin", f"{name}_outside"):
            x, y = a.array(arr), b.array(arr)
            assert np.array_equal(np.isnan(x), np.isnan(y)) if x.dtype.kind == "f" else True, arr
            scale = np.nanmax(np.abs(y)) if np.isfinite(y).any() else 1.0
            np.testing.assert_allclose(np.nan_to_num(x), np.nan_to_num(y), rtol=0,
                                       atol=rtol * max(scale, 1e-300), err_msg=arr)


def assert_windows_match(st, J, atol=1e-12):
    """Every stored window equals the Jacobian's entries there; outside fractions too."""
    n = 0
    for name, lay in st.layouts.items():
        vals, org, out = (st.array(name), st.array(f"{name}_origin"), st.array(f"{name}_outside"))
        wh, ww = lay.window
        for i, j in np.argwhere(org[..., 0] >= 0):
            oy, ox = org[i, j]
            if name == "columns":
                full = J[:, :, :, :, i, j].transpose(3, 0, 1, 2)  # (C, C', H', W')
            else:
                full = J[:, i, j]  # (C', C, H, W)
            win = full[:, :, oy:oy + wh, ox:ox + ww]
            np.testing.assert_allclose(vals[i, j], win, rtol=0, atol=atol, err_msg=f"{name} {i},{j}")
            tot = np.square(full).sum(axis=(1, 2, 3))
            frac = np.where(tot > 0, 1 - np.square(win).sum(axis=(1, 2, 3)) / np.where(tot > 0, tot, 1), 0)
            np.testing.assert_allclose(out[i, j], frac, atol=1e-9, err_msg=f"{name}_outside {i},{j}")
            n += 1
    assert n > 0


def _methods(st) -> dict:
    p = st.attrs["probing"]
    return {name: p[name]["method"] for name in st.layouts}


@pytest.mark.slow
def test_shipped_pixelshuffle(tmp_path):
    an = {"residual": True, "columns": {"window": 12, "tile": 4}, "rows": {"window": 5, "tile": 8}}
    comp, r = _run(tmp_path, "pixelshuffle", (13, 12), an, quiet=False)
    single, _ = _run(tmp_path, "pixelshuffle", (13, 12), an, probing="single")
    assert _methods(comp) == {"columns": "compressed", "rows": "from_columns"}
    assert _methods(single) == {"columns": "single", "rows": "single"}
    sup = comp.attrs["probing"]["support"]
    assert sup == {"global": None, "rows": [11, 11], "columns": [33, 33]}
    assert comp.attrs["probing"]["columns"]["period"] == [11, 11]
    assert_same_filters(comp, single)
    # columns decode exactly the numbers single impulses give (disjoint footprints: exact zeros)
    np.testing.assert_array_equal(comp.array("columns"), single.array("columns"))
    assert_windows_match(comp, _jacobian("pixelshuffle", comp))
    # the plan paragraph and the progress bars
    assert "121 forward probes" in r.stderr and "read out of columns (no backward pass)" in r.stderr
    assert "156/156" in r.stderr and "1404/1404" in r.stderr and "filter" in r.stderr
    # verify recomputes samples with one impulse per probe
    v = cli("verify", "--samples", "4", tmp_path / "runs" / "auto.zarr")
    assert v.exit_code == 0 and "verify: OK" in v.stdout, v.stdout
    assert "single-impulse probes (stored: compressed probes, period 11×11)" in v.stdout
    assert "stored: read out of columns" in v.stdout


@pytest.mark.slow
def test_edsr_baseline_architecture(tmp_path):
    # the zoo's EDSR module (mean shift, residual block, global skip, ×2 upsampler), 1 block
    an = {"residual": True, "columns": {"window": 10, "tile": 8},
          "rows": {"window": 6, "tile": 8, "pixels": {"region": [0, 0, 32, 30], "stride": 2}}}
    comp, _ = _run(tmp_path, "edsr_tiny", (16, 15), an)
    single, _ = _run(tmp_path, "edsr_tiny", (16, 15), an, probing="single")
    assert _methods(comp) == {"columns": "compressed", "rows": "from_columns"}
    assert_same_filters(comp, single)
    assert_windows_match(comp, _jacobian("edsr_tiny", comp), atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("arch, hw, jac", [("cycle_like", (16, 14), True),
                                           ("cycle_like_norm", (16, 14), False),
                                           ("three_halves", (12, 14), True)])
def test_padding_strides_transposed_and_non_integer_scales(tmp_path, arch, hw, jac):
    an = {"residual": True, "columns": {"window": 7, "tile": 4}, "rows": {"window": 5, "tile": 4}}
    comp, _ = _run(tmp_path, arch, hw, an)
    single, _ = _run(tmp_path, arch, hw, an, probing="single")
    assert _methods(comp)["columns"] == "compressed"
    assert _methods(comp)["rows"] in ("from_columns", "compressed")
    assert_same_filters(comp, single)
    if jac:
        assert_windows_match(comp, _jacobian(arch, comp))


def test_rows_by_compressed_backward_passes(tmp_path):
    # ×0.5: a column reaches ≤ 2×2 output px, a row 5×5 input px: backward colours are cheaper
    an = {"residual": True, "columns": {"window": 3, "tile": 4}, "rows": {"window": 6, "tile": 4}}
    comp, r = _run(tmp_path, "half", (18, 16), an, quiet=False)
    single, _ = _run(tmp_path, "half", (18, 16), an, probing="single")
    assert _methods(comp) == {"columns": "compressed", "rows": "compressed"}
    assert "backward probes" in r.stderr
    assert_same_filters(comp, single)
    assert_windows_match(comp, _jacobian("half", comp))


def test_borders_regions_and_strides(tmp_path):
    an = {"residual": True,
          "columns": {"window": 9, "tile": 4, "pixels": {"region": [1, 2, 15, 15], "stride": 2}},
          "rows": {"window": 4, "tile": 8, "pixels": {"region": [0, 5, 48, 40], "stride": 3}}}
    comp, _ = _run(tmp_path, "pixelshuffle", (16, 17), an)
    single, _ = _run(tmp_path, "pixelshuffle", (16, 17), an, probing="single")
    assert _methods(comp) == {"columns": "compressed", "rows": "from_columns"}
    assert_same_filters(comp, single)
    assert_windows_match(comp, _jacobian("pixelshuffle", comp))
    org = comp.array("columns_origin")
    assert (org[..., 0] >= 0).sum() == 8 * 8 and (org[0] < 0).all()  # the selection only
    assert comp.attrs["probing"]["columns"]["period"] == [11, 11]  # 6×6 colours on the stride-2 lattice


def test_bicubic_x3_equals_the_bicubic_matrix(tmp_path):
    from oracles import bicubic_matrix

    an = {"residual": True, "columns": {"window": "full", "tile": 4}, "rows": {"window": 6, "tile": 8}}
    comp, _ = _run(tmp_path, "bicubic3", (9, 10), an)
    assert _methods(comp) == {"columns": "compressed", "rows": "from_columns"}
    np.testing.assert_allclose(comp.dense(), bicubic_matrix(3, 9, 10, 3).numpy(), atol=1e-12, rtol=0)
    single, _ = _run(tmp_path, "bicubic3", (9, 10), an, probing="single")
    assert_same_filters(comp, single)


def test_global_op_falls_back_and_says_so(tmp_path):
    an = {"residual": True, "columns": {"window": 5, "tile": 4}, "rows": {"window": 5, "tile": 4}}
    img = make_image(tmp_path / "img.png", 10, 10, seed=1)
    cfg = write_config(tmp_path / "g.yaml", name="g", model=_model("global_mean"), image=img.name,
                       dtype="float64", batch=16, output=str(tmp_path / "runs"), analyses=an)
    r = cli("run", "--dry-run", cfg)
    assert r.exit_code == 0, r.stderr
    assert ("Probing: one impulse per probe, the structural support is global" in r.stderr
            and "`torch.Tensor.mean` in module `(root)`" in r.stderr), r.stderr
    assert "300 forward probes" in r.stderr  # 10×10 px × 3 channels, one impulse each
    st, _ = _run(tmp_path, "global_mean", (10, 10), an, name="g2")
    assert _methods(st) == {"columns": "single", "rows": "single"}
    assert st.attrs["probing"]["support"]["global"].startswith("one pixel reaches the whole")


def test_probing_single_is_recorded_and_said(tmp_path):
    an = {"residual": True, "columns": {"window": 5, "tile": 4}, "rows": False}
    img = make_image(tmp_path / "img.png", 12, 12, seed=1)
    cfg = write_config(tmp_path / "s.yaml", name="s", model=_model("pixelshuffle"), image=img.name,
                       probing="single", output=str(tmp_path / "runs"), analyses=an)
    r = cli("run", "--dry-run", cfg)
    assert "Probing: one impulse per probe (probing: single)." in r.stderr
    assert "144 forward probes" in r.stderr
