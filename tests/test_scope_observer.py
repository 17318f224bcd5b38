"""The scope's constant observer (Theorem 1, eq. 8/16): every constant added on the probe branch
goes through it, so per-site scalar leaves give the layer-wise decomposition of r in one backward.

Oracles: the plain residual r(x0) (constants on), and bias gradients computed independently with
autograd hooks on the plain model (FullGrad's ⟨∂score/∂t, b⟩) for a piecewise-linear network.
"""

import torch
import torch.nn.functional as F
from torch import nn

from oracles import randomize_batch_norm
from precompute import LinearInterpreter, LinearScope
from precompute.scope import ConstantObserver


class Lambdas(ConstantObserver):
    """One scalar leaf per probe row and site: d(score)/dλ = ⟨∂score/∂t, b⟩."""

    def __init__(self, probes: int, dtype):
        self.probes, self.dtype = probes, dtype
        self.sites, self.lams = [], []

    def constant(self, site, const):
        lam = torch.ones((self.probes,) + (1,) * (const.dim() - 1), dtype=self.dtype,
                         requires_grad=True)
        self.sites.append(site)
        self.lams.append(lam)
        return lam * const


class Net(nn.Module):
    """conv+bias, eval BN, ReLU (module and functional), max pool, a constant add, pad, a skip,
    sigmoid (c = ½), linear+bias: every kind of constant the scope adds."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4 * 3 * 3, 5)
        self.shift = nn.Parameter(torch.randn(1, 4, 1, 1))

    def forward(self, x):
        h = F.relu(self.bn(self.c1(x)))
        h = F.max_pool2d(h, 2)
        h = h + torch.sigmoid(self.c2(F.pad(h, (0, 0, 0, 0), value=0.0)))  # sigmoid: c = ½
        h = F.pad(h, (1, 0, 1, 0), value=0.3) + self.shift
        return self.fc(h[:, :, :3, :3].flatten(1))


def _setup(seed=0):
    torch.manual_seed(seed)
    net = Net().double().eval()
    randomize_batch_norm(net, seed)
    x0 = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    return net, x0


def test_observer_terms_sum_to_the_residual_of_every_score():
    net, x0 = _setup()
    li = LinearInterpreter(net, x0)
    k = 5
    obs = Lambdas(k, torch.float64)
    with LinearScope(net, observer=obs):
        y = net(torch.cat([x0, torch.zeros(k, *x0.shape[1:], dtype=torch.float64)]))
    assert torch.allclose(y[0], li.output, atol=1e-13, rtol=0)  # x0 branch: f(x0)
    assert torch.allclose(y[1:], li.residual.expand(k, -1), atol=1e-13, rtol=0)  # default terms: r
    score = y[1:].diagonal().sum()  # probe row k selects score k
    grads = torch.autograd.grad(score, obs.lams)
    per_score = torch.stack([g.reshape(k) for g in grads]).sum(0)
    assert torch.allclose(per_score, li.residual, atol=1e-12, rtol=0)
    kinds = {s.op.rsplit(".", 1)[-1] for s in obs.sites}
    assert {"conv2d", "batch_norm", "sigmoid", "pad", "add", "linear"} <= kinds, kinds


def test_observer_terms_equal_fullgrad_bias_gradients_on_a_relu_network():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(2 * 2 * 2, 3)).double()
    x0 = torch.randn(1, 1, 6, 6, dtype=torch.float64)
    obs = Lambdas(1, torch.float64)
    with LinearScope(net, observer=obs):
        y = net(torch.cat([x0, torch.zeros_like(x0)]))
    grads = torch.autograd.grad(y[1, 2], obs.lams)
    ours = [float(g) for g in grads]
    # FullGrad oracle: ⟨∂score/∂(layer output), bias⟩ on the plain network, by autograd hooks
    outs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outs.append(o)) for m in net
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    y_plain = net(x0)
    for h in hooks:
        h.remove()
    g = torch.autograd.grad(y_plain[0, 2], outs)
    layers = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    fullgrad = [float((gi * (m.bias.view(1, -1, 1, 1) if gi.dim() == 4 else m.bias)).sum().detach())
                for gi, m in zip(g, layers)]
    assert len(ours) == 3 and all(abs(a - b) < 1e-12 for a, b in zip(ours, fullgrad)), (ours, fullgrad)


class Writes(nn.Module):
    """Every constant path added for issue 8: a constant written into a probe-carrying tensor,
    the constant content of a fresh tensor that receives probe-carrying values, where /
    masked_fill with a constant branch, maximum with a constant, index_put_ / fill_ of
    constants, F.bilinear's bias."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.bil = nn.Bilinear(3, 2, 4)
        self.register_buffer("code", torch.tensor([[0.5, -1.5]]))

    def forward(self, x):
        h = self.c1(x)
        h[:, 0, 0] = 0.7                                       # constant into probe data
        acc = torch.full_like(h, 0.25)                         # fresh constant content ...
        acc.add_(torch.relu(h))                                # ... receives probe data
        buf = h.new_zeros(h.shape)
        buf[:, :, 1:] = h[:, :, :-1]                           # zero content: nothing to observe
        y = torch.where(torch.arange(h.shape[-1]) > 1, acc + buf, -0.3)
        y = y.masked_fill(torch.eye(h.shape[-1], dtype=torch.bool), 0.9)
        y = torch.maximum(y, torch.tensor(0.1, dtype=y.dtype))
        y.index_put_((torch.arange(h.shape[0])[:, None], torch.tensor([[1]])),
                     torch.tensor(-2.0, dtype=y.dtype))
        y[:, 2].fill_(0.05)
        v = y.mean(dim=(2, 3))
        return self.bil(v, self.code.expand(v.shape[0], -1))


def test_observer_sees_every_constant_of_writes_selections_and_bilinear():
    torch.manual_seed(3)
    net = Writes().double().eval()
    x0 = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    li = LinearInterpreter(net, x0)
    k = 4
    obs = Lambdas(k, torch.float64)
    with LinearScope(net, observer=obs):
        y = net(torch.cat([x0, torch.zeros(k, *x0.shape[1:], dtype=torch.float64)]))
    assert torch.allclose(y[0], li.output, atol=1e-13, rtol=0)
    assert torch.allclose(y[1:], li.residual.expand(k, -1), atol=1e-13, rtol=0)
    score = y[1:].diagonal().sum()
    grads = torch.autograd.grad(score, obs.lams)
    per_score = torch.stack([g.reshape(k) for g in grads]).sum(0)
    assert torch.allclose(per_score, li.residual, atol=1e-12, rtol=0)
    kinds = {s.op.rsplit(".", 1)[-1] for s in obs.sites}
    assert {"__setitem__", "add_", "where", "masked_fill", "maximum", "index_put_", "fill_",
            "bilinear"} <= kinds, kinds
    assert li.residual.abs().max() > 0.1
