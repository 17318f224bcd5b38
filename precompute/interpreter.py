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
* ``check()`` measures requirement (3), F·x0 + r = f(x0), linearity and the adjoint identity.

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

from precompute.scope import LinearScope, ScopeError, unwrap_model


def exact_float_mode(device: torch.device) -> None:
    """Switch off TF32 on CUDA: cuDNN convolutions default to it (~1e-3 relative error)."""
    if device.type == "cuda":
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"


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
    """

    def __init__(self, model: nn.Module, x0: Tensor, rule: str = "freeze",
                 overrides: dict[str, str] | None = None, batch: int = 16, exact: bool = True):
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
        with torch.no_grad():
            y = self._run(torch.zeros_like(self.x0), constants=True)
        self.output = y[0].detach()
        self.residual = y[1].detach()
        self.out_shape = tuple(self.output.shape)

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

    # -- checks --------------------------------------------------------------------------------
    def check(self, seed: int = 0) -> dict[str, float]:
        """Measure the interpreter's defining identities; returns their errors.

        * ``requirement3_abs/rel``: ``‖y1 − y0‖∞`` for the probe x1 = x0 (eq. 3), relative to
          ``‖y0‖∞``;
        * ``reconstruction_abs/rel``: ``‖F·x0 + r − f(x0)‖∞`` relative to ``‖f(x0)‖∞``;
        * ``linearity_rel``: ``‖F(αu + βv) − αFu − βFv‖∞ / ‖αFu + βFv‖∞``;
        * ``adjoint_rel``: ``|⟨Fv, u⟩ − ⟨v, Fᵀu⟩| / (‖Fv‖·‖u‖)``.
        """
        gen = torch.Generator().manual_seed(seed)

        def randn(shape):
            return torch.randn((1,) + shape, generator=gen, dtype=torch.float64).to(
                self.device, self.dtype)

        with torch.no_grad():
            y = self._run(self.x0, constants=True)
        y0, y1 = y[0], y[1]
        f = self.output
        scale_f = f.abs().max().item() or 1.0
        req3 = (y1 - y0).abs().max().item()
        recon = (self.apply(self.x0)[0] + self.residual - f).abs().max().item()
        u, v = randn(self.in_shape), randn(self.in_shape)
        a, b = 0.7, -1.3
        fu, fv, fw = self.apply(torch.cat([u, v, a * u + b * v]))
        combo = a * fu + b * fv
        lin = (fw - combo).abs().max().item() / (combo.abs().max().item() or 1.0)
        w = randn(self.out_shape)
        ftw = self.apply_transpose(w)[0]
        lhs = (fv * w[0]).sum().item()
        rhs = (v[0] * ftw).sum().item()
        adj = abs(lhs - rhs) / ((fv.norm() * w.norm()).item() or 1.0)
        return {
            "requirement3_abs": req3,
            "requirement3_rel": req3 / (y0.abs().max().item() or 1.0),
            "reconstruction_abs": recon,
            "reconstruction_rel": recon / scale_f,
            "linearity_rel": lin,
            "adjoint_rel": adj,
        }

    def audit(self):
        """One pass that lists every intercepted call: module path, op, call index, rule."""
        scope = self.scope(constants=True, audit=True)
        with torch.no_grad(), scope:
            self.model(torch.cat([self.x0, torch.zeros_like(self.x0)]))
        return scope.records
