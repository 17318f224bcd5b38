"""LinearScope: the hooking layer of the paper (eq. 2), attached to a whole model at once.

While a :class:`LinearScope` is active on a model, every call the model makes on a batch
``[x0, x1_1 … x1_K]`` computes, unit by unit,

    [y0, y1] = [h(x0), A(x0)·x1 + c(x0)]                                            (eq. 2)

so that the model as a whole computes ``[f(x0), F(x0)·x1 + r(x0)]`` (eq. 5).

How ops are intercepted
-----------------------
At the *function* level, with a :class:`torch.overrides.TorchFunctionMode`: the mode sees
``F.relu``, ``torch.relu``, ``x.relu_()``, ``nn.ReLU(inplace=True)`` (which calls ``F.relu``),
``F.max_pool2d``, ``torch.sigmoid``, ``F.instance_norm`` … whether the model calls them through a
module or functionally, in place or not, once or many times per forward. Autograd records our
replacement, so rows (``Fᵀ·u``, eq. 6) are exact; intercepting at the dispatcher level would not
be (autograd would already have recorded the original op). Module pre/post hooks only keep track
of the module path of each call, for error messages and the audit.

The mode tracks which tensors carry the probe batch (*probe-carrying* tensors: the model's inputs
and everything computed from them). Ops that touch none pass through untouched (weights,
constants, shape arithmetic). Every op that touches one must be in one of the tables below:

* ``STRUCTURAL``: linear ops without constants (views, cat, interpolate, pixel shuffle, pools …);
* ``AFFINE``: linear ops with constant terms (conv and linear biases, eval batch norm, ``x + b``);
  the constants can be switched off on the probe branch (``constants=False``) so that the probe
  branch computes ``F·x1`` exactly instead of ``(F·x1 + r) − r``;
* ``NONLINEAR_OPS``: units with a freeze rule (:mod:`precompute.rules`);
* products of two probe-carrying tensors (gates), frozen by the product rule.

Anything else is an :class:`UnknownOpError` naming the op and the module path: a LinearScope is
never silently wrong. Ops that would mix batch elements (a reduction over dim 0, ``x[0]``) are
refused too, since they would couple x0 and the probes.

Observing the constants (Theorem 1)
-----------------------------------
With an ``observer`` (:class:`ConstantObserver`), every constant the frozen system adds on the
probe branch — an affine op's constant (conv/linear bias, eval batch-norm shift, pad value,
``x + c``, a concatenated constant) and every rule's c(x0) — is handed to
``observer.constant(site, const)`` and the probe branch receives what it returns instead (e.g.
``λ·const`` with a scalar leaf λ per site, so that one backward pass gives every layer-wise
contribution ⟨∂score/∂t, b⟩ of eq. 8/16). The probe branch then carries no other constant: it is
``F·x1 + Σ_sites observer terms``. ``observer.op(site, inputs, output, gain)`` is told of every
op on probe-carrying tensors (``gain``: the elementwise A(x0) of a pointwise unit, else None),
so masked biases can be followed through the units that consume them. **Every code path that adds
a constant to the probe branch must go through** :meth:`LinearScope._observe_constant`.
"""

from __future__ import annotations

import fnmatch
import itertools
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._pytree import tree_flatten, tree_map

from precompute.rules import RULE_NAMES, Call, Frozen, rule_for


class ScopeError(RuntimeError):
    """A model the LinearScope cannot interpret faithfully; the message says why and where."""


class UnknownOpError(ScopeError):
    """A non-linear (or unknown) op touched the probe batch and has no rule."""


# --- the op tables -------------------------------------------------------------------------------

T = torch.Tensor


def _op_name(func: Callable) -> str:
    try:
        name = resolve_name(func)
    except Exception:  # resolve_name fails on a few C descriptors
        name = None
    return name or getattr(func, "__qualname__", None) or repr(func)


# Linear ops without constant terms. They run on the whole batch unchanged.
STRUCTURAL: set[Callable] = {
    T.view, T.view_as, T.reshape, T.reshape_as, T.flatten, T.unflatten, T.permute, T.transpose,
    T.contiguous, T.clone, T.unsqueeze, T.squeeze, T.expand, T.expand_as, T.__getitem__, T.narrow,
    T.split, T.chunk, T.flip, T.roll, T.to, T.type, T.float, T.double, T.neg, T.__neg__, T.sum,
    T.mean, T.movedim, T.repeat, T.squeeze_, T.unsqueeze_, T.__pos__, T.swapaxes, T.cpu, T.cuda,
    torch.cat, torch.concat, torch.concatenate, torch.stack, torch.flatten, torch.reshape,
    torch.squeeze, torch.unsqueeze, torch.transpose, torch.permute, torch.movedim, torch.narrow,
    torch.split, torch.chunk, torch.roll, torch.flip, torch.sum, torch.mean, torch.neg,
    torch.swapaxes,
    F.pixel_shuffle, F.pixel_unshuffle, F.interpolate, F.upsample, F.upsample_bilinear,
    F.upsample_nearest, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.fold, F.unfold, F.channel_shuffle,
    F.native_channel_shuffle,
    # Linear in the input for given indices; indices of a frozen max pool are x0's.
    F.max_unpool1d, F.max_unpool2d, F.max_unpool3d,
}

# Structural ops that keep a gate a gate (for the product rule's provenance).
VIEW_LIKE: set[Callable] = {
    T.view, T.view_as, T.reshape, T.reshape_as, T.flatten, T.unsqueeze, T.squeeze, T.expand,
    T.expand_as, T.contiguous, T.clone, torch.flatten, torch.reshape, torch.squeeze,
    torch.unsqueeze,
}

DROPOUT: set[Callable] = {
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
}

