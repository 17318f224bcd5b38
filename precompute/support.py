"""Structural support of a network's linear interpreter: which entries of F can ever be non-zero.

Compressed probing (Curtis–Powell–Reid colouring, :mod:`precompute.compressed`) is exact only if
it knows, for every output pixel, which input pixels can reach it *whatever the frozen decisions
are*: a ReLU mask or a max-pool selection of x0 can only remove paths, never add any. The support
is therefore derived from the network, never from the data:

* the **support interpretation** of the model (:class:`SupportMode`) runs it on non-negative
  probes with every decision open — ReLU and every pointwise unit → identity, max pool → the union
  of its window, a normalisation frozen at x0's statistics → pointwise, weights of convolutions
  and linear layers → all ones, sums → unions (no cancellation: every value is re-binarised to
  {0, 1} after every op), biases and other constants → off (they are not part of F);
* in-place writes follow the scope's rules (``y[k] = v``, ``copy_``, ``index_put_``,
  ``masked_fill``, ``where``, ``out=``, ``acc.add_(v)``): a written constant is off, a
  probe-carrying value written into a fresh tensor makes it (its base and every view of it)
  probe-carrying, views of probe-carrying tensors stay views so writes through them land, and
  every write leaves the tensor binary (``neg_`` must not cancel a later sum);
* anything it does not know — an op without a support rule, a Taylor normalisation, a product of
  two probe-carrying tensors through ``matmul``, max unpooling at x0's indices, reads of values —
  raises :class:`GlobalSupport`: the sweep then falls back to one impulse per probe (fail closed);
* integer and boolean tensors computed from probe-carrying values (max-pool ``return_indices``,
  ``torch.max(x, dim)`` indices, casts) *carry structure*: their values are the probe's, while
  the real run sees x0's, so any use of them (indexing, slicing, ``.item()``, a branch, a shape)
  raises :class:`GlobalSupport` naming the op that made them and the op that used them;
* line probes (every channel and column of a set of input rows, or of a set of columns) give, per
  axis, for every output row ``p`` a set ``C(p)`` of input rows that contains every input row any
  entry ``F[(·, p, ·), (·, i, ·)]`` can depend on (sound whatever the probe sets: an input row is
  excluded only by a probe that contains it and does not reach row ``p``). With periodic classes
  of period Q and blocks of Q rows (aligned and shifted by Q/2), ``C(p)`` is exact as soon as
  its width is ≤ Q/2 (:func:`_axis_support`), otherwise Q doubles (single lines at the end).

Since ``F[(b, p, q), (a, i, j)] ≠ 0`` implies ``i ∈ C_y(p)`` and ``j ∈ C_x(q)``, the boxes
``C_y(p) × C_x(q)`` contain every row's support and their transposes every column's: this is
what the store records per axis (``attrs.probing.support``) and what the colouring uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from precompute import batch_dims as _batch
from precompute import scope as _scope
from precompute.errors import GlobalSupport  # (re-exported: precompute.support.GlobalSupport)
from precompute.interception import DispatchMode
from precompute.optable import op_kind
from precompute.rules import RULES, SupportCall

T = torch.Tensor




# --- the support interpretation ------------------------------------------------------------

_NEG = {T.neg, T.__neg__, torch.neg}
_INTERPOLATE = {F.interpolate, F.upsample}
_INPLACE_DUNDERS = {T.__iadd__, T.__isub__, T.__imul__, T.__itruediv__}


#: max unpooling consumes max-pool indices by its own rule (rules.support_max_unpool: only a
#: pool's own, untouched indices), so the structure check lets them through to it
_UNPOOL = {f for f, nop in _scope.NONLINEAR_OPS.items() if nop.family == "max_unpool"}


def _is_inplace(func, kwargs) -> bool:
    name = getattr(func, "__name__", "")
    return ((name.endswith("_") and not name.endswith("__")) or func in _INPLACE_DUNDERS
            or bool(kwargs.get("inplace", False)))


def _binary(t: Tensor) -> Tensor:
    return (t != 0).to(t.dtype)


@dataclass
class _Spread:
    """The first op that spread a single impulse over (almost) the whole image (for messages)."""

    op: str | None = None
    path: str | None = None


class SupportMode:
    """Run ``model`` as its support interpretation, as a context manager.

    Inside ``with SupportMode(model, rule) as mode:``, ``mode.run(x)`` on a batch of {0, 1} probes (every
    element is a probe; there is no x0) returns {0, 1} outputs that are 1 wherever *some* frozen
    interpreter of the model could put a non-zero value. ``rule`` (``freeze`` or ``taylor``)
    decides whether normalisations with statistics are pointwise (freeze) or couple their groups
    (taylor: global).
    """

    def __init__(self, model: nn.Module, rule: str = "freeze", overrides: dict | None = None):
        self.model = model
        self.rule = rule
        self.overrides = dict(overrides or {})
        self.spread = _Spread()   # where one pixel first reaches every value
        self.reduced = _Spread()  # where the image first became a vector (no spatial axes)
        self._track = False
        self._batch: int | None = None
        self._names = {id(m): n for n, m in model.named_modules()}
        self._stack: list[str] = []
        self._handles: list = []
        self._storages: set[int] = set()  # constant tensors that received probe-carrying values
        self._model_storages: set[int] | None = None

    # -- context -------------------------------------------------------------------------------
    def __enter__(self) -> "SupportMode":
        for m in {id(m): m for m in self.model.modules()}.values():
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post, always_call=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._stack.clear()

    def _pre(self, module, args):
        self._stack.append(self._names.get(id(module), type(module).__name__))

    def _post(self, module, args, output):
        if self._stack:
            self._stack.pop()

    @property
    def path(self) -> str:
        return self._stack[-1] if self._stack else ""

    def _where(self) -> str:
        return f"in module `{self.path or '(root)'}`"

    def run(self, x: Tensor, track: bool = False) -> Tensor:
        """The support of ``model`` applied to the probes ``x`` (K, ...), as {0, 1}."""
        self._batch = x.shape[0]
        self._track = track
        self._storages.clear()
        x = _binary(x.detach())
        self._mark(x)
        with torch.no_grad(), DispatchMode(self):  # only the model's own calls are interpreted
            y = self.model(x)
        if not isinstance(y, Tensor) or not self._marked(y):
            raise GlobalSupport("the model's output does not depend on its input through ops the "
                                "support analysis follows")
        return y

    # -- marking ---------------------------------------------------------------------------------
    def _mark(self, t: Tensor) -> None:
        t._linearscope_support = id(self)

    def _marked(self, t) -> bool:
        if not isinstance(t, Tensor):
            return False
        if getattr(t, "_linearscope_support", None) == id(self):
            return True
        # a view of a constant tensor that received probe-carrying values after it was taken
        if self._storages and _scope._storage(t) in self._storages:
            self._mark(t)
            return True
        return False

    def _finish(self, func, out, inputs):
        """Binarise and mark every floating output (new tensors: views of the inputs stay
        untouched); check the batch; note where a single impulse first spread globally."""
        stores = {_scope._storage(t) for t in tree_flatten(inputs)[0] if self._marked(t)}

        def fix(t):
            if not (isinstance(t, Tensor) and t.is_floating_point()):
                return t
            if t.dim() == 0 or t.shape[0] != self._batch:
                raise GlobalSupport(f"`{_scope._op_name(func)}` {self._where()} mixes or drops "
                                    "the batch dimension")
            if t._is_view() and _scope._storage(t) in stores:
                # a view of a (binary) probe-carrying tensor stays a view: a later in-place
                # write through it must reach the tensor it views, as in the model
                self._mark(t)
                return t
            b = _binary(t)
            self._mark(b)
            return b

        out = tree_map(fix, out)
        if self._track and (self.spread.op is None or self.reduced.op is None):
            self._note_spread(func, out, inputs)
        return out

    def _note_spread(self, func, out, inputs) -> None:
        """Remember the first op whose output is non-zero everywhere while its inputs were not
        (on the single-impulse probe): where one pixel starts to reach every value."""
        def full(t: Tensor) -> bool:
            return bool((t.detach()[0] != 0).all())

        ins = [t for t in inputs if isinstance(t, Tensor) and t.is_floating_point()]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor) and t.is_floating_point()]
        if ins and outs and any(full(t) for t in outs) and not any(full(t) for t in ins):
            self.spread = _Spread(_scope._op_name(func), self.path)
        if self.reduced.op is None and ins and outs:
            def image(t: Tensor) -> bool:
                return t.dim() >= 4 and t.shape[-1] * t.shape[-2] > 1

            if any(image(t) for t in ins) and not any(image(t) for t in outs):
                self.reduced = _Spread(_scope._op_name(func), self.path)

    # -- structure: integer and boolean values computed from the probe ---------------------------
    def _structure(self, t) -> str | None:
        """Where ``t`` was computed from probe-carrying values (an index, offset or mask of the
        probe's data: ``return_indices``, ``torch.max(x, dim)``, a cast), else None."""
        if not isinstance(t, Tensor):
            return None
        mark = getattr(t, "_linearscope_structure", None)
        return mark[1] if mark is not None and mark[0] == id(self) else None

    def _carry_structure(self, func, out) -> None:
        """Mark every integer or boolean tensor ``func`` computed from probe-carrying values: its
        values are the probe's, while the real run sees x0's (a different network)."""
        what = f"`{_scope._op_name(func)}` {self._where()}"
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and not t.is_floating_point():
                t._linearscope_structure = (id(self), what)

    # -- dispatch --------------------------------------------------------------------------------
    def _dispatch(self, func, args, kwargs):
        """Route a probe-carrying call by its kind — the classification the frozen interpreter
        uses (:func:`precompute.optable.op_kind`) — to the support domain's handler; a kind
        without one here is global support (fail closed)."""
        flat = tree_flatten((args, kwargs))[0]
        if func not in _scope.METADATA and func not in _UNPOOL:  # (unpooling: its own rule)
            # fail closed: indices, offsets, slice bounds or branches computed from the probe's
            # values are not x0's, so no support found with them holds for the real run
            src = next((w for w in map(self._structure, flat) if w is not None), None)
            if src is not None:
                raise GlobalSupport(
                    f"`{_scope._op_name(func)}` {self._where()} uses indices or values that "
                    f"{src} computed from the data (the structure depends on x0)")
        marked = [t for t in flat if self._marked(t)]
        out = self._dispatch_marked(func, args, kwargs, marked)
        if marked and func not in _scope.CREATION and func not in _scope.METADATA:
            self._carry_structure(func, out)
        return out

    def _dispatch_marked(self, func, args, kwargs, marked):
        if not marked:
            return func(*args, **kwargs)  # weights, constants, shape arithmetic
        if not args:  # torch.relu(input=x): every rule finds the input in args[0]
            args, kwargs = _scope._positional_input(func, args, kwargs)
        kind = op_kind(func, args, kwargs, self._marked)
        target = args[0] if args else None
        if (kind not in ("out", "write", "nonlinear") and _is_inplace(func, kwargs)
                and isinstance(target, Tensor) and not self._marked(target)):
            if kind not in ("add", "mul", "div"):
                raise GlobalSupport(f"`{_scope._op_name(func)}` {self._where()} writes "
                                    "probe-carrying values into a constant tensor in place (no "
                                    "support rule)")
            self._adopt(func, target)  # acc = zeros_like(x); acc.add_(v)
        handler = _HANDLERS.get(kind)
        if handler is None:
            raise GlobalSupport(f"no support rule for `{_scope._op_name(func)}` {self._where()}")
        return handler(self, func, args, kwargs, marked)

    def _rule(self) -> str:
        import fnmatch

        best, best_len = self.rule, -1
        for pattern, rule in self.overrides.items():
            if fnmatch.fnmatchcase(self.path, pattern) and len(pattern) > best_len:
                best, best_len = rule, len(pattern)
        return best

    def _nonlinear(self, func, args, kwargs, marked):
        """A unit: its family's support rule (:class:`precompute.rules.RuleSet`), declared beside
        its freeze and Taylor rules; a family without one is global support."""
        nop = _scope.NONLINEAR_OPS[func]
        op = _scope._op_name(func)
        x = args[0] if args else None
        if not self._marked(x):
            raise GlobalSupport(f"`{op}` {self._where()} takes a probe-carrying parameter")
        params = nop.bind(args, kwargs)
        if any(self._marked(v) for v in params.values()):
            raise GlobalSupport(f"`{op}` {self._where()} has a probe-carrying parameter")
        if nop.family == "norm" and _scope._norm_params(func, params)[0] is None:
            # eval batch norm, running-statistics instance norm: affine, pointwise in the probe
            return self._finish(func, x.clone(), marked)
        support = RULES[nop.family].support
        if support is None:
            raise GlobalSupport(f"no support rule for the `{nop.family}` unit `{op}` "
                                f"{self._where()}")
        y = support(SupportCall(nop.pure, x, params, self._rule(), f"`{op}` {self._where()}"))
        if y is x:  # the support passes through (pointwise units)
            if nop.inplace or params.get("inplace"):
                return x
            y = x.clone()
        out = self._finish(func, y, marked)
        if isinstance(out, tuple) and not (func in _scope._POOL_RETURNS_INDICES
                                           or params.get("return_indices")):
            return out[0]
        return out

    def _union(self, func, args, kwargs, marked):
        """Sums, products and quotients: the union of the operands' supports (broadcast).

        A constant operand contributes no support (constants are off on the probe branch), but
        its shape broadcasts; subtraction never cancels (everything is a non-negative union)."""
        a = args[0]
        b = args[1] if len(args) > 1 else kwargs.get("other")
        parts = []
        for t in (a, b):
            if self._marked(t):
                parts.append(t)
            elif isinstance(t, Tensor):
                parts.append(torch.zeros_like(t))
        y = parts[0] + parts[1] if len(parts) == 2 else parts[0].clone()
        if _is_inplace(func, kwargs) and self._marked(a):
            a.copy_(_binary(y))  # the model may rely on the mutation
            return a
        return self._finish(func, y, marked)

    # -- in-place writes ------------------------------------------------------------------------
    def _adopt(self, func, target: Tensor) -> None:
        """A constant tensor receives probe-carrying values (``acc = zeros_like(x); acc += v``,
        ``y = x.new_zeros(…); y[:, 1:] = x[:, :-1]``): its constant content is off on the probe
        branch (zeros), and it — with its base and every view of it — carries probes from now on.
        Only fresh tensors with the batch as dimension 0 qualify (as in the scope)."""
        op = _scope._op_name(func)
        if not target.is_floating_point() or target.dim() == 0 or target.shape[0] != self._batch:
            raise GlobalSupport(f"`{op}` {self._where()} writes probe-carrying values into a "
                                f"tensor of shape {tuple(target.shape)} without the batch dimension")
        if self._model_storages is None:
            self._model_storages = {_scope._storage(t) for t in
                                    (*self.model.parameters(), *self.model.buffers())}
        if _scope._storage(target) in self._model_storages:
            raise GlobalSupport(f"`{op}` {self._where()} writes probe-carrying values into a "
                                "parameter or buffer of the model")
        base = _scope._base(target)
        base.zero_()
        self._storages.add(_scope._storage(base))
        self._mark(base)
        self._mark(target)

    def _off(self, v):
        """A written value on the probe branch: itself when it carries probes, else zeros."""
        if self._marked(v):
            return v
        return torch.zeros_like(v) if isinstance(v, Tensor) else 0.0

    def _written(self, func, args, kwargs):
        """Writes (``y[k] = v``, ``copy_``, ``fill_``, ``index_put_``, ``masked_fill``,
        ``where``) as the scope computes them: a written constant is off (zeros), a
        probe-carrying value written into a constant tensor makes it probe-carrying; the result
        stays binary."""
        op = _scope._op_name(func)
        T_ = torch.Tensor
        target = args[0]

        def into(t: Tensor, value_marked: bool, write) -> Tensor:
            if not self._marked(t):
                if not value_marked:
                    raise GlobalSupport(f"`{op}` {self._where()} (no support rule)")
                self._adopt(func, t)
            write(t)
            t.copy_(_binary(t))
            return t

        if func is T_.__setitem__:
            key, value = args[1], args[2]
            keys = key if isinstance(key, tuple) else (key,)
            if any(self._marked(k) for k in keys):
                raise GlobalSupport(f"indexing with a probe-carrying index {self._where()}")
            into(target, self._marked(value), lambda t: t.__setitem__(key, self._off(value)))
            return None
        if func is T_.copy_:
            src = _batch.arg(args, kwargs, 1, ("src",))
            return into(target, self._marked(src), lambda t: t.copy_(self._off(src)))
        if func is T_.fill_:
            if self._marked(_batch.arg(args, kwargs, 1, ("value",))):
                raise GlobalSupport(f"`{op}` {self._where()} with a probe-carrying value")
            return into(target, False, lambda t: t.zero_())
        if func is T_.zero_:
            return target.zero_()
        if func in (T_.index_put_, T_.index_put, torch.index_put):
            p = _scope._bind(("indices", "values", "accumulate"), {"accumulate": False})(args, kwargs)
            indices = tuple(p["indices"])
            if any(self._marked(i) for i in indices):
                raise GlobalSupport(f"indexing with a probe-carrying index {self._where()}")
            if func is not T_.index_put_:
                marked, target = self._marked(target), target.clone()
                if marked:
                    self._mark(target)
            values = p["values"]
            return into(target, self._marked(values),
                        lambda t: t.index_put_(indices, self._off(values), bool(p["accumulate"])))
        if func in (T_.masked_fill_, T_.masked_fill, torch.masked_fill):
            p = _scope._bind(("mask", "value"), {})(args, kwargs)
            if self._marked(p["mask"]) or self._marked(p["value"]):
                raise GlobalSupport(f"`{op}` {self._where()} with a probe-carrying mask or value")
            if func is T_.masked_fill_:
                return into(target, False, lambda t: t.masked_fill_(p["mask"], 0.0))
            return self._finish(func, target.masked_fill(p["mask"], 0.0), [target])
        # where(condition, input, other) / input.where(condition, other)
        if func is T_.where:
            cond, a, b = (_batch.arg(args, kwargs, 1, ("condition",)), target,
                          _batch.arg(args, kwargs, 2, ("other", "y")))
        else:
            cond, a, b = (target, _batch.arg(args, kwargs, 1, ("input", "self", "x")),
                          _batch.arg(args, kwargs, 2, ("other", "y")))
        if self._marked(cond):
            raise GlobalSupport(f"`{op}` {self._where()} selects with a probe-carrying condition")
        a, b = self._off(a), self._off(b)
        like = a if isinstance(a, Tensor) else b
        if not isinstance(a, Tensor):
            a = torch.zeros((), dtype=like.dtype, device=like.device)
        if not isinstance(b, Tensor):
            b = torch.zeros((), dtype=like.dtype, device=like.device)
        return self._finish(func, torch.where(cond, a, b), [like])

    def _out(self, func, args, kwargs, marked):
        """``op(..., out=t)``: the result, written into ``t`` like ``t.copy_``."""
        out = kwargs["out"]
        result = self._dispatch(func, args, {k: v for k, v in kwargs.items() if k != "out"})
        if not isinstance(out, Tensor) or not isinstance(result, Tensor):
            raise GlobalSupport(f"`{_scope._op_name(func)}` {self._where()} writes several "
                                "results through `out=`")
        if not self._marked(out):
            self._adopt(func, out)
        out.copy_(result)
        return out

    def _positive(self, func, args, kwargs, marked):
        """A linear op of a probe-carrying tensor and constants: constants → all ones (every
        structural path open, no cancellation)."""
        def ones(t):
            return torch.ones_like(t) if isinstance(t, Tensor) and not self._marked(t) else t

        a, k = tree_map(ones, (args, kwargs))
        return self._finish(func, func(*a, **k), marked)

    def _affine(self, func, args, kwargs, marked):
        op = _scope._op_name(func)
        if func is F.pad:
            p = _scope._bind(("pad", "mode", "value"), {})(args, kwargs)
            kw = {"mode": p.get("mode", "constant")}
            if kw["mode"] == "constant":
                kw["value"] = 0.0  # the pad value is a constant: off on the probe branch
            return self._finish(func, F.pad(args[0], p["pad"], **kw), marked)
        if func in _scope._BIASED_LINEAR:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            if not self._marked(args[0]) or self._marked(weight):
                raise GlobalSupport(f"`{op}` {self._where()} with a probe-carrying weight")
            a = list(args)
            k = dict(kwargs)
            if len(a) > 1:
                a[1] = torch.ones_like(weight)
            else:
                k["weight"] = torch.ones_like(weight)
            if len(a) > 2:
                a[2] = None
            k.pop("bias", None)
            return self._finish(func, func(*a, **k), marked)
        # eval batch norm / running-stat instance norm reach here only through _nonlinear
        return self._finish(func, args[0].clone(), marked)

    def _structural(self, func, args, kwargs, marked):
        op = _scope._op_name(func)
        first = next((t for t in tree_flatten(args)[0] if self._marked(t)), None)
        if first is not None and _batch.touches_batch(func, args, kwargs, first.dim()):
            raise GlobalSupport(f"`{op}` {self._where()} mixes the batch dimension")
        if func in _INTERPOLATE or func in (F.upsample_bilinear, F.upsample_nearest):
            return self._finish(func, self._interpolate(func, args, kwargs), marked)
        if func is F.grid_sample and _batch.arg(args, kwargs, 2, ("mode",), "bilinear") not in (
                "bilinear", "nearest"):
            # bicubic sampling weights change sign: values could cancel and hide support
            raise GlobalSupport(f"`{op}` {self._where()} with signed (bicubic) weights")
        if func in _batch.DIM_FIRST_ARG:
            # a concatenated constant is off on the probe branch: zeros of its shape
            parts = args[0] if args else kwargs["tensors"]
            zeroed = [t if self._marked(t) or not isinstance(t, Tensor) else torch.zeros_like(t)
                      for t in parts]
            rest = args[1:] if args else ()
            kw = {k: v for k, v in kwargs.items() if k != "tensors"}
            return self._finish(func, func(zeroed, *rest, **kw), marked)
        out = func(*args, **kwargs)
        if func in _NEG:
            out = out.abs()
        if out is first:  # in-place structural op (squeeze_, neg_, …): binary again, in place
            first.copy_(_binary(first))
            return out
        return self._finish(func, out, marked)

    def _interpolate(self, func, args, kwargs):
        names = ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor",
                 "antialias")
        p = _scope._bind(names, {"mode": "nearest"})(args, kwargs)
        x = args[0]
        if func is F.upsample_bilinear:
            p.update(mode="bilinear", align_corners=True)
        elif func is F.upsample_nearest:
            p.update(mode="nearest")
        mode = p.get("mode") or "nearest"
        if p.get("antialias"):
            raise GlobalSupport(f"antialiased interpolation {self._where()} (no support rule)")
        call = {k: p[k] for k in ("size", "scale_factor", "align_corners",
                                  "recompute_scale_factor") if p.get(k) is not None}
        if mode in ("nearest", "nearest-exact", "area", "linear", "bilinear", "trilinear"):
            return F.interpolate(x, mode=mode, **call)  # non-negative weights: no cancellation
        if mode == "bicubic" and x.dim() == 4:
            # Keys' kernel has negative lobes (cancellation). Bicubic and bilinear share the source
            # index src; bilinear reaches floor(src) (and floor(src) + 1 when src is not an
            # integer; at integer src the cubic taps at distance 1 and 2 weigh exactly 0), so the
            # input dilated by one pixel covers every bicubic tap floor(src) − 1 … floor(src) + 2
            # (clamped at the borders like the taps themselves)
            grown = F.max_pool2d(x, 3, stride=1, padding=1)
            return F.interpolate(grown, mode="bilinear", **call)
        raise GlobalSupport(f"interpolation mode {mode!r} {self._where()} has no support rule")


