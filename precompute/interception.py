"""Interception core of the LinearScope: attach to a model, follow module paths, route every
PyTorch function call through one :class:`~torch.overrides.TorchFunctionMode`, and keep track of
which tensors carry the probe batch ``[x0, x1_1 … x1_K]`` (paper eq. 2).

What a call *computes* is the value domain's business (:class:`precompute.scope.LinearScope`:
the frozen linear interpreter); this module holds what does not depend on it: the context that
always restores the model (hooks removed, mode popped, modules put back in their training mode),
module paths for messages and the audit, the checks of a whole pass (RNG state, parameters
unchanged, output computed inside the scope), batch-alignment checks, and the refusal of ops
without a rule.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.spectral_norm import SpectralNorm as _OldSpectralNorm
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from precompute.errors import ScopeError, UnknownOpError
from precompute.optable import (DATA_COPIES, GRAD_HOOKS, _OTHER_WRITES, _op_name, _rng_state,
                                _rows_equal, _saved_tensor_hooks, _storage)


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


# --- where an op runs ------------------------------------------------------------------


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


class DispatchMode(TorchFunctionMode):
    """Routes every PyTorch function call to ``owner._dispatch(func, args, kwargs)``: the one
    interception point of both value domains (the LinearScope and the support analysis)."""

    def __init__(self, owner):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return self.owner._dispatch(func, args, kwargs or {})


_token_counter = itertools.count()


class Interception:
    """The part of a LinearScope that attaches to ``model`` and follows its calls (see the module
    docstring); subclasses define ``_dispatch(func, args, kwargs)``, the value domain."""

    def __init__(self, model: nn.Module, rule: str, overrides: dict[str, str] | None,
                 audit: bool = False):
        self.model = unwrap_model(model)
        self.rule = rule
        self.overrides = dict(overrides or {})
        self.audit = audit
        self.records: list[AuditRecord] = []
        self._handles: list = []
        self._mode: DispatchMode | None = None
        self._stance = None
        self._switched: list[nn.Module] = []
        self._token = None
        self._batch: int | None = None
        self._ref: Tensor | None = None
        self._stack: list[tuple[nn.Module, str]] = []
        self._counts: dict[tuple[str, str], int] = {}
        self._module_calls: dict[str, int] = {}
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

    def _reset(self) -> None:
        """Per-attach state of the value domain (extended by subclasses)."""

    def _dispatch(self, func, args, kwargs):
        raise NotImplementedError

    def __enter__(self) -> "Interception":
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
        self._stack.clear()
        self._counts.clear()
        self._module_calls.clear()
        self._reset()
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
        self._mode = DispatchMode(self)
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
