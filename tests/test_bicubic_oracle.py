"""A bicubic upscaler is linear: r = 0 and F is the bicubic interpolation matrix (paper §8.B).

The matrix is built independently from the cubic-convolution kernel (a = −0.75, half-pixel
centres, edge clamping) in tests/oracles.py and compared column by column and row by row.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oracles import bicubic_matrix
from precompute import LinearInterpreter


class Bicubic(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)


@pytest.mark.parametrize("scale,h,w", [(2, 5, 4), (3, 4, 6), (4, 3, 3)])
def test_bicubic_interpreter_is_the_interpolation_matrix(scale, h, w):
    torch.manual_seed(scale)
    x0 = torch.rand(1, 3, h, w, dtype=torch.float64)
    li = LinearInterpreter(Bicubic(scale), x0, batch=7)
    assert torch.equal(li.residual, torch.zeros_like(li.residual))
    ref = bicubic_matrix(3, h, w, scale)
    n = x0.numel()
    cols = li.columns(range(n)).reshape(n, -1).T
    assert (cols - ref).abs().max().item() < 1e-14
    rows = li.rows(range(li.n_outputs)).reshape(li.n_outputs, -1)
    assert (rows - ref).abs().max().item() < 1e-14
    checks = li.check()
    assert checks["requirement3_abs"] < 1e-14 and checks["reconstruction_abs"] < 1e-14


def test_bicubic_float32_columns():
    x0 = torch.rand(1, 1, 6, 6)
    li = LinearInterpreter(Bicubic(2), x0, batch=36)
    ref = bicubic_matrix(1, 6, 6, 2).float()
    assert (li.dense() - ref).abs().max().item() < 1e-6