def _value_read(mode: SupportMode, func, args, kwargs, marked):
    raise GlobalSupport(f"`{_scope._op_name(func)}` {mode._where()} reads the values of a "
                        "probe-carrying tensor")


def _div(mode: SupportMode, func, args, kwargs, marked):
    if mode._marked(args[1] if len(args) > 1 else kwargs.get("other")):
        raise GlobalSupport(f"division by a probe-carrying tensor (`{_scope._op_name(func)}`) "
                            f"{mode._where()}")
    return mode._union(func, args, kwargs, marked)


def _matmul(mode: SupportMode, func, args, kwargs, marked):
    if len(marked) > 1:
        raise GlobalSupport(f"`{_scope._op_name(func)}` of two probe-carrying tensors "
                            f"{mode._where()} (attention-like product)")
    return mode._positive(func, args, kwargs, marked)


def _method(name: str, with_marked: bool = True):
    if with_marked:
        return lambda mode, func, args, kwargs, marked: getattr(mode, name)(func, args, kwargs,
                                                                            marked)
    return lambda mode, func, args, kwargs, marked: getattr(mode, name)(func, args, kwargs)


#: op kind (precompute.optable.KINDS) → how the support domain computes it. A kind missing here
#: ("unknown") is global support.
_HANDLERS = {
    "value_read": _value_read, "select_pair": _method("_union"), "out": _method("_out"),
    "nonlinear": _method("_nonlinear"), "add": _method("_union"), "mul": _method("_union"),
    "div": _div, "matmul": _matmul, "affine": _method("_affine"), "select": _method("_union"),
    "write": _method("_written", with_marked=False),
    "creation": lambda mode, func, args, kwargs, marked: func(*args, **kwargs),
    "dropout": lambda mode, func, args, kwargs, marked: mode._finish(func, args[0].clone(), marked),
    "structural": _method("_structural"),
    "metadata": lambda mode, func, args, kwargs, marked: func(*args, **kwargs),
}


