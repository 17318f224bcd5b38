"""The run leaves bring-your-own models as it found them, and probes them at the run's size
(issue 15): a lazily cached constant survives the memory estimate's fake-tensor forward, a
LeNet-style classifier with a fixed input size is accepted, and malformed environment overrides
are one-line errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import precompute
from sweep_helpers import REPO, cli, make_image, write_config

FIX = REPO / "tests" / "fixtures" / "stateful_models.py"


def _module(name):
    spec = importlib.util.spec_from_file_location("stateful_models_t", FIX)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)()


def test_memory_estimate_leaves_nothing_in_the_model():
    from precompute.memory import estimate

    net = _module("lazy_pos")
    before = {k: v for k, v in net.__dict__.items()}
    est = estimate(net, torch.rand(1, 3, 10, 12))
    assert est is not None and est.total > 0
    assert net.pos is None and net.__dict__.keys() == before.keys()
    # a real forward first, then the estimate at another size: the real cache stays real
    net(torch.rand(1, 3, 8, 8))
    real = net.pos
    assert estimate(net, torch.rand(1, 3, 10, 12)) is not None
    assert net.pos is real and type(net.pos) is torch.Tensor
    # attributes, parameters and buffers added by the forward are removed again
    net.register_buffer("b", torch.zeros(1))
    orig = net.forward

    def forward(x):
        net.extra = x.sum()
        net._buffers["b"] = x.mean().reshape(1)
        return orig(x)

    net.forward = forward
    assert estimate(net, torch.rand(1, 3, 4, 4)) is not None
    assert not hasattr(net, "extra") and type(net.b) is torch.Tensor and float(net.b) == 0.0


def _run(tmp_path, arch, analyses, hw=(12, 12)):
    make_image(tmp_path / "img.png", *hw, seed=2)
    cfg = write_config(tmp_path / "c.yaml", name="s", model={"arch": f"python:{FIX}:{arch}"},
                       image="img.png", dtype="float64", output=str(tmp_path / "runs"),
                       analyses=analyses)
    return cli("run", "-q", cfg), tmp_path / "runs" / "s.zarr"


def test_lazy_cache_model_runs_exactly(tmp_path):
    r, path = _run(tmp_path, "lazy_pos", {"residual": True, "columns": {"window": 5, "tile": 6}})
    assert r.exit_code == 0, r.output + r.stderr
    st = precompute.open_store(path)
    net = _module("lazy_pos").double()
    x0 = torch.from_numpy(st.array("input"))[None]
    J = torch.func.jacrev(net)(x0)[0, :, :, :, 0].detach().numpy()  # (C', H', W', C, H, W)
    cols, org = st.array("columns"), st.array("columns_origin")
    for i, j in np.argwhere(org[..., 0] >= 0):
        oy, ox = org[i, j]
        np.testing.assert_allclose(cols[i, j], J[:, oy:oy + 5, ox:ox + 5, :, i, j]
                                   .transpose(3, 0, 1, 2), rtol=0, atol=1e-12)
    # the residual r = f(x0) − F·x0 holds the positional map (a constant)
    y0 = net(x0)[0].detach().numpy()
    Fx0 = np.einsum("abcdef,def->abc", J, x0[0].numpy())
    np.testing.assert_allclose(st.array("residual"), y0 - Fx0, atol=1e-12)


def test_fixed_size_classifier_is_probed_at_the_run_size(tmp_path):
    r, path = _run(tmp_path, "lenet", {"classify": {"top_k": 2}})
    assert r.exit_code == 0, r.output + r.stderr
    st = precompute.open_store(path)
    assert st.attrs["model"]["kind"] == "vector"
    # at another size the one-line refusal names the size the probe used
    (tmp_path / "x").mkdir()
    r, _ = _run(tmp_path / "x", "lenet", {"classify": {"top_k": 2}}, hw=(10, 10))
    assert r.exit_code == 2 and "(1, 3, 10, 10)" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("name", ["LINEARSCOPE_BLOCK_BYTES", "LINEARSCOPE_MEMORY_BYTES",
                                  "LINEARSCOPE_FREE_BYTES", "WORLD_SIZE"])
@pytest.mark.parametrize("value", ["abc", "-5", "1.5"])
def test_malformed_environment_overrides_are_one_line_errors(tmp_path, name, value):
    make_image(tmp_path / "img.png", 8, 8)
    cfg = write_config(tmp_path / "c.yaml", name="s", model={"arch": "bicubic", "scale": 2},
                       image="img.png", output=str(tmp_path / "runs"),
                       analyses={"columns": {"window": 4, "tile": 8}})
    r = cli("run", "-q", cfg, env={name: value})
    assert r.exit_code == 2, r.output
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert err == [f"error: environment variable {name}={value!r}: expected a whole number ≥ "
                   f"{1 if name == 'WORLD_SIZE' else 0}{' (bytes)' if name.endswith('_BYTES') else ''}"
                   "; fix or unset it"], r.stderr
