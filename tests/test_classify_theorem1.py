"""Contributions, pixel discussions and votes against Theorem 1 built by hand (float64).

The oracle takes a sequential network ``y_n = W_n x_{n−1} + b_n, x_n = h_n(y_n)`` apart layer by
layer: each ``W_n`` is a dense matrix (the Jacobian of the bias-free op, by ``torch.func``), each
``A_n``, ``c_n`` comes from the unit's own definition at x0 (``A = h'(y)``, ``c = h(y) − A·y``;
max pooling as a layer of its own with ``W = I``, ``b = 0``), then

    Ŵ_n = A_n W_n,  b̂_n = A_n b_n + c_n,  P_i = Ŵ_1ᵀ … Ŵ_iᵀ,  Q_i = Ŵ_N … Ŵ_{i+1}      (eq. 14, 17)
    PD_k ∝ x0 ⊙ F_kᵀ + Σ_i P_i b̂_i,  normalised so that its pixels sum to the score        (eq. 18)

with the single-score view: the last layer is ``e_kᵀ W_N`` and ``b_N[k]``. Nothing here uses the
LinearScope.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacrev

from precompute.contributions import decompose
from precompute.discussions import discussions, pixel_values, pixel_votes, row_chunks


def make_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(),          # 0, 1
        nn.MaxPool2d(2),                                   # 2: a layer of its own
        nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.1),  # 3, 4: A ≠ A² (gain 0.1)
        nn.Conv2d(4, 4, 1), nn.ReLU6(),                    # 5, 6: saturation, c = 6 where y > 6
        nn.Flatten(), nn.Linear(4 * 3 * 3, 6), nn.ReLU(),  # 7, 8, 9
        nn.Linear(6, 5),                                   # 10: the scores
    ).double().eval()
    with torch.no_grad():
        net[5].weight.mul_(10.0)
        net[5].bias.copy_(torch.tensor([-1.0, 3.0, 5.5, 8.0]))
    return net


def theorem1_layers(net, x0):
    """[(W, b, A, c)] per layer as dense matrices on flattened tensors, and the scores."""
    layers = []
    x = x0
    groups = [(net[0], net[1]), (None, net[2]), (net[3], net[4]), (net[5], net[6]),
              (net[8], net[9]), (net[10], None)]
    for lin, act in groups:
        if lin is None:  # max pool: W = I, b = 0
            n = x.numel()
            W, b = torch.eye(n, dtype=x.dtype), torch.zeros(n, dtype=x.dtype)
            y = x
        else:
            if isinstance(lin, nn.Linear):
                x = x.flatten(1)
                op = lambda z, lin=lin: F.linear(z, lin.weight)  # noqa: E731
            else:
                op = lambda z, lin=lin: F.conv2d(z, lin.weight, None, lin.stride,  # noqa: E731
                                                 lin.padding)
            y_nobias = op(x)
            W = jacrev(op)(x).reshape(y_nobias.numel(), x.numel())
            b = (lin.bias.view(-1, 1, 1).expand_as(y_nobias[0]) if y_nobias.dim() == 4
                 else lin.bias).reshape(-1)
            y = (y_nobias.reshape(-1) + b).reshape(y_nobias.shape)
        if act is None:
            A, c, x = torch.eye(y.numel(), dtype=y.dtype), torch.zeros(y.numel(), dtype=y.dtype), y
        else:
            h = lambda z, act=act: act(z)  # noqa: E731
            A = jacrev(h)(y).reshape(-1, y.numel())  # diagonal for pointwise units
            x = h(y)
            c = x.reshape(-1) - A @ y.reshape(-1)
        layers.append(tuple(t.detach() for t in (W, b, A, c)))  # jacrev ignores no_grad
    return layers, x.reshape(-1)


@torch.no_grad()
def theorem1_discussion(layers, x0, k):
    """Unnormalised PD_k of eq. 18 and the row F_k."""
    hats = [(A @ W, A @ b + c) for W, b, A, c in layers[:-1]]
    W_N, b_N, _, _ = layers[-1]
    hats.append((W_N[k:k + 1], b_N[k:k + 1]))
    F_k = hats[0][0]
    for W_hat, _ in hats[1:]:
        F_k = W_hat @ F_k
    pd = x0.reshape(-1) * F_k.reshape(-1)
    P = None
    for W_hat, b_hat in hats:
        P = W_hat.T if P is None else P @ W_hat.T
        pd = pd + P @ b_hat
    return pd, F_k.reshape(-1), hats


@pytest.fixture(scope="module")
def setup():
    net = make_net()
    x0 = torch.randn(1, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        layers, scores = theorem1_layers(net, x0)
    assert torch.allclose(scores, net(x0)[0], atol=1e-13, rtol=0)
    # the construction exercises what it should: LeakyReLU slopes, ReLU6 saturation
    assert (layers[3][3] != 0).any(), "no ReLU6 saturation: c would be 0"
    return net, x0, layers, scores


def test_the_oracle_reconstructs_the_network(setup):
    net, x0, layers, scores = setup
    for k in range(5):
        _, _, hats = theorem1_discussion(layers, x0, k)
        # eq. 15: score = Q_0 x0 + Σ Q_i b̂_i
        total = x0.reshape(-1)
        for W_hat, _ in hats:
            total = W_hat @ total  # F·x0
        for i, (_, b_hat) in enumerate(hats):
            v = b_hat
            for W_hat, _ in hats[i + 1:]:
                v = W_hat @ v
            total = total + v
        assert abs(float(total.detach()) - float(scores[k])) < 1e-12


def test_discussions_equal_eq18(setup):
    net, x0, layers, scores = setup
    top = [int(i) for i in torch.argsort(scores, descending=True)[:3]]
    d = decompose(net, x0, top)
    pd, alpha = discussions(x0[0], d.rows, d.back_projection, d.output_constant[top],
                            d.scores[top])
    for i, k in enumerate(top):
        want_raw, row, _ = theorem1_discussion(layers, x0, k)
        assert torch.allclose(d.rows[i].reshape(-1), row, atol=1e-13, rtol=0)
        got_raw = pd[i].reshape(-1) / alpha[i]
        assert (got_raw - want_raw).abs().max() <= 1e-12 * want_raw.abs().max()
        want = want_raw * scores[k] / want_raw.sum()
        assert (pd[i].reshape(-1) - want).abs().max() <= 1e-12 * want.abs().max()
        assert abs(float(pd[i].sum()) - float(scores[k])) <= 1e-12 * float(pd[i].abs().sum())


def test_layer_terms_group_into_theorem1_q_b(setup):
    """Σ of a layer's site terms = Q_i b̂_i (eq. 16) for score k: conv/linear bias + c(x0)."""
    net, x0, layers, scores = setup
    d = decompose(net, x0, [0, 4])
    assert d.terms == ["0", "3", "5", "6", "8", "10"]  # biases and ReLU6's c, forward order
    layer_of = {"0": 0, "3": 2, "5": 3, "6": 3, "8": 4, "10": 5}
    for i, k in enumerate([0, 4]):
        _, row, hats = theorem1_discussion(layers, x0, k)
        for layer, (_, b_hat) in enumerate(hats):
            v = b_hat
            for W_hat, _ in hats[layer + 1:]:
                v = W_hat @ v
            got = sum(float(d.contributions[i, j]) for j, t in enumerate(d.terms)
                      if layer_of[t] == layer)
            assert abs(got - float(v)) < 1e-12, (layer, got, float(v))
        assert abs(float(d.input_term[i]) - float(row @ x0.reshape(-1))) < 1e-12


