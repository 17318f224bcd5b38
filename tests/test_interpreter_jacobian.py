"""Piecewise-linear networks: the frozen system F(x0) equals the Jacobian of f at x0.

Columns are compared with forward-mode AD (jvp), rows with reverse-mode AD (vjp), in float64.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from oracles import jacobian_columns, jacobian_rows, randomize_batch_norm
from precompute import LinearInterpreter

TOL = 1e-12


class PiecewiseNet(nn.Module):
    """Every piecewise-linear construct of the issue, functional and module forms mixed."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)          # reused three times
        self.leaky = nn.LeakyReLU(0.2)
        self.prelu = nn.PReLU(8, init=0.3)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.up = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1)
        self.conv3 = nn.Conv2d(8, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.relu6 = nn.ReLU6()

    def forward(self, x):
        y = self.relu(self.bn(self.conv1(self.pad(x))))
        skip = y
        y = self.leaky(self.conv2(y))
        y = self.relu(y + skip)                    # skip connection, reused ReLU
        z = F.relu(self.conv2(y), inplace=True)    # functional, in place
        z = torch.relu(z - 0.1) - 0.2
        z.relu_()                                  # in place, result ignored
        z = self.prelu(z).clamp(min=0)             # a ReLU in disguise
        y = torch.cat([y, z], dim=1)               # concatenation
        y, _ = self.pool(y)
        y = self.relu(self.up(y))
        y = F.max_pool2d(y, 3, stride=1, padding=1, ceil_mode=True)
        y = self.relu6(self.conv3(y) * 3)
        y = F.hardtanh(y, -0.5, 2.0)
        return self.shuffle(y)


def _compare(model, x0, n_cols=None, n_rows=None, seed=0, batch=8):
    model = model.double().eval()
    li = LinearInterpreter(model, x0, batch=batch)
    g = torch.Generator().manual_seed(seed)
    n, N = li.n_inputs, li.n_outputs
    cols = torch.randperm(n, generator=g)[:n_cols] if n_cols else torch.arange(n)
    rows = torch.randperm(N, generator=g)[:n_rows] if n_rows else torch.arange(N)
    f = lambda x: model(x)  # noqa: E731
    ref_c = jacobian_columns(f, x0, cols.tolist())
    ref_r = jacobian_rows(f, x0, rows.tolist())
    got_c = li.columns(cols.tolist())
    got_r = li.rows(rows.tolist())
    scale = max(ref_c.abs().max().item(), ref_r.abs().max().item(), 1e-300)
    assert ref_c.abs().max() > 0 and ref_r.abs().max() > 0, "degenerate test: zero Jacobian"
    assert (got_c - ref_c).abs().max().item() <= TOL * max(1.0, scale)
    assert (got_r - ref_r).abs().max().item() <= TOL * max(1.0, scale)
    with torch.no_grad():
        assert torch.allclose(li.output, model(x0)[0], rtol=0, atol=1e-12)
    checks = li.check()
    assert checks["requirement3_rel"] < 1e-13
    assert checks["reconstruction_rel"] < 1e-12
    assert checks["adjoint_rel"] < 1e-12
    assert checks["linearity_rel"] < 1e-12
    return li


def test_piecewise_net_full_jacobian():
    torch.manual_seed(0)
    model = PiecewiseNet()
    randomize_batch_norm(model)
    x0 = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    li = _compare(model, x0, n_rows=128)  # every column, a random sample of rows
    # The frozen masks really are x0's: some ReLUs are off and the net is not the zero map.
    assert li.residual.abs().max() > 0


@pytest.mark.parametrize(
    "name,size,n_cols,n_rows",
    [
        ("resnet18", 32, 8, 4),
        ("densenet121", 32, 3, 2),
        ("inception_v3", 75, 3, 2),
        ("vgg11_bn", 32, 3, 2),
        ("squeezenet1_1", 32, 8, 4),
        ("alexnet", 63, 3, 2),
    ],
)
def test_torchvision_classifiers_equal_jacobian(name, size, n_cols, n_rows):
    torch.manual_seed(1)
    kwargs = {"aux_logits": False, "init_weights": False} if name == "inception_v3" else {}
    model = getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs)
    randomize_batch_norm(model)
    x0 = torch.randn(1, 3, size, size, dtype=torch.float64)
    _compare(model, x0, n_cols=n_cols, n_rows=n_rows, batch=4)


