"""Freeze and Taylor rules against hand-written references of the frozen system (float64).

For smooth units and statistics-based normalisations the frozen system is not the Jacobian. The
reference here re-implements each frozen unit by hand (gains, frozen statistics), builds F as the
Jacobian of that *affine* reference in the probe and r as its value at 0. Under ``rule="taylor"``
every unit is its tangent, so F must equal the Jacobian of the real network.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oracles import jacobian_columns, jacobian_rows
from precompute import LinearInterpreter
from precompute.rules import small_threshold



@pytest.fixture(autouse=True)
def float64_default():
    """Float64 for every tensor the references create; restored for other test modules."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _reference_matrix(frozen, x0):
    """F and r of an affine reference ``frozen(x1)`` (Jacobian in x1, value at 0)."""
    n = x0.numel()
    jac = torch.autograd.functional.jacobian(lambda v: frozen(v.view_as(x0)).reshape(-1),
                                             torch.zeros(n))
    r = frozen(torch.zeros_like(x0))
    return jac, r


def _assert_interpreter_matches(model, x0, frozen, rule="freeze", tol=1e-12):
    li = LinearInterpreter(model, x0, rule=rule, batch=32)
    ref_f, ref_r = _reference_matrix(frozen, x0)
    assert ref_f.abs().max() > 0
    assert (li.dense() - ref_f).abs().max().item() < tol * max(1.0, ref_f.abs().max().item())
    assert (li.residual - ref_r[0]).abs().max().item() < tol * max(1.0, ref_r.abs().max().item())
    checks = li.check()
    assert checks["requirement3_rel"] < 1e-13, checks
    assert checks["reconstruction_rel"] < 1e-12, checks
    return li


class SmoothNet(nn.Module):
    def __init__(self, act1, act2):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 3, 3, padding=1)
        self.c3 = nn.Conv2d(3, 2, 1)
        self.act1, self.act2 = act1, act2

    def forward(self, x):
        return self.c3(self.act2(self.c2(self.act1(self.c1(x)))))


def _chord(h, z0):
    """Hand-written chord gain and offset: A = (h(z0) − h(0))/z0, c = h(0)."""
    h0 = h(torch.zeros(()))
    return (h(z0) - h0) / z0, h0


@pytest.mark.parametrize("act1,act2", [(nn.Tanh(), nn.Sigmoid()), (nn.GELU(), nn.SiLU())])
def test_smooth_units_freeze_is_the_chord(act1, act2):
    # (activation modules hold no parameters, so creating them at collection time is fine)
    torch.manual_seed(0)
    model = SmoothNet(act1, act2)
    x0 = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        z1 = model.c1(x0)
        a1, c1 = _chord(act1, z1)
        z2 = model.c2(act1(z1))
        a2, c2 = _chord(act2, z2)

    def frozen(x1):
        y = a1 * model.c1(x1) + c1
        y = a2 * model.c2(y) + c2
        return model.c3(y)

    _assert_interpreter_matches(model, x0, frozen)


def test_sigmoid_gain_is_bounded_and_chord_offset_is_one_half():
    from precompute.rules import Call, freeze_smooth

    x0 = torch.tensor([[-3.0, -1e-12, 0.0, 1e-3, 2.0]])
    frozen = freeze_smooth(Call(torch.sigmoid, x0))
    gain = frozen.linear(torch.ones_like(x0))
    assert (gain <= 0.25 + 1e-15).all() and (gain > 0).all()
    big = x0.abs() >= small_threshold(x0.dtype)
    assert torch.allclose(frozen.offset[big], torch.full_like(frozen.offset[big], 0.5))
    # Requirement (3) for every element, including those below the threshold (derivative limit).
    assert torch.allclose(frozen.linear(x0) + frozen.offset, torch.sigmoid(x0), rtol=0, atol=1e-16)


@pytest.mark.parametrize("act1,act2", [(nn.Tanh(), nn.Sigmoid()), (nn.GELU(), nn.SiLU()),
                                       (nn.ELU(), nn.Softplus()), (nn.Hardswish(), nn.Mish())])
def test_taylor_rule_equals_jacobian_of_smooth_network(act1, act2):
    torch.manual_seed(1)
    model = SmoothNet(act1, act2)
    x0 = torch.randn(1, 2, 5, 5)
    li = LinearInterpreter(model, x0, rule="taylor", batch=64)
    ref = jacobian_columns(model, x0, range(x0.numel()))
    assert (li.columns(range(x0.numel())) - ref).abs().max().item() < 1e-12
    rows = jacobian_rows(model, x0, range(0, li.n_outputs, 3))
    assert (li.rows(range(0, li.n_outputs, 3)) - rows).abs().max().item() < 1e-12
    checks = li.check()
    assert checks["requirement3_rel"] < 1e-13 and checks["reconstruction_rel"] < 1e-12


class NormNet(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.norm = norm
        self.c2 = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.relu(self.norm(self.c1(x))))


def _frozen_stats(z0, groups):
    """Mean and std (biased var + eps) of z0 per (sample, group), by hand, broadcast to z0."""
    g = z0.reshape(1, groups, -1)
    mean = g.sum(-1, keepdim=True) / g.shape[-1]
    var = ((g - mean) ** 2).sum(-1, keepdim=True) / g.shape[-1]
    return mean, (var + 1e-5).sqrt()