def test_votes_are_the_argmax_over_all_labels(setup):
    net, x0, layers, scores = setup
    top = [int(torch.argmax(scores))]
    d = decompose(net, x0, top)
    rows_of = lambda labels: decompose(net, x0, labels).rows  # noqa: E731
    votes = pixel_votes(x0[0], d.back_projection, d.output_constant, d.scores,
                        row_chunks(5, {top[0]: d.rows[0]}, rows_of, chunk=2))
    per_label = []
    for k in range(5):
        raw, _, _ = theorem1_discussion(layers, x0, k)
        pd = (raw * scores[k] / raw.sum()).reshape(2, 6, 6)
        per_label.append(pixel_values(pd[None])[0])
    want = torch.stack(per_label).argmax(0)
    assert torch.equal(votes, want)
    assert len(set(votes.flatten().tolist())) > 1  # the test would not notice a constant vote


def test_undefined_normalisation_is_nan_and_does_not_vote():
    x0 = torch.tensor([[[1.0, -1.0]]], dtype=torch.float64)  # (1, 1, 2)
    rows = torch.tensor([[[[1.0, 1.0]]], [[[2.0, 0.0]]]], dtype=torch.float64).reshape(2, 1, 1, 2)
    x0 = x0.reshape(1, 1, 2)
    back = torch.zeros(1, 1, 2, dtype=torch.float64)
    pd, alpha = discussions(x0, rows, back, torch.zeros(2, dtype=torch.float64),
                            torch.tensor([3.0, 4.0], dtype=torch.float64))
    # label 0: D = [1, −1] sums to 0 → α undefined; label 1: D = [2, 0] → α = 2
    assert math.isnan(float(alpha[0])) and torch.isnan(pd[0]).all()
    assert float(alpha[1]) == 2.0 and pd[1].flatten().tolist() == [4.0, 0.0]
    votes = pixel_votes(x0, back, torch.zeros(2, dtype=torch.float64),
                        torch.tensor([3.0, 4.0], dtype=torch.float64), [([0, 1], rows)])
    assert votes.tolist() == [[1, 1]]
