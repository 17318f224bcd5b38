"""The structural support analysis (precompute.support) against Jacobian sparsity patterns.

Soundness is what makes compressed probing exact: every entry of F that can be non-zero must lie
inside the support found, whatever x0 (masks only remove paths). The oracle is the sparsity
pattern of torch.func Jacobians at several random inputs (float64), and analytic supports of
known architectures; global structures must be reported as such, naming the op.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from precompute.models import load_model
from precompute.support import Support, _axis_support, analyse, cross_check

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHIPPED = REPO / "examples" / "weights" / "pixelshuffle_x3.pt"
CPU = torch.device("cpu")


def fixture(name: str, file: str = "support_models.py"):
    spec = importlib.util.spec_from_file_location(f"fx_{file}", HERE / "fixtures" / file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)().double()


def jacobian_pattern(net, shape, seeds=(0, 1, 2), frozen=False) -> np.ndarray:
    """Union over random x0 of the Jacobian's non-zeros, reduced over channels: (H', W', H, W).

    ``frozen``: the frozen interpreter's F instead (one impulse per probe), for networks whose
    F is not their Jacobian (instance norm with frozen statistics)."""
    from precompute.interpreter import LinearInterpreter

    pat = None
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 0.5
        if frozen:
            li = LinearInterpreter(net, x0, batch=64)
            J = li.dense().reshape(li.out_shape + li.in_shape)
        else:
            # forward mode: fewer inputs than outputs here
            J = torch.func.jacfwd(lambda x: net(x[None])[0])(x0).detach()  # (C', H', W', C, H, W)
        nz = (J != 0).any(0).any(2).numpy()
        pat = nz if pat is None else pat | nz
    return pat


def assert_contains(sup: Support, pat: np.ndarray) -> None:
    """Every dependency of the pattern lies in the support's per-axis intervals, both ways."""
    ho, wo, h, w = pat.shape
    dep_y = pat.any(axis=(1, 3))  # (H', H): output row p depends on input row i
    dep_x = pat.any(axis=(0, 2))
    for axis, dep in ((0, dep_y), (1, dep_x)):
        for p in range(dep.shape[0]):
            ins = np.nonzero(dep[p])[0]
            if len(ins):
                assert sup.row_lo[axis][p] <= ins.min() and ins.max() <= sup.row_hi[axis][p], (axis, p)
        for i in range(dep.shape[1]):
            outs = np.nonzero(dep[:, i])[0]
            if len(outs):
                assert sup.col_lo[axis][i] <= outs.min() and outs.max() <= sup.col_hi[axis][i], (axis, i)


def widths(dep: np.ndarray) -> int:
    rows = [np.nonzero(r)[0] for r in dep]
    return max(r.max() - r.min() + 1 for r in rows if len(r))


