"""Batch-dimension checks: does an op act per batch element?

Dimension 0 of every probe-carrying tensor is the batch [x0, probes] (:mod:`precompute.scope`),
and of every probe batch of the structural support analysis (:mod:`precompute.support`). An op
may act per batch element only: it must neither select, reduce, move nor mix along dimension 0 —
otherwise x0 and the probes would leak into each other and F would be silently wrong. Which
dimensions an op moves is known from its arguments, so the checks are exact per op; the scope
re-checks the batch size of every result as a last net.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

T = torch.Tensor

_ALL = object()  # "no dim given": the op reduces (or flattens) every dimension

DIM_FIRST_ARG = {torch.cat, torch.concat, torch.concatenate, torch.stack}  # (tensors, dim)


def _normalise_dim(d, ndim):
    return d + ndim if isinstance(d, int) and d < 0 else d


def arg(args, kwargs, pos, names, default=None):
    """A call's argument: by any of its keyword ``names``, else at position ``pos``."""
    for n in names:
        if n in kwargs:
            return kwargs[n]
    return args[pos] if len(args) > pos else default


def _seq(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list, torch.Size)) else (v,)


def _varargs(args, kwargs, names) -> tuple:
    """A dims/sizes argument given as varargs (``x.permute(0, 2, 1)``) or as one sequence."""
    for n in names:
        if n in kwargs:
            return _seq(kwargs[n])
    if len(args) == 2:
        return _seq(args[1])
    return tuple(args[1:])


def _has_batch(dims, ndim: int) -> bool:
    """Does a dims argument (an int, a sequence, or None/_ALL/() for every dim) include dim 0?"""
    if dims is None or dims is _ALL:
        return True
    dims = _seq(dims)
    if not dims:  # sum(x, dim=[]) and amax(x, dim=()) reduce every dimension
        return True
    return any(not isinstance(d, int) or _normalise_dim(d, ndim) == 0 for d in dims)


def _dim_arg(pos=1, names=("dim", "axis"), default=_ALL):
    return lambda a, k, nd: _has_batch(arg(a, k, pos, names, default), nd)


def _swap(a, k, nd):
    d0 = _normalise_dim(arg(a, k, 1, ("dim0", "axis0")), nd)
    d1 = _normalise_dim(arg(a, k, 2, ("dim1", "axis1")), nd)
    return (d0 == 0) != (d1 == 0)


def _permute(a, k, nd):
    dims = _varargs(a, k, ("dims",))
    return not dims or _normalise_dim(dims[0], nd) != 0


def _movedim(a, k, nd):
    src = [_normalise_dim(d, nd) for d in _seq(arg(a, k, 1, ("source",)))]
    dst = [_normalise_dim(d, nd) for d in _seq(arg(a, k, 2, ("destination",)))]
    if 0 in dst:
        return src[dst.index(0)] != 0
    return 0 in src  # output dim 0 gets the first input dim that is not moved


def _repeat(a, k, nd):
    sizes = _varargs(a, k, ("repeats", "sizes"))
    return len(sizes) != nd or sizes[0] != 1


def _expand(a, k, nd):
    return len(_varargs(a, k, ("size",))) != nd


def _flatten(a, k, nd):
    start = _normalise_dim(arg(a, k, 1, ("start_dim",), 0), nd)
    end = _normalise_dim(arg(a, k, 2, ("end_dim",), -1), nd)
    return start == 0 and end != 0


def _roll(a, k, nd):
    return _has_batch(arg(a, k, 2, ("dims",), None), nd)


def _flip(a, k, nd):
    return _has_batch(_varargs(a, k, ("dims",)), nd)


def _cat(a, k, nd):
    return _normalise_dim(arg(a, k, 1, ("dim", "axis"), 0), nd) == 0


def _stack(a, k, nd):
    return _normalise_dim(arg(a, k, 1, ("dim", "axis"), 0), nd + 1) == 0  # a new dim: nd + 1


def _full_slice(s) -> bool:
    return isinstance(s, slice) and s.start in (None, 0) and s.stop is None and s.step in (None, 1)


def _is_advanced(k) -> bool:
    return isinstance(k, (Tensor, list, tuple)) or hasattr(k, "__array__")


def key_touches_batch(key, ndim: int) -> bool:
    """Does an index ``x[key]`` (or ``x[key] = v``) select, add or move along dimension 0?

    The first entry must keep dimension 0 (``:`` or an Ellipsis that covers it), and tensor
    indices separated by a slice move their result dimensions to the front (PyTorch/NumPy rule).
    """
    key = key if isinstance(key, tuple) else (key,)
    if not key:
        return False
    first = key[0]
    if first is Ellipsis:
        consumed = sum(0 if k is None or k is Ellipsis
                       else (k.dim() if isinstance(k, Tensor) and k.dtype == torch.bool else 1)
                       for k in key[1:])
        if consumed >= ndim:
            return True  # the Ellipsis covers no dimension: the next index hits dim 0
    elif not _full_slice(first):
        return True
    adv = [i for i, k in enumerate(key) if _is_advanced(k)]
    return len(adv) > 1 and adv[-1] - adv[0] + 1 != len(adv)


