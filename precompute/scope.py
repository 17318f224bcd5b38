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


import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from precompute.batch_dims import DIM_FIRST_ARG, arg, einsum_keeps_batch, touches_batch
from precompute.errors import ScopeError, UnknownOpError  # noqa: F401  (re-exported)
from precompute.interception import (AuditRecord, ConstantObserver, Interception, Site,  # noqa: F401
                                     eager, unwrap_model)
from precompute.optable import (  # noqa: F401  (the op tables, re-exported for precompute.support)
    ADD_LIKE, AFFINE, CREATION, DIV_LIKE, DROPOUT, MATMUL_LIKE, METADATA, MUL_LIKE, NONLINEAR_OPS,
    KINDS, RANDOM, SELECT, STRUCTURAL, VALUE_READS, VIEW_LIKE, WRITES, _BIASED_LINEAR, _INPLACE_ADD,
    _POOL_RETURNS_INDICES, _REDUCE_WITH_INDICES, NonlinearOp, T, _base, _bind, _is_inplace,
    _norm_params, _op_name, _positional_input, _rows_equal, _storage, op_kind, supported_ops)
from precompute.rules import RULE_NAMES, Call, Frozen, rrelu_eval, rule_for
from precompute.scope_writes import WriteRules


class LinearScope(WriteRules, Interception):
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
        super().__init__(model, rule, overrides, audit)
        self.observer = observer
        # with an observer the probe branch is computed constant-free, then the observer's terms
        # are added (``_observe_constant``)
        self.constants = constants if observer is None else False
        self._first_cache: dict[int, Tensor] = {}
        self._op_calls: dict[tuple[str, int, str], int] = {}
        self._gain: Tensor | None = None  # elementwise A(x0) of the pointwise unit just applied

    def _reset(self) -> None:
        self._first_cache = {}
        self._op_calls.clear()

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

    def _dispatch_marked(self, func, args, kwargs, marked):
        """Route a probe-carrying call by its kind (:func:`precompute.optable.op_kind`, the
        classification the support analysis shares) to the frozen linear domain's handler."""
        kind = op_kind(func, args, kwargs, self._marked)
        # (``out=`` calls are checked when ``_out`` dispatches the call without it)
        if kind not in ("value_read", "out", "select_pair") and touches_batch(
                func, args, kwargs, marked[0].dim()):
            raise self._batch_error(func)
        return _HANDLERS[kind](self, func, args, kwargs, marked)

    def _value_read(self, func, args, kwargs, marked):
        raise ScopeError(f"`{_op_name(func)}` reads the values of a probe-carrying tensor "
                         f"{self._where()}: control flow that depends on the input cannot be "
                         "frozen")

    def _select_pair(self, func, args, kwargs, marked):
        return self._select(func, _REDUCE_WITH_INDICES[func], args[0],
                            arg(args, kwargs, 1, ("other",)))

    def _select_table(self, func, args, kwargs, marked):
        return self._select(func, SELECT[func], args[0], arg(args, kwargs, 1, ("other",)))

    def _nonlinear_call(self, func, args, kwargs, marked):
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

    def _affine_call(self, func, args, kwargs, marked):
        if func is F.pad and _bind(("pad", "mode", "value"), {})(args, kwargs).get("value") in (
                None, 0, 0.0):
            return self._structural(func, args, kwargs)
        return self._affine(func, args, kwargs)

    def _passthrough(self, func, args, kwargs, marked):
        return func(*args, **kwargs)  # creations of constants, metadata (sizes, dims, …)

    def _dropout(self, func, args, kwargs, marked):
        training = _bind(("p", "training", "inplace"), {"training": True})(args, kwargs)[
            "training"]
        if training:
            self._warn_once("dropout", f"LinearScope: functional dropout in training mode "
                                       f"{self._where()} is treated as the identity (eval)")
        self._record(func, "linear")
        return args[0]

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


def _without_marked(method: str):
    """A handler of the table below for a method that takes ``(func, args, kwargs)``."""
    return lambda scope, func, args, kwargs, marked: getattr(scope, method)(func, args, kwargs)


def _with_marked(method: str):
    return lambda scope, func, args, kwargs, marked: getattr(scope, method)(func, args, kwargs,
                                                                             marked)


#: op kind (precompute.optable.KINDS) → how the frozen linear domain computes it
_HANDLERS = {
    "value_read": _with_marked("_value_read"), "select_pair": _with_marked("_select_pair"),
    "out": _with_marked("_out"), "nonlinear": _with_marked("_nonlinear_call"),
    "add": _without_marked("_add"), "mul": _without_marked("_mul"),
    "div": _without_marked("_div"), "matmul": _with_marked("_matmul"),
    "affine": _with_marked("_affine_call"), "select": _with_marked("_select_table"),
    "write": _without_marked("_written"), "creation": _with_marked("_passthrough"),
    "dropout": _with_marked("_dropout"), "structural": _without_marked("_structural"),
    "metadata": _with_marked("_passthrough"), "unknown": _without_marked("_refuse"),
}
assert set(_HANDLERS) == set(KINDS)
