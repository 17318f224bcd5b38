"""The linear interpreter ``y = F(x0)·x + r(x0)`` of a network at an image x0 (paper eq. 5).

:class:`LinearInterpreter` runs the model inside a :class:`~precompute.scope.LinearScope` on
batches ``[x0, probes]``:

* ``output`` = f(x0) and ``residual`` = r(x0) from one pass with the probe x1 = 0;
* ``apply(V)`` = F·V: the probe branch with every constant switched off (biases, c(x0)), so a
  column is computed directly and not as ``(F·δ + r) − r``, which cancels catastrophically in
  float32 when r is large (EDSR works in 0–255);
* ``apply_transpose(U)`` = Fᵀ·U (eq. 6): one backward pass for a whole batch of K vectors, using
  ``∇_{x1} Σ_k ⟨y1_k, u_k⟩`` — each probe's gradient only sees its own output;
* ``columns``/``rows`` by flat index or ``(channel, y, x)``: impulse probes δ_k;
* ``check()`` measures the identities that prove an interpreter — requirement (3),
  F·x0 + r = f(x0), linearity, the adjoint identity, entries of F computed both as a column and
  as a row — and ``verify()`` raises :class:`IdentityError` when one exceeds its dtype-aware
  tolerance (:func:`gate_tolerance`): the run-time gate of ``precompute run``.

Shapes: the model maps ``(1, *in_shape)`` to ``(1, *out_shape)``; vectors passed to ``apply``
have shape ``(K, *in_shape)`` and to ``apply_transpose`` ``(K, *out_shape)``. F is indexed in C
order of these shapes (see docs/FORMAT.md).
"""

from __future__ import annotations

import itertools
import math
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from precompute.scope import LinearScope, ScopeError, eager, unwrap_model

#: The identities the gate checks, in the order they are reported, with what they state.
IDENTITIES: dict[str, str] = {
    "requirement3_rel": "requirement (3), x1 = x0 ⇒ y1 = y0",
    "output_rel": "f(x0) of the scope = f(x0) of the plain model",
    "reconstruction_rel": "F·x0 + r = f(x0)",
    "linearity_rel": "linearity, F(αu + βv) = αFu + βFv",
    "adjoint_rel": "the adjoint identity ⟨Fv, u⟩ = ⟨v, Fᵀu⟩",
    "column_row_rel": "F[i, j] computed as a column = F[i, j] computed as a row",
}


def tf32_enabled(device: torch.device) -> bool:
    """Do float32 convolutions or matrix products on ``device`` run in TF32 (10-bit mantissa)?"""
    return device.type == "cuda" and not (torch.backends.cudnn.conv.fp32_precision == "ieee"
                                          and torch.backends.cuda.matmul.fp32_precision == "ieee")


def gate_tolerance(dtype: torch.dtype, tf32: bool = False) -> float:
    """The largest relative error the gate accepts for any identity, in ``dtype``.

    ``2^16 · eps``: 1.5e-11 in float64, 7.8e-3 in float32. Every identity is exact in exact
    arithmetic; what remains is round-off, which grows with depth and dynamic range (the two
    sides of an identity run through different op orders: batched vs. unbatched convolutions,
    forward vs. backward passes, a reduction over all pixels). The worst errors measured on
    random-weight zoo models at small sizes (docs/INTERPRETER.md, "The gate") stay below
    ``2^7 · eps``, a margin of more than 500×; a wrong rule or a missed path gives errors of
    order 0.1 to 1 — a forgotten bias, a wrong gain, a path hidden from autograd.

    With TF32 on (``precision: tf32`` on a GPU, ~1e-3 relative error per convolution) the
    identities only hold to TF32's eps 2^-10, and the gate accepts ``2^6`` of it (6.3e-2): still
    far below the errors of order 1 that a wrong rule gives.
    """
    if tf32 and dtype == torch.float32:
        return float(2**6 * 2.0**-10)
    return float(2**16 * torch.finfo(dtype).eps)