# --- per-axis support from line probes --------------------------------------------------------


@dataclass
class Support:
    """Structural support of F per axis (see the module docstring).

    ``row_lo[a][p]``/``row_hi[a][p]``: along axis ``a`` (0: y, 1: x), the input indices that
    output index ``p`` can depend on lie in ``[row_lo, row_hi]`` (empty when lo > hi).
    ``col_lo[a][i]``/``col_hi[a][i]``: the output indices input index ``i`` can reach.
    ``period_in``: widest row support per axis (input pixels): impulses that far apart (or
    further) never reach a common output pixel. ``period_out``: widest column footprint per
    axis (output pixels). ``global_reason``: set when the support is (or may be) the whole image.
    """

    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    row_lo: tuple[np.ndarray, np.ndarray] | None = None
    row_hi: tuple[np.ndarray, np.ndarray] | None = None
    col_lo: tuple[np.ndarray, np.ndarray] | None = None
    col_hi: tuple[np.ndarray, np.ndarray] | None = None
    global_reason: str | None = None
    probes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def is_global(self) -> bool:
        return self.global_reason is not None

    @property
    def period_in(self) -> tuple[int, int]:
        if self.is_global:
            return self.in_hw
        return tuple(_widest(lo, hi) for lo, hi in zip(self.row_lo, self.row_hi))

    @property
    def period_out(self) -> tuple[int, int]:
        if self.is_global:
            return self.out_hw
        return tuple(_widest(lo, hi) for lo, hi in zip(self.col_lo, self.col_hi))

    def attrs(self) -> dict:
        """What the store records (``attrs.probing.support``)."""
        if self.is_global:
            return {"global": self.global_reason}
        return {"global": None, "rows": list(self.period_in), "columns": list(self.period_out)}


