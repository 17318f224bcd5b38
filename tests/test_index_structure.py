"""Index-driven structure (issue 15): `precompute run` with default settings on models whose
indices, offsets, slice bounds or branches are computed from the data is exact (F equals the
Jacobian, torch.func.jacrev in float64, windows and ``*_outside`` fractions) or refused in one
line — never a wrong store.

The structural support analysis sees the probe's values, not x0's: every integer or boolean tensor
computed from probe-carrying values carries structure, and any use of it (indexing, slicing,
shapes, control flow) makes the support global, naming the op and the module path; the run then
uses one impulse per probe. The models are in tests/fixtures/index_models.py.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import precompute
from sweep_helpers import REPO, cli, make_image, write_config

FIX = REPO / "tests" / "fixtures" / "index_models.py"
CPU = torch.device("cpu")

#: computed exactly by the interpreter (every index is x0's): the store must be the Jacobian
EXACT = ["segnet_unpool", "far_argmax", "adaptive_far", "item_slice", "max_dim_far",
         "pool1d_far", "module_indices", "branch_on_index"]
#: the interpreter itself refuses (an op without a rule on probe-carrying values)
REFUSED = ["argmax_far", "sort_far", "topk_far", "nonzero_far", "index_select", "gather",
           "scatter", "cast_offset", "to_long_offset"]


def _net(name: str):
    spec = importlib.util.spec_from_file_location("index_models_oracle", FIX)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build(name).double()


def _run(tmp_path, name, analyses, **extra):
    make_image(tmp_path / "img.png", 12, 12, seed=3)
    cfg = write_config(tmp_path / f"{name}.yaml", name=name,
                       model={"arch": f"python:{FIX}:{name}"}, image="img.png", dtype="float64",
                       output=str(tmp_path / "runs"), analyses=analyses, **extra)
    return cli("run", cfg), tmp_path / "runs" / f"{name}.zarr"


def assert_is_jacobian(st, J):
    """Every stored window (and outside fraction) equals the Jacobian's (C', H', W', C, H, W)."""
    n = 0
    for name, lay in st.layouts.items():
        vals, org, out = (st.array(name), st.array(f"{name}_origin"), st.array(f"{name}_outside"))
        wh, ww = lay.window
        for i, j in np.argwhere(org[..., 0] >= 0):
            oy, ox = org[i, j]
            full = (J[:, :, :, :, i, j].transpose(3, 0, 1, 2) if name == "columns"
                    else J[:, i, j])
            win = full[:, :, oy:oy + wh, ox:ox + ww]
            np.testing.assert_allclose(vals[i, j], win, rtol=0, atol=1e-12,
                                       err_msg=f"{name} {i},{j}")
            tot = np.square(full).sum(axis=(1, 2, 3))
            frac = np.where(tot > 0, 1 - np.square(win).sum(axis=(1, 2, 3))
                            / np.where(tot > 0, tot, 1), 0)
            np.testing.assert_allclose(out[i, j], frac, atol=1e-9, err_msg=f"{name}_outside")
            n += 1
    assert n > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", EXACT)
def test_index_driven_model_is_exact(tmp_path, name):
    # windows smaller than the far reads: the *_outside fractions are checked too
    an = {"residual": True, "columns": {"window": 5, "tile": 4}, "rows": {"window": 5, "tile": 4}}
    r, path = _run(tmp_path, name, an)
    assert r.exit_code == 0, r.output + r.stderr
    st = precompute.open_store(path)
    sup = st.attrs["probing"]["support"]
    # the support analysis refused to guess: global, naming the op and the module path
    assert sup["global"] is not None and "in module `(root)`" in sup["global"], sup
    assert "one impulse per probe" in r.stderr and sup["global"] in r.stderr
    x0 = torch.from_numpy(st.array("input"))[None]
    net = _net(name)
    J = torch.func.jacrev(net)(x0)[0, :, :, :, 0].detach().numpy()
    assert_is_jacobian(st, J)


@pytest.mark.parametrize("name", REFUSED)
def test_index_driven_model_without_rule_is_refused(tmp_path, name):
    r, path = _run(tmp_path, name, {"residual": True, "columns": {"window": 5, "tile": 4}})
    assert r.exit_code == 2, r.output
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert not (path / "columns").exists()


def test_support_names_the_index_op_and_its_use():
    from precompute.support import analyse

    for name in EXACT:
        if name == "max_dim_far":  # torch.max(x, dim) has no support rule at all
            continue
        sup = analyse(_net(name), (3, 12, 12), torch.float64, CPU)
        assert sup.is_global, name
        assert "uses indices or values that" in sup.global_reason, (name, sup.global_reason)
    # max pooling whose indices are not used keeps a local support (compressed probing)
    sup = analyse(_net("local_pool"), (3, 12, 12), torch.float64, CPU)
    assert not sup.is_global and sup.period_in == (4, 4)


def test_structure_in_a_submodule_names_its_path():
    from torch import nn

    from precompute.support import analyse

    class Unpool(nn.Module):
        def forward(self, h):
            p, idx = nn.functional.max_pool2d(h, 2, return_indices=True)
            u = torch.zeros_like(h).flatten(2)
            u[:, :, idx[0, 0].flatten()] = p.flatten(2)
            return u.view_as(h)

    net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Sequential(nn.ReLU(), Unpool()))
    sup = analyse(net.double(), (3, 8, 8), torch.float64, CPU)
    assert sup.is_global
    assert "`torch.Tensor.__getitem__` in module `1.1`" in sup.global_reason
    assert "max_pool2d_with_indices` in module `1.1`" in sup.global_reason


@pytest.mark.slow
def test_index_driven_model_in_float32_rows_only_two_shards(tmp_path):
    # the other configurations of the issue: float32, rows only, windows smaller than the far
    # read, two --shard processes; the store's attrs record the Freivalds checks of both shards
    from sweep_helpers import run_shards

    make_image(tmp_path / "img.png", 12, 12, seed=3)
    cfg = write_config(tmp_path / "c.yaml", name="s",
                       model={"arch": f"python:{FIX}:far_argmax"}, image="img.png",
                       dtype="float32", output=str(tmp_path / "runs"),
                       analyses={"residual": True, "columns": False,
                                 "rows": {"window": 3, "tile": 4}})
    run_shards(cfg, 2)
    st = precompute.open_store(tmp_path / "runs" / "s.zarr")
    assert st.attrs["probing"]["rows"]["method"] == "single"
    assert st.attrs["checks"]["freivalds_rows_units"] == 9
    x0 = torch.from_numpy(st.array("input")).double()[None]
    J = torch.func.jacrev(_net("far_argmax"))(x0)[0, :, :, :, 0].detach().numpy()
    vals, org, out = st.array("rows"), st.array("rows_origin"), st.array("rows_outside")
    scale = np.abs(J).max()
    for i, j in np.argwhere(org[..., 0] >= 0):
        oy, ox = org[i, j]
        np.testing.assert_allclose(vals[i, j], J[:, i, j, :, oy:oy + 3, ox:ox + 3], rtol=0,
                                   atol=1e-5 * scale)
        full = J[:, i, j]
        frac = 1 - np.square(full[:, :, oy:oy + 3, ox:ox + 3]).sum((1, 2, 3)) / np.square(
            full).sum((1, 2, 3))
        np.testing.assert_allclose(out[i, j], frac, atol=1e-4)
    assert (out > 0.05).any()  # the far reads lie outside the windows