def _amax(t: Tensor) -> float:
    return t.abs().max().item() if t.numel() else 0.0


class IdentityError(ScopeError):
    """The interpreter fails one of its defining identities beyond the gate's tolerance.

    ``identity`` is the key of :data:`IDENTITIES` (also of ``check()``), ``value`` the measured
    relative error, ``tolerance`` the gate's; ``summary`` is the message without the hint.
    """

    def __init__(self, identity: str, value: float, tolerance: float, precision: str):
        self.identity, self.value, self.tolerance = identity, value, tolerance
        self.summary = (f"the interpreter fails {IDENTITIES[identity]}: {identity} = {value:.3g} "
                        f"> tolerance {tolerance:.2g} ({precision}), so some op is not frozen "
                        "faithfully")
        super().__init__(f"{self.summary}; LinearInterpreter.audit() (or `precompute audit "
                         "CONFIG`) lists every intercepted call")


def exact_float_mode(device: torch.device) -> None:
    """Switch off TF32 on CUDA: cuDNN convolutions default to it (~1e-3 relative error)."""
    if device.type == "cuda":
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"


def _dot64(a: Tensor, b: Tensor, chunk: int = 1 << 20) -> float:
    """⟨a, b⟩ with products and sum in float64, a chunk at a time (no float64 copy of a
    full-size output)."""
    a, b = a.reshape(-1), b.reshape(-1)
    return sum(torch.dot(a[i:i + chunk].double(), b[i:i + chunk].double()).item()
               for i in range(0, a.numel(), chunk))