def _widest(lo: np.ndarray, hi: np.ndarray) -> int:
    w = hi - lo + 1
    return int(max(1, w.max(initial=1)))


def _transpose(lo: np.ndarray, hi: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """From per-output intervals of input indices to per-input hulls of output indices (an
    input that reaches nothing gets the empty interval lo = 1 > hi = 0)."""
    c_lo = np.full(n_in, np.iinfo(np.int64).max, dtype=np.int64)
    c_hi = np.full(n_in, -1, dtype=np.int64)
    for p in range(len(lo)):
        if lo[p] <= hi[p]:
            sl = slice(int(lo[p]), int(hi[p]) + 1)
            c_lo[sl] = np.minimum(c_lo[sl], p)
            c_hi[sl] = np.maximum(c_hi[sl], p)
    empty = c_hi < 0
    return np.where(empty, 1, c_lo), np.where(empty, 0, c_hi)


def _probe_sets(n: int, q: int) -> list[np.ndarray]:
    """Index sets of one round: every residue class mod q, blocks of q and blocks shifted by
    q/2 (or single indices when q ≥ n)."""
    if q >= n:
        return [np.array([i]) for i in range(n)]
    sets = [np.arange(r, n, q) for r in range(q)]
    sets += [np.arange(s, min(s + q, n)) for s in range(0, n, q)]
    h = q // 2
    sets += [np.arange(max(s, 0), min(s + q, n)) for s in range(h - q, n, q) if min(s + q, n) > max(s, 0)]
    return sets


class _Runner:
    """Runs batches of support probes (chunked to bound memory)."""

    def __init__(self, mode: SupportMode, in_shape, dtype, device, batch: int):
        self.mode, self.in_shape, self.dtype, self.device = mode, tuple(in_shape), dtype, device
        self.batch = max(1, batch)
        self.count = 0

    def reach(self, sets: list[np.ndarray], axis: int) -> np.ndarray:
        """(len(sets), n_out) booleans: does the probe lighting input lines ``sets`` along
        ``axis`` (every channel, every position of the other axis) reach output line p?"""
        out = []
        for s in range(0, len(sets), self.batch):
            part = sets[s:s + self.batch]
            x = torch.zeros((len(part),) + self.in_shape, dtype=self.dtype, device=self.device)
            for k, idx in enumerate(part):
                index = torch.as_tensor(idx, device=self.device)
                if axis == 0:
                    x[k, :, index, :] = 1
                else:
                    x[k, :, :, index] = 1
            y = self.mode.run(x)
            self.count += len(part)
            if y.dim() != 4:
                raise GlobalSupport("the output is not an image (C', H', W')")
            other = 3 if axis == 0 else 2
            out.append((y.amax(dim=(1, other)) != 0).cpu().numpy())
        return np.concatenate(out)


def _axis_support(run: _Runner, n_in: int, n_out: int, axis: int, q: int):
    """Per output index p the interval [lo, hi] of input indices that can reach it, exact once
    every interval is at most q/2 wide (q doubles until then; single lines when q ≥ n_in)."""
    while True:
        sets = _probe_sets(n_in, q)
        hit = run.reach(sets, axis)                     # (K, n_out)
        member = np.zeros((len(sets), n_in), dtype=bool)
        for k, s in enumerate(sets):
            member[k, s] = True
        # input i is excluded for output p by any probe that contains i and misses p
        # (float32 products of 0/1 are exact counts: BLAS instead of an integer matmul)
        excluded = (~hit).T.astype(np.float32) @ member.astype(np.float32) > 0  # (n_out, n_in)
        allowed = ~excluded
        any_ = allowed.any(1)
        lo = np.where(any_, allowed.argmax(1), 1)
        hi = np.where(any_, n_in - 1 - allowed[:, ::-1].argmax(1), 0)
        width = int((hi - lo + 1).max(initial=0))
        if q >= n_in or width <= q // 2:
            return lo.astype(np.int64), hi.astype(np.int64)
        q = min(2 * max(q, width), n_in)


def analyse(model: nn.Module, in_shape, dtype: torch.dtype, device: torch.device,
            rule: str = "freeze", batch: int = 16, overrides: dict | None = None) -> Support:
    """The structural support of ``model``'s interpreters on inputs of shape ``in_shape`` (C, H, W).

    Never raises for a global or unknown structure: the result then has ``global_reason`` set.
    """
    import time

    t0 = time.perf_counter()
    c, h, w = (int(v) for v in in_shape)
    mode = SupportMode(model, rule, overrides)
    run = _Runner(mode, (c, h, w), dtype, device, batch)
    sup = Support((h, w), (0, 0))
    try:
        with mode:
            centre = torch.zeros((1, c, h, w), dtype=dtype, device=device)
            centre[0, :, h // 2, w // 2] = 1
            run.count += 1
            y = mode.run(centre, track=True)
            if y.dim() != 4:
                where = (f": `{mode.reduced.op}` in module `{mode.reduced.path or '(root)'}` "
                         "reduces the image to a vector" if mode.reduced.op else "")
                raise GlobalSupport(f"the output is not an image (C', H', W'){where}")
            ho, wo = y.shape[2:]
            sup.out_hw = (int(ho), int(wo))
            nz = y[0].amax(0) != 0
            rows = torch.nonzero(nz.any(1)).flatten()
            cols = torch.nonzero(nz.any(0)).flatten()
            if len(rows) == ho and len(cols) == wo and (h > 2 or w > 2):
                where = (f" (everywhere from `{mode.spread.op}` in module "
                         f"`{mode.spread.path or '(root)'}` on)" if mode.spread.op else "")
                raise GlobalSupport(f"one pixel reaches the whole {h}×{w} image{where}")
            guess = []
            for n, n_o, idx in ((h, ho, rows), (w, wo, cols)):
                span = (int(idx.max() - idx.min()) + 1) if len(idx) else 1
                # the centre's footprint in input pixels, a pixel of margin, twice (exactness)
                guess.append(max(8, 2 * (math.ceil(span * n / max(n_o, 1)) + 1)))
            lo_y, hi_y = _axis_support(run, h, ho, 0, guess[0])
            lo_x, hi_x = _axis_support(run, w, wo, 1, guess[1])
    except GlobalSupport as e:
        sup.global_reason = str(e)
        sup.probes, sup.seconds = run.count, time.perf_counter() - t0
        return sup
    except Exception as e:  # noqa: BLE001 — fail closed: an analysis we cannot finish is global
        sup.global_reason = f"the support analysis failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        sup.probes, sup.seconds = run.count, time.perf_counter() - t0
        return sup
    sup.row_lo, sup.row_hi = (lo_y, lo_x), (hi_y, hi_x)
    cy, cyh = _transpose(lo_y, hi_y, h)
    cx, cxh = _transpose(lo_x, hi_x, w)
    sup.col_lo, sup.col_hi = (cy, cx), (cyh, cxh)
    sup.probes, sup.seconds = run.count, time.perf_counter() - t0
    if sup.period_in[0] >= h and sup.period_in[1] >= w:
        sup.global_reason = ("the support of an output pixel spans the whole input image "
                             f"({h}×{w}): no two pixels can share a probe")
    return sup


#: input (output) pixels the cross-check probes besides the corners and the centre
CROSS_CHECK_EXTRA = 5
#: at most this many probes per direction (every channel of every checked pixel, fewer channels
#: when there are many)
CROSS_CHECK_PROBES = 64


def _check_pixels(h: int, w: int) -> list[tuple[int, int]]:
    """Corner, centre, opposite corner, then a few interior pixels from a fixed seed (the same
    for every run of the same size: resumes and shards check the same ones)."""
    pixels = [(0, 0), (h // 2, w // 2), (h - 1, w - 1)]
    rng = np.random.default_rng(h * 100_003 + w)
    for _ in range(CROSS_CHECK_EXTRA):
        pixels.append((int(rng.integers(h)), int(rng.integers(w))))
    return list(dict.fromkeys(pixels))


def cross_check(support: Support, columns, in_shape, dtype_eps: float, rows=None,
                out_shape=None) -> Support:
    """Fail closed on an analysis that missed a path, in both directions: the real columns of a
    few input pixels (corners, centre and seeded interior pixels; every channel),
    computed by ``columns(flat_indices) -> (K, C', H', W')``, must vanish outside their predicted
    footprints, and the real rows of as many output pixels (``rows(flat) -> (K, C, H, W)``,
    backward passes), outside their predicted row supports — up to ``dtype_eps`` relative (fast
    convolution algorithms may leave round-off where the exact value is 0). Returns ``support``,
    made global when a check fails."""
    if support.is_global:
        return support
    checks = [(columns, in_shape, support.col_lo, support.col_hi, "column of input")]
    if rows is not None and out_shape is not None:
        checks.append((rows, out_shape, support.row_lo, support.row_hi, "row of output"))
    for fn, shape, lo, hi, what in checks:
        c, h, w = shape
        pixels = _check_pixels(h, w)
        n_ch = max(1, min(c, CROSS_CHECK_PROBES // len(pixels)))
        channels = np.linspace(0, c - 1, n_ch).round().astype(int).tolist()
        probes = [(a, i, j) for (i, j) in pixels for a in dict.fromkeys(channels)]
        filt = fn([a * h * w + i * w + j for a, i, j in probes]).detach().abs().amax(1)
        filt = filt.cpu().numpy()
        for (a, i, j), f in zip(probes, filt):
            box = np.zeros(f.shape, dtype=bool)
            box[lo[0][i]:hi[0][i] + 1, lo[1][j]:hi[1][j] + 1] = True
            outside = float(f[~box].max(initial=0.0))
            if outside > dtype_eps * max(float(f.max(initial=0.0)), 1e-300):
                support.global_reason = (
                    f"internal check failed: the {what} pixel ({i}, {j}) (channel {a}) reaches "
                    "beyond the structural support found (please report this model); one "
                    "impulse per probe")
                return support
    return support
    return support
