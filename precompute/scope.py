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
* products of two probe-carrying tensors (gates), frozen by the product rule;
* in-place writes (``y[:, 0] = v``, ``copy_``, ``index_put_``, ``acc.add_(v)`` into a fresh
  tensor, ``out=``) and selections by a constant mask (``where``, ``masked_fill``): linear in the
  written value and the target together; whichever of them is a constant is an affine constant.
  A fresh tensor that receives a probe-carrying value becomes probe-carrying (with its base and
  every view sharing its storage).

Anything else is an :class:`UnknownOpError` naming the op and the module path: a LinearScope is
never silently wrong. Refused as well, each with a :class:`ScopeError` saying what to do: ops that
would mix batch elements (:mod:`precompute.batch_dims`: a reduction over dim 0, ``x[0]``,
``movedim(1, 0)``, a matrix product contracting dim 0, an unbatched convolution), reading values (``.item()``, ``if x.sum() > 0``,
``torch.equal``), casts to integer/bool/complex, ``detach``/``new_tensor``/``torch.tensor`` of
probe-carrying data, gradient hooks, grad-disabled regions, custom autograd Functions and
gradient checkpointing (rows would miss or misroute them), TorchScript modules, random numbers
drawn in the forward, and forward passes that change the model's parameters or buffers.
Train-mode Dropout, StochasticDepth, RReLU and spectral norm are switched to eval with a warning.

Observing the constants (Theorem 1)
-----------------------------------
With an ``observer`` (:class:`ConstantObserver`), every constant the frozen system adds on the
probe branch — an affine op's constant (conv/linear bias, eval batch-norm shift, pad value,
``x + c``, a concatenated constant, a constant written into a probe-carrying tensor, the constant
content of a fresh tensor that receives probe-carrying values) and every rule's c(x0) — is handed
to ``observer.constant(site, const)`` and the probe branch receives what it returns instead (e.g.
``λ·const`` with a scalar leaf λ per site, so that one backward pass gives every layer-wise
contribution ⟨∂score/∂t, b⟩ of eq. 8/16). The probe branch then carries no other constant: it is
``F·x1 + Σ_sites observer terms``. ``observer.op(site, inputs, output, gain)`` is told of every
op on probe-carrying tensors (``gain``: the elementwise A(x0) of a pointwise unit, else None),
so masked biases can be followed through the units that consume them. **Every code path that adds
a constant to the probe branch must go through** :meth:`LinearScope._observe_constant`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import inspect
import itertools
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.spectral_norm import SpectralNorm as _OldSpectralNorm
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._pytree import tree_flatten, tree_map

from precompute.batch_dims import (DIM_FIRST_ARG, arg, einsum_keeps_batch, key_touches_batch,
                                   touches_batch)
from precompute.rules import RULE_NAMES, Call, Frozen, rrelu_eval, rule_for


from precompute.errors import ScopeError, UnknownOpError  # noqa: E402  (re-exported)


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
    T.swapdims, T.moveaxis, T.unbind, T.cumsum, T.cumsum_, T.broadcast_to, T.neg_,
    torch.cat, torch.concat, torch.concatenate, torch.stack, torch.flatten, torch.reshape,
    torch.squeeze, torch.unsqueeze, torch.transpose, torch.permute, torch.movedim, torch.narrow,
    torch.split, torch.chunk, torch.roll, torch.flip, torch.sum, torch.mean, torch.neg,
    torch.swapaxes, torch.swapdims, torch.moveaxis, torch.unbind, torch.cumsum,
    torch.broadcast_to, torch.as_tensor, torch.asarray,
    F.pixel_shuffle, F.pixel_unshuffle, F.interpolate, F.upsample, F.upsample_bilinear,
    F.upsample_nearest, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.fold, F.unfold, F.channel_shuffle,
    F.native_channel_shuffle,
    # Linear in the input for given indices; indices of a frozen max pool are x0's.
    F.max_unpool1d, F.max_unpool2d, F.max_unpool3d,
    # Linear in the input for a grid that does not depend on it (checked).
    F.grid_sample,
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
    T.new_empty, T.new_full,
}

# Copies of a tensor's *data* that autograd does not see: rows would miss the path.
DATA_COPIES: set[Callable] = {T.new_tensor, torch.tensor, T.detach, T.detach_, torch.detach,
                              T.data.__get__}

# Non-tensor results that depend only on metadata (shape, dtype, device, autograd state).
METADATA: set[Callable] = {
    T.shape.__get__, T.size, T.dim, T.ndimension, T.__len__, T.dtype.__get__, T.device.__get__,
    T.ndim.__get__, T.numel, T.nelement, T.is_floating_point, T.is_complex, T.requires_grad.__get__,
    T.is_leaf.__get__, T.grad_fn.__get__, T.stride, T.storage_offset, T.is_contiguous,
    T.element_size, T.layout.__get__, T.is_cuda.__get__, T.get_device, T.is_sparse.__get__,
    T.itemsize.__get__, T.nbytes.__get__, T.is_quantized.__get__, T.is_meta.__get__,
    T.__hash__, T.retain_grad, T.__repr__, T.__str__, T.__format__,
    T.data_ptr,
}

# Values leave the tensor world: the control flow would depend on the probe batch.
VALUE_READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy",
               "__array__", "__complex__"}

# Gradient hooks and explicit backward passes: rows (Fᵀ) are computed by autograd.
GRAD_HOOKS: set[Callable] = {T.register_hook, T.register_post_accumulate_grad_hook, T.backward}


def _bind(names: tuple[str, ...], defaults: dict[str, Any]):
    """A binder that maps a call's (args[1:], kwargs) to named parameters."""

    def bind(args, kwargs):
        params = dict(defaults)
        params.update(zip(names, args[1:]))
        params.update(kwargs)
        return params

    return bind


@functools.lru_cache(maxsize=None)
def _testing_overrides() -> dict:
    return torch.overrides.get_testing_overrides()


@functools.lru_cache(maxsize=1024)
def _first_param(func: Callable) -> str | None:
    """The name of a function's first parameter (``input`` for most ``torch``/``F`` functions)."""
    try:
        params = list(inspect.signature(_testing_overrides().get(func, func)).parameters)
    except (TypeError, ValueError):
        return None
    return params[0] if params else None