class LinearInterpreter:
    """The linear interpreter of ``model`` at ``x0`` (paper §3).

    Args:
        model: the network (eval mode for inference semantics; train-mode batch norm is frozen at
            x0's statistics, train-mode dropout is switched to eval with a warning).
        x0: the input image, shape ``(1, *in_shape)`` or ``in_shape``; its dtype and device are the
            interpreter's (the model must match them).
        rule: ``"freeze"`` (default) or ``"taylor"`` (eq. 4) for every non-linear unit.
        overrides: module-path pattern → rule (see :class:`LinearScope`).
        batch: probes per pass for ``apply``/``apply_transpose`` (any K is split into passes).
        exact: on CUDA, switch TF32 off (the default; results are then exact in float32). Pass
            False to keep the process-wide precision settings as they are.
        out_shape: the output's shape when the caller knows it (f(x0) of the plain model): the
            pass that computes the scoped f(x0) and r(x0) (``output``, ``residual``) then runs
            on their first use, not here — planning a large image builds the interpreter only
            to cut halo crops out of it (:mod:`precompute.halo`).
    """

    def __init__(self, model: nn.Module, x0: Tensor, rule: str = "freeze",
                 overrides: dict[str, str] | None = None, batch: int = 16, exact: bool = True,
                 out_shape: tuple | None = None):
        self.model = unwrap_model(model)
        if not isinstance(x0, Tensor) or not x0.is_floating_point():
            raise ScopeError("x0 must be a floating-point tensor")
        if x0.dim() == 0:
            raise ScopeError("x0 must have at least one dimension")
        if x0.shape[0] != 1 or x0.dim() == 1:
            x0 = x0.unsqueeze(0)
        self.x0 = x0.detach()
        self.dtype, self.device = x0.dtype, x0.device
        self._check_model_matches()
        if exact:
            exact_float_mode(self.device)
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.batch = int(batch)
        self.rule, self.overrides = rule, dict(overrides or {})
        self.in_shape = tuple(self.x0.shape[1:])
        self._output = self._residual = None
        self.out_shape = tuple(out_shape) if out_shape is not None else None
        if out_shape is None:
            self._constants_pass()

    def _constants_pass(self) -> None:
        """f(x0) and r(x0) of the scope (eq. 5 with a zero probe, constants on)."""
        with torch.no_grad():
            y = self._run(torch.zeros_like(self.x0), constants=True)
        if self.out_shape is not None and tuple(y.shape[1:]) != self.out_shape:
            raise ScopeError(f"the scoped model's output has shape {tuple(y.shape[1:])}, not the "
                             f"{self.out_shape} of f(x0)")
        self._output, self._residual = y[0].detach(), y[1].detach()
        self.out_shape = tuple(self._output.shape)

    @property
    def output(self) -> Tensor:
        """f(x0) as the scope computes it."""
        if self._output is None:
            self._constants_pass()
        return self._output

    @property
    def residual(self) -> Tensor:
        """r(x0) (eq. 5): the probe branch of a zero probe with the constants on."""
        if self._residual is None:
            self._constants_pass()
        return self._residual

    # -- basics ------------------------------------------------------------------------------
    @property
    def n_inputs(self) -> int:
        """n, the number of columns of F."""
        return math.prod(self.in_shape)

    @property
    def n_outputs(self) -> int:
        """N, the number of rows of F."""
        return math.prod(self.out_shape)

    def _check_model_matches(self) -> None:
        tensors = itertools.chain(self.model.parameters(), self.model.buffers())
        p = next((t for t in tensors if t.is_floating_point()), None)
        if p is not None and (p.dtype != self.dtype or p.device != self.device):
            raise ScopeError(
                f"the model's parameters are {p.dtype} on {p.device} but x0 is {self.dtype} "
                f"on {self.device}: move the model with model.to(x0.device, x0.dtype)")

    def scope(self, constants: bool = True, audit: bool = False) -> LinearScope:
        """A fresh LinearScope on the model with this interpreter's rules."""
        return LinearScope(self.model, rule=self.rule, overrides=self.overrides,
                           constants=constants, audit=audit)

    def _run(self, probes: Tensor, constants: bool) -> Tensor:
        """The scoped model on ``[x0, probes]``: returns ``[f(x0), F·probes (+ r)]``."""
        batch = torch.cat([self.x0, probes.to(self.dtype)])
        with self.scope(constants=constants):
            y = self.model(batch)
        if not isinstance(y, Tensor):
            raise ScopeError(f"the model returned {type(y).__name__}; LinearScope needs a single "
                             "tensor output (wrap the model to select it)")
        return y

    def _chunks(self, k: int) -> Iterable[slice]:
        for start in range(0, k, self.batch):
            yield slice(start, min(k, start + self.batch))

    # -- F·v and Fᵀ·u ------------------------------------------------------------------------
    def apply(self, vectors: Tensor) -> Tensor:
        """F·v for a batch of input-domain vectors ``(K, *in_shape)`` → ``(K, *out_shape)``.

        Computed on the linear part directly: biases and every c(x0) are switched off on the probe
        branch (exact, no cancellation against r)."""
        return self._forward(vectors, constants=False, what="apply")

    def affine(self, vectors: Tensor) -> Tensor:
        """F·v + r(x0) for a batch of probes: the probe branch of eq. 5 as the paper runs it."""
        return self._forward(vectors, constants=True, what="affine")

    def _forward(self, vectors: Tensor, constants: bool, what: str) -> Tensor:
        """The probe branch on ``vectors`` in passes of ``batch`` probes (no autograd)."""
        vectors = self._as_batch(vectors, self.in_shape, what)
        out = []
        with torch.no_grad():
            for part in self._chunks(vectors.shape[0]):
                out.append(self._run(vectors[part], constants=constants)[1:])
        if len(out) == 1:
            return out[0]  # one pass: its outputs as they are (no copy of K outputs)
        return torch.cat(out) if out else vectors.new_zeros((0,) + self.out_shape)

    def apply_transpose(self, vectors: Tensor) -> Tensor:
        """Fᵀ·u for a batch of output-domain vectors ``(K, *out_shape)`` → ``(K, *in_shape)``.

        Eq. 6: ``Fᵀ u = ∇_{x1} ⟨y1(x1), u⟩``; one backward pass gives all K products of a chunk
        because probe k's output depends on probe k's input only."""
        vectors = self._as_batch(vectors, self.out_shape, "apply_transpose")
        out = []
        for part in self._chunks(vectors.shape[0]):
            u = vectors[part]
            with torch.enable_grad():
                probes = torch.zeros((u.shape[0],) + self.in_shape, dtype=self.dtype,
                                     device=self.device, requires_grad=True)
                y1 = self._run(probes, constants=False)[1:]
                (grad,) = torch.autograd.grad(y1, probes, grad_outputs=u, allow_unused=True)
            out.append(torch.zeros_like(probes) if grad is None else grad.detach())
        return torch.cat(out) if out else vectors.new_zeros((0,) + self.in_shape)

    def _as_batch(self, v: Tensor, shape: tuple, what: str) -> Tensor:
        if tuple(v.shape[1:]) != shape:
            if tuple(v.shape) == shape:
                v = v.unsqueeze(0)
            else:
                raise ValueError(f"{what}: expected vectors of shape (K, {', '.join(map(str, shape))})"
                                 f", got {tuple(v.shape)}")
        return v.to(self.device, self.dtype)

    # -- columns and rows ----------------------------------------------------------------------
    def _impulses(self, indices: Sequence[int], shape: tuple) -> Tensor:
        indices = torch.as_tensor(list(indices), dtype=torch.long)
        n = math.prod(shape)
        if indices.numel() and (indices.min() < 0 or indices.max() >= n):
            raise IndexError(f"flat index out of range [0, {n})")
        e = torch.zeros((indices.numel(), n), dtype=self.dtype, device=self.device)
        e[torch.arange(indices.numel()), indices.to(self.device)] = 1
        return e.view((indices.numel(),) + shape)

    def columns(self, indices: Sequence[int]) -> Tensor:
        """Columns F[:, k] (projective filters) for flat input indices k → ``(K, *out_shape)``."""
        return self.apply(self._impulses(indices, self.in_shape))

    def rows(self, indices: Sequence[int]) -> Tensor:
        """Rows F[k, :] (receptive filters) for flat output indices k → ``(K, *in_shape)``."""
        return self.apply_transpose(self._impulses(indices, self.out_shape))

    def column(self, *index: int) -> Tensor:
        """The column of one input entry, by flat index or by ``(channel, y, x)``."""
        return self.columns([self._flat(index, self.in_shape)])[0]

    def row(self, *index: int) -> Tensor:
        """The row of one output entry, by flat index or by ``(channel, y, x)`` (or ``(k,)``)."""
        return self.rows([self._flat(index, self.out_shape)])[0]

    @staticmethod
    def _flat(index: tuple, shape: tuple) -> int:
        if len(index) == 1:
            return int(index[0])
        if len(index) != len(shape):
            raise IndexError(f"expected a flat index or {len(shape)} coordinates, got {index}")
        flat = 0
        for i, s in zip(index, shape):
            if not 0 <= i < s:
                raise IndexError(f"index {index} out of range for shape {shape}")
            flat = flat * s + int(i)
        return flat

    def dense(self) -> Tensor:
        """The whole F as an ``(N, n)`` matrix (small models only), built from columns."""
        cols = self.columns(range(self.n_inputs))
        return cols.reshape(self.n_inputs, self.n_outputs).T.contiguous()

    # -- checks ------------------------------------------------------------------------------
    def check(self, seed: int = 0, reference: Tensor | None = None) -> dict[str, float]:
        """Measure the interpreter's defining identities; returns their errors.

        * ``requirement3_abs/rel``: ``‖y1 − y0‖∞`` for the probe x1 = x0 (eq. 3), relative to
          ``‖y0‖∞``;
        * ``output_rel`` (only with a ``reference`` f(x0) of the plain model):
          ``‖f_scope(x0) − f(x0)‖∞ / ‖f(x0)‖∞``;
        * ``reconstruction_abs/rel``: ``‖F·x0 + r − f(x0)‖∞``, relative to the largest of
          ``‖f(x0)‖∞, ‖F·x0‖∞, ‖r‖∞`` (the scale of the round-off in the sum);
        * ``linearity_rel``: ``‖F(αu + βv) − αFu − βFv‖∞ / ‖αFu + βFv‖∞``;
        * ``adjoint_rel``: ``|⟨Fv, u⟩ − ⟨v, Fᵀu⟩| / max(‖Fv‖·‖u‖, ‖v‖·‖Fᵀu‖)``;
        * ``column_row_rel``: for a few random entries F[i, j] (j random and i the largest entry
          of column j; i random and j the largest entry of row i), ``|column − row|`` relative
          to the larger max-abs of the two vectors.

        u, v are random; everything is seeded by ``seed``.
        """
        return self.check_local(seed) | self.check_whole(reference)

    def check_local(self, seed: int = 0) -> dict[str, float]:
        """The identities of :meth:`check` that are properties of the rules on this x0 —
        requirement (3), linearity, the adjoint identity, columns against rows — and not of
        the stored f(x0) and r(x0). For a network with a bounded support they hold on the
        image if they hold on crops of it (every unit sees a crop of x0), so a run checks them
        on halo crops; :meth:`check_whole` checks the rest on the whole image.

        Each identity in its own method: its full-size temporaries die when it returns, so the
        gate holds at most one pass of 3 probes and a few outputs besides f(x0), r and the
        reference (precompute/memory.py counts exactly this to refuse what cannot fit)."""
        gen = torch.Generator().manual_seed(seed)
        checks = self._requirement3() | self._linearity_adjoint(gen)
        checks["column_row_rel"] = self._column_row(gen)
        return checks

    def check_whole(self, reference: Tensor | None = None) -> dict[str, float]:
        """The identities of :meth:`check` about f(x0) and r(x0) as stored: F·x0 + r = f(x0)
        (one pass of x0) and, with a ``reference`` f(x0), the scope's f(x0) against it."""
        checks = self._reconstruction()
        if reference is not None:
            f = self.output
            ref = reference.reshape(f.shape).to(f.device, f.dtype)
            checks["output_rel"] = _amax(f - ref) / (_amax(ref) or 1.0)
        return checks

    def _randn(self, gen: torch.Generator, shape) -> Tensor:
        return torch.randn((1,) + tuple(shape), generator=gen, dtype=torch.float64).to(
            self.device, self.dtype)

    def _requirement3(self) -> dict[str, float]:
        """Eq. 3: the probe x1 = x0 gives y1 = y0."""
        with torch.no_grad():
            y = self._run(self.x0, constants=True)
        req3 = _amax(y[1] - y[0])
        return {"requirement3_abs": req3, "requirement3_rel": req3 / (_amax(y[0]) or 1.0)}

    def _reconstruction(self) -> dict[str, float]:
        """F·x0 + r = f(x0), relative to the largest of its terms (the scale of the round-off)."""
        f, fx0 = self.output, self.apply(self.x0)[0].detach()
        scale = max(_amax(f), _amax(fx0), _amax(self.residual)) or 1.0
        fx0 += self.residual
        fx0 -= f
        recon = _amax(fx0)
        return {"reconstruction_abs": recon, "reconstruction_rel": recon / scale}

    def _linearity_adjoint(self, gen: torch.Generator) -> dict[str, float]:
        """F(αu + βv) = αFu + βFv, and ⟨Fv, w⟩ = ⟨v, Fᵀw⟩ (eq. 6), for random u, v, w."""
        u, v = self._randn(gen, self.in_shape), self._randn(gen, self.in_shape)
        a, b = 0.7, -1.3
        fu, fv, fw = self.apply(torch.cat([u, v, a * u + b * v])).detach()
        w = self._randn(gen, self.out_shape)
        ftw = self.apply_transpose(w)[0]
        lhs, rhs = _dot64(fv, w[0]), _dot64(v[0], ftw)
        adj = abs(lhs - rhs) / (max((fv.norm() * w.norm()).item(), (v.norm() * ftw.norm()).item())
                                or 1.0)
        del w, ftw
        fu.mul_(a).add_(fv, alpha=b)  # αFu + βFv, in place
        fw -= fu
        return {"linearity_rel": _amax(fw) / (_amax(fu) or 1.0), "adjoint_rel": adj}

    def _column_row(self, gen: torch.Generator, m: int = 3) -> float:
        """The worst disagreement between entries of F computed as columns and as rows: for m
        random columns, the row through each column's largest entry; for m random rows, the
        column through each row's largest entry."""
        js = torch.randint(self.n_inputs, (m,), generator=gen).tolist()
        i_s = torch.randint(self.n_outputs, (m,), generator=gen).tolist()
        worst = 0.0

        def compare(cols: Tensor, rows: Tensor, i_list, j_list) -> None:
            nonlocal worst
            for col, row, i, j in zip(cols, rows, i_list, j_list):
                scale = max(col.abs().max().item(), row.abs().max().item())
                if scale > 0:
                    worst = max(worst, abs(col[i].item() - row[j].item()) / scale)

        # rows one at a time: a backward pass of K probes holds about 2K + 1 outputs besides its
        # forward (the K output-sized impulses and the gradient of the batch slice)
        def rows_one_by_one(indices):
            return torch.cat([self.rows([i]).reshape(1, -1) for i in indices])

        cols = self.columns(js).reshape(m, -1)
        i_for_j = cols.abs().argmax(1).tolist()
        compare(cols, rows_one_by_one(i_for_j), i_for_j, js)
        del cols
        rows = rows_one_by_one(i_s)
        j_for_i = rows.abs().argmax(1).tolist()
        compare(self.columns(j_for_i).reshape(m, -1), rows, i_s, j_for_i)
        return worst

    def verify(self, seed: int = 0, reference: Tensor | None = None) -> dict[str, float]:
        """The run-time gate: measure every identity (:meth:`check`) and raise
        :class:`IdentityError` for the first one above :func:`gate_tolerance` of this dtype (and
        TF32 setting).

        Call it before trusting any result: it is the safety net for model code the scope has
        not thought of. ``reference`` is f(x0) of the plain model; without it, it is computed
        here when every module is in eval mode. Returns the measured values.
        """
        if reference is None and not any(m.training for m in self.model.modules()):
            with torch.no_grad(), eager():
                reference = self.model(self.x0)
        return self.enforce(self.check(seed=seed, reference=reference))

    def enforce(self, checks: dict[str, float]) -> dict[str, float]:
        """Raise :class:`IdentityError` for the first identity of ``checks`` above
        :func:`gate_tolerance` of this dtype (and TF32 setting); returns ``checks``."""
        tf32 = self.dtype == torch.float32 and tf32_enabled(self.device)
        tol = gate_tolerance(self.dtype, tf32)
        for identity in IDENTITIES:
            value = checks.get(identity)
            if value is not None and not value <= tol:  # NaN fails too
                raise IdentityError(identity, value, tol, str(self.dtype).removeprefix("torch.")
                                    + (", TF32" if tf32 else ""))
        return checks

    def audit(self):
        """One pass that lists every intercepted call: module path, op, call index, rule."""
        scope = self.scope(constants=True, audit=True)
        with torch.no_grad(), scope:
            self.model(torch.cat([self.x0, torch.zeros_like(self.x0)]))
        return scope.records
