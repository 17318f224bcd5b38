"""Independent oracles for the interpreter tests (float64): torch.func Jacobians, dense matrices.

Nothing here uses LinearScope: these are the references its results are compared against.
"""

from __future__ import annotations

import math

import torch
from torch.func import jvp, vjp


def jacobian_columns(f, x0: torch.Tensor, indices) -> torch.Tensor:
    """Columns of the Jacobian of f at x0 for flat input indices, by forward-mode AD (jvp)."""
    cols = []
    for k in indices:
        e = torch.zeros(x0.numel(), dtype=x0.dtype)
        e[k] = 1
        _, t = jvp(f, (x0,), (e.view_as(x0),))
        cols.append(t[0])
    return torch.stack(cols)


def jacobian_rows(f, x0: torch.Tensor, indices) -> torch.Tensor:
    """Rows of the Jacobian of f at x0 for flat output indices, by reverse-mode AD (vjp)."""
    y, pull = vjp(f, x0)
    rows = []
    for k in indices:
        u = torch.zeros(y.numel(), dtype=y.dtype)
        u[k] = 1
        rows.append(pull(u.view_as(y))[0][0])
    return torch.stack(rows)


def cubic_kernel(d: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel with parameter a (PyTorch's bicubic uses a = −0.75)."""
    d = abs(d)
    if d <= 1:
        return (a + 2) * d**3 - (a + 3) * d**2 + 1
    if d < 2:
        return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return 0.0


def bicubic_matrix_1d(n_in: int, scale: int) -> torch.Tensor:
    """(n_in·scale × n_in) bicubic interpolation with half-pixel centres and edge clamping."""
    n_out = n_in * scale
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        src = (o + 0.5) / scale - 0.5
        base = math.floor(src)
        t = src - base
        for k in range(-1, 3):
            idx = min(max(base + k, 0), n_in - 1)
            m[o, idx] += cubic_kernel(t - k)
    return m


def bicubic_matrix(channels: int, h: int, w: int, scale: int) -> torch.Tensor:
    """The dense F of channel-wise bicubic upscaling, C order (c, y, x) on both sides."""
    per_channel = torch.kron(bicubic_matrix_1d(h, scale), bicubic_matrix_1d(w, scale))
    return torch.block_diag(*[per_channel] * channels)


def randomize_batch_norm(model: torch.nn.Module, seed: int = 0) -> None:
    """Random running statistics and affine parameters, so eval BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if m.weight is not None:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