def test_float32_columns_and_rows_match_float64_jacobian():
    """Exact in float32 too (within float32 rounding), on a model with large biases."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    with torch.no_grad():
        model[0].bias.add_(300.0)   # EDSR-like 0–255 range: r is large
        model[2].bias.add_(1000.0)
    x0 = torch.randn(1, 3, 6, 6, dtype=torch.float64) * 100
    model64 = copy.deepcopy(model).double()
    ref = jacobian_columns(model64, x0, range(x0.numel()))
    li32 = LinearInterpreter(model.float(), x0.float(), batch=16)
    cols = li32.columns(range(x0.numel())).double()
    err = (cols - ref).abs().max().item() / ref.abs().max().item()
    assert err < 1e-6
    # Subtracting r from the affine probe output (the paper's y1 − r) loses accuracy here:
    # this is why apply() switches the constants off instead.
    affine = li32.affine(li32._impulses(range(x0.numel()), li32.in_shape)).double()
    naive_err = (affine - li32.residual.double() - ref).abs().max().item() / ref.abs().max().item()
    assert naive_err > 10 * err
    rows = li32.rows(range(0, li32.n_outputs, 7)).double()
    ref_rows = jacobian_rows(model64, x0, range(0, li32.n_outputs, 7))
    assert (rows - ref_rows).abs().max().item() / ref_rows.abs().max().item() < 1e-6


def test_batch_size_does_not_change_results():
    torch.manual_seed(3)
    model = PiecewiseNet().double().eval()
    x0 = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    a = LinearInterpreter(model, x0, batch=1).columns(range(0, 192, 5))
    b = LinearInterpreter(model, x0, batch=64).columns(range(0, 192, 5))
    assert (a - b).abs().max().item() < 1e-13


def test_column_and_row_by_coordinates():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()).double()
    x0 = torch.randn(1, 2, 5, 4, dtype=torch.float64)
    li = LinearInterpreter(model, x0)
    assert torch.equal(li.column(1, 2, 3), li.columns([1 * 20 + 2 * 4 + 3])[0])
    assert torch.equal(li.row(2, 4, 1), li.rows([2 * 20 + 4 * 4 + 1])[0])
    dense = li.dense()
    assert torch.equal(dense[:, 1 * 20 + 2 * 4 + 3].view(3, 5, 4), li.column(1, 2, 3))
    with pytest.raises(IndexError):
        li.column(2, 0, 0)


class PoolingNet(nn.Module):
    """Max pooling in every form: 1d, 3d, dilation, padding, ceil mode, adaptive, with indices."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.unpool_src = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)

    def forward(self, x):
        y = self.conv(x)                                                   # (B, 4, 9, 9)
        a = F.max_pool2d(y, 3, stride=2, padding=1, dilation=2, ceil_mode=True)
        b = F.adaptive_max_pool2d(y, (4, 3))
        c, _ = F.adaptive_max_pool2d(y, 2, return_indices=True)
        d = F.max_pool1d(y.flatten(2), 4, stride=3)                       # over the flattened plane
        e = F.max_pool3d(y.unsqueeze(1), (2, 2, 2), stride=(2, 1, 2))     # channels as depth
        pooled, idx = self.unpool_src(y)
        f = self.unpool(pooled, idx, output_size=y.shape[-2:])            # linear given x0's indices
        return torch.cat([a.flatten(1), b.flatten(1), c.flatten(1), d.flatten(1), e.flatten(1),
                          f.flatten(1)], dim=1)


def test_max_pool_variants_equal_jacobian():
    torch.manual_seed(5)
    x0 = torch.randn(1, 2, 9, 9, dtype=torch.float64)
    _compare(PoolingNet(), x0, n_rows=60)
