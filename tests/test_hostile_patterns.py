"""Hostile model code (issue 8): every pattern is either computed exactly or refused clearly.

The patterns live in tests/fixtures/hostile_models.py. Each one goes through the API
(``LinearInterpreter``: columns, rows and the gate) and through ``precompute run`` (a
``python:hostile_models.py:FUNC`` model). Exact patterns are piecewise linear, so F must equal
the Jacobian, computed independently by torch.func (jvp for columns, vjp for rows) in float64;
refused patterns must stop with one line naming the op or construct (and, where there is one,
the module path), before anything is written.
"""

from __future__ import annotations

import importlib.util
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import precompute
from oracles import jacobian_columns, jacobian_rows
from precompute import LinearInterpreter, ScopeError
from sweep_helpers import REPO, cli, make_image, write_config

HOSTILE = REPO / "tests" / "fixtures" / "hostile_models.py"


def _load():
    spec = importlib.util.spec_from_file_location("hostile_models_oracle", HOSTILE)
    mod = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated (the pattern uses it)
        spec.loader.exec_module(mod)
    return mod


H = _load()
# Refusals that cannot name a module: they are detected once the whole forward pass is over.
WHOLE_PASS = {"scripted_function"}


def _x0(seed=0):
    return torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)


def _no_scope_left(model):
    for m in model.modules():
        assert not m._forward_pre_hooks or all(
            "spectral_norm" in type(h).__module__ for h in m._forward_pre_hooks.values())
        assert not m._forward_hooks
    assert torch._C._len_torch_function_stack() == 0


def _assert_equals_jacobian(li: LinearInterpreter, model, x0):
    n, N = li.n_inputs, li.n_outputs
    ref_c = jacobian_columns(model, x0, range(n))
    ref_r = jacobian_rows(model, x0, range(N))
    scale = ref_c.abs().max().item()
    assert scale > 0.05, "degenerate pattern: F is (almost) zero"
    assert (li.columns(range(n)) - ref_c).abs().max().item() <= 1e-12 * scale
    assert (li.rows(range(N)) - ref_r).abs().max().item() <= 1e-12 * scale
    with torch.no_grad():  # piecewise linear: r = f(x0) − J·x0
        r = model(x0)[0] - (ref_c.reshape(n, N).T @ x0.reshape(n)).reshape(li.out_shape)
    assert (li.residual - r).abs().max().item() <= 1e-12 * max(1.0, r.abs().max().item())


# --- through the API ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(H.EXACT))
def test_exact_patterns_equal_the_jacobian(name):
    model = H.EXACT[name]().double()
    x0 = _x0()
    li = LinearInterpreter(model, x0, batch=16)
    checks = li.verify()
    assert checks["column_row_rel"] < 1e-13 and checks["reconstruction_rel"] < 1e-13, checks
    _assert_equals_jacobian(li, H.TWINS.get(name, H.EXACT[name])().double(), x0)
    _no_scope_left(model)


@pytest.mark.parametrize("name", sorted(H.TRAIN_MODE))
def test_random_train_mode_modules_are_switched_to_eval_with_a_warning(name):
    model = H.TRAIN_MODE[name]().double().train()
    x0 = _x0(1)
    with pytest.warns(UserWarning, match="training mode switched to eval"):
        li = LinearInterpreter(model, x0, batch=16)
        li.verify()
        cols, rows = li.columns(range(li.n_inputs)), li.rows(range(li.n_outputs))
    assert all(m.training for m in model.modules())  # restored
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()  # the oracle: the eval-mode network
    assert (cols - jacobian_columns(model, x0, range(li.n_inputs))).abs().max() < 1e-12
    assert (rows - jacobian_rows(model, x0, range(li.n_outputs))).abs().max() < 1e-12
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # unchanged