# Ops that only read a tensor's shape, dtype or device: their results are constants.
CREATION: set[Callable] = {
    torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, T.new_zeros, T.new_ones,
    T.new_empty, T.new_full, T.new_tensor,
}

# Values leave the tensor world: the control flow would depend on the probe batch.
VALUE_READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy",
               "__array__", "__complex__"}


def _bind(names: tuple[str, ...], defaults: dict[str, Any]):
    """A binder that maps a call's (args[1:], kwargs) to named parameters."""

    def bind(args, kwargs):
        params = dict(defaults)
        params.update(zip(names, args[1:]))
        params.update(kwargs)
        return params

    return bind


@dataclass(frozen=True)
class NonlinearOp:
    """How one PyTorch function maps to a rule family.

    ``pure`` is the out-of-place function the rule evaluates (``torch.relu`` for ``x.relu_()``);
    ``bind`` names the call's parameters; ``inplace`` says the call mutates its input.
    """

    family: str
    pure: Callable
    bind: Callable
    inplace: bool = False
    gate: bool = False  # its output can gate a product (sigmoid, tanh, hard-sigmoid)


def _pointwise(family, pure, names=(), defaults=None, inplace=False, gate=False):
    return NonlinearOp(family, pure, _bind(names, defaults or {}), inplace, gate)


_PL, _SM = "piecewise_linear", "smooth"

NONLINEAR_OPS: dict[Callable, NonlinearOp] = {}


def _register(funcs, op: NonlinearOp):
    for f in funcs:
        NONLINEAR_OPS[f] = op


# ReLU family and clamps.
_register([F.relu, torch.relu, T.relu], _pointwise(_PL, torch.relu, ("inplace",)))
_register([torch.relu_, T.relu_], _pointwise(_PL, torch.relu, inplace=True))
_register([F.relu6], _pointwise(_PL, F.relu6, ("inplace",)))
_register([F.hardtanh], _pointwise(_PL, F.hardtanh, ("min_val", "max_val", "inplace")))
_register([F.hardtanh_], _pointwise(_PL, F.hardtanh, ("min_val", "max_val"), inplace=True))
_register([F.leaky_relu], _pointwise(_PL, F.leaky_relu, ("negative_slope", "inplace")))
_register([F.leaky_relu_], _pointwise(_PL, F.leaky_relu, ("negative_slope",), inplace=True))
_register([F.prelu, torch.prelu], _pointwise(_PL, F.prelu, ("weight",)))
_register([F.threshold], _pointwise(_PL, F.threshold, ("threshold", "value", "inplace")))
_register([F.threshold_], _pointwise(_PL, F.threshold, ("threshold", "value"), inplace=True))
_register([F.hardshrink, T.hardshrink], _pointwise(_PL, F.hardshrink, ("lambd",)))
_register([F.softshrink], _pointwise(_PL, F.softshrink, ("lambd",)))
_register([torch.clamp, T.clamp, torch.clip, T.clip],
          _pointwise(_PL, torch.clamp, ("min", "max")))
_register([torch.clamp_, T.clamp_, torch.clip_, T.clip_],
          _pointwise(_PL, torch.clamp, ("min", "max"), inplace=True))
_register([torch.clamp_min, T.clamp_min], _pointwise(_PL, torch.clamp_min, ("min",)))
_register([torch.clamp_max, T.clamp_max], _pointwise(_PL, torch.clamp_max, ("max",)))
_register([torch.clamp_min_, T.clamp_min_], _pointwise(_PL, torch.clamp_min, ("min",), inplace=True))
_register([torch.clamp_max_, T.clamp_max_], _pointwise(_PL, torch.clamp_max, ("max",), inplace=True))

# Smooth pointwise units.
_register([torch.sigmoid, T.sigmoid, F.sigmoid], _pointwise(_SM, torch.sigmoid, gate=True))
_register([torch.sigmoid_, T.sigmoid_], _pointwise(_SM, torch.sigmoid, inplace=True, gate=True))
_register([torch.tanh, T.tanh, F.tanh], _pointwise(_SM, torch.tanh, gate=True))
_register([torch.tanh_, T.tanh_], _pointwise(_SM, torch.tanh, inplace=True, gate=True))
_register([F.hardsigmoid], _pointwise(_SM, F.hardsigmoid, ("inplace",), gate=True))
_register([F.silu], _pointwise(_SM, F.silu, ("inplace",)))
_register([F.gelu], _pointwise(_SM, F.gelu, ("approximate",)))
_register([F.elu], _pointwise(_SM, F.elu, ("alpha", "inplace")))
_register([F.elu_], _pointwise(_SM, F.elu, ("alpha",), inplace=True))
_register([F.celu], _pointwise(_SM, F.celu, ("alpha", "inplace")))
_register([F.selu], _pointwise(_SM, F.selu, ("inplace",)))
_register([F.softplus], _pointwise(_SM, F.softplus, ("beta", "threshold")))
_register([F.mish], _pointwise(_SM, F.mish, ("inplace",)))
_register([F.hardswish], _pointwise(_SM, F.hardswish, ("inplace",)))
_register([F.logsigmoid], _pointwise(_SM, F.logsigmoid))
_register([F.softsign], _pointwise(_SM, F.softsign))
_register([F.tanhshrink], _pointwise(_SM, F.tanhshrink))