def _positional_input(func: Callable, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``torch.add(input=x, other=y)`` → ``torch.add(x, other=y)``: every handler finds the input
    in ``args[0]`` (keyword-only calls are legal PyTorch)."""
    name = _first_param(func)
    if name is None or name not in kwargs:
        return args, kwargs
    kwargs = dict(kwargs)
    return (kwargs.pop(name),), kwargs


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
# |x|: the sign of x0 (PyTorch's derivative, 0 at 0).
_register([torch.abs, T.abs, T.__abs__, torch.absolute, T.absolute], _pointwise(_PL, torch.abs))
_register([torch.abs_, T.abs_, T.absolute_], _pointwise(_PL, torch.abs, inplace=True))
# RReLU in eval: a leaky ReLU of slope (lower + upper)/2 (training mode is switched to eval).
_RRELU_NAMES = ("lower", "upper", "training", "inplace")
_register([F.rrelu, torch.rrelu], _pointwise(_PL, rrelu_eval, _RRELU_NAMES))
_register([F.rrelu_, torch.rrelu_], _pointwise(_PL, rrelu_eval, _RRELU_NAMES[:3], inplace=True))

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

# Max pooling: the function that returns indices for each pooling type, and its spatial rank
# (an input with one dimension less is unbatched-looking: PyTorch pools it per leading plane).
_POOL_NAMES = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
for _pool, _with, _nd in [
    (F.max_pool1d, F.max_pool1d_with_indices, 1), (F.max_pool2d, F.max_pool2d_with_indices, 2),
    (F.max_pool3d, F.max_pool3d_with_indices, 3),
    (F.max_pool1d_with_indices, F.max_pool1d_with_indices, 1),
    (F.max_pool2d_with_indices, F.max_pool2d_with_indices, 2),
    (F.max_pool3d_with_indices, F.max_pool3d_with_indices, 3),
    (torch.max_pool1d, F.max_pool1d_with_indices, 1), (torch.max_pool2d, F.max_pool2d_with_indices, 2),
    (torch.max_pool3d, F.max_pool3d_with_indices, 3),
]:
    _register([_pool], NonlinearOp("max_pool", _with, _bind(_POOL_NAMES, {"_with_indices": _with,
                                                                          "_spatial": _nd})))
for _pool, _with, _nd in [
    (F.adaptive_max_pool1d, F.adaptive_max_pool1d_with_indices, 1),
    (F.adaptive_max_pool2d, F.adaptive_max_pool2d_with_indices, 2),
    (F.adaptive_max_pool3d, F.adaptive_max_pool3d_with_indices, 3),
    (F.adaptive_max_pool1d_with_indices, F.adaptive_max_pool1d_with_indices, 1),
    (F.adaptive_max_pool2d_with_indices, F.adaptive_max_pool2d_with_indices, 2),
    (F.adaptive_max_pool3d_with_indices, F.adaptive_max_pool3d_with_indices, 3),
]:
    _register([_pool], NonlinearOp("max_pool", _with,
                                   _bind(("output_size", "return_indices"),
                                         {"_with_indices": _with, "_spatial": _nd})))
_POOL_RETURNS_INDICES = {
    F.max_pool1d_with_indices, F.max_pool2d_with_indices, F.max_pool3d_with_indices,
    F.adaptive_max_pool1d_with_indices, F.adaptive_max_pool2d_with_indices,
    F.adaptive_max_pool3d_with_indices,
}

# Maxima over dimensions: x0's selection (amax/amin share ties evenly, as their gradient does).
_register([torch.amax, T.amax], _pointwise("reduce_select", torch.amax, ("dim", "keepdim"),
                                           {"dim": (), "_kind": "amax"}))
_register([torch.amin, T.amin], _pointwise("reduce_select", torch.amin, ("dim", "keepdim"),
                                           {"dim": (), "_kind": "amin"}))
# torch.max/min: (x, dim) reduces with indices, (x, other) is the elementwise maximum (decided
# per call); elementwise maxima and minima of two tensors.
_REDUCE_WITH_INDICES = {torch.max: "max", T.max: "max", torch.min: "min", T.min: "min"}
for _f, _kind in _REDUCE_WITH_INDICES.items():
    _register([_f], _pointwise("reduce_select", _f, ("dim", "keepdim"), {"_kind": _kind}))
SELECT: dict[Callable, str] = {torch.maximum: "max", T.maximum: "max", torch.minimum: "min",
                               T.minimum: "min"}

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



# --- unwrapping and model checks -------------------------------------------------------------


def unwrap_model(model: nn.Module) -> nn.Module:
    """The eager module under ``torch.compile`` / ``DataParallel`` wrappers.

    A compiled model would bypass the function-level interception and DataParallel would scatter
    x0 and the probes to different devices, so both are unwrapped (with a warning). TorchScript
    (``torch.jit.script``/``trace``/``load``) runs a compiled graph the scope cannot see: refused.
    """
    if isinstance(model, torch.jit.ScriptFunction):
        raise ScopeError("the model is a TorchScript function: LinearScope needs the eager "
                         "nn.Module (TorchScript graphs run outside the scope)")
    if not isinstance(model, nn.Module):
        raise ScopeError(f"the model must be an nn.Module, got {type(model).__name__}")
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


def eager():
    """A context in which ``torch.compile``d modules and functions run their Python code (so a
    TorchFunctionMode sees every op); a no-op unless torch._dynamo was ever imported."""
    if "torch._dynamo" not in sys.modules:
        return contextlib.nullcontext()
    return torch.compiler.set_stance("force_eager")


def _refuse_unseen_code(model: nn.Module) -> None:
    """Refuse what would run outside the scope: TorchScript modules and backward hooks."""
    from torch.nn.modules import module as _module

    for name, m in model.named_modules():
        where = f"module `{name or '(root)'}` ({type(m).__name__})"
        if isinstance(m, torch.jit.ScriptModule):
            raise ScopeError(
                f"{where} is TorchScript (torch.jit.script/trace/load): its compiled graph runs "
                "outside the LinearScope, which would be silently wrong. Build the eager nn.Module "
                "from its Python code and load the weights with load_state_dict")
        if m._backward_hooks or m._backward_pre_hooks:
            raise ScopeError(
                f"{where} has backward hooks: they could change the gradients that give the rows "
                "(Fᵀ); remove them (handle.remove()) before interpreting the model")
    if _module._global_backward_hooks or _module._global_backward_pre_hooks:
        raise ScopeError("global module backward hooks are registered (register_module_full_"
                         "backward_hook): they could change the rows (Fᵀ); remove them first")


def _random_in_training(m: nn.Module) -> str | None:
    """Why a train-mode module would draw random numbers or change state per pass, else None."""
    if isinstance(m, (nn.modules.dropout._DropoutNd, nn.RReLU)):
        return "random masks/slopes would differ between x0 and the probes"
    if type(m).__name__ in ("StochasticDepth", "DropPath"):  # torchvision, timm
        return "random drops would differ between x0 and the probes"
    if isinstance(m, torch.nn.utils.parametrizations._SpectralNorm) or any(
            isinstance(h, _OldSpectralNorm)
            for h in m._forward_pre_hooks.values()):
        return "its power iteration would change the weight between passes"
    return None


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

# Functions that draw random numbers: each pass would see different values.
RANDOM: set[Callable] = {
    torch.rand, torch.randn, torch.randint, torch.rand_like, torch.randn_like, torch.randint_like,
    torch.bernoulli, torch.normal, torch.poisson, torch.multinomial, torch.randperm,
    T.bernoulli, T.bernoulli_, T.uniform_, T.normal_, T.random_, T.exponential_, T.geometric_,
    T.cauchy_, T.log_normal_, T.multinomial,
}

# Writes into (a region of) a tensor, and selections by a constant mask: jointly linear in the
# target and the written value (see LinearScope._write).
WRITES: set[Callable] = {
    T.__setitem__, T.copy_, T.fill_, T.zero_, T.index_put_, T.index_put, torch.index_put,
    T.masked_fill_, T.masked_fill, torch.masked_fill, torch.where, T.where,
}
_INPLACE_ADD = {T.add_, T.__iadd__, T.sub_, T.__isub__}


def _base(t: Tensor) -> Tensor:
    return t._base if t._base is not None else t


def _storage(t: Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return 0


def _rows_equal(c: Tensor) -> bool:
    """Are all batch rows of ``c`` equal to row 0 (NaNs equal to NaNs)?"""
    rest, first = c[1:], c[:1].expand_as(c[1:])
    if not c.is_floating_point():
        return torch.equal(rest, first)
    return bool(((rest == first) | (rest.isnan() & first.isnan())).all())


def _rng_state() -> list[Tensor]:
    states = [torch.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states += torch.cuda.get_rng_state_all()
    return states


def _saved_tensor_hooks():
    return torch._C._autograd._top_saved_tensors_default_hooks(False)


class LinearScope:
    """Attach LinearScopes to every non-linear unit of ``model`` (paper eq. 2), as a context.

    Inside ``with LinearScope(model) as scope:``, calling ``model`` on a batch whose element 0
    is x0 and whose other elements are probes returns ``[f(x0), F(x0)·x1 + r(x0)]`` (eq. 5); with
    ``scope.constants = False`` the probe elements get ``F(x0)·x1`` (biases and every c(x0) off).
    The model is always restored on exit, also after an exception: hooks removed, the mode
    popped, modules switched to eval (Dropout, …) put back in the mode they had.

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
        self._stance = None
        self._switched: list[nn.Module] = []
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
        self._warned: set[str] = set()
        # storages of fresh tensors that received probe-carrying values (kept alive: no reuse)
        self._probe_storages: dict[int, Tensor] = {}
        self._grad_pass = False  # the pass computes rows: autograd must see every op
        self._saved_hooks = None
        self._rng: list[Tensor] = []
        self._versions: list[tuple[str, Tensor, int]] = []
        self._model_storages: set[int] | None = None  # of parameters and buffers, on first use

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
        self._probe_storages.clear()
        self.records = []
        _refuse_unseen_code(self.model)
        for m in self.model.modules():
            reason = _random_in_training(m) if m.training else None
            if reason is not None:
                warnings.warn(f"LinearScope: {type(m).__name__} in training mode switched to eval "
                              f"({reason})", stacklevel=3)
                m.eval()
                self._switched.append(m)
        for name, m in self.model.named_modules(remove_duplicate=True):
            self._qualnames[id(m)] = name
            self._children[id(m)] = {id(c): n for n, c in m.named_children()}
        for m in {id(m): m for m in self.model.modules()}.values():
            self._handles.append(m.register_forward_pre_hook(self._pre_hook))
            self._handles.append(m.register_forward_hook(self._post_hook, always_call=True))
        self._handles.append(self.model.register_forward_hook(self._root_done))
        self._stance = eager()  # compiled submodules and functions run their Python code
        self._stance.__enter__()
        self._mode = _Mode(self)
        self._mode.__enter__()

    def _detach(self) -> None:
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
        if self._stance is not None:
            stance, self._stance = self._stance, None
            stance.__exit__(None, None, None)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m in self._switched:
            m.train()
        self._switched.clear()
        self._stack.clear()
        self._probe_storages.clear()

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
            self._start_pass()
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

    # -- whole-pass checks -------------------------------------------------------------------
    def _start_pass(self) -> None:
        """Snapshot what a pass must not change: RNG state, the model's parameters and buffers."""
        self._grad_pass = torch.is_grad_enabled()
        self._saved_hooks = _saved_tensor_hooks() if self._grad_pass else None
        self._rng = _rng_state()
        self._model_storages = None
        self._versions = [(n, t, t._version) for n, t in itertools.chain(
            self.model.named_parameters(), self.model.named_buffers())
            if not n.endswith("num_batches_tracked")]  # counted by train-mode BN modules only

    def _root_done(self, module, args, output) -> None:
        """After the root forward: the output carries the probes, nothing random, model intact."""
        for t in tree_flatten(output)[0]:
            if (isinstance(t, Tensor) and t.is_floating_point() and t.dim() and t.shape[0] ==
                    self._batch and not self._marked(t) and not _rows_equal(t)):
                raise ScopeError(
                    "the model's output differs between x0 and the probes but was computed outside "
                    "the LinearScope (a TorchScript function, a C++/CUDA extension, numpy, or "
                    "`.data`): use plain PyTorch ops in forward")
        now = _rng_state()
        if len(now) != len(self._rng) or any(not torch.equal(a, b) for a, b in zip(now, self._rng)):
            raise ScopeError(
                "the model drew random numbers during its forward pass (a train-mode module or "
                "torch.rand*/bernoulli/dropout in forward): x0 and each batch of probes would see "
                "different random values. Call model.eval() or remove the randomness")
        for name, t, version in self._versions:
            if t._version != version:
                raise ScopeError(
                    f"the forward pass changed the model's parameter/buffer `{name}` (a train-mode "
                    "state update): each pass would see a different model. Call model.eval() or "
                    "remove the update")

    # -- probe-carrying tensors --------------------------------------------------------------
    def _mark(self, t: Tensor, gate: bool = False) -> None:
        t._linearscope_token = self._token
        t._linearscope_gate = self._token if gate else None

    def _marked(self, t: Any) -> bool:
        if not isinstance(t, Tensor):
            return False
        token = getattr(t, "_linearscope_token", None)
        if token is not None and token == self._token:
            return True
        # a view taken before its fresh base received probe-carrying values (rare path)
        if self._probe_storages and _storage(t) in self._probe_storages:
            self._mark(t)
            return True
        return False

    def _is_gate(self, t: Tensor) -> bool:
        return getattr(t, "_linearscope_gate", None) == self._token

    def _mark_outputs(self, out, gate: bool = False, func: Callable | None = None):
        what = f"`{_op_name(func)}`" if func is not None else "an op"
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                if not t.is_floating_point():
                    raise ScopeError(
                        f"{what} {self._where()} turns a probe-carrying tensor into {t.dtype} "
                        "values: integer, boolean and complex results have no real derivative, so "
                        "rows and columns would lose this path. Keep this computation in floating "
                        "point (or make it independent of the input)")
                if t.dim() == 0 or t.shape[0] != self._batch:
                    raise ScopeError(
                        f"{what} {self._where()} produced shape {tuple(t.shape)} from the batch "
                        f"of {self._batch} [x0, probes]: it mixes or drops the batch dimension")
                self._mark(t, gate)
        return out

    def _batch_error(self, func, detail: str = "") -> ScopeError:
        return ScopeError(
            f"`{_op_name(func)}` {self._where()} selects, moves or reduces along the batch "
            f"dimension{detail}, which would mix x0 and the probes: dimension 0 is the batch "
            "[x0, probes] and every op must act on each element alone")

    def _aligned(self, func, operands) -> None:
        """Elementwise ops: every probe-carrying operand has the same rank (its dimension 0 is
        the batch), no constant broadcasts extra leading dimensions in, and a constant with
        the batch size is the same for every element (else it was drawn per sample or computed
        outside the scope)."""
        nd = next(o.dim() for o in operands if self._marked(o))
        for o in operands:
            if not isinstance(o, Tensor):
                continue
            if self._marked(o):
                if o.dim() != nd:
                    raise self._batch_error(func, " (operands of different ranks broadcast the "
                                                  "batch of one against another dimension)")
            elif o.dim() > nd:
                raise self._batch_error(func, " (a constant with more dimensions moves it)")
            elif o.dim() == nd and o.shape[0] == self._batch and self._batch > 1:
                self._check_uniform(func, o)

    def _check_uniform(self, func, c: Tensor) -> None:
        if not _rows_equal(c):
            raise ScopeError(
                f"`{_op_name(func)}` {self._where()} combines the probe batch with a tensor of the "
                f"batch size ({self._batch}) that does not depend on the input as far as the "
                "LinearScope can see, yet differs between batch elements: random values drawn per "
                "sample, or a value computed outside the scope (TorchScript, a C++/CUDA extension, "
                "numpy, `.data`). x0 and the probes would see different networks. Compute it with "
                "PyTorch ops from the input, or make it the same for every sample")

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

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            warnings.warn(message, stacklevel=5)
            self._warned.add(key)

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
        if func in RANDOM and self._stack:  # inside the model's forward
            raise ScopeError(
                f"`{_op_name(func)}` {self._where()} draws random numbers in the forward pass: x0 "
                "and each batch of probes would see different values. Call model.eval() (or make "
                "the randomness conditional on self.training) before interpreting the model")
        flat = tree_flatten((args, kwargs))[0]
        marked = [t for t in flat if self._marked(t)]
        if not marked:
            return func(*args, **kwargs)  # constants, weights, shape arithmetic
        if not args:
            args, kwargs = _positional_input(func, args, kwargs)
        if self._grad_pass and self._stack and func not in METADATA and func not in CREATION:
            self._check_autograd(func)  # inside the model's forward, in a pass that needs rows
        target = None  # an in-place op on a constant tensor that receives probe-carrying values
        if args and isinstance(args[0], Tensor) and not self._marked(args[0]) and _is_inplace(
                func, kwargs):
            target = args[0]
            self._check_adoptable(func, target)
        if self.observer is None:
            out = self._dispatch_marked(func, args, kwargs, marked)
        else:
            self._gain = None
            out = self._dispatch_marked(func, args, kwargs, marked)
            self.observer.op(Site(self.path, _op_name(func), self._module_calls.get(self.path, 0),
                                  -1), marked, args[0] if out is None else out, self._gain)
            self._gain = None
        if target is not None and self._marked(target):
            self._adopt(target)
        return out

    def _check_autograd(self, func) -> None:
        """Rows are computed by autograd through the ops the scope intercepts: refuse what would
        hide ops from it or replay them outside the scope."""
        if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            raise ScopeError(
                f"`{_op_name(func)}` {self._where()} runs on probe-carrying tensors with gradients "
                "disabled — a `torch.no_grad()`/`inference_mode()` block in forward, a custom "
                "torch.autograd.Function, or reentrant gradient checkpointing: rows (Fᵀ, computed "
                "by autograd) would miss or misroute this path. Remove the block, use plain "
                "PyTorch ops instead of the custom Function, or disable gradient checkpointing")
        if _saved_tensor_hooks() != self._saved_hooks:
            raise ScopeError(
                f"`{_op_name(func)}` {self._where()} runs inside saved-tensor hooks (gradient "
                "checkpointing, torch.utils.checkpoint): its backward recomputes the forward "
                "outside the LinearScope, so rows would be wrong. Disable gradient checkpointing")

    def _dispatch_marked(self, func, args, kwargs, marked):
        name = getattr(func, "__name__", "")
        if name in VALUE_READS:
            raise ScopeError(f"`{_op_name(func)}` reads the values of a probe-carrying tensor "
                             f"{self._where()}: control flow that depends on the input cannot be "
                             "frozen")
        if func in _REDUCE_WITH_INDICES and isinstance(arg(args, kwargs, 1, ("other",)), Tensor):
            return self._select(func, _REDUCE_WITH_INDICES[func], args[0],
                                arg(args, kwargs, 1, ("other",)))
        if touches_batch(func, args, kwargs, marked[0].dim()):
            raise self._batch_error(func)
        if kwargs.get("out") is not None:
            return self._out(func, args, kwargs, marked)
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
            return self._div(func, args, kwargs)
        if func in MATMUL_LIKE:
            return self._matmul(func, args, kwargs, marked)
        if func in AFFINE:
            if func is F.pad and _bind(("pad", "mode", "value"), {})(args, kwargs).get("value") in (
                    None, 0, 0.0):
                return self._structural(func, args, kwargs)
            return self._affine(func, args, kwargs)
        if func in SELECT:
            return self._select(func, SELECT[func], args[0], arg(args, kwargs, 1, ("other",)))
        if func in WRITES:
            return self._written(func, args, kwargs)
        if func in CREATION or (func is T.new_tensor and not self._marked(
                arg(args, kwargs, 1, ("data",)))):
            return func(*args, **kwargs)
        if func in DROPOUT:
            training = _bind(("p", "training", "inplace"), {"training": True})(args, kwargs)[
                "training"]
            if training:
                self._warn_once("dropout", f"LinearScope: functional dropout in training mode "
                                           f"{self._where()} is treated as the identity (eval)")
            self._record(func, "linear")
            return args[0]
        if func in STRUCTURAL:
            return self._structural(func, args, kwargs)
        if func in METADATA:
            return func(*args, **kwargs)
        return self._refuse(func, args, kwargs)

    def _refuse(self, func, args, kwargs):
        """Every op without a rule: a clear error, never a pass-through."""
        op = _op_name(func)
        if func in DATA_COPIES:
            raise ScopeError(f"`{op}` of a probe-carrying tensor {self._where()} copies its values "
                             "without autograd: rows (Fᵀ) would silently miss this path. Use the "
                             "tensor itself (or .clone())")
        if func in GRAD_HOOKS:
            raise ScopeError(f"`{op}` on a probe-carrying tensor {self._where()}: rows (Fᵀ) are "
                             "computed by autograd, and a gradient hook or backward call in forward "
                             "would change them. Remove it while interpreting the model")
        if getattr(func, "__name__", "") in _OTHER_WRITES:
            raise UnknownOpError(f"no LinearScope rule for the in-place write `{op}` "
                                 f"{self._where()}: write with indexing (`y[:, idx] = v`), "
                                 "copy_ or index_put_ instead")
        try:  # only to tell value reads (a Python result) from unknown tensor ops
            out = func(*args, **kwargs)
        except Exception:  # noqa: BLE001 — the op is refused either way
            out = torch.empty(0)
        if not any(isinstance(t, Tensor) for t in tree_flatten(out)[0]):
            raise ScopeError(f"`{op}` reads the values of a probe-carrying tensor {self._where()} "
                             f"(it returns {type(out).__name__}): control flow that depends on the "
                             "input cannot be frozen")
        raise UnknownOpError(
            f"no LinearScope rule for `{op}` {self._where()}: it is not known to be "
            "linear, so passing it through could be silently wrong. Add a rule "
            "(precompute/rules.py) or use only supported ops.")

    def _out(self, func, args, kwargs, marked):
        """``op(..., out=t)``: compute the result, then write it into ``t`` like ``t.copy_``."""
        out = kwargs["out"]
        kwargs = {k: v for k, v in kwargs.items() if k != "out"}
        result = self._dispatch_marked(func, args, kwargs, marked)
        if not isinstance(out, Tensor) or not isinstance(result, Tensor) or out.shape != \
                result.shape:
            raise ScopeError(f"`{_op_name(func)}` {self._where()} writes a probe-carrying result "
                             "through `out=` with another shape or several outputs: assign the "
                             "result instead")
        if not self._marked(out):
            self._check_adoptable(func, out)
        return self._write(func, out, result, lambda t, v: t.copy_(v), out.dim())

    def _structural(self, func, args, kwargs):
        first = next((t for t in tree_flatten(args)[0] if self._marked(t)), None)
        if func is F.grid_sample:
            grid = arg(args, kwargs, 1, ("grid",))
            if self._marked(grid):
                raise UnknownOpError(f"`grid_sample` {self._where()} with a grid that depends on "
                                     "the input (a spatial transformer) is not linear and has no "
                                     "rule")
            if not self._marked(args[0]):
                raise UnknownOpError(f"`grid_sample` {self._where()}: only the sampled input may "
                                     "depend on the input")
            if grid.shape[0] == self._batch and self._batch > 1:
                self._check_uniform(func, grid)
        if func is T.view and any(isinstance(a, torch.dtype) for a in args[1:]):
            raise ScopeError(f"`Tensor.view(dtype)` {self._where()} reinterprets the bits of a "
                             "probe-carrying tensor: not linear")
        if func in DIM_FIRST_ARG:
            parts = args[0] if args else kwargs["tensors"]
            for t in parts:
                if isinstance(t, Tensor) and not self._marked(t):
                    self._aligned(func, [first, t])
            if not self.constants and any(
                    isinstance(t, Tensor) and not self._marked(t) for t in parts):
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
        return self._mark_outputs(func(*args, **kwargs), gate=gate, func=func)

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

    def _first_only(self, c, ndim: int, like: Tensor) -> Tensor:
        """A constant kept on x0 and switched off on the probes: ``c·[1, 0, …, 0]``."""
        if not isinstance(c, Tensor):
            c = torch.as_tensor(c, dtype=like.dtype, device=like.device)
        return c * self._first(max(ndim, c.dim()))

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
        if func in _BIASED_LINEAR and self._marked(args[0]) and not self._marked(
                args[1] if len(args) > 1 else kwargs.get("weight")):
            # The whole batch without bias, then the bias (on x0 only when the constants are
            # off): no slicing of the activation (cheaper backward), and x0's row is computed
            # the same way in every pass, so every pass freezes the same decisions (a fused bias
            # rounds differently and could flip a ReLU of x0 that sits at 0).
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            args, kwargs = AFFINE[func](args, kwargs)
            y = func(*args, **kwargs)
            if bias is not None:
                per_channel = bias.reshape((-1,) + (1,) * (y.dim() - 2)) if func is not F.linear \
                    else bias
                if self.constants:
                    return self._mark_outputs(y + per_channel)
                y = y + per_channel * self._first(y.dim())
                y = self._observe_constant(func, y, per_channel.detach().unsqueeze(0)
                                           if func is not F.linear else bias.detach()[None])
            return self._mark_outputs(y)
        if self.constants:
            return self._mark_outputs(func(*args, **kwargs))
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
        self._aligned(func, operands)
        if func in _INPLACE_ADD and not self._marked(operands[0]):
            # acc.add_(v) into a constant tensor: a write that accumulates (see _write)
            kw = {k: v for k, v in kwargs.items() if k != "other"}
            return self._write(func, operands[0], operands[1], lambda t, v: func(t, v, **kw),
                               operands[0].dim())
        if self.constants or all(self._marked(o) for o in operands):
            self._record(func, "linear" if all(self._marked(o) for o in operands) else "affine")
            return self._mark_outputs(func(*args, **kwargs))
        self._record(func, "affine")
        ref = operands[0] if self._marked(operands[0]) else operands[1]

        def first_only(t):
            # A constant term kept on x0 and switched off on the probes: c·[1, 0, …, 0].
            if self._marked(t) or not isinstance(t, (Tensor, int, float)) or isinstance(t, bool):
                return t
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
        self._aligned(func, [a, b])
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
        inplace = _is_inplace(func, kwargs)
        # x0's factors are constants of the frozen system. In place, ``a`` is overwritten below:
        # a detached view of it would share its version counter, so autograd needs a copy.
        a0 = a[:1].detach().clone() if inplace else a[:1].detach()
        call = Call(torch.mul, a0, (b[:1].detach(),), {}, gate_index)
        with torch.no_grad():
            frozen = rule_for("product", rule)(call)
        self._record(func, f"{rule}:product" + ("" if gate_index is None else f"(gate={gate_index})"))
        y1 = frozen.linear(a[1:], b[1:])
        if self.constants and frozen.offset is not None:
            y1 = y1 + frozen.offset
        y = torch.cat([frozen.y0.expand((1,) + tuple(y1.shape[1:])), y1])
        y = self._observe_constant(func, y, frozen.offset)
        if inplace:
            return self._finish_inplace(a, y)
        return self._mark_outputs(y)

    def _div(self, func, args, kwargs):
        divisor = args[1] if len(args) > 1 else kwargs.get("other")
        if self._marked(divisor):
            raise UnknownOpError(f"division by a probe-carrying tensor (`{_op_name(func)}`) "
                                 f"{self._where()} is not linear and has no rule")
        if kwargs.get("rounding_mode") is not None:
            raise UnknownOpError(f"`{_op_name(func)}` {self._where()} with rounding_mode="
                                 f"{kwargs['rounding_mode']!r} rounds a probe-carrying tensor: not "
                                 "linear, no rule")
        self._aligned(func, [args[0], divisor])
        self._record(func, "linear")
        return self._mark_outputs(func(*args, **kwargs))

    def _matmul(self, func, args, kwargs, marked):
        if len(marked) > 1:
            raise UnknownOpError(f"`{_op_name(func)}` of two probe-carrying tensors "
                                 f"{self._where()} is a product with no rule (which factor "
                                 "is the gate?)")
        x = marked[0]
        if func is torch.einsum:
            ops = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
            i = next(j for j, o in enumerate(ops) if o is x)
            if not einsum_keeps_batch(args[0], ops, i):
                raise self._batch_error(func, " (name it first in the marked operand and in the "
                                              "output, once)")
            subs = args[0].replace(" ", "").partition("->")[0].split(",")
            letter = subs[i][:1]
            for j, o in enumerate(ops):  # operands that share the batch index: per element
                if j != i and letter.isalpha() and subs[j][:1] == letter and self._batch > 1:
                    self._check_uniform(func, o)
        elif func is F.bilinear:
            other = args[1] if args[0] is x else args[0]
            if other.dim() == x.dim() and other.shape[0] == self._batch:
                self._check_uniform(func, other)
            bias = arg(args, kwargs, 3, ("bias",))
            if bias is not None:
                return self._bilinear_affine(func, args, kwargs, bias)
        else:
            a = args[0]
            b = arg(args, kwargs, 1, ("other", "mat2", "vec"))
            if a is x:
                ok = a.dim() >= 2 and (b.dim() <= 2 if a.dim() == 2 else b.dim() <= a.dim())
                const = b
            else:
                ok = b.dim() >= 3 and a.dim() <= b.dim()
                const = a
            if not ok:
                raise self._batch_error(func, " (a matrix product over the batch dimension)")
            if x.dim() >= 3 and const.dim() == x.dim() and const.shape[0] == self._batch > 1:
                self._check_uniform(func, const)  # a batch of matrices, one per element
        self._record(func, "linear")
        return self._mark_outputs(func(*args, **kwargs))

    def _bilinear_affine(self, func, args, kwargs, bias):
        """``F.bilinear(x, c, W, b)`` with a constant operand: linear in x plus the bias b."""
        self._record(func, "affine")
        if self.constants:
            return self._mark_outputs(func(*args, **kwargs))
        a, k = list(args), dict(kwargs)
        if len(a) > 3:
            a[3] = None
        if "bias" in k:
            k["bias"] = None
        y = func(*a, **k)
        b = bias.reshape((1,) * (y.dim() - 1) + (-1,))
        y = y + b * self._first(y.dim())
        return self._mark_outputs(self._observe_constant(func, y, b.detach()))

    # -- selections of x0: elementwise maxima, where/masked_fill with a constant mask --------
    def _row0(self, c):
        """A constant operand restricted to batch element 0 when it has the batch dimension."""
        if isinstance(c, Tensor) and c.dim() and c.shape[0] == self._batch and self._batch > 1:
            return c[:1]
        return c

    def _select(self, func, kind: str, a, b):
        """``maximum``/``minimum`` (also ``torch.max(a, b)``): x0's selection (rules.py)."""
        self._aligned(func, [a, b])
        am, bm = self._marked(a), self._marked(b)
        rule = self._rule_for_path()
        a0 = a[:1].detach() if am else self._row0(a)
        b0 = b[:1].detach() if bm else self._row0(b)
        constant = None if am and bm else (1 if am else 0)
        with torch.no_grad():
            frozen = rule_for("select", rule)(
                Call(func, a0, (b0,), {"kind": kind, "constant": constant}))
        self._record(func, f"{rule}:select")
        y1 = frozen.linear(a[1:] if am else None, b[1:] if bm else None)
        if self.constants and frozen.offset is not None:
            y1 = y1 + frozen.offset
        y = torch.cat([frozen.y0.expand((1,) + tuple(y1.shape[1:])), y1])
        return self._mark_outputs(self._observe_constant(func, y, frozen.offset))

    def _select_by_mask(self, func, cond, a, b):
        """``where(cond, a, b)`` for a mask that does not depend on the input: linear in (a, b),
        so a constant operand is an affine constant (kept on x0, off on the probes)."""
        if self._marked(cond):
            raise UnknownOpError(f"`{_op_name(func)}` {self._where()} with a mask that depends on "
                                 "the input is not linear and has no rule")
        self._aligned(func, [a, b, cond])
        am, bm = self._marked(a), self._marked(b)
        if (am and bm) or self.constants:
            self._record(func, "linear" if am and bm else "affine")
            return self._mark_outputs(torch.where(cond, a, b))
        self._record(func, "affine")
        like = a if am else b
        y = torch.where(cond, a if am else self._first_only(a, like.dim(), like),
                        b if bm else self._first_only(b, like.dim(), like))
        if self.observer is not None:
            with torch.no_grad():
                const = torch.where(cond, torch.zeros_like(a) if am else a,
                                    torch.zeros_like(b) if bm else b)[:1]
            y = self._observe_constant(func, y, const)
        return self._mark_outputs(y)

    # -- writes: setitem, copy_, fill_, index_put_, masked_fill, add_ into a fresh tensor ----
    def _written(self, func, args, kwargs):
        target = args[0]
        if func is T.__setitem__:
            key, value = args[1], args[2]
            if self._marked(key) or (isinstance(key, tuple) and any(self._marked(k) for k in key)):
                raise UnknownOpError(f"indexing with a probe-carrying index {self._where()}")
            if key_touches_batch(key, target.dim()):
                raise self._batch_error(func)
            region = target[key].dim()
            self._write(func, target, value, lambda t, v: t.__setitem__(key, v), region)
            return None
        if func is T.copy_:
            return self._write(func, target, arg(args, kwargs, 1, ("src",)),
                               lambda t, v: t.copy_(v), target.dim())
        if func is T.fill_:
            return self._write(func, target, arg(args, kwargs, 1, ("value",)), _fill, target.dim())
        if func is T.zero_:
            self._record(func, "linear")
            return func(*args, **kwargs)
        if func in (T.index_put_, T.index_put, torch.index_put):
            p = _bind(("indices", "values", "accumulate"), {"accumulate": False})(args, kwargs)
            indices, accumulate = tuple(p["indices"]), bool(p["accumulate"])
            if any(self._marked(i) for i in indices):
                raise UnknownOpError(f"indexing with a probe-carrying index {self._where()}")
            if not self._index_keeps_batch(indices):
                raise self._batch_error(func, " (its first index must be torch.arange(batch) "
                                              "along the rows; or write y[:, idx] = v)")
            if func is not T.index_put_:  # out of place: write into a copy
                marked, target = self._marked(target), target.clone()
                if marked:
                    self._mark(target)
            region = len(torch.broadcast_shapes(*(i.shape for i in indices))) + target.dim() - len(
                indices)
            return self._write(func, target, p["values"],
                               lambda t, v: t.index_put_(indices, v, accumulate), region)
        if func in (T.masked_fill_, T.masked_fill, torch.masked_fill):
            p = _bind(("mask", "value"), {})(args, kwargs)
            y = self._select_by_mask(func, p["mask"], p["value"], target)
            return self._finish_inplace(target, y) if func is T.masked_fill_ else y
        if func is T.where:  # x.where(condition, other) = where(condition, x, other)
            return self._select_by_mask(func, arg(args, kwargs, 1, ("condition",)), target,
                                        arg(args, kwargs, 2, ("other", "y")))
        return self._select_by_mask(func, target, arg(args, kwargs, 1, ("input", "self", "x")),
                                    arg(args, kwargs, 2, ("other", "y")))

    def _index_keeps_batch(self, indices) -> bool:
        """index_put_ indexes from dimension 0: per element only if its first index is the batch
        row itself (``arange(B)`` along the broadcast rows) and the others are the same per row."""
        if not indices or not isinstance(indices[0], Tensor) or indices[0].dtype == torch.bool:
            return False
        shape = torch.broadcast_shapes(*(i.shape for i in indices))
        b = self._batch
        if not shape or shape[0] != b:
            return False
        rows = torch.arange(b, device=indices[0].device).view((b,) + (1,) * (len(shape) - 1))
        if not torch.equal(indices[0].expand(shape), rows.expand(shape)):
            return False
        return all(not (i.dim() == len(shape) and i.shape[0] == b) or _rows_equal(i)
                   for i in indices[1:])

    def _write(self, func, target: Tensor, value, apply: Callable, region_ndim: int) -> Tensor:
        """An in-place write ``apply(target, value)`` of ``value`` into a region of ``target``
        (of ``region_ndim`` dimensions, batch first): linear in (target, value) together.

        * both probe-carrying: linear, done as is;
        * a constant value written into a probe-carrying target (``y[:, :, 0] = 1``): an affine
          constant — kept on x0, off on the probes (observed);
        * a probe-carrying value written into a constant target (``acc = zeros_like(x);
          acc.add_(v)``, ``y = x.new_zeros(…); y[:, :, 1:] = x[:, :, :-1]``): the target (with
          its base and every view of it) becomes probe-carrying, and what remains of its
          constant content is an affine constant.
        """
        t_marked, v_marked = self._marked(target), self._marked(value)
        if not target.is_floating_point():
            raise ScopeError(f"`{_op_name(func)}` {self._where()} writes probe-carrying values "
                             f"into a {target.dtype} tensor: keep it floating point")
        if isinstance(value, Tensor):
            if v_marked and value.dim() != region_ndim or value.dim() > region_ndim:
                raise self._batch_error(func, " (the written value's batch dimension is not the "
                                              "target's)")
            if not v_marked and value.dim() == region_ndim and value.shape[0] == self._batch:
                self._check_uniform(func, value)
        if not t_marked:
            self._check_adoptable(func, target)
        self._record(func, "linear" if t_marked and v_marked else "affine")
        if (t_marked and v_marked) or self.constants:
            apply(target, value)
        else:
            const = (self._write_constant(target, value, apply, t_marked)
                     if self.observer is not None else None)
            if t_marked:
                apply(target, self._first_only(value, region_ndim, target))
            else:
                _base(target)[1:].zero_()  # the constant content is off on the probe rows
                apply(target, value)
            if const is not None:
                dest = target if t_marked else _base(target)
                self._finish_inplace(dest, self._observe_constant(func, dest, const))
        if not t_marked:
            self._adopt(target)
        return target

    def _write_constant(self, target, value, apply, t_marked: bool) -> Tensor | None:
        """The constant a write leaves in the probe rows: the write with every probe-carrying
        operand zeroed, on copies (for a view, on a copy of its whole base); None if zero."""
        with torch.no_grad():
            if t_marked:
                t = torch.zeros_like(target)
                apply(t, value)
                const = t[:1]
            else:
                base = _base(target)
                copy = torch.empty_strided(base.size(), base.stride(), dtype=base.dtype,
                                           device=base.device).copy_(base)
                view = copy if base is target else copy.as_strided(
                    target.size(), target.stride(), target.storage_offset() - base.storage_offset())
                apply(view, torch.zeros_like(value) if isinstance(value, Tensor) else 0)
                const = copy[:1]
        return const if bool(const.any()) else None

    def _check_adoptable(self, func, target: Tensor) -> None:
        """A constant tensor may receive probe-carrying values only if it has the batch as its
        dimension 0 (as does its base, row for row) and is not part of the model."""
        where = f"`{_op_name(func)}` {self._where()}"
        b, base = self._batch, _base(target)
        if target.dim() == 0 or target.shape[0] != b:
            raise ScopeError(f"{where} writes probe-carrying values into a tensor of shape "
                             f"{tuple(target.shape)} without the batch dimension ({b}, [x0, "
                             "probes]): create it with the batch size, e.g. torch.zeros_like(x)")
        if self._model_storages is None:
            self._model_storages = {_storage(t) for t in itertools.chain(self.model.parameters(),
                                                                          self.model.buffers())}
        if _storage(target) in self._model_storages or (base.is_leaf and base.requires_grad):
            raise ScopeError(f"{where} writes probe-carrying values into a parameter or buffer of "
                             "the model: the model would change during the pass")
        if base is not target and not (
                base.dim() and base.shape[0] == b and base.stride(0) == target.stride(0)
                and 0 <= target.storage_offset() - base.storage_offset() < max(base.stride(0), 1)):
            raise ScopeError(f"{where} writes probe-carrying values into a view whose rows are "
                             "not the batch rows of its base tensor: write into the base instead")

    def _adopt(self, target: Tensor) -> None:
        """``target`` (and its base, and every view sharing its storage) now carries probes."""
        base = _base(target)
        self._mark(target)
        self._mark(base)
        ptr = _storage(base)
        if ptr:
            self._probe_storages[ptr] = base  # kept alive: the address cannot be reused

    def _nonlinear(self, func, op: NonlinearOp, args, params):
        x = args[0]
        if not self._marked(x):
            raise UnknownOpError(f"`{_op_name(func)}` {self._where()} takes a probe-carrying "
                                 "tensor as a parameter, not as its input: no rule")
        for k, v in params.items():
            if self._marked(v):
                raise UnknownOpError(f"`{_op_name(func)}` {self._where()}: parameter `{k}` depends "
                                     "on the input (a product of input-dependent tensors)")
        if op.pure is rrelu_eval and params.get("training"):
            self._warn_once("rrelu", f"LinearScope: functional rrelu in training mode "
                                     f"{self._where()} is treated as eval (slope (lower+upper)/2)")
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
        if op.family == "reduce_select" and params["_kind"] in ("max", "min"):
            idx = frozen.extra[0]
            ret = torch.return_types.max if params["_kind"] == "max" else torch.return_types.min
            return ret((y, idx.expand((y.shape[0],) + tuple(idx.shape[1:]))))
        if wants_indices:
            idx = frozen.extra[0]
            return y, idx.expand((y.shape[0],) + tuple(idx.shape[1:]))
        return y


def _fill(t: Tensor, v) -> Tensor:
    """``t.fill_(v)``, also for a tensor value (``c·[1, 0, …]`` broadcast over the rows)."""
    if isinstance(v, Tensor) and v.dim():
        return t.copy_(v.expand_as(t))
    return t.fill_(v)


_OUT_OF_PLACE = {
    T.add_: torch.add, T.__iadd__: torch.add, T.sub_: torch.sub, T.__isub__: torch.sub,
    T.mul_: torch.mul, T.__imul__: torch.mul, T.div_: torch.div, T.__itruediv__: torch.div,
}

# In-place writes without a rule: refused with a hint.
_OTHER_WRITES = {"scatter_", "scatter_add_", "scatter_reduce_", "index_add_", "index_copy_",
                 "index_fill_", "index_reduce_", "masked_scatter_", "put_"}


def _out_of_place(func):
    return _OUT_OF_PLACE.get(func, func)


def supported_ops() -> dict[str, list[str]]:
    """Names of the PyTorch functions a LinearScope knows, by category (for docs and audits)."""
    fam: dict[str, list[str]] = {}
    for f, op in NONLINEAR_OPS.items():
        fam.setdefault(op.family, []).append(_op_name(f))
    fam.setdefault("select", []).extend(_op_name(f) for f in SELECT)
    fam["affine"] = ([_op_name(f) for f in AFFINE] + [_op_name(f) for f in ADD_LIKE]
                     + [_op_name(f) for f in WRITES] + [_op_name(F.bilinear)])
    fam["linear"] = sorted({_op_name(f) for f in STRUCTURAL | MUL_LIKE | DIV_LIKE | DROPOUT
                            | MATMUL_LIKE})
    return {k: sorted(set(v)) for k, v in fam.items()}
