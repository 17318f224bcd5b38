"""The hooking layer itself: unknown ops, batch mixing, hygiene, audit, wrappers, dropout."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oracles import jacobian_columns
from precompute import LinearInterpreter, LinearScope, ScopeError, UnknownOpError


def _no_scope_left(model):
    for m in model.modules():
        assert not m._forward_pre_hooks and not m._forward_hooks
    assert torch._C._len_torch_function_stack() == 0


class ExpNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())

    def forward(self, x):
        return torch.exp(self.block(x))


def test_unknown_nonlinear_op_is_an_error_naming_op_and_module():
    model = ExpNet().double()
    x0 = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    with pytest.raises(UnknownOpError, match=r"torch\.exp.*\(root\)"):
        LinearInterpreter(model, x0)
    _no_scope_left(model)


class Inner(nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=1)


def test_unknown_op_inside_a_submodule_names_its_path():
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.Sequential(nn.ReLU(), Inner())).double()
    with pytest.raises(UnknownOpError, match=r"softmax.*`1\.1`.*Inner"):
        LinearInterpreter(model, torch.randn(1, 1, 3, 3, dtype=torch.float64))


class BatchMixer(nn.Module):
    def forward(self, x):
        return x - x.mean(dim=0, keepdim=True)


def test_ops_that_mix_the_batch_are_refused():
    with pytest.raises(ScopeError, match="batch dimension"):
        LinearInterpreter(BatchMixer(), torch.randn(1, 2, 3, 3))

    class Selector(nn.Module):
        def forward(self, x):
            return x[0:1] * 2

    with pytest.raises(ScopeError, match="batch dimension"):
        LinearInterpreter(Selector(), torch.randn(1, 2, 3, 3))


def test_value_reads_are_refused():
    class Branchy(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(ScopeError):
        LinearInterpreter(Branchy(), torch.randn(1, 2, 3, 3))


def test_ambiguous_product_is_an_error():
    class Square(nn.Module):
        def forward(self, x):
            return x * x

    with pytest.raises(UnknownOpError, match="gate"):
        LinearInterpreter(Square(), torch.randn(1, 2, 3, 3))
    # The tangent needs no gate: x·x linearises to 2·x0·x1 − x0².
    x0 = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    li = LinearInterpreter(Square(), x0, rule="taylor")
    assert torch.allclose(li.column(0), (2 * x0 * torch.eye(18, dtype=torch.float64)[0].view(
        1, 2, 3, 3))[0])


def test_scope_is_removed_after_normal_exit_and_after_exception():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 1, 3)).double()
    x = torch.randn(3, 1, 7, 7, dtype=torch.float64)
    before = model(x)
    with LinearScope(model):
        model(x)
    _no_scope_left(model)
    with pytest.raises(ZeroDivisionError):
        with LinearScope(model):
            model(x)
            1 / 0
    _no_scope_left(model)
    with pytest.raises(UnknownOpError):
        with LinearScope(model):
            torch.exp(model(x))
    _no_scope_left(model)
    assert torch.equal(model(x), before)


def test_scope_on_a_batch_computes_eq5_for_every_probe():
    """[f(x0), F·x1 + r] with x1 = x0 reproduces f(x0) (requirement 3) for several probes."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 2, 1))
    model = model.double()
    x0 = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    with LinearScope(model):
        y = model(torch.cat([x0, x0, x0]))
    assert torch.equal(y[1], y[0]) and torch.equal(y[2], y[0])
    assert torch.allclose(y[0], model(x0)[0], atol=1e-14)


def test_too_small_batch_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU())
    with pytest.raises(ScopeError, match="at least 2"):
        with LinearScope(model):
            model(torch.randn(1, 1, 3, 3))


class Reused(nn.Module):
    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()
        self.convs = nn.ModuleList(nn.Conv2d(2, 2, 3, padding=1) for _ in range(3))

    def forward(self, x):
        for conv in self.convs:
            x = self.relu(conv(x))
        return x