# Max pooling: the function that returns indices for each pooling type.
_POOL_NAMES = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
for _pool, _with in [
    (F.max_pool1d, F.max_pool1d_with_indices), (F.max_pool2d, F.max_pool2d_with_indices),
    (F.max_pool3d, F.max_pool3d_with_indices),
    (F.max_pool1d_with_indices, F.max_pool1d_with_indices),
    (F.max_pool2d_with_indices, F.max_pool2d_with_indices),
    (F.max_pool3d_with_indices, F.max_pool3d_with_indices),
    (torch.max_pool1d, F.max_pool1d_with_indices), (torch.max_pool2d, F.max_pool2d_with_indices),
    (torch.max_pool3d, F.max_pool3d_with_indices),
]:
    _register([_pool], NonlinearOp("max_pool", _with, _bind(_POOL_NAMES, {"_with_indices": _with})))
for _pool, _with in [
    (F.adaptive_max_pool1d, F.adaptive_max_pool1d_with_indices),
    (F.adaptive_max_pool2d, F.adaptive_max_pool2d_with_indices),
    (F.adaptive_max_pool3d, F.adaptive_max_pool3d_with_indices),
    (F.adaptive_max_pool1d_with_indices, F.adaptive_max_pool1d_with_indices),
    (F.adaptive_max_pool2d_with_indices, F.adaptive_max_pool2d_with_indices),
    (F.adaptive_max_pool3d_with_indices, F.adaptive_max_pool3d_with_indices),
]:
    _register([_pool], NonlinearOp("max_pool", _with,
                                   _bind(("output_size", "return_indices"), {"_with_indices": _with})))
_POOL_RETURNS_INDICES = {
    F.max_pool1d_with_indices, F.max_pool2d_with_indices, F.max_pool3d_with_indices,
    F.adaptive_max_pool1d_with_indices, F.adaptive_max_pool2d_with_indices,
    F.adaptive_max_pool3d_with_indices,
}

# Normalisations. Whether batch/instance norm use statistics is decided per call.
_BN_NAMES = ("running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_IN_NAMES = ("running_mean", "running_var", "weight", "bias", "use_input_stats", "momentum", "eps")
_register([F.batch_norm], NonlinearOp("norm", F.batch_norm, _bind(_BN_NAMES, {"training": False})))
_register([F.instance_norm], NonlinearOp("norm", F.instance_norm,
                                         _bind(_IN_NAMES, {"use_input_stats": True})))
_register([F.group_norm], NonlinearOp("norm", F.group_norm,
                                      _bind(("num_groups", "weight", "bias", "eps"), {})))
_register([F.layer_norm], NonlinearOp("norm", F.layer_norm,
                                      _bind(("normalized_shape", "weight", "bias", "eps"), {})))
_register([F.rms_norm], NonlinearOp("rms_norm", F.rms_norm,
                                    _bind(("normalized_shape", "weight", "eps"), {})))


def _norm_params(func, params: dict) -> tuple[str | None, dict]:
    """The rule parameters of a normalisation call, or (None, {}) when it is affine.

    Batch norm in eval mode (running statistics given, ``training=False``) and instance norm with
    ``use_input_stats=False`` are affine: they pass through as AFFINE ops.
    """
    if func is F.batch_norm:
        if not params.get("training") and params.get("running_mean") is not None:
            return None, {}
        kind = "batch"
        # Statistics of x0 alone; running statistics are not updated (the model stays unchanged).
        call = {"running_mean": None, "running_var": None, "weight": params.get("weight"),
                "bias": params.get("bias"), "training": True, "eps": params.get("eps", 1e-5)}
    elif func is F.instance_norm:
        if not params.get("use_input_stats", True):
            return None, {}
        kind = "instance"
        call = {"weight": params.get("weight"), "bias": params.get("bias"),
                "use_input_stats": True, "eps": params.get("eps", 1e-5)}
    elif func is F.group_norm:
        kind = "group"
        call = {k: params[k] for k in ("num_groups", "weight", "bias", "eps") if k in params}
    elif func is F.layer_norm:
        kind = "layer"
        call = {k: params[k] for k in ("normalized_shape", "weight", "bias", "eps") if k in params}
    else:  # rms_norm
        kind = "rms"
        call = {k: params[k] for k in ("normalized_shape", "weight", "eps") if k in params}
    out = dict(params)
    out["_kind"] = kind
    out["_call"] = call
    return kind, out


# Affine ops: which arguments are constant terms, and how to switch them off.
def _strip_bias(position: int):
    def strip(args, kwargs):
        args = list(args)
        if len(args) > position:
            args[position] = None
        kwargs = {k: (None if k == "bias" else v) for k, v in kwargs.items()}
        return tuple(args), kwargs

    return strip


def _strip_running_norm(names: tuple[str, ...]):
    """Eval batch norm (or instance norm with running statistics) ``(x − m)/sqrt(v + eps)·w + b``
    without its constant part: m = 0, b = 0."""

    def strip(args, kwargs):
        params = _bind(names, {})(args, kwargs)
        rm = params.get("running_mean")
        params["running_mean"] = None if rm is None else torch.zeros_like(rm)
        params["bias"] = None
        return (args[0],), params

    return strip


def _strip_pad(args, kwargs):
    params = _bind(("pad", "mode", "value"), {})(args, kwargs)
    if params.get("value") is not None:
        params["value"] = 0.0
    return (args[0],), params


AFFINE: dict[Callable, Callable] = {
    F.conv1d: _strip_bias(2), F.conv2d: _strip_bias(2), F.conv3d: _strip_bias(2),
    F.conv_transpose1d: _strip_bias(2), F.conv_transpose2d: _strip_bias(2),
    F.conv_transpose3d: _strip_bias(2), F.linear: _strip_bias(2),
    F.batch_norm: _strip_running_norm(_BN_NAMES),
    F.instance_norm: _strip_running_norm(_IN_NAMES), F.pad: _strip_pad,
}

# Sums: constant operands are switched off on the probe branch.
ADD_LIKE: set[Callable] = {
    torch.add, T.add, T.add_, T.__add__, T.__radd__, T.__iadd__,
    torch.sub, T.sub, T.sub_, T.__sub__, T.__isub__, T.__rsub__, torch.rsub, torch.subtract,
    T.subtract,
}
# Products: linear when one factor is constant, a gate otherwise.
MUL_LIKE: set[Callable] = {torch.mul, T.mul, T.mul_, T.__mul__, T.__rmul__, T.__imul__,
                           torch.multiply, T.multiply}
DIV_LIKE: set[Callable] = {torch.div, T.div, T.div_, T.__truediv__, T.__itruediv__,
                           torch.true_divide, T.true_divide, torch.divide, T.divide}
MATMUL_LIKE: set[Callable] = {torch.matmul, T.matmul, T.__matmul__, torch.mm, T.mm, torch.bmm,
                              T.bmm, torch.einsum, F.bilinear}

_BIASED_LINEAR = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                  F.conv_transpose3d, F.linear}