def _getitem(a, k, nd):
    return key_touches_batch(a[1], nd)


def _min_dim(n: int):
    """Ops that read an input of fewer dimensions as unbatched (dimension 0 = channels)."""
    return lambda a, k, nd: nd < n


def _exact_dim(n: int):
    return lambda a, k, nd: nd != n


def _pad(a, k, nd):
    return len(arg(a, k, 1, ("pad",), ())) // 2 >= nd


def _normalized(a, k, nd):
    return len(_seq(arg(a, k, 1, ("normalized_shape",), ()))) >= nd


_BATCH_CHECKS: dict[Callable, Callable] = {
    T.sum: _dim_arg(), torch.sum: _dim_arg(), T.mean: _dim_arg(), torch.mean: _dim_arg(),
    T.amax: _dim_arg(default=()), torch.amax: _dim_arg(default=()),
    T.amin: _dim_arg(default=()), torch.amin: _dim_arg(default=()),
    T.max: _dim_arg(), torch.max: _dim_arg(), T.min: _dim_arg(), torch.min: _dim_arg(),
    T.cumsum: _dim_arg(), torch.cumsum: _dim_arg(), T.cumsum_: _dim_arg(),
    T.unbind: _dim_arg(default=0), torch.unbind: _dim_arg(default=0),
    T.split: _dim_arg(2, ("dim",), 0), torch.split: _dim_arg(2, ("dim",), 0),
    T.chunk: _dim_arg(2, ("dim",), 0), torch.chunk: _dim_arg(2, ("dim",), 0),
    T.narrow: _dim_arg(1, ("dim",)), torch.narrow: _dim_arg(1, ("dim",)),
    T.transpose: _swap, torch.transpose: _swap, T.swapaxes: _swap, torch.swapaxes: _swap,
    T.swapdims: _swap, torch.swapdims: _swap,
    T.permute: _permute, torch.permute: _permute,
    T.movedim: _movedim, torch.movedim: _movedim, T.moveaxis: _movedim, torch.moveaxis: _movedim,
    T.repeat: _repeat, T.expand: _expand, T.broadcast_to: _expand, torch.broadcast_to: _expand,
    T.expand_as: lambda a, k, nd: arg(a, k, 1, ("other",)).dim() != nd,
    T.flatten: _flatten, torch.flatten: _flatten,
    T.roll: _roll, torch.roll: _roll, T.flip: _flip, torch.flip: _flip,
    torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat, torch.stack: _stack,
    T.__getitem__: _getitem,
    F.conv1d: _exact_dim(3), F.conv2d: _exact_dim(4), F.conv3d: _exact_dim(5),
    F.conv_transpose1d: _exact_dim(3), F.conv_transpose2d: _exact_dim(4),
    F.conv_transpose3d: _exact_dim(5), F.linear: _min_dim(2), F.bilinear: _min_dim(2),
    F.fold: _exact_dim(3), F.unfold: _exact_dim(4),
    F.pixel_shuffle: _min_dim(4), F.pixel_unshuffle: _min_dim(4),
    F.batch_norm: _min_dim(2), F.instance_norm: _min_dim(3), F.group_norm: _min_dim(2),
    F.layer_norm: _normalized, F.rms_norm: _normalized, F.pad: _pad,
}


def touches_batch(func: Callable, args: tuple, kwargs: dict, ndim: int) -> bool:
    """Would ``func(*args, **kwargs)`` move, mix, select or fold dimension 0 of an ``ndim``-dim
    probe-carrying operand? (The checks the scope applies to every op; also used by the
    structural support analysis, :mod:`precompute.support`.)"""
    check = _BATCH_CHECKS.get(func)
    return check is not None and bool(check(args, kwargs, ndim))


def einsum_keeps_batch(equation: str, operands, marked_index: int) -> bool:
    """Does ``einsum(equation, *operands)`` keep dimension 0 of operand ``marked_index`` as
    dimension 0 of its output, without summing over or mixing along it?"""
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    subs = lhs.split(",")
    if len(subs) != len(operands):
        return False
    if not arrow:  # implicit output: "..." then the letters that occur once, sorted
        letters = [c for c in lhs if c.isalpha()]
        out = ("..." if "..." in lhs else "") + "".join(
            sorted(c for c in set(letters) if letters.count(c) == 1))
    s = subs[marked_index]
    if s.startswith("..."):
        if not out.startswith("..."):
            return False
        n_ell = operands[marked_index].dim() - (len(s) - 3)
        return n_ell > 0 and all(
            "..." not in t or op.dim() - (len(t) - 3) <= n_ell for t, op in zip(subs, operands))
    b = s[:1]
    return bool(b) and b.isalpha() and out[:1] == b and s.count(b) == 1