def _build_refused(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = H.REFUSED[name][0]()
    return model.double()


@pytest.mark.parametrize("name", sorted(H.REFUSED))
def test_refused_patterns_raise_one_clear_line(name):
    model, pattern = _build_refused(name), H.REFUSED[name][1]
    with pytest.raises(ScopeError, match=pattern) as err:
        # some patterns only show in a pass that computes rows: the gate computes rows
        LinearInterpreter(model, _x0(), batch=16).verify()
    message = str(err.value)
    assert "\n" not in message
    if name not in WHOLE_PASS:
        assert "module `" in message, message
    if not isinstance(model, torch.jit.ScriptModule):
        _no_scope_left(model)


def test_grad_disabled_patterns_are_refused_by_rows_and_leave_columns_exact():
    """A no_grad block, a custom Function or reentrant checkpointing hide nothing from a forward
    pass (columns are right: the oracle is the same network in plain ops) but hide the path from
    autograd: every computation of rows refuses."""
    twins = {"no_grad_branch": lambda self, h: h + torch.relu(h),
             "custom_function": lambda self, h: h * 2,
             "checkpoint_reentrant": lambda self, h: torch.relu(h)}
    x0 = _x0()
    for name, same in twins.items():
        li = LinearInterpreter(_build_refused(name), x0, batch=16)
        twin = H._pattern(same)().double()
        ref = jacobian_columns(twin, x0, range(li.n_inputs))
        assert (li.columns(range(li.n_inputs)) - ref).abs().max() < 1e-12
        with pytest.raises(ScopeError, match="gradients disabled"):
            li.rows([0])


def test_compiled_submodule_runs_eagerly_inside_the_scope():
    model = H.CompiledBlock().double()
    x0 = _x0()
    with torch.compiler.set_stance("force_eager"):  # the oracle must not compile either
        li = LinearInterpreter(model, x0, batch=16)
        li.verify()
        _assert_equals_jacobian(li, model, x0)


def test_movedim_is_refused_even_when_channels_equal_the_batch():
    """The old check only compared shape[0] with the batch: C == B slipped through."""

    class Net(nn.Module):
        def forward(self, x):
            return x.movedim(1, 0).movedim(0, 1)

    with pytest.raises(ScopeError, match=r"movedim.*batch dimension"):
        LinearInterpreter(Net(), torch.rand(1, 3, 4, 4), batch=2)  # [x0, 2 probes]: 3 == C


def test_batch_sized_constant_that_differs_per_element_is_refused():
    class Net(nn.Module):
        def forward(self, x):
            noise = torch.arange(x.shape[0], dtype=x.dtype).view(-1, 1, 1, 1)  # per element
            return torch.relu(x) + noise

    with pytest.raises(ScopeError, match="differs between batch elements"):
        LinearInterpreter(Net(), _x0())


def test_model_state_changed_by_the_forward_pass_is_refused():
    class Ema(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("seen", torch.zeros(()))

        def forward(self, x):
            self.seen += 1  # a train-mode style update, every pass
            return torch.relu(x)

    with pytest.raises(ScopeError, match="changed the model's parameter/buffer `seen`"):
        LinearInterpreter(Ema().double(), _x0())


def test_backward_hooks_on_modules_are_refused():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()).double()
    handle = model[0].register_full_backward_hook(lambda m, gi, go: None)
    with pytest.raises(ScopeError, match=r"module `0` \(Conv2d\) has backward hooks"):
        LinearInterpreter(model, _x0())
    handle.remove()
    LinearInterpreter(model, _x0()).verify()


def test_rrelu_and_functional_dropout_in_training_mode_warn_and_use_eval():
    class Net(nn.Module):
        def forward(self, x):
            return F.dropout(F.rrelu(x - 0.5, training=True), 0.5, training=True)

    x0 = _x0()
    with pytest.warns(UserWarning, match="rrelu in training mode"):
        li = LinearInterpreter(Net(), x0)
    ref = jacobian_columns(lambda x: F.rrelu(x - 0.5, training=False), x0, range(li.n_inputs))
    assert (li.columns(range(li.n_inputs)) - ref).abs().max() < 1e-15


# --- through `precompute run` ---------------------------------------------------------------------


def _config(tmp_path, name, vector=False):
    make_image(tmp_path / "img.png", 6, 6, seed=5)
    analyses = {"residual": True}
    if not vector:
        analyses |= {"columns": {"window": "full"}, "rows": {"window": "full"}}
    return write_config(tmp_path / "c.yaml", name=name, model={"arch": f"python:{HOSTILE}:{name}"},
                        image="img.png", dtype="float64", batch=16, analyses=analyses,
                        output=str(tmp_path / "runs"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(H.EXACT) + sorted(H.TRAIN_MODE))
def test_exact_patterns_through_precompute_run(tmp_path, name):
    model = (H.TWINS.get(name) or H.EXACT.get(name) or H.TRAIN_MODE[name])().double().eval()
    vector = name == "bilinear_constant_operand"
    r = cli("run", "-q", _config(tmp_path, name, vector))
    assert r.exit_code == 0, r.output + r.stderr
    st = precompute.open_store(tmp_path / "runs" / f"{name}.zarr")
    x0 = torch.from_numpy(st.array("input"))[None]
    n = x0.numel()
    J = torch.func.jacrev(lambda x: model(x[None])[0])(x0[0]).reshape(-1, n).detach()
    with torch.no_grad():
        y0 = model(x0)[0]
    np.testing.assert_allclose(st.array("residual"), (y0.reshape(-1) - J @ x0.reshape(n)).reshape(
        y0.shape), atol=1e-12)
    assert st.checks["column_row_rel"] < 1e-12 and st.checks["output_rel"] < 1e-12, st.checks
    if not vector:
        J6 = J.reshape(tuple(y0.shape) + tuple(x0.shape[1:])).numpy()
        cols = st.group["columns"][...]  # [i, j, a, b, y, x] = F[(b, y, x), (a, i, j)]
        np.testing.assert_allclose(cols.transpose(3, 4, 5, 2, 0, 1), J6, atol=1e-12, rtol=0)
        rows = st.group["rows"][...]  # [p, q, b, a, y, x] = F[(b, p, q), (a, y, x)]
        np.testing.assert_allclose(rows.transpose(2, 0, 1, 3, 4, 5), J6, atol=1e-12, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(H.REFUSED))
def test_refused_patterns_stop_precompute_run_with_one_line(tmp_path, name):
    r = cli("run", _config(tmp_path, name))
    assert r.exit_code == 2, r.output + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert re.search(H.REFUSED[name][1], lines[0]), lines[0]
    assert "Traceback" not in r.output
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_in_place_gate_under_taylor_gives_exact_rows():
    """``y *= torch.sigmoid(y.mean(...))``: the frozen factor of x0 must not share the version
    counter of the tensor the product overwrites (autograd's "modified by an inplace operation")."""

    def gate(self, h):
        y = h * 1
        y *= torch.sigmoid(y.mean((2, 3), keepdim=True))
        return y

    model = H._pattern(gate)().double()
    x0 = _x0()
    li = LinearInterpreter(model, x0, rule="taylor", batch=16)
    li.verify()
    _assert_equals_jacobian(li, model, x0)


def test_torchscript_from_jit_load_is_refused(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 6, 6)), tmp_path / "m.pt")
        loaded = torch.jit.load(tmp_path / "m.pt")
    with pytest.raises(ScopeError, match=r"TorchScript.*eager nn\.Module"):
        LinearInterpreter(loaded, torch.rand(1, 3, 6, 6))

    class Outer(nn.Module):  # a scripted submodule inside an eager model
        def __init__(self):
            super().__init__()
            self.inner = loaded

        def forward(self, x):
            return self.inner(x)

    with pytest.raises(ScopeError, match=r"module `inner` \(RecursiveScriptModule\).*TorchScript"):
        LinearInterpreter(Outer(), torch.rand(1, 3, 6, 6))