_INPLACE_DUNDERS = {T.__iadd__, T.__isub__, T.__imul__, T.__itruediv__}


def _is_inplace(func: Callable, kwargs: dict) -> bool:
    name = getattr(func, "__name__", "")
    return (name.endswith("_") and not name.endswith("__")) or func in _INPLACE_DUNDERS or bool(
        kwargs.get("inplace", False))


# --- batch-mixing checks ---------------------------------------------------------------------

_DIM_FIRST_ARG = {  # ops whose `dim` (position 1 after the input, or kwarg) must not be the batch
    torch.cat, torch.concat, torch.concatenate, torch.stack,
}


def _normalise_dim(d, ndim):
    return d + ndim if isinstance(d, int) and d < 0 else d


def _touches_batch(func, args, kwargs, ndim: int) -> bool:
    """Would this structural op move, mix or select along the batch dimension?"""
    if func in _DIM_FIRST_ARG:
        d = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        return _normalise_dim(d, ndim) == 0
    if func is T.__getitem__:
        key = args[1]
        first = key[0] if isinstance(key, tuple) and key else key
        if isinstance(key, tuple) and not key:
            return False
        return not (first is Ellipsis or (isinstance(first, slice) and first == slice(None)))
    if func in (T.sum, T.mean, torch.sum, torch.mean):
        d = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if d is None:
            return True
        dims = d if isinstance(d, (tuple, list)) else (d,)
        return any(_normalise_dim(x, ndim) == 0 for x in dims)
    if func in (T.transpose, torch.transpose, T.swapaxes, torch.swapaxes):
        dims = [kwargs.get("dim0", args[1] if len(args) > 1 else None),
                kwargs.get("dim1", args[2] if len(args) > 2 else None)]
        return any(_normalise_dim(x, ndim) == 0 for x in dims)
    if func in (T.permute, torch.permute):
        dims = args[1:] if len(args) > 1 else kwargs.get("dims")
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = dims[0]
        return _normalise_dim(dims[0], ndim) != 0
    if func in (T.flatten, torch.flatten):
        start = kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
        return _normalise_dim(start, ndim) == 0
    if func in (T.split, T.chunk, torch.split, torch.chunk):
        d = kwargs.get("dim", args[2] if len(args) > 2 else 0)
        return _normalise_dim(d, ndim) == 0
    if func in (T.narrow, torch.narrow, T.movedim, torch.movedim):
        d = kwargs.get("dim", kwargs.get("source", args[1] if len(args) > 1 else 0))
        dims = d if isinstance(d, (tuple, list)) else (d,)
        return any(_normalise_dim(x, ndim) == 0 for x in dims)
    if func in (T.roll, torch.roll, T.flip, torch.flip):
        d = kwargs.get("dims", args[2] if (func in (T.roll, torch.roll) and len(args) > 2)
                       else (args[1] if func in (T.flip, torch.flip) and len(args) > 1 else None))
        if d is None:
            return True
        dims = d if isinstance(d, (tuple, list)) else (d,)
        return any(_normalise_dim(x, ndim) == 0 for x in dims)
    return False


# --- unwrapping ------------------------------------------------------------------------------


def unwrap_model(model: nn.Module) -> nn.Module:
    """The eager module under ``torch.compile`` / ``DataParallel`` wrappers.

    A compiled model would bypass the function-level interception and DataParallel would scatter
    x0 and the probes to different devices, so both are unwrapped (with a warning).
    """
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            warnings.warn("LinearScope: running the eager module under torch.compile", stacklevel=3)
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            warnings.warn(f"LinearScope: unwrapping {type(model).__name__}: the batch [x0, probes] "
                          "must stay on one device", stacklevel=3)
            model = model.module
        else:
            return model


# --- the scope -------------------------------------------------------------------------------


@dataclass
class AuditRecord:
    """One intercepted call: where it happened, what it was, and what the scope did with it."""

    index: int       # order of the call among intercepted calls of one pass
    path: str        # module path of the call ("" for the root module's own forward)
    op: str          # resolved PyTorch name, e.g. "torch.nn.functional.relu"
    call: int        # how many times this (path, op) was called before in the pass
    rule: str        # e.g. "freeze:piecewise_linear", "taylor:norm", "affine", "linear"

    def __str__(self) -> str:
        return f"{self.index:5d}  {self.path or '(root)'}  {self.op}  #{self.call}  {self.rule}"


@dataclass(frozen=True)
class Site:
    """Where an op ran: module path (``""`` for the root), PyTorch op, how many times that
    module had been entered before in the pass (``module_call``) and how many times this op had
    run in that module call before (``op_call``)."""

    path: str
    op: str
    module_call: int
    op_call: int