def test_audit_lists_every_call_with_path_op_index_and_rule():
    model = Reused().double()
    li = LinearInterpreter(model, torch.randn(1, 2, 4, 4, dtype=torch.float64))
    records = li.audit()
    relus = [r for r in records if r.op == "torch.nn.functional.relu"]
    assert [(r.path, r.call, r.rule) for r in relus] == [
        ("relu", 0, "freeze:piecewise_linear"),
        ("relu", 1, "freeze:piecewise_linear"),
        ("relu", 2, "freeze:piecewise_linear"),
    ]
    convs = [r for r in records if r.op == "torch.nn.functional.conv2d"]
    assert [r.path for r in convs] == ["convs.0", "convs.1", "convs.2"]
    assert all(r.rule == "affine" for r in convs)
    assert [r.index for r in records] == list(range(len(records)))


def test_shared_module_gets_the_path_of_each_use():
    """EDSR shares one ReLU object between blocks: each call is named by where it is used."""
    relu = nn.ReLU()
    model = nn.Sequential(nn.Sequential(nn.Conv2d(1, 1, 1), relu), nn.Sequential(nn.Conv2d(1, 1, 1), relu))
    li = LinearInterpreter(model, torch.randn(1, 1, 3, 3))
    paths = [r.path for r in li.audit() if "relu" in r.op]
    assert paths == ["0.1", "1.1"]


def test_train_mode_dropout_is_switched_to_eval_with_a_warning_and_restored():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(2, 1, 1))
    model = model.double().train()
    x0 = torch.randn(1, 1, 6, 6, dtype=torch.float64)
    with pytest.warns(UserWarning, match="Dropout"):
        li = LinearInterpreter(model, x0)
    assert model[2].training
    ref = jacobian_columns(model.eval(), x0, range(36))
    assert (li.columns(range(36)) - ref).abs().max().item() < 1e-13


def test_compiled_and_data_parallel_models_are_unwrapped():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 1, 1)).double()
    x0 = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    ref = jacobian_columns(model, x0, range(25))
    for wrapped in (torch.compile(model), nn.DataParallel(model)):
        with pytest.warns(UserWarning, match="LinearScope"):
            li = LinearInterpreter(wrapped, x0)
        assert li.model is model
        assert (li.columns(range(25)) - ref).abs().max().item() < 1e-13


def test_dtype_mismatch_is_a_clear_error():
    model = nn.Conv2d(1, 1, 1)
    with pytest.raises(ScopeError, match="model.to"):
        LinearInterpreter(model, torch.randn(1, 1, 2, 2, dtype=torch.float64))


def test_unknown_rule_is_rejected():
    with pytest.raises(ValueError, match="freeze"):
        LinearScope(nn.ReLU(), rule="tangent")
    with pytest.raises(ValueError, match="override"):
        LinearScope(nn.ReLU(), overrides={"a": "exact"})


def test_constants_are_switched_off_on_the_probe_branch():
    """apply() sees no bias, no pad value, no constant offset: F·0 = 0 exactly."""

    class Affine(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.bn = nn.BatchNorm2d(2).eval()
            self.bn.running_mean.fill_(3.0)

        def forward(self, x):
            y = F.pad(self.bn(self.conv(x)), (1, 1, 1, 1), value=5.0) + 7.0
            y = 1 - torch.sigmoid(y)
            return torch.cat([y, torch.ones_like(y)], dim=1) - torch.tensor(2.0)

    model = Affine().double()
    x0 = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    li = LinearInterpreter(model, x0)
    assert torch.equal(li.apply(torch.zeros_like(x0)), torch.zeros((1,) + li.out_shape,
                                                                     dtype=torch.float64))
    checks = li.check()
    assert checks["requirement3_rel"] < 1e-14 and checks["reconstruction_rel"] < 1e-14
