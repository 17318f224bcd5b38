"""Freeze rules: what each non-linear unit becomes inside a LinearScope (paper eq. 2–4).

A LinearScope replaces a non-linear unit ``y = h(x)`` on a batch ``[x0, x1]`` by

    [y0, y1] = [h(x0), A(x0)·x1 + c(x0)]                               (eq. 2)

and every rule below states ``A(x0)`` and ``c(x0)`` so that requirement (3) holds exactly:
``x1 = x0  ⇒  y1 = y0``. Two interpretations exist for every unit:

* ``freeze`` (default, the paper's choice, after DFV): keep the unit's *decision* at x0 — the ReLU
  mask, the max-pool selection, the normalisation statistics, the gain of a smooth unit;
* ``taylor`` (eq. 4): ``A = Dh(x0)``, ``c = h(x0) − Dh(x0)·x0``, the tangent at x0.

For piecewise-linear units both coincide. The table at the end (:data:`RULES`) maps an *op family*
to its two rules; :mod:`precompute.scope` maps the PyTorch functions that implement a family to it.

Adding a non-linearity is one small change in one place: write ``freeze_x``/``taylor_x``
returning a :class:`Frozen` and ``support_x`` (where it can put non-zero values, on {0, 1} probes),
add ``"x": RuleSet(freeze_x, taylor_x, support_x)`` to :data:`RULES`, and register its PyTorch
functions in ``precompute.optable.NONLINEAR_OPS``. Both value domains — the frozen interpreter
(:mod:`precompute.scope`) and the structural support analysis (:mod:`precompute.support`) — read
the same entry; a family without ``support`` is global support for the analysis (fail closed).

Conventions: ``call.x0`` is the unit's input restricted to batch element 0 (shape ``(1, ...)``);
rules return ``Frozen(y0, linear, offset)`` where ``linear(*probe_inputs)`` applies ``A(x0)`` to a
batch of probes (shape ``(K, ...)``) and ``offset`` is ``c(x0)`` with a leading dimension of 1
(broadcast over the probes), or ``None`` when ``c = 0``. ``A``, ``c`` are computed without
autograd: the interpreter differentiates with respect to the probes only (eq. 6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from precompute.errors import GlobalSupport, ScopeError


@dataclass
class Call:
    """One intercepted call of a non-linear unit.

    Attributes:
        func: the PyTorch function that was called (e.g. ``F.relu``).
        x0: the unit's (first) input on batch element 0, shape ``(1, ...)``.
        others0: further input-dependent operands on batch element 0 (products), else ``()``.
        params: the call's remaining arguments by name (after binding), e.g. ``negative_slope``.
        gate_index: for products, which operand is the gate (decided by the scope).
    """

    func: Callable
    x0: Tensor
    others0: tuple[Tensor, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    gate_index: int | None = None


@dataclass
class Frozen:
    """The frozen unit: ``y1 = linear(x1) + offset`` on probes; ``y0 = h(x0)`` on element 0.

    ``extra`` holds further outputs of the call that are not linear in the input (max-pool
    indices), already computed at x0.
    """

    y0: Tensor
    linear: Callable[..., Tensor]
    offset: Tensor | None
    extra: tuple = ()
    #: ``linear(x0) + offset`` reproduces ``y0`` exactly, so the scope may run ``linear`` on the
    #: whole batch ``[x0, x1]`` at once instead of splitting it (no slice/cat on the grad path).
    whole_batch: bool = False
    #: pointwise units: A(x0) as an elementwise gain (``linear(x1) == gain * x1``), shape (1, ...);
    #: None when A is not diagonal (max pooling, normalisation over groups, products).
    gain: Tensor | None = None


@dataclass
class SupportCall:
    """One call of a unit in the support domain (:mod:`precompute.support`): ``func`` the unit's
    out-of-place function, ``x`` a batch of {0, 1} probes (no x0), ``params`` the call's bound
    parameters, ``rule`` the interpretation in force at the call's module path, ``where`` names
    the op and module for messages."""

    func: Callable
    x: Tensor
    params: dict[str, Any]
    rule: str
    where: str


@dataclass(frozen=True)
class RuleSet:
    """An op family's two interpretations (eq. 2 and eq. 4) and, beside them, its **support**:
    where a frozen unit can put non-zero values whatever x0 decides, computed on {0, 1} probes
    (no cancellation; the support domain re-binarises the result). ``support=None`` means no
    support rule: the analysis answers global support (fail closed), never a guess."""

    freeze: Callable[[Call], Frozen]
    taylor: Callable[[Call], Frozen]
    support: Callable[[SupportCall], Any] | None = None


def small_threshold(dtype: torch.dtype) -> float:
    """|x0| below which a chord is replaced by its limit, the derivative.

    The chord ``(h(x0) − h(0))/x0`` loses ``eps/|x0|`` relative accuracy to cancellation while the
    derivative differs from it by ``O(|x0|)``; ``sqrt(eps)`` balances both (1.5e-8 in float64,
    3.5e-4 in float32).
    """
    return math.sqrt(torch.finfo(dtype).eps)


def _pointwise_derivative(h: Callable[[Tensor], Tensor], x0: Tensor) -> tuple[Tensor, Tensor]:
    """h(x0) and the elementwise derivative h'(x0) of a pointwise function, by autograd.

    For a pointwise h, the gradient of ``sum(h(z))`` is the elementwise derivative.
    """
    with torch.enable_grad():
        z = x0.detach().clone().requires_grad_(True)
        y = h(z)
        (dy,) = torch.autograd.grad(y.sum(), z)
    return y.detach(), dy


# --- piecewise-linear pointwise units: ReLU, LeakyReLU, PReLU, ReLU6, Hardtanh, clamp, threshold ----


def freeze_piecewise_linear(call: Call) -> Frozen:
    """ReLU family: ``A = h'(x0)`` (the slope mask: 1/0 for ReLU, 1/α for LeakyReLU and PReLU,
    1 inside and 0 outside a clamp), ``c = h(x0) − A·x0`` (0 except where a clamp saturates, where
    it is the clamp's constant). Freeze and Taylor coincide for piecewise-linear units."""
    h = lambda z: call.func(z, **call.params)  # noqa: E731
    y0, slope = _pointwise_derivative(h, call.x0)
    # ReLU, LeakyReLU and PReLU have c ≡ 0 by construction (no saturation constant).
    offset = None if call.func in _NO_OFFSET else y0 - slope * call.x0
    # slope·x0 (+ c) is h(x0) exactly: x·1 = x, x·0 = 0 and x·α is the unit's own product.
    return Frozen(y0, lambda x1: slope * x1, offset, whole_batch=True, gain=slope)


def rrelu_eval(x: Tensor, lower: float = 1.0 / 8, upper: float = 1.0 / 3,
               training: bool = False) -> Tensor:
    """RReLU as in eval: a leaky ReLU of slope (lower + upper)/2 (training mode is treated as
    eval by the scope, with a warning: random slopes would differ between x0 and the probes)."""
    return F.rrelu(x, lower, upper, training=False)


_NO_OFFSET = {torch.relu, F.relu, F.leaky_relu, F.prelu, torch.abs, rrelu_eval}


# --- smooth pointwise units: Sigmoid, Tanh, SiLU, GELU, ELU, Softplus, Hardswish, ... ----------------


def freeze_smooth(call: Call) -> Frozen:
    """Smooth units: the chord from the origin, ``A = (h(x0) − h(0))/x0`` and ``c = h(0)``.

    For units with h(0) = 0 (Tanh, SiLU, GELU, ELU) this is the gain ``h(x0)/x0`` with c = 0; for
    Sigmoid, ``A = (σ(x0) − ½)/x0`` stays bounded by ¼ and c = ½. Where ``|x0|`` is below
    :func:`small_threshold`, the chord is replaced by its limit ``A = h'(x0)``,
    ``c = h(x0) − h'(x0)·x0``, so that ``A·x0 + c = h(x0)`` always (requirement 3).
    """
    h = lambda z: call.func(z, **call.params)  # noqa: E731
    x0 = call.x0
    y0, dy = _pointwise_derivative(h, x0)
    h_zero = h(torch.zeros((), dtype=x0.dtype, device=x0.device))
    small = x0.abs() < small_threshold(x0.dtype)
    safe_x0 = torch.where(small, torch.ones_like(x0), x0)
    gain = torch.where(small, dy, (y0 - h_zero) / safe_x0)
    offset = torch.where(small, y0 - dy * x0, h_zero.expand_as(x0))
    return Frozen(y0, lambda x1: gain * x1, offset, gain=gain)


def taylor_pointwise(call: Call) -> Frozen:
    """Eq. 4 for any pointwise unit: ``A = h'(x0)``, ``c = h(x0) − h'(x0)·x0``."""
    h = lambda z: call.func(z, **call.params)  # noqa: E731
    y0, dy = _pointwise_derivative(h, call.x0)
    return Frozen(y0, lambda x1: dy * x1, y0 - dy * call.x0, gain=dy)


# --- max pooling ------------------------------------------------------------------------------------


def freeze_max_pool(call: Call) -> Frozen:
    """MaxPool 1d/2d/3d and adaptive max pooling: the selection of x0 applied to x1.

    The pool runs on x0 with ``return_indices=True``; probes gather their values at those flat
    (per-channel) indices. ``A`` is the 0/1 selection matrix and ``c = 0``; freeze and Taylor
    coincide (PyTorch's own gradient routes through the same indices). ``params["_with_indices"]``
    is the function that returns indices for this pooling type.
    """
    params = dict(call.params)
    pool = params.pop("_with_indices")
    spatial_rank = params.pop("_spatial", None)
    params.pop("return_indices", None)
    # An input of rank spatial + 1 is pooled by PyTorch plane by plane, its dimension 0 (here the
    # batch) read as channels: the same as one channel per batch element.
    unbatched = spatial_rank is not None and call.x0.dim() == spatial_rank + 1
    x0 = call.x0.unsqueeze(1) if unbatched else call.x0
    y0, idx = pool(x0, **params)
    spatial = idx.shape[2:]
    flat_idx = idx.flatten(2)

    def linear(x1: Tensor) -> Tensor:
        if unbatched:
            x1 = x1.unsqueeze(1)
        k, c = x1.shape[:2]
        gathered = x1.flatten(2).gather(2, flat_idx.expand(k, c, -1)).view(k, c, *spatial)
        return gathered.squeeze(1) if unbatched else gathered

    if unbatched:
        y0, idx = y0.squeeze(1), idx.squeeze(1)
    # Gathering x0 at its own selection is y0 exactly.
    return Frozen(y0, linear, None, extra=(idx,), whole_batch=True)


# --- maxima and minima: elementwise of two tensors, and over dimensions ---------------------------


def freeze_select(call: Call) -> Frozen:
    """``maximum(a, b)``/``minimum(a, b)``: x0's selection, ``y1 = w·a1 + (1 − w)·b1``.

    ``w`` is 1 where a0 wins, 0 where b0 wins and ½ on ties — PyTorch's own gradient, which
    splits ties evenly — so F equals the Jacobian wherever it exists. ``call.params``: ``kind``
    (``"max"``/``"min"``) and ``constant`` (the index of a constant operand, or None): its share
    ``w·a0`` or ``(1 − w)·b0`` is c(x0). Freeze and Taylor coincide (piecewise linear).
    """
    a0, b0 = call.x0, call.others0[0]
    kind, constant = call.params["kind"], call.params.get("constant")
    y0 = torch.maximum(a0, b0) if kind == "max" else torch.minimum(a0, b0)
    wins = (a0 > b0) if kind == "max" else (a0 < b0)
    w = wins.to(y0.dtype) + 0.5 * (a0 == b0).to(y0.dtype)
    wb = 1 - w

    def linear(a1: Tensor | None, b1: Tensor | None) -> Tensor:
        if a1 is None:
            return wb * b1
        return w * a1 if b1 is None else w * a1 + wb * b1

    offset = None if constant is None else (w * a0 if constant == 0 else wb * b0)
    return Frozen(y0, linear, offset)


def freeze_reduce_select(call: Call) -> Frozen:
    """``max``/``min`` over a dimension (with indices) and ``amax``/``amin`` over dimensions:
    x0's selection applied to x1, c = 0.

    ``max(x, dim)`` gathers x1 at x0's returned indices (its gradient routes through the same
    index); ``amax``/``amin`` average x1 over the positions tied at x0's extremum, as their
    gradient does (it is shared evenly between equal values).
    """
    p = call.params
    kind, keepdim = p["_kind"], bool(p.get("keepdim", False))
    x0 = call.x0
    if kind in ("max", "min"):
        dim = p["dim"]
        values, idx = call.func(x0, dim, keepdim=True)

        def linear(x1: Tensor) -> Tensor:
            g = x1.gather(dim, idx.expand((x1.shape[0],) + tuple(idx.shape[1:])))
            return g if keepdim else g.squeeze(dim)

        y0, extra = (values, idx) if keepdim else (values.squeeze(dim), idx.squeeze(dim))
        return Frozen(y0, linear, None, extra=(extra,), whole_batch=True)
    dims = p.get("dim", ())
    dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
    ext = call.func(x0, dims, keepdim=True)
    tied = (x0 == ext).to(x0.dtype)
    weight = tied / tied.sum(dims, keepdim=True)
    y0 = call.func(x0, dims, keepdim=keepdim)
    return Frozen(y0, lambda x1: (weight * x1).sum(dims, keepdim=keepdim), None)


# --- normalisation with statistics: InstanceNorm, GroupNorm, LayerNorm, BatchNorm (training) --------


@dataclass
class _Groups:
    """How a normalisation groups values: ``view`` a tensor so statistics run over the last axis."""

    group_shape: Callable[[Tensor], tuple[int, ...]]

    def split(self, t: Tensor) -> Tensor:
        return t.reshape(self.group_shape(t))


def _norm_groups(call: Call) -> tuple[_Groups, Tensor | None, Tensor | None, float]:
    """The grouping, weight, bias and eps of a normalisation call (after binding)."""
    p = call.params
    kind = p["_kind"]
    x0 = call.x0
    weight, bias, eps = p.get("weight"), p.get("bias"), float(p.get("eps", 1e-5))
    if kind in ("instance", "batch"):
        # batch element 0 alone: batch statistics of x0 = its per-channel statistics.
        groups = _Groups(lambda t: (t.shape[0], t.shape[1], -1))
        shape = (1, x0.shape[1]) + (1,) * (x0.dim() - 2)
    elif kind == "group":
        g = int(p["num_groups"])
        groups = _Groups(lambda t: (t.shape[0], g, -1))
        shape = (1, x0.shape[1]) + (1,) * (x0.dim() - 2)
    elif kind == "layer":
        nd = len(tuple(p["normalized_shape"]))
        groups = _Groups(lambda t: tuple(t.shape[: t.dim() - nd]) + (-1,))
        shape = tuple(p["normalized_shape"])
    else:  # pragma: no cover - the scope only sends the kinds above
        raise ValueError(kind)
    w = None if weight is None else weight.detach().reshape(shape)
    b = None if bias is None else bias.detach().reshape(shape)
    return groups, w, b, eps


def _normalise_parts(call: Call):
    groups, w, b, eps = _norm_groups(call)
    x0 = call.x0.detach()
    g0 = groups.split(x0)
    mean0 = g0.mean(dim=-1, keepdim=True)
    std0 = (g0.var(dim=-1, unbiased=False, keepdim=True) + eps).sqrt()
    return groups, w, b, mean0, std0


def _affine(t: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    if w is not None:
        t = t * w
    if b is not None:
        t = t + b
    return t


def freeze_norm(call: Call) -> Frozen:
    """Normalisation frozen at x0's statistics: ``y1 = (x1 − μ0)/σ0 · w + b``.

    ``A = w/σ0`` (per group), ``c = b − w·μ0/σ0``; ``σ0 = sqrt(var0 + eps)`` with the biased
    variance, exactly as the unit computes it, so x1 = x0 reproduces y0 (requirement 3).
    """
    groups, w, b, mean0, std0 = _normalise_parts(call)
    y0 = call.func(call.x0, **call.params["_call"])

    def linear(x1: Tensor) -> Tensor:
        t = (groups.split(x1) / std0).reshape(x1.shape)
        return t * w if w is not None else t

    x0 = call.x0.detach()
    centre = (-(mean0 / std0)).expand_as(groups.split(x0)).reshape(x0.shape)
    offset = _affine(centre, w, b)
    return Frozen(y0, linear, offset)


def taylor_norm(call: Call) -> Frozen:
    """Eq. 4 for a normalisation: with ``x̂0 = (x0 − μ0)/σ0`` and means over each group,
    ``Dh(x0)·v = w·(v − mean(v) − x̂0·mean(x̂0·v))/σ0`` and ``c = h(x0) − Dh(x0)·x0``."""
    groups, w, b, mean0, std0 = _normalise_parts(call)
    y0 = call.func(call.x0, **call.params["_call"])
    xhat0 = (groups.split(call.x0.detach()) - mean0) / std0

    def linear(x1: Tensor) -> Tensor:
        g = groups.split(x1)
        d = (g - g.mean(-1, keepdim=True) - xhat0 * (xhat0 * g).mean(-1, keepdim=True)) / std0
        d = d.reshape(x1.shape)
        return d * w if w is not None else d

    offset = y0 - linear(call.x0.detach())
    return Frozen(y0, linear, offset)


def _rms_parts(call: Call):
    """Reduced dims, rms0 = sqrt(mean(x0²) + eps), weight and y0 of an RMSNorm call."""
    p = call.params
    nd = len(tuple(p["normalized_shape"]))
    eps = p.get("eps")
    eps = torch.finfo(call.x0.dtype).eps if eps is None else float(eps)
    x0 = call.x0.detach()
    dims = tuple(range(x0.dim() - nd, x0.dim()))
    rms0 = (x0.pow(2).mean(dim=dims, keepdim=True) + eps).sqrt()
    w = p.get("weight")
    return dims, rms0, None if w is None else w.detach(), call.func(call.x0, **p["_call"])


def freeze_rms_norm(call: Call) -> Frozen:
    """RMSNorm frozen at x0's root mean square: ``A = w/rms0``, ``c = 0``."""
    _, rms0, w, y0 = _rms_parts(call)

    def linear(x1: Tensor) -> Tensor:
        t = x1 / rms0
        return t * w if w is not None else t

    return Frozen(y0, linear, None)


def taylor_rms_norm(call: Call) -> Frozen:
    """Eq. 4 for RMSNorm: ``Dh·v = w·(v − x̂0·mean(x̂0·v))/rms0`` with ``x̂0 = x0/rms0``."""
    dims, rms0, w, y0 = _rms_parts(call)
    x0 = call.x0.detach()
    xhat0 = x0 / rms0

    def linear(x1: Tensor) -> Tensor:
        d = (x1 - xhat0 * (xhat0 * x1).mean(dim=dims, keepdim=True)) / rms0
        return d * w if w is not None else d

    return Frozen(y0, linear, y0 - linear(x0))


# --- products of two input-dependent tensors (gating, squeeze-excitation, x·σ(x)) -----------------


def freeze_product(call: Call) -> Frozen:
    """``y = a·b`` with both factors input-dependent: the gate factor is frozen at x0.

    ``y1 = g0·z1`` where g is the gate (``call.gate_index``) and z the other factor; c = 0. The
    scope decides the gate (see ``precompute.scope``): the factor produced by a gating unit
    (sigmoid, hard-sigmoid, tanh), else the factor that is broadcast (squeeze-excitation scales).
    """
    a0, b0 = call.x0, call.others0[0]
    y0 = call.func(a0, b0)
    gate0 = (a0, b0)[call.gate_index].detach()
    signal = 1 - call.gate_index

    def linear(a1: Tensor, b1: Tensor) -> Tensor:
        return gate0 * (a1, b1)[signal]

    return Frozen(y0, linear, None)


def taylor_product(call: Call) -> Frozen:
    """Eq. 4 for ``a·b``: ``A·(a1, b1) = a0·b1 + a1·b0`` and ``c = −a0·b0``; no gate is needed."""
    a0, b0 = call.x0.detach(), call.others0[0].detach()
    y0 = call.func(call.x0, call.others0[0])
    return Frozen(y0, lambda a1, b1: a0 * b1 + a1 * b0, -(a0 * b0))


# --- max unpooling at x0's max-pool indices (SegNet decoders) -----------------------------------

#: attribute the support domain sets on the indices of a max pool: the pool's input plane and
#: window geometry, so that max unpooling can bound where values land (its only legal source).
POOL_WINDOW = "_linearscope_pool_window"


def freeze_max_unpool(call: Call) -> Frozen:
    """``max_unpool{1,2,3}d(x, indices, …)``: values placed at x0's max-pool indices.

    The indices are constants of the frozen system (x0's selection, as ``freeze_max_pool`` hands
    them out, the same for every batch element), so the unit is linear: ``A`` scatters each value
    to its index and ``c = 0``; freeze and Taylor coincide. Indices that differ between batch
    elements are not x0's decisions and are refused, and so are repeated indices (overlapping
    windows), where PyTorch's backward is not the transpose of its forward.
    """
    params = dict(call.params)
    indices = params.pop("indices")
    if indices.dim() and indices.shape[0] > 1 and not torch.equal(
            indices[1:], indices[:1].expand_as(indices[1:])):
        raise ScopeError(f"`{getattr(call.func, '__name__', 'max_unpool')}` with indices that "
                         "differ between batch elements: only x0's max-pool indices (the same for "
                         "every probe) are a frozen decision")
    idx0 = indices[:1]
    flat = idx0.flatten(2).sort(dim=-1).values
    if bool((flat[..., 1:] == flat[..., :-1]).any()):
        # overlapping pool windows chose one element twice: PyTorch's unpooling then keeps one
        # of the values while its backward hands the gradient to both — rows would not be Fᵀ
        raise ScopeError(f"`{getattr(call.func, '__name__', 'max_unpool')}` at indices that "
                         "repeat (overlapping max-pool windows selected the same element twice): "
                         "its forward keeps one value but its gradient reaches both, so F and Fᵀ "
                         "would disagree. Use non-overlapping windows (stride ≥ kernel)")

    def linear(x1: Tensor) -> Tensor:
        return call.func(x1, idx0.expand((x1.shape[0],) + tuple(idx0.shape[1:])), **params)

    return Frozen(linear(call.x0), linear, None, whole_batch=True)


def support_max_unpool(call: SupportCall) -> Tensor:
    """A value of max unpooling lands somewhere in the window of the max pool that chose its
    index, whichever element x0 selects: the support is the union of those windows (a transposed
    convolution of the {0, 1} input with a window of ones). Sound only for indices straight from
    a fixed-window max pool over a plane of the output's size (tagged :data:`POOL_WINDOW` by
    :func:`support_max_pool`); any other index tensor is global support."""
    indices = call.params["indices"]
    window = getattr(indices, POOL_WINDOW, None)
    out = call.func(call.x, indices, **{k: v for k, v in call.params.items() if k != "indices"})
    n = out.dim() - 2
    if window is None or tuple(out.shape[2:]) != window[0] or len(window[0]) != n:
        raise GlobalSupport(f"{call.where} places values at indices that do not come straight "
                            "from a fixed-window max pool over a plane of its output's size")
    plane, kernel, stride, padding, dilation = window
    c = call.x.shape[1]
    ones = torch.ones((c, 1) + kernel, dtype=call.x.dtype, device=call.x.device)
    conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    full = conv_t(call.x, ones, stride=stride, dilation=dilation, groups=c)
    # window positions i·s − p + t·d in the pooled plane's coordinates: crop p, pad the far end
    grow = [max(0, padding[d] + plane[d] - full.shape[2 + d]) for d in range(n)]
    full = F.pad(full, [v for d in reversed(range(n)) for v in (0, grow[d])])
    crop = tuple(slice(padding[d], padding[d] + plane[d]) for d in range(n))
    return full[(slice(None), slice(None)) + crop]


# --- support of the other families (precompute.support) ---------------------------------------


def support_pointwise(call: SupportCall) -> Tensor:
    """A frozen pointwise unit is a diagonal gain: the support passes through unchanged."""
    return call.x


def support_max_pool(call: SupportCall):
    """The max of {0, 1} values is the union of each window, whichever element x0 selects. The
    indices (of the probes, not x0's) are tagged with the window geometry: only max unpooling may
    use them (:func:`support_max_unpool`)."""
    p = {k: v for k, v in call.params.items() if not k.startswith("_") and k != "return_indices"}
    y, idx = call.params["_with_indices"](call.x, **p)
    if "kernel_size" in p and call.x.dim() >= 3:
        n = call.x.dim() - 2

        def tup(v, default):
            v = default if v is None else v
            return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n

        kernel = tup(p["kernel_size"], None)
        setattr(idx, POOL_WINDOW, (tuple(call.x.shape[2:]), kernel,
                                   tup(p.get("stride") or None, kernel), tup(p.get("padding"), 0),
                                   tup(p.get("dilation"), 1)))
    return y, idx


def support_norm(call: SupportCall) -> Tensor:
    """Statistics frozen at x0 make a normalisation pointwise in the probe; under the Taylor rule
    the statistics move with the probe and couple every value of the group: global support."""
    if call.rule != "freeze":
        raise GlobalSupport(f"{call.where} under the taylor rule couples every value of its group "
                            "(x0's statistics move with the probe)")
    return call.x


def support_reduce_select(call: SupportCall) -> Tensor:
    """``amax``/``amin`` over dimensions: x0 may select any value of each group (the union).
    ``max``/``min`` over a dimension return indices the model may consume: no rule (global)."""
    if call.params.get("_kind") in ("max", "min"):
        raise GlobalSupport(f"no support rule for the `reduce_select` unit {call.where} (a "
                            "reduction that returns indices)")
    return torch.amax(call.x, dim=call.params.get("dim", ()),
                      keepdim=bool(call.params.get("keepdim", False)))


#: op family → its freeze and Taylor rules, and its support (None: global support). Selections
#: of two tensors and products reach the support domain as unions of their operands instead
#: (precompute.support), so their families need no support rule here.
RULES: dict[str, RuleSet] = {
    "piecewise_linear": RuleSet(freeze_piecewise_linear, freeze_piecewise_linear,
                                support_pointwise),
    "smooth": RuleSet(freeze_smooth, taylor_pointwise, support_pointwise),
    "max_pool": RuleSet(freeze_max_pool, freeze_max_pool, support_max_pool),
    "max_unpool": RuleSet(freeze_max_unpool, freeze_max_unpool, support_max_unpool),
    "select": RuleSet(freeze_select, freeze_select),
    "reduce_select": RuleSet(freeze_reduce_select, freeze_reduce_select, support_reduce_select),
    "norm": RuleSet(freeze_norm, taylor_norm, support_norm),
    "rms_norm": RuleSet(freeze_rms_norm, taylor_rms_norm, support_norm),
    "product": RuleSet(freeze_product, taylor_product),
}

RULE_NAMES = ("freeze", "taylor")


def rule_for(family: str, rule: str) -> Callable[[Call], Frozen]:
    """The rule function of an op family under ``rule`` ('freeze' or 'taylor')."""
    if rule not in RULE_NAMES:
        raise ValueError(f"unknown rule {rule!r}: expected one of {', '.join(RULE_NAMES)}")
    return getattr(RULES[family], rule)


__all__ = [
    "Call",
    "Frozen",
    "RuleSet",
    "SupportCall",
    "RULES",
    "RULE_NAMES",
    "rule_for",
    "rrelu_eval",
    "small_threshold",
]
