"""One rule, both interpreters: max unpooling (``precompute.rules.RuleSet("max_unpool")``).

The rule is declared once, in precompute/rules.py: its freeze/Taylor form (values scattered at
x0's max-pool indices, linear) and its support (the union of the pool's windows). The frozen
interpreter is checked against torch.func Jacobians in float64 (ReLU, max pool and unpool: the
frozen system is the Jacobian), the support against Jacobian sparsity, and `precompute run` with
compressed probing against the Jacobian; indices that are not a max pool's own (moved by
arithmetic) are global support, and the run falls back to one impulse per probe and says so.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import precompute
from precompute import LinearInterpreter
from precompute.support import analyse
from sweep_helpers import REPO, cli, make_image, write_config
from test_compressed import assert_windows_match
from test_support import assert_contains, jacobian_pattern

FIX = REPO / "tests" / "fixtures" / "unpool_models.py"
EXACT = ["segnet_unpool", "segnet_unpool_padded", "module_unpool"]


def _net(name: str):
    spec = importlib.util.spec_from_file_location("unpool_models_oracle", FIX)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)().double().eval()


@pytest.mark.parametrize("name", EXACT)
def test_frozen_unpool_equals_the_jacobian(name):
    net = _net(name)
    x0 = torch.rand(1, 3, 8, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    li = LinearInterpreter(net, x0, batch=32)
    J = torch.func.jacfwd(lambda x: net(x[None])[0])(x0[0]).detach().reshape(li.n_outputs, li.n_inputs)
    np.testing.assert_allclose(li.dense().detach().numpy(), J.numpy(), rtol=0, atol=1e-12)
    # requirement (3) and F·x0 + r = f(x0), enforced by the gate
    li.verify()


@pytest.mark.parametrize("name", EXACT)
def test_unpool_support_is_bounded_and_sound(name):
    net = _net(name)
    sup = analyse(net, (3, 12, 14), torch.float64, torch.device("cpu"))
    assert not sup.is_global, sup.global_reason
    assert_contains(sup, jacobian_pattern(net, (3, 12, 14)))


def test_overlapping_windows_are_refused_naming_the_op():
    """Kernel 3, stride 2: x0's pool picks some elements twice; PyTorch's unpooling keeps one
    value while its gradient reaches both (the gate measured an adjoint error of 6 % before the
    rule refused it)."""
    net = _net("segnet_unpool_overlapping")
    x0 = torch.rand(1, 3, 8, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with pytest.raises(precompute.ScopeError, match="max_unpool2d.*repeat"):
        LinearInterpreter(net, x0, batch=8).verify()


def test_moved_indices_are_global_support_naming_the_op():
    """Indices moved by arithmetic are no longer the pool's: the first op that uses them makes
    the support global (precompute.support fails closed on data-derived structure)."""
    sup = analyse(_net("shifted_indices"), (3, 12, 14), torch.float64, torch.device("cpu"))
    assert sup.is_global and "max_pool2d_with_indices" in sup.global_reason, sup.global_reason


def test_foreign_indices_into_a_plane_of_another_size_are_global_support():
    """Indices of a pool over an 8-wide plane, unpooled into a 9-wide one: positions would be
    scrambled, so the rule refuses to bound them (rules.support_max_unpool)."""
    class Foreign(torch.nn.Module):
        def forward(self, x):
            p, idx = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
            return torch.nn.functional.max_unpool2d(p, idx, 2, output_size=(x.shape[-2] + 1,
                                                                             x.shape[-1] + 1))

    sup = analyse(Foreign().double(), (3, 8, 8), torch.float64, torch.device("cpu"))
    assert sup.is_global and "max_unpool2d" in sup.global_reason, sup.global_reason


def _run(tmp_path, name, analyses):
    make_image(tmp_path / "img.png", 16, 18, seed=5)
    cfg = write_config(tmp_path / f"{name}.yaml", name=name,
                       model={"arch": f"python:{FIX}:{name}"}, image="img.png", dtype="float64",
                       batch=16, output=str(tmp_path / "runs"), analyses=analyses)
    r = cli("run", cfg)
    assert r.exit_code == 0, r.output + r.stderr
    return precompute.open_store(tmp_path / "runs" / f"{name}.zarr"), r


def _jacobian(name, st):
    net, x0 = _net(name), torch.from_numpy(st.array("input"))
    return torch.func.jacfwd(lambda x: net(x[None])[0])(x0).detach().numpy()


@pytest.mark.slow
def test_compressed_probing_through_unpooling_is_exact(tmp_path):
    an = {"residual": True, "columns": {"window": "full"}, "rows": {"window": "full"}}
    st, _ = _run(tmp_path, "segnet_unpool_padded", an)
    assert st.attrs["probing"]["columns"]["method"] == "compressed"
    assert_windows_match(st, _jacobian("segnet_unpool_padded", st))


@pytest.mark.slow
def test_moved_indices_fall_back_to_single_probes_and_say_so(tmp_path):
    an = {"columns": {"window": "full"}}
    st, r = _run(tmp_path, "shifted_indices", an)
    assert st.attrs["probing"]["columns"]["method"] == "single"
    assert "max_pool2d_with_indices" in st.attrs["probing"]["support"]["global"]
    assert "max_pool2d_with_indices" in r.stderr + r.output
    assert_windows_match(st, _jacobian("shifted_indices", st))
