"""The rules added for issue 8, each against the Jacobian (torch.func jvp/vjp, float64).

All of them are piecewise linear or linear, so F(x0) must equal the Jacobian of the network at
x0, also at ties, where the frozen selection follows PyTorch's own derivative (ties of
``maximum`` share ½/½, ``amax`` shares evenly, ``max(dim)`` routes to its returned index).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oracles import jacobian_columns, jacobian_rows
from precompute import LinearInterpreter
from precompute.scope import supported_ops


class Net(nn.Module):
    """conv(2 → 4), then ``fn``, then conv(k → 2): the rule sits inside a network."""

    def __init__(self, fn, k=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(k, 2, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.fn = fn

    def forward(self, x):
        return self.c2(self.fn(self.c1(x)))


def _x0(seed=0, shape=(1, 2, 5, 5)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _assert_jacobian(model, x0, rule="freeze"):
    model = model.double().eval()
    li = LinearInterpreter(model, x0, rule=rule, batch=64)
    n, N = li.n_inputs, li.n_outputs
    try:
        ref_c = jacobian_columns(model, x0, range(n))
    except NotImplementedError:  # no forward-mode AD (grid_sample): the reverse-mode Jacobian
        ref_c = torch.func.jacrev(model)(x0).reshape(N, n).T.reshape((n,) + li.out_shape)
    ref_r = jacobian_rows(model, x0, range(N))
    assert ref_c.abs().max() > 0.1
    assert (li.columns(range(n)) - ref_c).abs().max().item() < 1e-12
    assert (li.rows(range(N)) - ref_r).abs().max().item() < 1e-12
    checks = li.verify()
    assert max(checks[k] for k in ("requirement3_rel", "reconstruction_rel")) < 1e-13, checks
    return li


def _grid(h, w):
    theta = torch.tensor([[[0.8, 0.3, 0.1], [-0.2, 0.9, -0.15]]], dtype=torch.float64)
    return F.affine_grid(theta, (1, 1, h, w), align_corners=False)


CASES = {
    "abs": lambda h: h.abs() + torch.abs(h - 0.3),
    "maximum_of_two_tensors": lambda h: torch.maximum(h[:, :2], h[:, 2:]).repeat(1, 2, 1, 1),
    "minimum_with_a_constant": lambda h: torch.minimum(h, torch.tensor(0.2, dtype=h.dtype)),
    "max_min_binary_form": lambda h: torch.max(h, h.flip(1)) - torch.min(h, 0.1 * h.flip(-1)),
    "channel_max_with_indices": lambda h: h - h.max(dim=1, keepdim=True).values,
    "max_over_width_no_keepdim": lambda h: torch.min(h, 3)[0].unsqueeze(-1).expand_as(h) + h,
    "amax_amin": lambda h: h.amax(dim=(2, 3), keepdim=True) * 0.5 + h.amin(1, keepdim=True) + h,
    "where_constant_mask": lambda h: torch.where(torch.arange(5) % 2 == 0, h, 0.5),
    "masked_fill_constant_mask": lambda h: h.masked_fill(torch.eye(5, dtype=torch.bool), -1.0),
    "grid_sample_bilinear": lambda h: F.grid_sample(h, _grid(5, 5).expand(h.shape[0], -1, -1, -1),
                                                    align_corners=False),
    "grid_sample_nearest_border": lambda h: F.grid_sample(
        h, _grid(4, 6).expand(h.shape[0], -1, -1, -1), mode="nearest", padding_mode="border",
        align_corners=True),
    "grid_sample_bicubic_reflection": lambda h: F.grid_sample(
        h, _grid(5, 5).expand(h.shape[0], -1, -1, -1), mode="bicubic",
        padding_mode="reflection", align_corners=False),
    "cumsum": lambda h: torch.cumsum(h, dim=-1) - h.cumsum(1),
    "unbind": lambda h: torch.stack([t * (i + 1) for i, t in enumerate(h.unbind(1))], dim=1),
    "rrelu_eval": lambda h: F.rrelu(h, 0.1, 0.3, training=False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_new_rule_equals_the_jacobian(name):
    _assert_jacobian(Net(CASES[name]), _x0())


def test_ties_follow_pytorchs_derivative():
    """x0 with exact ties: maximum splits ½/½, amax shares evenly, max(dim) takes its index,
    abs has derivative 0 at 0 — as autograd and forward-mode AD do."""

    def fn(x):
        a = torch.maximum(x[:, :1], x[:, 1:2])
        b = x.amax(dim=1, keepdim=True)
        c = x.max(dim=1, keepdim=True)[0]
        return torch.cat([a, b, c, x.abs()], dim=1)

    x0 = torch.tensor([1.0, 2.0, 0.0, -1.0, 3.0, 3.0], dtype=torch.float64).view(1, 1, 2, 3)
    x0 = torch.cat([x0, x0, x0 - 5], dim=1)  # channels 0 and 1 tie everywhere, 2 never wins
    model = nn.Module()
    model.forward = fn
    li = LinearInterpreter(model, x0, batch=64)
    n = li.n_inputs
    ref = jacobian_columns(fn, x0, range(n))
    assert (li.columns(range(n)) - ref).abs().max() == 0
    ref_rows = jacobian_rows(fn, x0, range(li.n_outputs))
    assert (li.rows(range(li.n_outputs)) - ref_rows).abs().max() == 0
    # the ties really are shared: ∂maximum/∂x_0 = ½ at every pixel
    assert li.columns([0])[0, 0, 0, 0] == 0.5


def test_max_with_dim_returns_x0s_indices_for_every_batch_element():
    captured = {}

    def fn(x):
        values, idx = torch.max(x, dim=1)
        captured["idx"] = idx
        return values.unsqueeze(1) * 2

    model = nn.Module()
    model.forward = fn
    x0 = _x0(3, (1, 3, 4, 4))
    li = LinearInterpreter(model, x0, batch=4)
    li.columns([0, 5])
    idx = captured["idx"]
    assert idx.shape[0] == 3 and torch.equal(idx[1], idx[0]) and torch.equal(idx[0], x0.argmax(1)[0])


def test_where_with_a_constant_branch_is_affine():
    """The constant branch is part of r (constants on) and not of F (apply())."""
    model = Net(lambda h: torch.where(torch.arange(5) >= 2, h, 3.0)).double()
    x0 = _x0(4)
    li = _assert_jacobian(model, x0)
    with torch.no_grad():
        z = model.c1(torch.zeros_like(x0))
        r = model.c2(torch.where(torch.arange(5) >= 2, z, 3.0))[0]
    assert (li.residual - r).abs().max() < 1e-13
    assert li.apply(torch.zeros_like(x0)).abs().max() == 0


def test_input_dependent_masks_and_grids_are_refused():
    from precompute import ScopeError

    x0 = _x0(5)
    for fn, pattern in [
        (lambda h: h.masked_fill(h > 0, 0.0), r"gt"),
        (lambda h: F.grid_sample(h, h[:, :2].permute(0, 2, 3, 1).tanh(), align_corners=False),
         r"grid"),
        (lambda h: h.amax(dim=0, keepdim=True).expand_as(h), r"amax.*batch dimension"),
        (lambda h: h.max(), r"max.*batch dimension"),
        (lambda h: h.cumsum(0), r"cumsum.*batch dimension"),
        (lambda h: torch.stack(h.unbind(0)), r"unbind.*batch dimension"),
    ]:
        with pytest.raises(ScopeError, match=pattern):
            LinearInterpreter(Net(fn).double(), x0, rule="taylor")


def test_taylor_rule_agrees_for_the_new_piecewise_linear_families():
    _assert_jacobian(Net(lambda h: torch.maximum(h, h.flip(-1)).abs().amax(1, keepdim=True)
                         .expand_as(h)), _x0(6), rule="taylor")


def test_supported_ops_lists_the_new_families():
    ops = supported_ops()
    assert "torch.abs" in ops["piecewise_linear"]
    assert "torch.nn.functional.rrelu" in ops["piecewise_linear"]
    assert "torch.maximum" in ops["select"]
    assert {"torch.amax", "torch.max"} <= set(ops["reduce_select"])
    assert {"torch.where", "torch.Tensor.__setitem__", "torch.Tensor.index_put_",
            "torch.nn.functional.bilinear"} <= set(ops["affine"])
    assert {"torch.nn.functional.grid_sample", "torch.cumsum", "torch.unbind"} <= set(
        ops["linear"])