class ConstantObserver:
    """Receives the constants of the frozen system (see the module docstring). Subclass it."""

    def constant(self, site: Site, const: Tensor) -> Tensor:
        """The term to add to the probe rows for the constant ``const`` (shape (1, ...)) added
        at ``site``; the default adds the constant itself (as ``constants=True`` does)."""
        return const

    def op(self, site: Site, inputs: list[Tensor], output: Any, gain: Tensor | None) -> None:
        """An op consumed the probe-carrying ``inputs`` and produced ``output`` (for in-place ops
        the mutated input). ``gain`` is the elementwise A(x0) of a pointwise unit (shape
        (1, ...) broadcastable to the probe rows), else None."""


class _Mode(TorchFunctionMode):
    def __init__(self, scope: "LinearScope"):
        super().__init__()
        self.scope = scope

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return self.scope._dispatch(func, args, kwargs or {})


_token_counter = itertools.count()


class LinearScope:
    """Attach LinearScopes to every non-linear unit of ``model`` (paper eq. 2), as a context.

    Inside ``with LinearScope(model) as scope:``, calling ``model`` on a batch whose element 0
    is x0 and whose other elements are probes returns ``[f(x0), F(x0)·x1 + r(x0)]`` (eq. 5); with
    ``scope.constants = False`` the probe elements get ``F(x0)·x1`` (biases and every c(x0) off).
    The model is always restored on exit, also after an exception: hooks removed, the mode
    popped, Dropout modules put back in the mode they had.

    Args:
        model: any eager ``nn.Module`` (compiled / DataParallel models are unwrapped).
        rule: ``"freeze"`` (default) or ``"taylor"`` for every unit.
        overrides: module-path pattern (``fnmatch``, e.g. ``"body.*"``) → rule, for units called
            inside matching modules; the longest matching pattern wins.
        constants: include the constant terms (biases, c(x0)) on the probe branch.
        audit: record every intercepted call in ``scope.records``.
        observer: a :class:`ConstantObserver` that receives every constant added on the probe
            branch (then ``constants`` is ignored: the probe branch gets the observer's terms).
    """

    def __init__(self, model: nn.Module, rule: str = "freeze",
                 overrides: dict[str, str] | None = None, constants: bool = True,
                 audit: bool = False, observer: ConstantObserver | None = None):
        if rule not in RULE_NAMES:
            raise ValueError(f"unknown rule {rule!r}: expected one of {', '.join(RULE_NAMES)}")
        for pattern, r in (overrides or {}).items():
            if r not in RULE_NAMES:
                raise ValueError(f"override {pattern!r}: unknown rule {r!r}; expected "
                                 f"{' or '.join(RULE_NAMES)}")
        self.model = unwrap_model(model)
        self.rule = rule
        self.overrides = dict(overrides or {})
        self.observer = observer
        # with an observer the probe branch is computed constant-free, then the observer's terms
        # are added (``_observe_constant``)
        self.constants = constants if observer is None else False
        self.audit = audit
        self.records: list[AuditRecord] = []
        self._handles: list = []
        self._mode: _Mode | None = None
        self._dropouts: list[nn.Module] = []
        self._token = None
        self._batch: int | None = None
        self._ref: Tensor | None = None
        self._first_cache: dict[int, Tensor] = {}
        self._stack: list[tuple[nn.Module, str]] = []
        self._counts: dict[tuple[str, str], int] = {}
        self._module_calls: dict[str, int] = {}
        self._op_calls: dict[tuple[str, int, str], int] = {}
        self._gain: Tensor | None = None  # elementwise A(x0) of the pointwise unit just applied
        self._qualnames: dict[int, str] = {}
        self._children: dict[int, dict[int, str]] = {}
        self._warned_dropout = False

    # -- context management ----------------------------------------------------------------
    def __enter__(self) -> "LinearScope":
        try:
            self._attach()
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._detach()

    def _attach(self) -> None:
        self._token = next(_token_counter)
        self._batch = None
        self._first_cache = {}
        self._stack.clear()
        self._counts.clear()
        self._module_calls.clear()
        self._op_calls.clear()
        self.records = []
        for m in self.model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd) and m.training:
                warnings.warn(f"LinearScope: {type(m).__name__} in training mode switched to eval "
                              "(random masks would differ between x0 and the probes)",
                              stacklevel=3)
                m.eval()
                self._dropouts.append(m)
        for name, m in self.model.named_modules(remove_duplicate=True):
            self._qualnames[id(m)] = name
            self._children[id(m)] = {id(c): n for n, c in m.named_children()}
        for m in {id(m): m for m in self.model.modules()}.values():
            self._handles.append(m.register_forward_pre_hook(self._pre_hook))
            self._handles.append(m.register_forward_hook(self._post_hook, always_call=True))
        self._mode = _Mode(self)
        self._mode.__enter__()

    def _detach(self) -> None:
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m in self._dropouts:
            m.train()
        self._dropouts.clear()
        self._stack.clear()

    # -- module paths --------------------------------------------------------------------
    def _pre_hook(self, module, args):
        if not self._stack:
            # The root call: its floating-point tensor inputs are the batch [x0, probes].
            for t in tree_flatten(args)[0]:
                if isinstance(t, Tensor) and t.is_floating_point():
                    if t.dim() == 0 or t.shape[0] < 2:
                        raise ScopeError(
                            "LinearScope needs a batch [x0, x1, …] of at least 2 elements "
                            f"(x0 and one probe); got input shape {tuple(t.shape)}")
                    self._mark(t)
                    self._batch = self._batch or t.shape[0]
                    self._ref = t
            path = ""
        else:
            parent, parent_path = self._stack[-1]
            child = self._children.get(id(parent), {}).get(id(module))
            if child is not None:
                path = f"{parent_path}.{child}" if parent_path else child
            else:
                path = self._qualnames.get(id(module), type(module).__name__)
        self._module_calls[path] = self._module_calls.get(path, -1) + 1
        self._stack.append((module, path))

    def _post_hook(self, module, args, output):
        if self._stack:
            self._stack.pop()

    @property
    def path(self) -> str:
        return self._stack[-1][1] if self._stack else ""

    def _where(self) -> str:
        if not self._stack:
            return "outside any module"
        module, path = self._stack[-1]
        return f"in module `{path or '(root)'}` ({type(module).__name__})"

    # -- probe-carrying tensors --------------------------------------------------------------
    def _mark(self, t: Tensor, gate: bool = False) -> None:
        t._linearscope_token = self._token
        t._linearscope_gate = self._token if gate else None

    def _marked(self, t: Any) -> bool:
        return isinstance(t, Tensor) and getattr(t, "_linearscope_token", None) == self._token \
            and self._token is not None

    def _is_gate(self, t: Tensor) -> bool:
        return getattr(t, "_linearscope_gate", None) == self._token

    def _mark_outputs(self, out, gate: bool = False):
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.is_floating_point():
                if t.dim() == 0 or t.shape[0] != self._batch:
                    raise ScopeError(
                        f"an op {self._where()} produced shape {tuple(t.shape)} from the batch "
                        f"of {self._batch} [x0, probes]: it mixes or drops the batch dimension")
                self._mark(t, gate)
        return out

    def _record(self, func, rule: str) -> None:
        if not self.audit:
            return
        op = _op_name(func)
        key = (self.path, op)
        n = self._counts.get(key, 0)
        self._counts[key] = n + 1
        self.records.append(AuditRecord(len(self.records), self.path, op, n, rule))

    def _rule_for_path(self) -> str:
        path = self.path
        best, best_len = self.rule, -1
        for pattern, rule in self.overrides.items():
            if fnmatch.fnmatchcase(path, pattern) and len(pattern) > best_len:
                best, best_len = rule, len(pattern)
        return best

    # -- observing constants ------------------------------------------------------------------
    def _site(self, func) -> Site:
        path = self.path
        call = self._module_calls.get(path, 0)
        op = _op_name(func)
        key = (path, call, op)
        n = self._op_calls.get(key, 0)
        self._op_calls[key] = n + 1
        return Site(path, op, call, n)

    def _observe_constant(self, func, y: Tensor, const: Tensor | float | None) -> Tensor:
        """Add the observer's term for ``const`` (the constant that the op ``func`` adds on the
        probe branch, shape (1, ...) or a scalar) to the probe rows of ``y``, which was computed
        without it. Without an observer, ``y`` is returned unchanged."""
        if self.observer is None or const is None:
            return y
        if not isinstance(const, Tensor):
            const = torch.full((1,) * y.dim(), float(const), dtype=y.dtype, device=y.device)
        term = self.observer.constant(self._site(func), const.detach())
        return torch.cat([y[:1], y[1:] + term])

    def _constant_of(self, func, args, kwargs) -> Tensor:
        """The constant an affine op adds: the op applied to zeros in place of its probe-carrying
        operands (one batch element), e.g. a conv's bias as an image, an eval batch norm's
        ``b − w·m/√(v + eps)``, a pad's border."""
        with torch.no_grad():
            zero = tree_map(lambda t: torch.zeros_like(t[:1]) if self._marked(t) else t,
                            (args, kwargs))
            return func(*zero[0], **zero[1])

    # -- dispatch ----------------------------------------------------------------------------
    def _dispatch(self, func, args, kwargs):
        flat = tree_flatten((args, kwargs))[0]
        marked = [t for t in flat if self._marked(t)]
        if not marked:
            return func(*args, **kwargs)  # constants, weights, shape arithmetic
        if self.observer is None:
            return self._dispatch_marked(func, args, kwargs, marked)
        self._gain = None
        out = self._dispatch_marked(func, args, kwargs, marked)
        self.observer.op(Site(self.path, _op_name(func), self._module_calls.get(self.path, 0), -1),
                         marked, out, self._gain)
        self._gain = None
        return out

    def _dispatch_marked(self, func, args, kwargs, marked):
        name = getattr(func, "__name__", "")
        if name in VALUE_READS:
            raise ScopeError(f"`{_op_name(func)}` reads the values of a probe-carrying tensor "
                             f"{self._where()}: control flow that depends on the input cannot be "
                             "frozen")
        if func in NONLINEAR_OPS:
            op = NONLINEAR_OPS[func]
            params = op.bind(args, kwargs)
            if op.family == "norm" or op.family == "rms_norm":
                kind, norm_params = _norm_params(func, params) if op.family == "norm" else (
                    "rms", dict(params, _call={k: params[k] for k in
                                                ("normalized_shape", "weight", "eps")
                                                if k in params}))
                if kind is None:
                    return self._affine(func, args, kwargs)
                params = norm_params
            return self._nonlinear(func, op, args, params)
        if func in ADD_LIKE:
            return self._add(func, args, kwargs)
        if func in MUL_LIKE:
            return self._mul(func, args, kwargs)
        if func in DIV_LIKE:
            if len(args) > 1 and self._marked(args[1]) or self._marked(kwargs.get("other")):
                raise UnknownOpError(f"division by a probe-carrying tensor (`{_op_name(func)}`) "
                                     f"{self._where()} is not linear and has no rule")
            self._record(func, "linear")
            return self._mark_outputs(func(*args, **kwargs))
        if func in MATMUL_LIKE:
            if len(marked) > 1:
                raise UnknownOpError(f"`{_op_name(func)}` of two probe-carrying tensors "
                                     f"{self._where()} is a product with no rule (which factor "
                                     "is the gate?)")
            self._record(func, "linear")
            return self._mark_outputs(func(*args, **kwargs))
        if func in AFFINE:
            if func is F.pad and _bind(("pad", "mode", "value"), {})(args, kwargs).get("value") in (
                    None, 0, 0.0):
                return self._structural(func, args, kwargs)
            return self._affine(func, args, kwargs)
        if func in CREATION:
            return func(*args, **kwargs)
        if func in DROPOUT:
            training = _bind(("p", "training", "inplace"), {"training": True})(args, kwargs)[
                "training"]
            if training and not self._warned_dropout:
                warnings.warn(f"LinearScope: functional dropout in training mode {self._where()} "
                              "is treated as the identity (eval)", stacklevel=4)
                self._warned_dropout = True
            self._record(func, "linear")
            return args[0]
        if func in STRUCTURAL:
            return self._structural(func, args, kwargs)
        # Anything else: only metadata queries may pass.
        if func in (T.detach, T.detach_, torch.detach):
            raise ScopeError(f"`detach` of a probe-carrying tensor {self._where()}: rows (Fᵀ) "
                             "would silently miss this path")
        out = func(*args, **kwargs)
        if not any(isinstance(t, Tensor) for t in tree_flatten(out)[0]):
            return out
        raise UnknownOpError(
            f"no LinearScope rule for `{_op_name(func)}` {self._where()}: it is not known to be "
            "linear, so passing it through could be silently wrong. Add a rule "
            "(precompute/rules.py) or use only supported ops.")

    def _structural(self, func, args, kwargs):
        first = next((t for t in tree_flatten(args)[0] if self._marked(t)), None)
        ndim = first.dim() if first is not None else 0
        if _touches_batch(func, args, kwargs, ndim):
            raise ScopeError(f"`{_op_name(func)}` {self._where()} selects, moves or reduces along "
                             "the batch dimension, which would mix x0 and the probes")
        if func in _DIM_FIRST_ARG and not self.constants:
            parts = args[0] if args else kwargs["tensors"]
            if any(isinstance(t, Tensor) and not self._marked(t) for t in parts):
                # Concatenating a constant (coordinate channels, …) is affine: off on probes.
                self._record(func, "affine")
                rest = args[1:] if args else ()
                kw = {k: v for k, v in kwargs.items() if k != "tensors"}
                y0 = func([t[:1] for t in parts], *rest, **kw)
                y1 = func([t[1:] if self._marked(t) else torch.zeros_like(t[1:]) for t in parts],
                          *rest, **kw)
                y = torch.cat([y0, y1])
                if self.observer is not None:
                    const = func([torch.zeros_like(t[1:]) if self._marked(t) else t[1:]
                                  for t in parts], *rest, **kw)
                    y = self._observe_constant(func, y, const)
                return self._mark_outputs(y)
        self._record(func, "linear")
        gate = func in VIEW_LIKE and first is not None and self._is_gate(first)
        return self._mark_outputs(func(*args, **kwargs), gate=gate)

    def _first(self, ndim: int) -> Tensor:
        """The indicator [1, 0, …, 0] of batch element 0, shaped (B, 1, …, 1) to broadcast."""
        key = ndim
        cached = self._first_cache.get(key)
        if cached is None:
            ref = self._ref
            cached = torch.zeros((self._batch,) + (1,) * (ndim - 1), dtype=ref.dtype,
                                 device=ref.device)
            cached[0] = 1
            self._first_cache[key] = cached
        return cached

    def _split(self, args, kwargs, part: slice):
        """The call's arguments restricted to one part of the batch (probe-carrying tensors only)."""
        return tree_map(lambda t: t[part] if self._marked(t) else t, (args, kwargs))

    def _finish_inplace(self, target: Tensor, result: Tensor) -> Tensor:
        # The model may rely on the mutation (x.relu_() without using the result): write back.
        target.copy_(result)
        return target

    def _affine(self, func, args, kwargs):
        """Linear op with constant terms: drop the constants on the probe branch when asked."""
        self._record(func, "affine")
        if self.constants:
            return self._mark_outputs(func(*args, **kwargs))
        if func in _BIASED_LINEAR and self._marked(args[0]) and not self._marked(
                args[1] if len(args) > 1 else kwargs.get("weight")):
            # The whole batch without bias, the bias added to x0 only: same values as the
            # split computation, without slicing the activation (cheaper backward).
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            args, kwargs = AFFINE[func](args, kwargs)
            y = func(*args, **kwargs)
            if bias is not None:
                per_channel = bias.reshape((-1,) + (1,) * (y.dim() - 2)) if func is not F.linear \
                    else bias
                y = y + per_channel * self._first(y.dim())
                y = self._observe_constant(func, y, per_channel.detach().unsqueeze(0)
                                           if func is not F.linear else bias.detach()[None])
            return self._mark_outputs(y)
        strip = AFFINE[func]
        a0, k0 = self._split(args, kwargs, slice(0, 1))
        a1, k1 = self._split(args, kwargs, slice(1, None))
        y0 = func(*a0, **k0)
        a1, k1 = strip(a1, k1)
        y1 = func(*a1, **k1)
        y = torch.cat([y0, y1])
        if self.observer is not None:
            y = self._observe_constant(func, y, self._constant_of(func, args, kwargs))
        return self._mark_outputs(y)

    def _add(self, func, args, kwargs):
        """Sums: ``x + b`` with a constant b is affine; the probe branch gets ``x1 + 0``."""
        operands = [args[0], args[1] if len(args) > 1 else kwargs.get("other")]
        if self.constants or all(self._marked(o) for o in operands):
            self._record(func, "linear" if all(self._marked(o) for o in operands) else "affine")
            return self._mark_outputs(func(*args, **kwargs))
        self._record(func, "affine")

        def first_only(t):
            # A constant term kept on x0 and switched off on the probes: c·[1, 0, …, 0].
            if self._marked(t) or not isinstance(t, (Tensor, int, float)) or isinstance(t, bool):
                return t
            ref = operands[0] if self._marked(operands[0]) else operands[1]
            return t * self._first(max(ref.dim(), t.dim() if isinstance(t, Tensor) else 0))

        const = self._constant_of(func, args, kwargs) if self.observer is not None else None
        args = tuple(first_only(a) for a in args)
        kwargs = {k: (first_only(v) if k == "other" else v) for k, v in kwargs.items()}
        y = func(*args, **kwargs)
        if const is not None:
            if y is args[0]:  # in place (x += c): observe on a copy, then write back
                return self._finish_inplace(y, self._observe_constant(func, y.clone(), const))
            y = self._observe_constant(func, y, const)
        return self._mark_outputs(y)

    def _mul(self, func, args, kwargs):
        a = args[0]
        b = args[1] if len(args) > 1 else kwargs.get("other")
        if not (self._marked(a) and self._marked(b)):
            self._record(func, "linear")
            return self._mark_outputs(func(*args, **kwargs))
        rule = self._rule_for_path()
        gate_index = None
        if rule == "freeze":
            ga, gb = self._is_gate(a), self._is_gate(b)
            if ga != gb:
                gate_index = 0 if ga else 1
            elif a.shape != b.shape and a.numel() != b.numel():
                gate_index = 0 if a.numel() < b.numel() else 1
            else:
                raise UnknownOpError(
                    f"product of two probe-carrying tensors (`{_op_name(func)}`) {self._where()}: "
                    "cannot decide which factor is the gate (neither comes from a sigmoid, "
                    "hard-sigmoid or tanh, and neither is broadcast). Use rule='taylor' for this "
                    "module (overrides) or restructure the product.")
        call = Call(torch.mul, a[:1].detach(), (b[:1].detach(),), {}, gate_index)
        with torch.no_grad():
            frozen = rule_for("product", rule)(call)
        self._record(func, f"{rule}:product" + ("" if gate_index is None else f"(gate={gate_index})"))
        y1 = frozen.linear(a[1:], b[1:])
        if self.constants and frozen.offset is not None:
            y1 = y1 + frozen.offset
        y = torch.cat([frozen.y0.expand((1,) + tuple(y1.shape[1:])), y1])
        y = self._observe_constant(func, y, frozen.offset)
        if _is_inplace(func, kwargs):
            return self._finish_inplace(a, y)
        return self._mark_outputs(y)

    def _nonlinear(self, func, op: NonlinearOp, args, params):
        x = args[0]
        if not self._marked(x):
            raise UnknownOpError(f"`{_op_name(func)}` {self._where()} takes a probe-carrying "
                                 "tensor as a parameter, not as its input: no rule")
        for k, v in params.items():
            if self._marked(v):
                raise UnknownOpError(f"`{_op_name(func)}` {self._where()}: parameter `{k}` depends "
                                     "on the input (a product of input-dependent tensors)")
        rule = self._rule_for_path()
        inplace = op.inplace or bool(params.pop("inplace", False))
        wants_indices = func in _POOL_RETURNS_INDICES or bool(params.get("return_indices"))
        # A(x0) and c(x0) are constants of the frozen system: computed from a detached x0, so
        # autograd neither differentiates them nor keeps x0 alive (in-place units stay legal).
        with torch.no_grad():
            frozen: Frozen = rule_for(op.family, rule)(Call(op.pure, x[:1].detach(), (), params))
        self._record(func, f"{rule}:{op.family}")
        if frozen.whole_batch:
            # linear(x0) + c is h(x0) exactly: run the whole batch at once, c on x0 only unless
            # the constants are on (no slicing of the activation, nothing to undo in backward).
            y = frozen.linear(x)
            if frozen.offset is not None:
                y = y + (frozen.offset if self.constants else frozen.offset * self._first(y.dim()))
        else:
            y1 = frozen.linear(x[1:])
            if self.constants and frozen.offset is not None:
                y1 = y1 + frozen.offset
            y = torch.cat([frozen.y0, y1])
        y = self._observe_constant(func, y, frozen.offset)
        self._gain = frozen.gain
        if inplace:
            return self._finish_inplace(x, y)
        self._mark_outputs(y, gate=op.gate)
        if wants_indices:
            idx = frozen.extra[0]
            return y, idx.expand((y.shape[0],) + tuple(idx.shape[1:]))
        return y


_OUT_OF_PLACE = {
    T.add_: torch.add, T.__iadd__: torch.add, T.sub_: torch.sub, T.__isub__: torch.sub,
    T.mul_: torch.mul, T.__imul__: torch.mul, T.div_: torch.div, T.__itruediv__: torch.div,
}


def _out_of_place(func):
    return _OUT_OF_PLACE.get(func, func)


def supported_ops() -> dict[str, list[str]]:
    """Names of the PyTorch functions a LinearScope knows, by category (for docs and audits)."""
    fam: dict[str, list[str]] = {}
    for f, op in NONLINEAR_OPS.items():
        fam.setdefault(op.family, []).append(_op_name(f))
    fam["affine"] = [_op_name(f) for f in AFFINE] + [_op_name(f) for f in ADD_LIKE]
    fam["linear"] = sorted({_op_name(f) for f in STRUCTURAL | MUL_LIKE | DIV_LIKE | DROPOUT})
    return {k: sorted(set(v)) for k, v in fam.items()}
