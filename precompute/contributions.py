"""Layer-wise contributions of a classifier's scores and the back-projection of its masked biases.

For a score ``s_k`` of a network frozen at x0 (paper Theorem 1, eq. 8/16 and §8.A)

    s_k = ⟨row_k, x0⟩ + Σ_sites ⟨∂s_k/∂t, b⟩                           (input term + one term per site)

where a *site* is a place where the frozen system adds a constant ``b`` to a tensor ``t``: every
affine op's constant (conv / linear bias, eval batch-norm shift, pad value, ``x + c``, a
concatenated constant) and every freeze rule's c(x0). The scope hands each of them to a
:class:`~precompute.scope.ConstantObserver`; :class:`ConstantTracer` returns ``λ·b`` with a scalar
leaf λ per (site, probe row), so **one** backward pass of ``Σ_k s_{label_k}(probe k)`` with the
probes x1 = 0 gives the rows of the labels (gradient w.r.t. the probes, eq. 6) and every term
(gradient w.r.t. λ) of every label at once.

The same pass back-projects the *masked biases* b̂ to the input domain for the pixel discussions
(eq. 18, :mod:`precompute.discussions`). A site's constant is followed forward through the
pointwise units that consume it directly — each multiplies it by its elementwise gain A(x0) and
adds its own c(x0) as a site of its own — while the tensor holding it has that unit as its only
consumer; where the chain ends (tensor t, accumulated b̂) its back-projection is ``F_tᵀ b̂``, with
``F_t`` the frozen subsystem from the input to t. On a sequential network ``y = W x + b,
x' = h(y)`` this is exactly Theorem 1's ``P_i b̂_i`` with ``b̂_i = A_i b_i + c_i``. All sites'
back-projections are one gradient: ``∇_{x1} Σ_sites ⟨t_site(x1), b̂_site⟩`` on one extra probe row,
whose scalar products are taken eagerly, when t exists, so later in-place ops do not matter.
Constants whose chain ends at the network's output are kept apart (``output_constant``): in the
single-score view of Case 1 the last layer is the score itself, so their back-projection is
``b̂[k]·row_k`` and depends on the label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from precompute.scope import ConstantObserver, LinearScope, ScopeError, Site, unwrap_model

ROOT = "(root)"


@dataclass
class _Stage:
    """A tensor holding a site's (masked) constant, and how it is consumed afterwards."""

    tensor: Tensor
    bhat: Tensor         # the accumulated masked constant at this tensor, shape (1, ...)
    scalar: Tensor       # ⟨t[back row], b̂⟩, taken when the stage was made
    consumers: int = 0
    open: bool = True    # False once the tensor was overwritten in place
    next: "_Stage | None" = None


class ConstantTracer(ConstantObserver):
    """Observer of the contributions pass: a leaf λ per (site, probe row), masked-bias chains.

    Args:
        probes: probe rows of the pass (batch − 1).
        back_row: batch index of the probe row whose back-projection objective is traced.
    """

    def __init__(self, probes: int, back_row: int, dtype: torch.dtype, device: torch.device):
        self.probes, self.back_row = probes, back_row
        self.dtype, self.device = dtype, device
        self.sites: list[Site] = []
        self.lambdas: list[Tensor] = []
        self.chains: list[_Stage] = []  # first stage of each site
        self._open: dict[int, list[_Stage]] = {}
        self._pending: tuple[int, Tensor] | None = None

    # -- the scope's callbacks ----------------------------------------------------------------
    def constant(self, site: Site, const: Tensor) -> Tensor:
        lam = torch.ones(self.probes, dtype=self.dtype, device=self.device, requires_grad=True)
        self.sites.append(site)
        self.lambdas.append(lam)
        self._pending = (len(self.sites) - 1, const)
        return lam.view((-1,) + (1,) * max(const.dim() - 1, 0)) * const

    def op(self, site: Site, inputs: list[Tensor], output, gain: Tensor | None) -> None:
        outs = [t for t in tree_flatten(output)[0] if isinstance(t, Tensor)]
        if not outs:
            return  # metadata (shape, dtype, …): reads no values
        inplace = any(o is i for o in outs for i in inputs)
        single = outs[0] if len(outs) == 1 else None
        for t in {id(t): t for t in inputs}.values():
            for st in list(self._open.get(id(t), ())):
                st.consumers += 1
                if inplace:
                    self._close(st)
                if gain is not None and single is not None and st.consumers == 1:
                    # a pointwise unit is the first consumer: its gain masks the constant
                    st.next = self._stage(single, gain * st.bhat)
        if self._pending is not None:
            index, const = self._pending
            self._pending = None
            if single is None:
                raise ScopeError(f"constant of {site.path or ROOT} ({site.op}) added to an op with "
                                 f"{len(outs)} outputs: cannot follow it")
            self.chains.append(self._stage(single, const))
            if len(self.chains) != index + 1:
                raise ScopeError("constants and ops out of step: one op added two constants")

    # -- chains -------------------------------------------------------------------------------
    def _stage(self, t: Tensor, bhat: Tensor) -> _Stage:
        r = self.back_row
        scalar = (t[r:r + 1] * bhat).sum()
        st = _Stage(t, bhat, scalar)
        self._open.setdefault(id(t), []).append(st)
        return st

    def _close(self, st: _Stage) -> None:
        st.open = False
        same = self._open.get(id(st.tensor), [])
        same.remove(st)
        if not same:
            self._open.pop(id(st.tensor), None)

    def chain_ends(self) -> list[_Stage]:
        """Where each site's masked constant is back-projected from (see the module docstring)."""
        ends = []
        for st in self.chains:
            while st.consumers == 1 and st.next is not None:
                st = st.next
            ends.append(st)
        return ends

    def release(self) -> None:
        """Drop the references to activations (after the backward pass)."""
        self._open.clear()
        self.chains = []


