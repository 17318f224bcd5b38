"""The op tables of the LinearScope (paper §3): which PyTorch functions are linear, affine, frozen
units (with a rule family of :mod:`precompute.rules`), selections, writes, or refused.

Both value domains read these tables — the frozen linear interpreter (:mod:`precompute.scope`)
and the structural support analysis (:mod:`precompute.support`) — so an op has one
classification. An op in none of them is refused by both (an error in the scope, global support
in the analysis): never a silent pass-through.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import resolve_name

from precompute.rules import rrelu_eval


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
# Max unpooling places values at x0's max-pool indices (rules.freeze_max_unpool).
for _unpool in (F.max_unpool1d, F.max_unpool2d, F.max_unpool3d):
    _register([_unpool], NonlinearOp("max_unpool", _unpool,
                                     _bind(("indices", "kernel_size", "stride", "padding",
                                            "output_size"), {})))
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


# In-place writes without a rule: refused with a hint.
_OTHER_WRITES = {"scatter_", "scatter_add_", "scatter_reduce_", "index_add_", "index_copy_",
                 "index_fill_", "index_reduce_", "masked_scatter_", "put_"}



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


# --- one classification for both value domains ------------------------------------------------

#: The kinds :func:`op_kind` returns; each value domain maps every kind to a handler (the frozen
#: interpreter in precompute.scope, the support analysis in precompute.support).
KINDS = ("value_read", "out", "select_pair", "nonlinear", "add", "mul", "div", "matmul", "affine",
         "select", "write", "creation", "dropout", "structural", "metadata", "unknown")


def op_kind(func: Callable, args: tuple, kwargs: dict, marked: Callable[[Any], bool]) -> str:
    """The kind of a call that touches a probe-carrying tensor (``marked(t)`` says which do).

    The order below is the precedence: calls decided by their arguments first (``out=`` writes
    the result of the call without it; ``torch.max(a, b)`` is a pair to select from, not a
    reduction), then the
    tables (batch and instance norm are units first: their affine, running-statistics form is
    decided per call by the domain), then creations (``new_tensor`` of a constant), dropout,
    structural linear ops and metadata. ``unknown`` is refused by both
    domains — an error naming the op in the interpreter, global support in the analysis.
    """
    if getattr(func, "__name__", "") in VALUE_READS:
        return "value_read"
    if kwargs.get("out") is not None:
        return "out"
    if func in _REDUCE_WITH_INDICES and isinstance(_arg1(args, kwargs, "other"), Tensor):
        return "select_pair"
    for kind, table in _TABLES:
        if func in table:
            return kind
    if func in CREATION or (func is T.new_tensor and not marked(_arg1(args, kwargs, "data"))):
        return "creation"
    if func in DROPOUT:
        return "dropout"
    if func in STRUCTURAL:
        return "structural"
    if func in METADATA:
        return "metadata"
    return "unknown"


def _arg1(args: tuple, kwargs: dict, name: str):
    """The second argument of a call (``other`` of ``torch.max(a, other)``), positional or not."""
    return args[1] if len(args) > 1 else kwargs.get(name)


_TABLES = (("nonlinear", NONLINEAR_OPS), ("add", ADD_LIKE), ("mul", MUL_LIKE), ("div", DIV_LIKE),
           ("matmul", MATMUL_LIKE), ("affine", AFFINE), ("select", SELECT), ("write", WRITES))
