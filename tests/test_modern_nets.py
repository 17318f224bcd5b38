"""Networks beyond the paper: smooth units, squeeze-excitation gates, layer norm, channel shuffle.

Under ``rule="taylor"`` every unit is its tangent, so F must equal the Jacobian of the network
(torch.func.jvp / vjp); under ``freeze`` requirement (3) and F·x0 + r = f(x0) must hold.
Attention (products of two input-dependent tensors with no gate) must be refused clearly.
"""

import warnings

import pytest
import torch
import torchvision
from torch import nn

from oracles import jacobian_columns, jacobian_rows
from precompute import LinearInterpreter, ScopeError


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "convnext_tiny",
                                  "shufflenet_v2_x0_5"])
def test_taylor_equals_jacobian_and_freeze_reconstructs(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=5).double().eval()
    x0 = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        taylor = LinearInterpreter(model, x0, rule="taylor", batch=4)
        freeze = LinearInterpreter(model, x0, rule="freeze", batch=4)
    cols = [7, 2000]
    ref = jacobian_columns(model, x0, cols)
    assert (taylor.columns(cols) - ref).abs().max().item() <= 1e-12 * ref.abs().max().item()
    ref_rows = jacobian_rows(model, x0, [0, 3])
    got_rows = taylor.rows([0, 3])
    assert (got_rows - ref_rows).abs().max().item() <= 1e-12 * ref_rows.abs().max().item()
    for li in (taylor, freeze):
        checks = li.check()
        assert checks["requirement3_rel"] < 1e-12, checks
        assert checks["reconstruction_rel"] < 1e-12, checks
        assert checks["adjoint_rel"] < 1e-12, checks


class TinyAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        return self.attn(t, t, t, need_weights=False)[0]


def test_attention_is_refused_with_a_clear_error():
    with pytest.raises(ScopeError, match=r"attn"):
        LinearInterpreter(TinyAttention().eval(), torch.randn(1, 3, 8, 8))