@pytest.mark.parametrize("make_norm,groups", [
    (lambda: nn.InstanceNorm2d(4), 4),              # CycleGAN style: no affine, no running stats
    (lambda: nn.InstanceNorm2d(4, affine=True), 4),
    (lambda: nn.GroupNorm(2, 4), 2),
    (lambda: nn.BatchNorm2d(4).train(), 4),         # training mode: x0's statistics
])
def test_normalisations_are_frozen_at_x0_statistics(make_norm, groups):
    torch.manual_seed(2)
    norm = make_norm()
    model = NormNet(norm)
    if getattr(norm, "weight", None) is not None:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
    x0 = torch.randn(1, 2, 6, 6)
    with torch.no_grad():
        z0 = model.c1(x0)
        mean, std = _frozen_stats(z0, groups)
        y0 = ((z0.reshape(1, groups, -1) - mean) / std).reshape(z0.shape)
        w = norm.weight.view(1, -1, 1, 1) if getattr(norm, "weight", None) is not None else 1.0
        b = norm.bias.view(1, -1, 1, 1) if getattr(norm, "bias", None) is not None else 0.0
        mask = ((y0 * w + b) > 0).double()
    running = None if not isinstance(norm, nn.BatchNorm2d) else norm.running_mean.clone()

    def frozen(x1):
        z = model.c1(x1)
        zn = ((z.reshape(1, groups, -1) - mean) / std).reshape(z.shape) * w + b
        return model.c2(mask * zn)

    _assert_interpreter_matches(model, x0, frozen)
    if running is not None:  # the model is unchanged: no running-statistics update
        assert torch.equal(norm.running_mean, running)


def test_layer_norm_frozen_and_taylor():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    x0 = torch.randn(1, 4, 6)  # (batch, tokens, features): statistics per token
    with torch.no_grad():
        z0 = model[0](x0)
        mean = z0.mean(-1, keepdim=True)
        std = (z0.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()

    def frozen(x1):
        return model[2](model[1].weight * (model[0](x1) - mean) / std + model[1].bias)

    _assert_interpreter_matches(model, x0, frozen)
    li = LinearInterpreter(model, x0, rule="taylor", batch=64)
    ref = jacobian_columns(model, x0, range(x0.numel()))
    assert (li.columns(range(x0.numel())) - ref).abs().max().item() < 1e-12


def test_taylor_rule_for_instance_norm_equals_jacobian():
    torch.manual_seed(4)
    model = NormNet(nn.InstanceNorm2d(4, affine=True))
    x0 = torch.randn(1, 2, 5, 5)
    li = LinearInterpreter(model, x0, rule="taylor", batch=64)
    ref = jacobian_columns(model, x0, range(x0.numel()))
    assert (li.columns(range(x0.numel())) - ref).abs().max().item() < 1e-12


class GatedNet(nn.Module):
    """Squeeze-excitation and a hand-written x·σ(x): products of two input-dependent tensors."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Conv2d(4, 4, 1)
        self.c2 = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        z = self.c1(x)
        scale = torch.sigmoid(self.fc(F.adaptive_avg_pool2d(z, 1)))
        z = z * scale                       # SE: gate is the sigmoid (and the broadcast factor)
        z = z * torch.sigmoid(z)            # SiLU by hand: the gate is σ(z)
        return self.c2(z)


def test_products_freeze_the_gate_factor():
    torch.manual_seed(5)
    model = GatedNet()
    x0 = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        z0 = model.c1(x0)
        s0 = torch.sigmoid(model.fc(F.adaptive_avg_pool2d(z0, 1)))
        g0 = torch.sigmoid(z0 * s0)

    def frozen(x1):
        return model.c2(g0 * (s0 * model.c1(x1)))

    _assert_interpreter_matches(model, x0, frozen)
    # Under Taylor every unit, products included, is its tangent: F is the Jacobian.
    li = LinearInterpreter(model, x0, rule="taylor", batch=64)
    ref = jacobian_columns(model, x0, range(x0.numel()))
    assert (li.columns(range(x0.numel())) - ref).abs().max().item() < 1e-12


def test_per_module_override_changes_only_that_module():
    torch.manual_seed(6)
    model = SmoothNet(nn.Tanh(), nn.Sigmoid())
    x0 = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        z1 = model.c1(x0)
        a1, c1 = _chord(torch.tanh, z1)
        z2 = model.c2(torch.tanh(z1))
        s = torch.sigmoid(z2)
        d2 = s * (1 - s)                      # Taylor for act2 only

    def frozen(x1):
        y = a1 * model.c1(x1) + c1
        y = d2 * model.c2(y) + (s - d2 * z2)
        return model.c3(y)

    li = LinearInterpreter(model, x0, overrides={"act2": "taylor"}, batch=64)
    ref_f, ref_r = _reference_matrix(frozen, x0)
    assert (li.dense() - ref_f).abs().max().item() < 1e-12
    assert (li.residual - ref_r[0]).abs().max().item() < 1e-12


def test_rms_norm_frozen_and_taylor():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(6, 8), nn.RMSNorm(8), nn.Linear(8, 3))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
    x0 = torch.randn(1, 4, 6)
    with torch.no_grad():
        z0 = model[0](x0)
        rms0 = (z0.pow(2).mean(-1, keepdim=True) + torch.finfo(z0.dtype).eps).sqrt()

    def frozen(x1):  # RMS frozen at x0: no constant term besides the linear layers' biases
        return model[2](model[1].weight * model[0](x1) / rms0)

    _assert_interpreter_matches(model, x0, frozen)
    li = LinearInterpreter(model, x0, rule="taylor", batch=64)
    ref = jacobian_columns(model, x0, range(x0.numel()))
    assert (li.columns(range(x0.numel())) - ref).abs().max().item() < 1e-12