@pytest.mark.slow
def test_shipped_pixelshuffle_support_is_its_receptive_field():
    spec = load_model("pixelshuffle", checkpoint=SHIPPED)
    net = spec.module.double()
    sup = analyse(net, (1, 13, 16), torch.float64, CPU)
    assert not sup.is_global
    # 5×5, then three 3×3 convolutions: 11 LR px; a column spans 11·3 = 33 HR px
    assert sup.period_in == (11, 11) and sup.period_out == (33, 33)
    # analytic: output row p (HR) depends on LR rows floor(p/3) − 5 … floor(p/3) + 5, clipped
    for p in range(39):
        assert sup.row_lo[0][p] == max(p // 3 - 5, 0) and sup.row_hi[0][p] == min(p // 3 + 5, 12)
    pat = jacobian_pattern(net, (1, 13, 16))
    assert_contains(sup, pat)
    # the trained network reaches its whole structural support somewhere
    assert widths(pat.any(axis=(1, 3))) == 11


@pytest.mark.parametrize("name, shape", [("cycle_like", (3, 16, 14)),
                                         ("cycle_like_norm", (3, 16, 14)),
                                         ("three_halves", (3, 12, 10)), ("relu_same", (3, 9, 11))])
def test_support_contains_every_jacobian_dependency(name, shape):
    net = fixture(name)
    sup = analyse(net, shape, torch.float64, CPU)
    assert not sup.is_global, sup.global_reason
    assert_contains(sup, jacobian_pattern(net, shape, frozen=name.endswith("norm")))
    assert sup.period_in[0] < shape[1] and sup.period_in[1] < shape[2]  # compression is possible


@pytest.mark.slow
def test_edsr_small_support_is_exact():
    # head, 2 blocks × 2 convs, body conv and the upsampler conv (3×3 at LR: 13 px), then the
    # tail conv at ×2 (one HR px each side: up to one more LR px): tight against the Jacobian
    net = fixture("edsr_small")
    sup = analyse(net, (3, 20, 20), torch.float64, CPU)
    assert not sup.is_global
    pat = jacobian_pattern(net, (3, 20, 20), seeds=(0, 1))
    dep = pat.any(axis=(1, 3))
    assert sup.period_in[0] == widths(dep)  # tight: the random network uses every path
    assert_contains(sup, pat)


def test_bicubic_support_is_its_four_taps():
    from oracles import bicubic_matrix_1d

    for s in (2, 3, 4):
        sup = analyse(load_model("bicubic", scale=s).module, (3, 11, 9), torch.float64, CPU)
        m = bicubic_matrix_1d(11, s).numpy() != 0  # (H', H)
        lo = m.argmax(1)
        hi = m.shape[1] - 1 - m[:, ::-1].argmax(1)
        assert (sup.row_lo[0] <= lo).all() and (sup.row_hi[0] >= hi).all()  # sound
        # as tight as the 4 taps (where the source index is an integer only one tap weighs
        # non-zero; the analysis keeps its neighbours, still within the period)
        assert sup.period_in == (4, 4)
        assert ((sup.row_lo[0] == lo) & (sup.row_hi[0] == hi)).mean() > 0.5


class _Flat(nn.Module):
    """An image model whose pixels meet in a fully connected layer."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 6 * 6, 3 * 6 * 6)

    def forward(self, x):
        return self.fc(x.flatten(1)).view(-1, 3, 6, 6)


class _Attention(nn.Module):
    def forward(self, x):
        q = x.flatten(2)  # (B, C, HW)
        a = q.transpose(1, 2) @ q  # (B, HW, HW): every pixel against every pixel
        return (q @ a).view_as(x)


class _Cumsum(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, dim=3)


class _ChannelMaxWithIndices(nn.Module):
    def forward(self, x):
        return x * torch.max(x, dim=1, keepdim=True).values  # indices could be used: no rule


class _Unpool(nn.Module):
    """Unpooling at indices moved by arithmetic: no longer a max pool's window (a max pool's own
    indices have bounded support: tests/test_max_unpool_rule.py)."""

    def forward(self, x):
        y, idx = nn.functional.max_pool2d(x, 2, return_indices=True)
        return nn.functional.max_unpool2d(y, (idx + 1).clamp(max=35), 2)


class _TaylorNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 3, 3, padding=1)
        self.n = nn.InstanceNorm2d(3)

    def forward(self, x):
        return self.n(self.c(x))


@pytest.mark.parametrize("net, rule, words", [
    (_Flat(), "freeze", "torch.nn.functional.linear"),
    (fixture("global_mean"), "freeze", "`torch.Tensor.mean` in module `(root)`"),
    (_Attention(), "freeze", "two probe-carrying tensors"),
    (_ChannelMaxWithIndices(), "freeze", "no support rule for the `reduce_select` unit `torch.max`"),
    (_Unpool(), "freeze", "uses indices or values that `torch.nn.functional.max_pool2d_with_indices`"),
    (_TaylorNorm(), "taylor", "taylor rule"),
])
def test_global_structures_are_reported_with_the_op(net, rule, words):
    sup = analyse(net.double().eval(), (3, 6, 6), torch.float64, CPU, rule=rule)
    assert sup.is_global and words in sup.global_reason, sup.global_reason
    assert sup.attrs() == {"global": sup.global_reason}


def test_cumsum_reaches_every_later_column():
    net = _Cumsum().double().eval()
    sup = analyse(net, (3, 6, 6), torch.float64, CPU)
    assert not sup.is_global, sup.global_reason
    assert list(sup.row_lo[1]) == [0] * 6 and list(sup.row_hi[1]) == list(range(6))
    assert list(sup.row_lo[0]) == list(range(6)) == list(sup.row_hi[0])
    assert_contains(sup, jacobian_pattern(net, (3, 6, 6), seeds=(0,)))


# --- in-place writes: every pattern the scope computes exactly must keep its support sound ----

def _write_patterns():
    from fixtures import hostile_models as H

    class Base(nn.Module):
        def __init__(self, pattern):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 3, 1)
            self.pattern = pattern

        def forward(self, x):
            return self.c2(self.pattern(self.c1(x)))

    def far_write_one_channel(h):  # only channel 2's interior: missed by a 3-pixel spot check
        y = torch.relu(h)
        y[:, 2, 4:6, 4:6] = h[:, 1, 0:2, 10:12]
        return y

    def write_through_view(h):  # a view of a probe-carrying tensor must stay a view
        y = h.clone()
        y[:, 3].copy_(h[:, 0].roll(5, -1))
        y.narrow(1, 1, 1).add_(h[:, :1].flip(-2))
        return y

    def negate_in_place(h):  # −1 must not cancel a +1 in the support interpretation
        y = h.roll(4, -1)
        y.neg_()
        return y + h

    def accumulate_then_view(h):
        acc = h.new_zeros(h.shape)
        part = acc[:, :2]
        acc.add_(h.roll(6, -2))
        return part.repeat(1, 2, 1, 1) + h

    def selections(h):  # x0 selects one operand (or one channel) per value: a union
        right = torch.cat([h[..., :2], h[..., :-2]], -1)  # shifted by two columns, no wrap
        down = torch.cat([h[..., 1:, :], h[..., -1:, :]], -2)
        m = torch.maximum(h, right) + torch.minimum(down, torch.zeros_like(h))
        return m + h.amax(dim=1, keepdim=True) + torch.max(right, down)

    models = {name: (H.TWINS.get(name) or H.EXACT[name]) for name in H.EXACT}
    for fn in (far_write_one_channel, write_through_view, negate_in_place, accumulate_then_view,
               selections):
        models[fn.__name__] = (lambda fn=fn: Base(fn))
    return models


_WRITES = _write_patterns()


@pytest.mark.parametrize("name", sorted(_WRITES))
def test_support_is_sound_for_every_pattern_the_scope_computes(name):
    """The hostile patterns of issue 8 the scope computes exactly (in-place accumulation into
    fresh tensors, slice writes, index_put_, masks, ``out=``, …) and writes through views: the
    support found is global or contains every Jacobian dependency (a missed one would make
    compressed probing silently wrong)."""
    from fixtures import hostile_models as H

    torch.manual_seed(3)
    build = _WRITES[name]
    net = build().double().eval()
    oracle = (H.TWINS[name]() if name in H.TWINS else net).double().eval()
    shape = (3, 12, 12)
    sup = analyse(net, shape, torch.float64, CPU)
    if name in ("keyword_only_calls", "views_that_keep_the_batch", "bilinear_constant_operand"):
        assert sup.is_global  # a mean over the image, a pixel flip through bmm, a vector output
        return
    assert not sup.is_global, sup.global_reason
    assert_contains(sup, jacobian_pattern(oracle, shape, seeds=(0, 1)))


def test_instance_norm_under_freeze_is_pointwise():
    sup = analyse(_TaylorNorm().double().eval(), (3, 10, 10), torch.float64, CPU, rule="freeze")
    assert not sup.is_global and sup.period_in == (3, 3)


def test_circular_padding_wraps_around_and_is_not_underestimated():
    net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular")).double().eval()
    sup = analyse(net, (3, 12, 12), torch.float64, CPU)
    assert_contains(sup, jacobian_pattern(net, (3, 12, 12), seeds=(0,)))
    assert sup.row_lo[0][0] == 0 and sup.row_hi[0][0] == 11  # row 0 sees rows 11, 0, 1


def test_line_probes_are_sound_for_any_relation():
    """_axis_support on synthetic relations (no network): holes, flips, far jumps, empty rows.

    An input row is only ever excluded by a probe that contains it and misses the output row,
    so the intervals always contain the true dependencies; they are exact once narrow enough."""
    rng = np.random.default_rng(0)

    class Fake:
        def __init__(self, rel):
            self.rel = rel

        def reach(self, sets, axis):
            return np.stack([self.rel[:, s].any(1) for s in sets])

    n_in, n_out = 40, 60
    for trial in range(30):
        rel = np.zeros((n_out, n_in), dtype=bool)
        for p in range(n_out):
            kind = trial % 4
            c = int(p * n_in / n_out)
            if kind == 0:  # contiguous, small
                rel[p, max(0, c - 2):c + 3] = True
            elif kind == 1:  # holes (dilated)
                rel[p, max(0, c - 4):c + 5:2] = True
            elif kind == 2:  # flipped image
                rel[p, n_in - 1 - c] = True
            else:  # random far jumps and empty rows
                if rng.random() < 0.8:
                    rel[p, rng.choice(n_in, size=rng.integers(1, 4), replace=False)] = True
        lo, hi = _axis_support(Fake(rel), n_in, n_out, 0, 8)
        for p in range(n_out):
            ins = np.nonzero(rel[p])[0]
            if len(ins):
                assert lo[p] <= ins.min() and ins.max() <= hi[p], (trial, p)
                if ins.max() - ins.min() + 1 <= 4:  # narrow: found exactly (hull)
                    assert (lo[p], hi[p]) == (ins.min(), ins.max())
            else:
                assert lo[p] > hi[p]


def test_cross_check_turns_a_missed_path_into_global():
    net = fixture("relu_same")
    sup = analyse(net, (3, 9, 9), torch.float64, CPU)
    assert not sup.is_global

    def columns(flat):
        from precompute.interpreter import LinearInterpreter

        li = LinearInterpreter(net, torch.rand(1, 3, 9, 9, dtype=torch.float64))
        return li.columns(flat)

    def rows(flat):
        from precompute.interpreter import LinearInterpreter

        li = LinearInterpreter(net, torch.rand(1, 3, 9, 9, dtype=torch.float64))
        return li.rows(flat)

    assert not cross_check(sup, columns, (3, 9, 9), 1e-12, rows, (3, 9, 9)).is_global
    # a support that forgot one row of every footprint must be caught
    broken = analyse(net, (3, 9, 9), torch.float64, CPU)
    broken.col_hi = (broken.col_hi[0] - 1, broken.col_hi[1])
    assert "internal check failed: the column" in cross_check(broken, columns, (3, 9, 9),
                                                              1e-12).global_reason
    # … and one that forgot an input row of every row support, by the backward direction
    broken = analyse(net, (3, 9, 9), torch.float64, CPU)
    broken.row_lo = (broken.row_lo[0] + 1, broken.row_lo[1])
    assert "internal check failed: the row" in cross_check(broken, columns, (3, 9, 9), 1e-12,
                                                           rows, (3, 9, 9)).global_reason


def test_cross_check_probes_every_channel():
    """A path the analysis missed in the last input channel only (a channel-specific branch)
    must be caught: the check probes every channel of its pixels, not channel 0 alone."""
    net = fixture("relu_same")
    sup = analyse(net, (3, 9, 9), torch.float64, CPU)
    from precompute.interpreter import LinearInterpreter

    li = LinearInterpreter(net, torch.rand(1, 3, 9, 9, dtype=torch.float64))

    def columns(flat):
        cols = li.columns(flat).clone()
        for k, f in enumerate(flat):
            a, rest = divmod(int(f), 81)
            i, j = divmod(rest, 9)
            if a == 2:  # channel 2 also reaches the pixel farthest from it
                cols[k, 0, 8 - i if i < 4 else 0, 8 - j if j < 4 else 0] += 1.0
        return cols

    assert not cross_check(copy.copy(sup), li.columns, (3, 9, 9), 1e-12).is_global
    reason = cross_check(copy.copy(sup), columns, (3, 9, 9), 1e-12).global_reason
    assert reason is not None and "(channel 2)" in reason
