"""Layer-wise contributions of real architectures (float64, random weights, small inputs).

* Conservation: input term + every site's term = the score f(x0)[k], computed by the plain model,
  for ResNet, DenseNet, Inception v3 and VGG-BN (skips, concatenations, the input transform's
  constants, max and average pooling, eval batch norm).
* FullGrad: on piecewise-linear networks each term equals FullGrad's bias-gradient term
  ⟨∂score/∂(layer output), bias⟩, computed here with plain autograd hooks on the model (no
  LinearScope), for every conv, linear and eval batch-norm layer, matched by module path.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from oracles import randomize_batch_norm
from precompute.contributions import decompose


def _small_vgg11_bn():
    """torchvision's VGG-11-BN with its classifier narrowed (4096 → 64: same layers, a float64
    copy of 1 GB would not be a small test)."""
    m = torchvision.models.vgg11_bn(weights=None, num_classes=10)
    m.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(),
                                 nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 10))
    return m


def _densenet():
    from torchvision.models.densenet import DenseNet

    return DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2,
                    num_classes=10)


def _inception():
    return torchvision.models.inception_v3(weights=None, num_classes=10, aux_logits=False,
                                           init_weights=False, transform_input=True)


MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(weights=None, num_classes=10), 32),
    "vgg11_bn": (_small_vgg11_bn, 32),
    "densenet": (_densenet, 32),
    "inception_v3": (_inception, 75),
}


def _build(name, seed=0):
    torch.manual_seed(seed)
    make, size = MODELS[name]
    model = make()
    randomize_batch_norm(model, seed)
    model = model.double().eval()
    x0 = torch.randn(1, 3, size, size, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(seed + 1))
    return model, x0


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_input_term_plus_all_terms_is_the_score(name):
    model, x0 = _build(name)
    with torch.no_grad():
        scores = model(x0)[0]
    labels = [int(k) for k in torch.argsort(scores, descending=True)[:3]]
    d = decompose(model, x0, labels)
    total = d.input_term + d.contributions.sum(1)
    err = (total - scores[labels]).abs().max().item()
    assert err <= 1e-10, (name, err)
    assert torch.allclose(d.scores, scores, atol=1e-12, rtol=0)
    # the terms are not trivially zero: the residual is most of these scores
    assert d.contributions.abs().sum() > 0.1 * scores[labels].abs().sum()
    assert len(d.terms) == len(set(d.terms))
    if name == "inception_v3":  # the input transform's three constants, in the root's forward
        assert d.terms[:3] == ["(root)#0", "(root)#1", "(root)#2"]


def _fullgrad_terms(model, x0, label):
    """{module path: ⟨∂score/∂(output of the module), its bias⟩} by autograd hooks."""
    outs, mods = {}, {}

    def keep(path):
        def hook(module, inputs, output):
            outs[path] = output
            return output.clone()  # the next in-place ReLU must not overwrite the kept output
        return hook

    hooks = []
    for path, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            hooks.append(m.register_forward_hook(keep(path)))
            mods[path] = m
    try:
        score = model(x0)[0, label]
    finally:
        for h in hooks:
            h.remove()
    paths = list(outs)
    grads = torch.autograd.grad(score, [outs[p] for p in paths])
    terms = {}
    for p, g in zip(paths, grads):
        m = mods[p]
        if isinstance(m, nn.BatchNorm2d):
            bias = m.bias - m.weight * m.running_mean / torch.sqrt(m.running_var + m.eps)
        else:
            bias = m.bias
        if bias is None:
            continue
        shaped = bias.view(1, -1, 1, 1) if g.dim() == 4 else bias.view(1, -1)
        terms[p] = float((g * shaped).sum().detach())
    return terms


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn"])
def test_terms_equal_fullgrad_bias_gradients(name):
    model, x0 = _build(name, seed=4)
    with torch.no_grad():
        label = int(model(x0)[0].argmax())
    d = decompose(model, x0, [label])
    ours = dict(zip(d.terms, d.contributions[0].tolist()))
    want = _fullgrad_terms(model, x0, label)
    assert set(ours) == set(want), set(ours) ^ set(want)
    scale = max(abs(v) for v in want.values())
    for path, v in want.items():
        assert abs(ours[path] - v) <= 1e-12 * scale, (path, ours[path], v)


class _InPlaceBlock(nn.Module):
    """torchvision's BasicBlock pattern: one in-place ReLU module used twice, ``out += identity``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(2)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 5 * 5, 4)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        out = self.relu(out)
        return self.fc(out.flatten(1))


def test_back_projection_follows_in_place_units():
    """The masked-bias rule through in-place ReLUs and an in-place skip sum, against hooks."""
    torch.manual_seed(2)
    net = _InPlaceBlock()
    randomize_batch_norm(net, 2)
    net = net.double().eval()
    x0 = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    d = decompose(net, x0, [0, 2])
    assert d.terms == ["conv1", "bn1", "conv2", "bn2", "fc"]
    acts, relu_out = {}, []

    def keep(name):
        def hook(module, inputs, output):
            acts[name] = output
            return output.clone()  # the in-place op that follows works on the copy
        return hook

    hooks = [getattr(net, n).register_forward_hook(keep(n)) for n in ("conv1", "bn1", "conv2",
                                                                        "bn2")]
    hooks.append(net.relu.register_forward_hook(lambda m, i, o: relu_out.append(o)))
    x = x0.clone().requires_grad_(True)
    net(x)
    for h in hooks:
        h.remove()

    def shift(bn):
        return (bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps)
                ).detach().view(1, -1, 1, 1)

    objective = ((acts["conv1"] * net.conv1.bias.detach().view(1, -1, 1, 1)).sum()
                 + (relu_out[0] * (acts["bn1"] > 0) * shift(net.bn1)).sum()  # masked by ReLU
                 + (acts["conv2"] * net.conv2.bias.detach().view(1, -1, 1, 1)).sum()
                 + (acts["bn2"] * shift(net.bn2)).sum())  # consumed by the skip's sum
    (want,) = torch.autograd.grad(objective, x)
    assert (d.back_projection - want[0]).abs().max() <= 1e-13 * want.abs().max()
    assert torch.equal(d.output_constant, net.fc.bias.detach())
    assert (acts["bn1"] < 0).any()  # the mask matters
