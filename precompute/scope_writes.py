"""In-place writes under the LinearScope (paper eq. 2 for ops that mutate): ``y[k] = v``,
``copy_``, ``fill_``, ``index_put_``, ``masked_fill``, ``where``, ``out=`` and ``acc.add_(v)`` into a
fresh tensor. A write is linear in the target and the written value together; whichever of them is
a constant is an affine constant (kept on x0, off on the probes, observed), and a fresh tensor
that receives probe-carrying values carries probes from then on, with its base and every view.
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch
from torch import Tensor

from precompute.batch_dims import arg, key_touches_batch
from precompute.errors import ScopeError, UnknownOpError
from precompute.optable import T, _base, _bind, _op_name, _rows_equal, _storage


class WriteRules:
    """Mixin of :class:`precompute.scope.LinearScope`: the write rules (needs its marks, batch
    checks, ``_select_by_mask`` and ``_observe_constant``)."""

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


def _fill(t: Tensor, v) -> Tensor:
    """``t.fill_(v)``, also for a tensor value (``c·[1, 0, …]`` broadcast over the rows)."""
    if isinstance(v, Tensor) and v.dim():
        return t.copy_(v.expand_as(t))
    return t.fill_(v)