def term_names(model: nn.Module, sites: Sequence[Site]) -> list[str]:
    """Names of the sites, in forward order.

    A site is named by the module path that added it (``model.named_modules()``; the root is
    ``(root)``). The path alone when it is the only constant of a leaf module called once (a
    conv or linear bias, a batch-norm shift); otherwise — a module called several times, several
    constants in one module, or a functional op in a module's forward — the path plus
    ``#k``, k counting that path's constants in forward order from 0.
    """
    modules = dict(unwrap_model(model).named_modules(remove_duplicate=False))
    per_path: dict[str, int] = {}
    for s in sites:
        per_path[s.path] = per_path.get(s.path, 0) + 1
    seen: dict[str, int] = {}
    names = []
    for s in sites:
        k = seen.get(s.path, 0)
        seen[s.path] = k + 1
        m = modules.get(s.path)
        leaf = m is not None and next(iter(m.children()), None) is None
        base = s.path or ROOT
        names.append(base if leaf and per_path[s.path] == 1 else f"{base}#{k}")
    return names


@dataclass
class Decomposition:
    """Scores of ``labels`` split per Theorem 1, plus what the pixel discussions need.

    Shapes: L labels, T sites, x0 of shape (C, H, W) (any input shape works), K scores.
    """

    labels: list[int]
    scores: Tensor            # (K,) f(x0)
    rows: Tensor              # (L, *in_shape) F's row of each label
    input_term: Tensor        # (L,) ⟨row, x0⟩ = (F·x0)[label]
    terms: list[str]          # T site names, forward order
    sites: list[Site]
    contributions: Tensor     # (L, T) ⟨∂score/∂t, b⟩ per site
    residual: Tensor          # (L,) r[label] of the pass (λ = 1, x1 = 0)
    back_projection: Tensor   # (*in_shape) Σ F_tᵀ b̂ over sites whose chain ends inside
    output_constant: Tensor   # (K,) b̂ of the sites whose chain ends at the output
    conservation: Tensor      # (L,) input + Σ terms − score

    @property
    def conservation_scale(self) -> Tensor:
        """|input| + Σ|terms| per label: the size the conservation error is measured against."""
        return self.input_term.abs() + self.contributions.abs().sum(1)


def decompose(model: nn.Module, x0: Tensor, labels: Sequence[int], rule: str = "freeze",
              overrides: dict[str, str] | None = None) -> Decomposition:
    """One forward and one backward pass: rows, input terms and layer-wise contributions of the
    scores ``labels`` (Theorem 1, eq. 8/16), and the back-projected masked biases (eq. 18).

    The batch is ``[x0, x1_1 … x1_L, x1_back]`` with every probe 0: probe k carries label k's
    score, the last one the back-projection objective.
    """
    model = unwrap_model(model)
    if x0.dim() < 2 or x0.shape[0] != 1:
        x0 = x0.unsqueeze(0)
    x0 = x0.detach()
    labels = [int(k) for k in labels]
    n = len(labels)
    back_row = n + 1
    probes = torch.zeros((n + 1,) + tuple(x0.shape[1:]), dtype=x0.dtype, device=x0.device,
                         requires_grad=True)
    tracer = ConstantTracer(n + 1, back_row, x0.dtype, x0.device)
    with torch.enable_grad(), LinearScope(model, rule=rule, overrides=overrides,
                                          observer=tracer):
        y = model(torch.cat([x0, probes]))
    if not isinstance(y, Tensor) or y.dim() != 2:
        raise ScopeError("classifier analyses need a model that returns scores of shape (batch, K)"
                         f", got {type(y).__name__} {tuple(getattr(y, 'shape', ()))}")
    K = y.shape[1]
    bad = [k for k in labels if not 0 <= k < K]
    if bad:
        raise ValueError(f"labels {bad} out of range for {K} scores")
    ends = tracer.chain_ends()
    out_storage = y.untyped_storage().data_ptr()
    output_constant = torch.zeros(K, dtype=x0.dtype, device=x0.device)
    objective = y[torch.arange(1, n + 1), labels].sum()
    for end in ends:
        t = end.tensor
        at_output = t is y or (t.untyped_storage().data_ptr() == out_storage
                               and t.numel() == y.numel() and t.is_contiguous())
        if at_output:
            output_constant += end.bhat.detach().expand(1, K)[0]
        else:
            objective = objective + end.scalar
    grads = torch.autograd.grad(objective, [probes] + tracer.lambdas, allow_unused=True)
    g_probes, g_lams = grads[0], grads[1:]
    rows = g_probes[:n].detach()
    back = g_probes[n].detach()
    contrib = torch.stack([g[:n] if g is not None else torch.zeros(n, dtype=x0.dtype,
                                                                   device=x0.device)
                           for g in g_lams], 1) if g_lams else x0.new_zeros((n, 0))
    contrib = contrib.detach()
    scores = y[0].detach()
    input_term = (rows * x0).flatten(1).sum(1)
    residual = y[torch.arange(1, n + 1), labels].detach()
    conservation = input_term + contrib.sum(1) - scores[labels]
    names = term_names(model, tracer.sites)
    tracer.release()
    return Decomposition(labels=labels, scores=scores, rows=rows, input_term=input_term.detach(),
                         terms=names, sites=list(tracer.sites), contributions=contrib,
                         residual=residual, back_projection=back, output_constant=output_constant,
                         conservation=conservation.detach())
