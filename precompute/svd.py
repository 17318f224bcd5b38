"""Top-k SVD of the linear interpreter: eigen-inputs, eigen-outputs and singular values.

``F(x0) v_i = σ_i u_i`` with unit eigen-inputs ``v_i`` (input domain) and eigen-outputs ``u_i``
(output domain), σ_1 ≥ σ_2 ≥ …: the paper's §3 "Singular Value Decomposition" and its Figures 5,
6, 12, 14 and 15. Every solver sees F only through batched products — :class:`Operator` wraps the
:class:`~precompute.engine.Engine`, i.e. ``LinearInterpreter.apply`` (F·V, eq. 5 with the constants
off) and ``apply_transpose`` (Fᵀ·U, eq. 6) — and counts the sequential batched passes it makes:

``dense``
    materialise F with impulse probes (columns, or rows when there are fewer outputs) and take the
    exact SVD (``torch.linalg.svd`` in float64). ``auto`` picks it when N·n ≤ 10⁷.
``block``
    randomized block Krylov (Musco & Musco 2015) as a block Lanczos bidiagonalisation: a block of
    b random inputs, then alternately ``F·V_j`` (one forward call) and ``Fᵀ·U_j`` (one backward
    call), each block fully re-orthogonalised (twice) against all previous ones; Rayleigh–Ritz on
    ``B = Uᵀ F V``; stop when the Ritz residuals, known for free from ``G = Vᵀ Fᵀ U``, are ≤ tol.
``power``
    the paper's Algorithm 1 (power iteration with momentum, Xu et al. 2018) for one triplet at a
    time, then deflation of **F only**: ``F − Σ σ_j u_j v_jᵀ`` (the paper writes
    ``F + r − σ_1 u_1 v_1ᵀ``; r is not part of the linear map).

After any solver, :func:`finish` applies the sign convention (the largest-magnitude entry of each
v_i is positive; u_i flips with it) and *measures* the residuals ``‖F v_i − σ_i u_i‖/σ_i`` and
``‖Fᵀ u_i − σ_i v_i‖/σ_i`` with one more forward and backward call.

In ``precompute run`` this is the whole-F analysis ``svd`` (:func:`planned`, :func:`describe`,
:func:`done`, :func:`run`, see :mod:`precompute.run`): results go to the store's ``svd/`` group
(docs/FORMAT.md), which is marked complete last; the block and power solvers save their state after
every block (triplet) in ``svd/state`` so a killed run resumes bitwise-identically.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from precompute.errors import UserError

DENSE_LIMIT = 10**7            # auto: dense when N·n ≤ this (F of ≤ 80 MB in float64)
STORE_DENSE_LIMIT = 10**8      # auto on the stored F: dense when N·n ≤ this ...
STORE_DENSE_SIDE = 4096        # ... and the Gram matrix of the smaller side is at most this wide
DEFAULT_TOL = {"float32": 1e-4, "float64": 1e-8}
BLOCK_MAX_CALLS = 100          # default pass budget of the block solver
POWER_CALLS_PER_TRIPLET = 2000  # default pass budget of Algorithm 1, per triplet
POWER_WARMUP = 10              # plain iterations before Algorithm 1's momentum is set
SIGN_CONVENTION = "the largest-magnitude entry of each v_i is positive (the first in C order on ties)"


# ---------------------------------------------------------------------------------------------
# The operator: F and Fᵀ on flat vectors, counting passes.


class Operator:
    """F (N × n) through batched products only, on flat row-vectors.

    ``F(V)`` maps ``(K, n) → (K, N)`` and ``Ft(U)`` maps ``(K, N) → (K, n)``; each call counts
    ``⌈K / pass_size⌉`` passes in ``passes["forward"]`` / ``passes["backward"]`` (the batched
    passes a device runs one after the other).
    """

    def __init__(self, forward: Callable[[Tensor], Tensor], transpose: Callable[[Tensor], Tensor],
                 n: int, N: int, dtype: torch.dtype, device: torch.device, pass_size: int):
        self._forward, self._transpose = forward, transpose
        self.n, self.N = int(n), int(N)
        self.dtype, self.device = dtype, device
        self.pass_size = max(1, int(pass_size))
        self.passes = {"forward": 0, "backward": 0}

    def _count(self, kind: str, k: int) -> None:
        self.passes[kind] += -(-k // self.pass_size)

    def F(self, V: Tensor) -> Tensor:
        if V.shape[0] == 0:
            return V.new_zeros((0, self.N))
        self._count("forward", V.shape[0])
        return self._forward(V).reshape(V.shape[0], self.N)

    def Ft(self, U: Tensor) -> Tensor:
        if U.shape[0] == 0:
            return U.new_zeros((0, self.n))
        self._count("backward", U.shape[0])
        return self._transpose(U).reshape(U.shape[0], self.n)

    @property
    def total_passes(self) -> int:
        return self.passes["forward"] + self.passes["backward"]

    @classmethod
    def from_engine(cls, engine, pass_size: int | None = None) -> "Operator":
        """F of an :class:`~precompute.engine.Engine` (its interpreter's apply/apply_transpose)."""
        i, o = tuple(engine.in_shape), tuple(engine.out_shape)
        return cls(lambda V: engine.apply(V.reshape(-1, *i), "columns"),
                   lambda U: engine.apply(U.reshape(-1, *o), "rows"),
                   math.prod(i), math.prod(o), engine.dtype, engine.device,
                   pass_size or engine.li.batch)


# ---------------------------------------------------------------------------------------------
# Results.


@dataclass
class Solution:
    """What a solver found: σ (float64, descending), u (k, N) and v (k, n) in the operator dtype."""

    sigma: Tensor
    u: Tensor
    v: Tensor
    converged: bool
    method: str
    iterations: int = 0
    seconds: float = 0.0           # solver seconds, including those of interrupted runs
    resumed: bool = False
    extra: dict = field(default_factory=dict)


@dataclass
class Triplets:
    """Final triplets as stored: sign convention applied, residuals measured (float64 arrays)."""

    sigma: np.ndarray      # (k,)
    u: np.ndarray          # (k, N)
    v: np.ndarray          # (k, n)
    residual: np.ndarray   # (k, 2): ‖F v − σ u‖/σ, ‖Fᵀ u − σ v‖/σ
    residual_passes: dict


def zero_floor(dtype: torch.dtype, n: int, N: int) -> float:
    """σ_i ≤ σ_1 · this counts as a numerically zero singular value (numpy's matrix_rank rule)."""
    return float(torch.finfo(dtype).eps) * max(n, N)


def denominators(sigma: Tensor, floor: float) -> Tensor:
    """σ_i for residuals relative to σ_i, σ_1 for numerically zero σ_i (never 0)."""
    s1 = float(sigma[0]) if sigma.numel() and float(sigma[0]) > 0 else 1.0
    return torch.where(sigma > floor * s1, sigma, torch.full_like(sigma, s1))


def _seed(seed: int, *parts: int) -> int:
    """A deterministic generator seed for (run seed, step, …): resumed runs draw the same."""
    h = int(seed) % (2**61)
    for p in parts:
        h = (h * 1_000_003 + int(p) + 1) % (2**61)
    return h


def _randn(rows: int, d: int, seed: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, d, generator=g, dtype=torch.float64).to(device, dtype)


# ---------------------------------------------------------------------------------------------
# Method dense.


def dense(op: Operator, k: int) -> Solution:
    """Exact top-k SVD of the materialised F: impulses on the side with fewer probes (n columns
    by forward passes, or N rows by backward passes), then ``torch.linalg.svd`` in float64."""
    t0 = time.perf_counter()
    side = op.n if op.n <= op.N else op.N
    blocks = []
    for start in range(0, side, op.pass_size):
        idx = torch.arange(start, min(side, start + op.pass_size), device=op.device)
        eye = torch.zeros(len(idx), side, dtype=op.dtype, device=op.device)
        eye[torch.arange(len(idx), device=op.device), idx] = 1
        blocks.append((op.F(eye) if side == op.n else op.Ft(eye)).double())
    A = torch.cat(blocks)                     # columns as rows (n, N), or rows (N, n)
    A = A.T if side == op.n else A            # F, (N, n)
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    return Solution(S[:k].cpu(), U[:, :k].T.to(op.dtype), Vh[:k].to(op.dtype), True, "dense",
                    seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Method block: block Lanczos bidiagonalisation with full re-orthogonalisation.


def extend_basis(Q: Tensor | None, W: Tensor, capacity: int, scale: float, seed: int
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Extend the orthonormal rows ``Q`` (m, d) by the span of the rows of ``W`` (w, d).

    Returns ``(block, c_old, c_new)`` with ``W = c_old·Q + c_new·block`` (up to directions below
    ``scale·eps·√d``, rounding noise): ``block`` has ``min(w, capacity)`` orthonormal rows
    orthogonal to Q. Where W is (numerically) rank deficient — F maps the block onto fewer
    directions — the block is completed with seeded random directions, which keeps the Krylov
    iteration going on the rest of the space (zero coefficients, so the identity stays exact).
    Classical Gram–Schmidt is applied twice ("twice is enough").
    """
    w, d = W.shape
    m = 0 if Q is None else Q.shape[0]
    W = W.clone()
    c_old = torch.zeros(w, m, dtype=torch.float64)
    for _ in range(2):
        if m:
            c = W @ Q.T
            W -= c @ Q
            c_old += c.double().cpu()
    width = min(w, capacity)
    if width <= 0:
        return W.new_zeros((0, d)), c_old, torch.zeros(w, 0, dtype=torch.float64)
    # the directions of W (an SVD of the tall Wᵀ: far faster than of the wide W)
    left, s, _ = torch.linalg.svd(W.T, full_matrices=False)
    thresh = scale * float(torch.finfo(W.dtype).eps) * math.sqrt(d)
    r = min(int((s > thresh).sum()), width)
    block = left[:, :r].T
    if r < width:
        block = torch.cat([block, _randn(width - r, d, seed, W.dtype, W.device)])
    # W ⟂ Q after two passes, but a direction of small s_i can lose that (and random directions
    # never had it): project once more, and a second time only if the first removed more than
    # √ε (then one pass leaves ≤ ε; "twice is enough")
    for _ in range(2):
        c = block @ Q.T if m else None
        if c is not None:
            block = block - c @ Q
        block = _orthonormal_rows(block)
        if c is None or float(c.abs().max()) <= math.sqrt(float(torch.finfo(W.dtype).eps)):
            break
    c_new = (W @ block.T).double().cpu()
    return block, c_old, c_new


def _orthonormal_rows(X: Tensor) -> Tensor:
    """Orthonormalise the rows of a well-conditioned block (Cholesky QR: one w×w Gram matrix in
    float64, then a triangular solve; QR when the Gram matrix is not positive definite)."""
    G = (X @ X.T).double()
    L, info = torch.linalg.cholesky_ex(G)
    if int(info) != 0:
        q, _ = torch.linalg.qr(X.T)
        return q.T.contiguous()
    return torch.linalg.solve_triangular(L.to(X.dtype), X, upper=False).contiguous()


class Basis:
    """Orthonormal rows kept contiguous in a buffer whose capacity doubles (no re-concatenation of
    the whole basis at every iteration), appended block by block."""

    def __init__(self, d: int, dtype: torch.dtype, device: torch.device):
        self.buf = torch.empty(0, d, dtype=dtype, device=device)
        self.widths: list[int] = []

    @property
    def m(self) -> int:
        return sum(self.widths)

    def __len__(self) -> int:
        return len(self.widths)

    def rows(self, blocks: int | None = None) -> Tensor:
        """The rows of the first ``blocks`` blocks (all by default), a view."""
        return self.buf[:sum(self.widths[:blocks]) if blocks is not None else self.m]

    def block(self, j: int) -> Tensor:
        start = sum(self.widths[:j])
        return self.buf[start:start + self.widths[j]]

    def append(self, block: Tensor) -> None:
        m, w = self.m, block.shape[0]
        if m + w > self.buf.shape[0]:
            grown = self.buf.new_empty((max(2 * self.buf.shape[0], m + w), self.buf.shape[1]))
            grown[:m] = self.buf[:m]
            self.buf = grown
        self.buf[m:m + w] = block
        self.widths.append(w)


@dataclass
class KrylovState:
    """Everything the block solver has after some iterations (what :class:`State` saves).

    ``V``: input-domain blocks (the last one not yet multiplied by F); ``U``: output-domain
    blocks; ``B = Uᵀ F V`` (m_U × m_V′, the V blocks already multiplied) and ``G = Vᵀ Fᵀ U``
    (m_V × m_U), float64; ``scale``: the largest ‖F v‖ seen (rank threshold).
    """

    V: Basis
    U: Basis
    B: Tensor
    G: Tensor
    scale: float = 0.0
    passes: dict = field(default_factory=lambda: {"forward": 0, "backward": 0})
    seconds: float = 0.0

    @property
    def iterations(self) -> int:
        return len(self.U)


@dataclass
class Ritz:
    sigma: Tensor      # (r,) float64
    x: Tensor          # (m_U, r): u_i = U x_i
    y: Tensor          # (m_V′, r): v_i = V y_i
    rel: Tensor        # (r,) estimated ‖Fᵀ u_i − σ_i v_i‖ / σ_i


def ritz(B: Tensor, G: Tensor, k: int, floor: float) -> Ritz:
    """Rayleigh–Ritz on B = Uᵀ F V: F v_i = σ_i u_i holds exactly on the bases (F V = U B), and
    ``Fᵀ u_i − σ_i v_i = V (G x_i − σ_i [y_i; 0])`` gives the other residual without a call."""
    X, S, Yh = torch.linalg.svd(B, full_matrices=False)
    r = min(k, S.numel())
    x, y, s = X[:, :r], Yh[:r].T, S[:r]
    ypad = torch.zeros(G.shape[0], r, dtype=torch.float64)
    ypad[:y.shape[0]] = y
    est = torch.linalg.vector_norm(G @ x - ypad * s, dim=0)
    return Ritz(s, x, y, est / denominators(s, floor))


def _grow(M: Tensor, rows: int, cols: int) -> Tensor:
    out = torch.zeros(rows, cols, dtype=torch.float64)
    out[:M.shape[0], :M.shape[1]] = M
    return out


def block_krylov(op: Operator, k: int, *, block: int, tol: float, max_passes: int, seed: int,
                 state: "State | None" = None, progress=None) -> Solution:
    """Top-k triplets by block Lanczos bidiagonalisation (randomized block Krylov).

    Iteration j: ``U_j`` ← F·V_j re-orthogonalised against ``U_1…U_{j−1}`` (one forward call),
    ``V_{j+1}`` ← Fᵀ·U_j re-orthogonalised against ``V_1…V_j`` (one backward call). Stops when
    the top-k Ritz residuals are ≤ tol (relative to σ_i), when the bases span the whole space
    (then the Ritz values are exact), or before a pass would exceed ``max_passes``.
    """
    n, N = op.n, op.N
    floor = zero_floor(op.dtype, n, N)
    ks = state.load_krylov(op) if state is not None else None
    resumed = ks is not None
    if ks is None:
        V1, _, _ = extend_basis(None, _randn(block, n, _seed(seed, 0), op.dtype, op.device), n,
                                1.0, _seed(seed, 0, 1))
        ks = KrylovState(V=Basis(n, op.dtype, op.device), U=Basis(N, op.dtype, op.device),
                         B=torch.zeros(0, 0, dtype=torch.float64),
                         G=torch.zeros(V1.shape[0], 0, dtype=torch.float64))
        ks.V.append(V1)
        if state is not None:
            state.begin_krylov(op, block, max_passes)
    op.passes = dict(ks.passes)
    t0 = time.perf_counter() - ks.seconds
    converged = False
    while True:
        t = ks.iterations
        if t and ritz_due(t, ks.U.m):
            rz = ritz(ks.B, ks.G, k, floor)
            have_k = rz.sigma.numel() >= k
            if progress is not None:
                progress(op.total_passes, float(rz.rel.max()) if have_k else float("inf"))
            if have_k and bool((rz.rel <= tol).all()):
                converged = True
                break
        Vt = ks.V.block(t)
        if Vt.shape[0] == 0:  # V spans the whole input space: B holds F exactly
            converged = True
            break
        cost = 2 * -(-Vt.shape[0] // op.pass_size)
        if op.total_passes + cost > max_passes:
            break
        m_U, m_V = ks.U.m, ks.V.m
        m_Vf = m_V  # after this iteration every V block but the new one has been multiplied
        FV = op.F(Vt)
        ks.scale = max(ks.scale, float(torch.linalg.vector_norm(FV, dim=1).max()))
        Ub, c_old, c_new = extend_basis(ks.U.rows() if m_U else None, FV, N - m_U, ks.scale,
                                        _seed(seed, t + 1, 0))
        B = _grow(ks.B, m_U + Ub.shape[0], m_Vf)
        B[:m_U, m_Vf - Vt.shape[0]:] = c_old.T
        B[m_U:, m_Vf - Vt.shape[0]:] = c_new.T
        ks.B = B
        ks.U.append(Ub)
        if Ub.shape[0]:
            FtU = op.Ft(Ub)
            ks.scale = max(ks.scale, float(torch.linalg.vector_norm(FtU, dim=1).max()))
            Vb, d_old, d_new = extend_basis(ks.V.rows(), FtU, n - m_V, ks.scale,
                                            _seed(seed, t + 1, 1))
        else:  # U spans the whole output space: Fᵀ U adds nothing new
            Vb = Vt.new_zeros((0, n))
            d_old = torch.zeros(0, m_V, dtype=torch.float64)
            d_new = torch.zeros(0, 0, dtype=torch.float64)
        G = _grow(ks.G, m_V + Vb.shape[0], m_U + Ub.shape[0])
        G[:m_V, m_U:] = d_old.T
        G[m_V:, m_U:] = d_new.T
        ks.G = G
        ks.V.append(Vb)
        ks.passes = dict(op.passes)
        ks.seconds = time.perf_counter() - t0
        if state is not None:
            state.save_krylov(ks)
    rz = ritz(ks.B, ks.G, k, floor)
    r = rz.sigma.numel()
    v = rz.y.T.to(op.dtype).to(op.device) @ ks.V.rows(ks.iterations)
    u = rz.x.T.to(op.dtype).to(op.device) @ ks.U.rows()
    if r < k:  # too few passes for k Ritz vectors: pad (never converged)
        v = torch.cat([v, v.new_zeros((k - r, n))])
        u = torch.cat([u, u.new_zeros((k - r, N))])
        converged = False
    sigma = torch.cat([rz.sigma, torch.zeros(k - r, dtype=torch.float64)])
    est = torch.cat([rz.rel, torch.full((k - r,), float("inf"), dtype=torch.float64)])
    return Solution(sigma, u, v, converged, "block", iterations=ks.iterations,
                    seconds=time.perf_counter() - t0, resumed=resumed,
                    extra={"estimates": [float(e) for e in est], "basis": [ks.U.m, ks.V.m]})


RITZ_EVERY = 512  # Rayleigh–Ritz (an SVD of B, O(m³)) at every iteration while m_U ≤ this


def ritz_due(t: int, m: int) -> bool:
    """Whether to run Rayleigh–Ritz after iteration t (basis of m): always while it is cheap,
    then every ⌊t/8⌋ iterations (≤ 12 % more iterations than needed, O(m³) work kept near that
    of one final SVD). A function of (t, m) only, so resumed runs stop at the same iteration."""
    return m <= RITZ_EVERY or t % max(1, t // 8) == 0


# ---------------------------------------------------------------------------------------------
# Method power: the paper's Algorithm 1 with deflation of F.


def _momentum(rayleigh: list[float]) -> float:
    """Xu et al.'s best momentum β = λ₂²/4 (λ = σ² of the deflated operator), with λ₂/λ₁
    estimated from the plain iterations so far: the Rayleigh quotient's increments shrink by
    (λ₂/λ₁)² per power step. 0 when the estimate is not usable."""
    d = np.diff(np.asarray(rayleigh[-5:], np.float64))
    if len(d) < 3 or not np.all(d[:-1] > 0):
        return 0.0
    q = float(np.median(d[1:] / d[:-1]))
    if not 0 < q < 1:
        return 0.0
    ratio = math.sqrt(min(q, 0.98))          # λ₂/λ₁, kept below 1 so β < λ₁²/4
    return (ratio * rayleigh[-1]) ** 2 / 4


def power(op: Operator, k: int, *, tol: float, max_passes: int, seed: int,
          state: "State | None" = None, progress=None) -> Solution:
    """The paper's Algorithm 1 for each triplet, then deflation of F (not F + r).

    Per triplet, from ``v ~ N(0, 1)`` (seeded): ``u = F_d v``; ``v_next = F_dᵀ u − m·v_prev``;
    ``σ² = vᵀ v_next``; ``v_prev = v/‖v_next‖``; ``v = v_next/‖v_next‖`` with the deflated
    ``F_d = F − Σ_{j<i} σ_j u_j v_jᵀ``. The paper gives neither m nor a stopping rule: m = 0 for
    the first ``POWER_WARMUP`` steps, then Xu et al.'s λ₂²/4 from :func:`_momentum`; a triplet
    stops when ``‖F_dᵀ F_d v̂ − σ² v̂‖/σ² ≤ tol`` (its relative residual) or after its share
    ``max_passes / k`` of the passes. Each step is one forward and one backward pass.
    """
    n, N = op.n, op.N
    floor = zero_floor(op.dtype, n, N)
    done = state.load_power(op, k) if state is not None else None
    resumed = done is not None
    if done is None:
        done = {"sigma": [], "u": [], "v": [], "converged": [], "iterations": [], "momentum": [],
                "passes": {"forward": 0, "backward": 0}, "seconds": 0.0}
        if state is not None:
            state.begin_power(op, k)
    op.passes = dict(done["passes"])
    t0 = time.perf_counter() - done["seconds"]
    steps = max(1, max_passes // (2 * k))
    for i in range(len(done["sigma"]), k):
        Us = torch.stack(done["u"]) if done["u"] else None
        Vs = torch.stack(done["v"]) if done["v"] else None
        S = torch.tensor(done["sigma"], dtype=op.dtype, device=op.device)

        def Fd(x: Tensor) -> Tensor:
            y = op.F(x[None])[0]
            return y if Us is None else y - ((Vs @ x) * S) @ Us

        def Fdt(y: Tensor) -> Tensor:
            x = op.Ft(y[None])[0]
            return x if Us is None else x - ((Us @ y) * S) @ Vs

        def orth(x: Tensor, Q: Tensor | None) -> Tensor:
            return x if Q is None else x - (Q @ x) @ Q

        # F_d is ~0 on the earlier eigen-inputs as well: keep the iterate orthogonal to them (exact
        # arithmetic does so by itself; in floating point it stops a drift back into their span)
        v = orth(_randn(1, n, _seed(seed, i), op.dtype, op.device)[0], Vs)
        v_prev = torch.zeros_like(v)
        zero2 = (floor * done["sigma"][0]) ** 2 if done["sigma"] else 0.0
        m, ray_hist, conv, it = 0.0, [], False, 0
        for it in range(1, steps + 1):
            u = Fd(v)                                    # step 3: u = y1(v|x0) − r(x0)
            w = Fdt(u)                                   # step 4, before the momentum term
            vv = float(v.double() @ v.double())
            ray = float(u.double() @ u.double()) / vv    # Rayleigh quotient: σ² estimate
            v_used = v
            if ray <= zero2:                             # numerically zero singular value
                conv = True
                break
            res = float(torch.linalg.vector_norm((w - ray * v).double())) / (ray * math.sqrt(vv))
            if progress is not None:
                progress(op.total_passes, res)
            if res <= tol:
                conv = True
                break
            ray_hist.append(ray)
            if it == POWER_WARMUP:
                m = _momentum(ray_hist)
            v_next = w - m * v_prev                      # step 4
            nrm = torch.linalg.vector_norm(v_next)
            v_prev = v / nrm                             # step 6
            v = orth(v_next / nrm, Vs)                   # step 7
        # the triplet of the last product: u = F_d v_used (step 10 normalises u)
        sigma = math.sqrt(max(ray, 0.0))
        if ray > zero2:
            u_hat = (u.double() / torch.linalg.vector_norm(u.double())).to(op.dtype)
        else:  # σ numerically 0: u is any unit vector orthogonal to the earlier u_j (these span
            # the range of F when the rank is i), v any unit vector orthogonal to the earlier v_j
            u_hat = orth(_randn(1, N, _seed(seed, i, 7), torch.float64, op.device)[0],
                         None if Us is None else Us.double())
            u_hat = (u_hat / torch.linalg.vector_norm(u_hat)).to(op.dtype)
        v_hat = (v_used.double() / torch.linalg.vector_norm(v_used.double())).to(op.dtype)
        done["sigma"].append(sigma)
        done["u"].append(u_hat)
        done["v"].append(v_hat)
        done["converged"].append(conv)
        done["iterations"].append(it)
        done["momentum"].append(m)
        done["passes"] = dict(op.passes)
        done["seconds"] = time.perf_counter() - t0
        if state is not None:
            state.save_power(done)
    # deflation finds triplets in decreasing order only approximately: sort
    order = sorted(range(k), key=lambda j: -done["sigma"][j])
    return Solution(torch.tensor([done["sigma"][j] for j in order], dtype=torch.float64),
                    torch.stack([done["u"][j] for j in order]),
                    torch.stack([done["v"][j] for j in order]), all(done["converged"]), "power",
                    iterations=sum(done["iterations"]), seconds=time.perf_counter() - t0,
                    resumed=resumed, extra={"iterations": [done["iterations"][j] for j in order],
                                            "momentum": [done["momentum"][j] for j in order]})


# ---------------------------------------------------------------------------------------------
# Finishing: sign convention, measured residuals.


def finish(op: Operator, sol: Solution) -> Triplets:
    """Unit norms, the sign convention (largest-magnitude entry of v_i positive), and the
    residuals measured with one more forward and backward call on all k triplets."""
    v = sol.v.double()
    u = sol.u.double()
    vn = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    un = torch.linalg.vector_norm(u, dim=1, keepdim=True)
    v = torch.where(vn > 0, v / torch.where(vn > 0, vn, 1), v)
    u = torch.where(un > 0, u / torch.where(un > 0, un, 1), u)
    if v.shape[1]:
        peak = v.gather(1, v.abs().argmax(dim=1, keepdim=True))
        sign = torch.where(peak < 0, -1.0, 1.0).to(v)
        v, u = v * sign, u * sign
    v_d, u_d = v.to(op.dtype), u.to(op.dtype)
    before = dict(op.passes)
    Fv = op.F(v_d).double()
    Ftu = op.Ft(u_d).double()
    s = sol.sigma.to(torch.float64).to(Fv.device)
    den = denominators(s, zero_floor(op.dtype, op.n, op.N))
    r1 = torch.linalg.vector_norm(Fv - s[:, None] * u_d.double(), dim=1) / den
    r2 = torch.linalg.vector_norm(Ftu - s[:, None] * v_d.double(), dim=1) / den
    return Triplets(sigma=s.cpu().numpy(), u=u_d.cpu().double().numpy(),
                    v=v_d.cpu().double().numpy(), residual=torch.stack([r1, r2], 1).cpu().numpy(),
                    residual_passes={k: op.passes[k] - before[k] for k in op.passes})


# ---------------------------------------------------------------------------------------------
# Resumable state in the store (``svd/state``, removed once the result is complete).


class State:
    """Solver state saved in ``<store>/svd/state`` after every block (block) or triplet (power).

    Arrays are written first, then the group attribute ``progress`` in one atomic write: what
    ``progress`` describes is always on disk. ``key`` (method, k, block, seed, tol, budget, dtype,
    sizes) must match for a resume; any other state is discarded and the solver restarts.
    """

    def __init__(self, path: Path, key: dict, say: Callable[[str], None] = lambda s: None):
        self.path, self.key, self.say = Path(path), dict(key), say
        self.group = None

    # -- common -----------------------------------------------------------------------------
    def _open(self, method: str):
        import zarr

        if not (self.path / "zarr.json").is_file():
            return None
        g = zarr.open_group(str(self.path), mode="r+")
        a = dict(g.attrs)
        if a.get("key") != self.key or "progress" not in a:
            self.say(f"svd: discarding saved state that does not match this {method} run; "
                     "restarting")
            return None
        self.group = g
        return g, a["progress"]

    def _begin(self, arrays: dict[str, tuple[tuple, tuple, str]]) -> None:
        import zarr

        from precompute.store_create import codecs

        self.remove()
        g = zarr.open_group(str(self.path), mode="w", attributes={"key": self.key})
        for name, (shape, chunks, dtype) in arrays.items():
            g.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                           compressors=codecs())
        self.group = g

    def _commit(self, progress: dict) -> None:
        self.group.attrs.put({"key": self.key, "progress": progress})

    def remove(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)

    # -- block --------------------------------------------------------------------------------
    def begin_krylov(self, op: Operator, block: int, max_passes: int) -> None:
        J = max(1, min(max_passes // 2, -(-op.n // block)))
        dt = str(op.dtype).removeprefix("torch.")
        self._begin({
            "v": ((J + 1, block, op.n), (1, block, op.n), dt),
            "u": ((J, block, op.N), (1, block, op.N), dt),
            "B": ((J * block, J * block), (block, block), "float64"),
            "G": (((J + 1) * block, J * block), (block, block), "float64"),
        })
        self.block = block

    def save_krylov(self, ks: KrylovState) -> None:
        g, t, b = self.group, ks.iterations, self.block

        def put(name, j, blk):
            a = np.zeros((b, blk.shape[1]), dtype=g[name].dtype)
            a[:blk.shape[0]] = blk.cpu().numpy()
            g[name][j] = a

        if t == 1:
            put("v", 0, ks.V.block(0))
        put("v", t, ks.V.block(t))
        put("u", t - 1, ks.U.block(t - 1))
        wu, wv = list(ks.U.widths), list(ks.V.widths)
        m_U, m_Vf, m_V = sum(wu), sum(wv[:t]), sum(wv)
        g["B"][:m_U, m_Vf - wv[t - 1]:m_Vf] = ks.B[:, m_Vf - wv[t - 1]:].numpy()
        g["G"][:m_V, m_U - wu[t - 1]:m_U] = ks.G[:, m_U - wu[t - 1]:].numpy()
        self._commit({"iterations": t, "widths_u": wu, "widths_v": wv, "scale": ks.scale,
                      "passes": ks.passes, "seconds": ks.seconds})

    def load_krylov(self, op: Operator) -> KrylovState | None:
        opened = self._open("block")
        if opened is None:
            return None
        g, p = opened
        self.block = g["v"].shape[1]

        def get(name, j, w):
            return torch.from_numpy(np.asarray(g[name][j][:w])).to(op.device)

        V, U = Basis(op.n, op.dtype, op.device), Basis(op.N, op.dtype, op.device)
        for j, w in enumerate(p["widths_v"]):
            V.append(get("v", j, w))
        for j, w in enumerate(p["widths_u"]):
            U.append(get("u", j, w))
        m_U, m_V = sum(p["widths_u"]), sum(p["widths_v"])
        m_Vf = m_V - p["widths_v"][-1]
        B = torch.from_numpy(np.asarray(g["B"][:m_U, :m_Vf]))
        G = torch.from_numpy(np.asarray(g["G"][:m_V, :m_U]))
        self.say(f"svd: resuming block Krylov after {p['iterations']} saved iteration(s) "
                 f"({p['passes']['forward'] + p['passes']['backward']} passes done)")
        return KrylovState(V=V, U=U, B=B, G=G, scale=p["scale"], passes=dict(p["passes"]),
                           seconds=p["seconds"])

    # -- power --------------------------------------------------------------------------------
    def begin_power(self, op: Operator, k: int) -> None:
        dt = str(op.dtype).removeprefix("torch.")
        self._begin({"v": ((k, op.n), (1, op.n), dt), "u": ((k, op.N), (1, op.N), dt)})

    def save_power(self, done: dict) -> None:
        i = len(done["sigma"]) - 1
        self.group["v"][i] = done["v"][i].cpu().numpy()
        self.group["u"][i] = done["u"][i].cpu().numpy()
        self._commit({key: done[key] for key in ("sigma", "converged", "iterations", "momentum",
                                                 "passes", "seconds")})

    def load_power(self, op: Operator, k: int) -> dict | None:
        opened = self._open("power")
        if opened is None:
            return None
        g, p = opened
        i = len(p["sigma"])
        done = dict(p)
        done["v"] = [torch.from_numpy(np.asarray(g["v"][j])).to(op.device) for j in range(i)]
        done["u"] = [torch.from_numpy(np.asarray(g["u"][j])).to(op.device) for j in range(i)]
        for key in ("sigma", "converged", "iterations", "momentum"):
            done[key] = list(done[key])
        self.say(f"svd: resuming the power method after {i} of {k} saved triplet(s)")
        return done

    # -- dense --------------------------------------------------------------------------------
    def begin_dense(self) -> None:
        if (self.path / "zarr.json").is_file():
            self.say("svd: the dense SVD keeps no intermediate state: restarting it")
        self._begin({})
        self._commit({"started": True})


# ---------------------------------------------------------------------------------------------
# The whole-F analysis `svd` of `precompute run` (protocol of precompute/run.py).


@dataclass(frozen=True)
class Plan:
    """The resolved `analyses.svd` of a run (what the store records under ``analyses.svd``).

    ``operator``: ``store`` (sparse products with the F the store holds,
    :mod:`precompute.stored_operator`; ``source`` names the analysis, ``why`` says how the plan
    knows) or ``network`` (batched passes of the interpreter)."""

    k: int
    method: str
    block: int
    tol: float
    max_calls: int | None
    seed: int
    n: int
    N: int
    dtype: str
    operator: str = "network"
    source: str | None = None
    why: str = ""

    def attrs(self) -> dict:
        return {"k": self.k, "method": self.method, "block": self.block, "tol": self.tol,
                "max_calls": self.max_calls, "seed": self.seed, "operator": self.operator}

    @property
    def pass_size(self) -> int:
        """Vectors per pass: one block (block, power), or ≥ 64 impulses (dense, like the sweep's
        CPU batch)."""
        return max(self.block, 64) if self.method == "dense" else self.block


def default_block(k: int) -> int:
    """Block size of ``block: auto``: 2k between 32 and 64 (what a device runs for ~free)."""
    return min(64, max(32, 2 * k))


def make_plan(k: int, n: int, N: int, dtype: str, method: str = "auto", block="auto",
              tol: float | None = None, max_calls: int | None = None, seed: int = 0,
              operator: str = "network", source: str | None = None, why: str = "") -> Plan:
    """Resolve ``auto`` method/block, the dtype's default tolerance and the default budgets for
    an F of N × n on the given operator (UserError if impossible)."""
    if k > min(n, N):
        raise UserError(f"analyses.svd.k = {k} is more than F ({N} × {n}) has singular "
                        f"values; use k ≤ {min(n, N)}")
    if method == "auto" and operator == "store":
        method = ("dense" if n * N <= STORE_DENSE_LIMIT and min(n, N) <= STORE_DENSE_SIDE
                  else "block")
    elif method == "auto":
        method = "dense" if n * N <= DENSE_LIMIT else "block"
    block = default_block(k) if block == "auto" else int(block)
    tol = float(tol) if tol is not None else DEFAULT_TOL.get(dtype, 1e-3)
    if max_calls is None and method == "block":
        max_calls = BLOCK_MAX_CALLS
    elif max_calls is None and method == "power":
        max_calls = POWER_CALLS_PER_TRIPLET * k
    if method == "power" and max_calls < 2 * k:
        raise UserError(f"analyses.svd.max_calls = {max_calls} leaves the power method less than "
                        f"one step (2 passes) per triplet; use at least {2 * k}")
    return Plan(k, method, block, tol, max_calls if method != "dense" else None, seed, n, N, dtype,
                operator, source, why)


def resolve(rp, cfg, operator: str | None = None) -> Plan:
    """`analyses.svd` of the config for this run's shapes and dtype, and its operator: the
    stored F when the store will hold all of it (:func:`precompute.stored_operator
    .planned_source`), else network passes (``operator`` overrides the config's)."""
    from precompute import stored_operator as SO

    want = operator or getattr(cfg, "operator", "auto")
    source, why = None, "operator: network"
    if want != "network":
        source, why = SO.planned_source(rp.layouts, rp.support)
        if source is None and want == "store":
            raise UserError(f"analyses.svd.operator: store needs a store that holds all of F, "
                            f"but {why}; use operator: auto (or network)")
    op = "store" if source is not None else "network"
    return make_plan(cfg.k, math.prod(rp.in_shape), math.prod(rp.out_shape), rp.res.config.dtype,
                     cfg.method, cfg.block, cfg.tol, cfg.max_calls, cfg.seed, op, source, why)


def top_k(li, k: int = 16, *, method: str = "auto", block="auto", tol: float | None = None,
          max_calls: int | None = None, seed: int = 0) -> Triplets:
    """The top-k SVD of a :class:`~precompute.interpreter.LinearInterpreter` in Python, exactly as
    ``precompute run`` computes it (same methods, defaults and sign convention; no store)."""
    from precompute.engine import Engine

    dtype = str(li.dtype).removeprefix("torch.")
    p = make_plan(k, li.n_inputs, li.n_outputs, dtype, method, block, tol, max_calls, seed)
    old = li.batch
    li.batch = p.pass_size
    try:
        op = Operator.from_engine(Engine(li, li.device, li.dtype), p.pass_size)
        return finish(op, solve(op, p))
    finally:
        li.batch = old


def planned(rp, cfg) -> dict:
    return resolve(rp, cfg).attrs()


def _method_text(p: Plan) -> str:
    if p.operator == "store":
        return _store_method_text(p)
    if p.method == "dense":
        side, kind = (p.n, "column") if p.n <= p.N else (p.N, "row")
        return (f"the exact SVD of F materialised from {side:,} {kind} impulses "
                f"({-(-side // p.pass_size)} passes of ≤ {p.pass_size})")
    if p.method == "block":
        from precompute.text import fmt_bytes

        state = _state_bytes(p)
        return (f"block Krylov (blocks of {p.block}, at most {p.max_calls} passes; its saved "
                f"state for resuming takes up to {fmt_bytes(state)} on disk while it runs)")
    return (f"the paper's Algorithm 1 (power iteration with momentum, deflation of F; at most "
            f"{p.max_calls} passes)")


def _store_method_text(p: Plan) -> str:
    """The solver on the stored F (no state is saved: a killed run redoes it in seconds)."""
    if p.method == "dense":
        side, gram = (p.n, "FᵀF") if p.n <= p.N else (p.N, "FFᵀ")
        how = (f"the exact SVD (eigen-decomposition of the {side:,} × {side:,} Gram matrix {gram} "
               "in float64, then Rayleigh–Ritz on F)")
    elif p.method == "block":
        how = f"block Krylov (blocks of {p.block}, at most {p.max_calls} sparse products)"
    else:
        how = f"the paper's Algorithm 1 (at most {p.max_calls} sparse products)"
    return how


def _state_bytes(p: Plan) -> int:
    """The most disk the resumable solver state takes while it runs (block: every saved block of
    the Krylov basis, both sides; power: the triplets found so far; none on the stored F)."""
    itemsize = np.dtype(p.dtype).itemsize
    if p.operator == "store":
        return 0
    if p.method == "block":
        iters = max(1, min(p.max_calls // 2, -(-p.n // p.block)))
        return iters * p.block * (p.n + p.N) * itemsize
    if p.method == "power":
        return p.k * (p.n + p.N) * itemsize
    return 0


def disk_bytes(rp, cfg) -> int:
    """What this analysis may write (result and solver state), for the run's disk check."""
    if done(rp, cfg) and not rp.whole_f_pending("svd"):
        return 0
    p = resolve(rp, cfg)
    return _state_bytes(p) + p.k * (p.n + p.N + 3) * np.dtype(p.dtype).itemsize


def describe(rp, cfg) -> str:
    p = resolve(rp, cfg)
    finished = rp.exists and _complete(rp.path) and not rp.whole_f_pending("svd")
    state = "already done" if finished else f"tolerance {p.tol:g}"
    if p.operator == "store":
        where = (f" on the F the store holds ({p.why}; sparse products, no network pass; the "
                 f"residuals are measured with {-(-p.k // p.pass_size)} + "
                 f"{-(-p.k // p.pass_size)} network passes)")
    elif getattr(cfg, "operator", "auto") == "network":
        where = " by network passes (operator: network)"
    else:
        where = f" by network passes (the store does not hold all of F: {p.why})"
    return (f"svd: top-{p.k} singular triplets of F ({p.N:,} × {p.n:,}){where}, by "
            f"{_method_text(p)}, {state}.")


def _complete(path: Path) -> bool:
    import json

    f = Path(path) / "svd" / "zarr.json"
    try:
        return bool(json.loads(f.read_text()).get("attributes", {}).get("complete"))
    except (OSError, ValueError):
        return False


def done(rp, cfg) -> bool:
    resolve(rp, cfg)  # refuse an impossible k before anything else
    return rp.exists and _complete(rp.path)


def solve(op: Operator, p: Plan, state: State | None = None, progress=None) -> Solution:
    """Run the plan's solver on ``op``."""
    if p.method == "dense":
        if state is not None:
            state.begin_dense()
        return dense(op, p.k)
    if p.method == "block":
        return block_krylov(op, p.k, block=p.block, tol=p.tol, max_passes=p.max_calls,
                            seed=p.seed, state=state, progress=progress)
    if p.method == "power":
        return power(op, p.k, tol=p.tol, max_passes=p.max_calls, seed=p.seed, state=state,
                     progress=progress)
    raise ValueError(f"unknown SVD method {p.method!r}")


def _progress_bar(p: Plan, quiet: bool):
    from tqdm import tqdm

    if quiet:
        return None, None
    bar = tqdm(total=p.max_calls, desc=f"svd {p.method}", unit="pass", leave=False,
               dynamic_ncols=True)

    def update(passes: int, residual: float) -> None:
        bar.set_postfix_str(f"residual {residual:.1e} (tol {p.tol:g})", refresh=False)
        bar.update(passes - bar.n)  # redraws at most every mininterval

    return bar, update


def write_result(path: Path, p: Plan, sol: Solution, tri: Triplets, in_shape, out_shape,
                 attrs: dict) -> None:
    """The result arrays, then the group attributes with ``complete: true`` (one atomic write)."""
    import zarr

    from precompute.store_create import codecs

    g = zarr.open_group(str(Path(path) / "svd"), mode="a")
    g.attrs.put({"complete": False})
    k = p.k
    for name, data, shape in (("sigma", tri.sigma, (k,)), ("u", tri.u, (k, *out_shape)),
                              ("v", tri.v, (k, *in_shape)), ("residual", tri.residual, (k, 2))):
        chunks = (1, *shape[1:]) if name in ("u", "v") else shape
        a = g.create_array(name, shape=shape, chunks=chunks, dtype=p.dtype, fill_value=np.nan,
                           compressors=codecs(), overwrite=True)
        a[...] = np.asarray(data, np.float64).reshape(shape).astype(p.dtype)
    mark_complete(g, attrs)


def mark_complete(group, attrs: dict) -> None:
    """The last write of a result: its attributes with ``complete: true`` (``svd/zarr.json``,
    replaced atomically). Readers ignore ``svd/`` until then."""
    group.attrs.put(attrs | {"complete": True})


def run(rp, cfg) -> float:
    """Compute the top-k SVD of the run's interpreter into ``svd/`` (resumably); returns the
    seconds this process spent. On the stored F when the store holds all of it (else network
    passes, and it says why); the residuals are always measured with the network."""
    from precompute.engine import Engine
    from precompute.text import say
    from precompute.interpreter import LinearInterpreter

    t_start = time.perf_counter()
    p = resolve(rp, cfg)
    c = rp.res.config
    quiet = rp.opts.quiet
    tell = (lambda s: None) if quiet else say
    stored = None
    if p.operator == "store":
        stored, p = _stored_operator(rp, cfg, p, tell)
    # an interpreter whose passes hold one block (the sweep's may hold a different batch)
    li = LinearInterpreter(rp.prep.spec.module, rp.prep.x0, rule=c.interpreter,
                           batch=p.pass_size, exact=c.precision == "ieee")
    eng = Engine(li, rp.device, rp.prep.dtype)
    net = Operator.from_engine(eng, p.pass_size)
    state = State(rp.path / "svd" / "state",
                  p.attrs() | {"dtype": p.dtype, "n": p.n, "N": p.N}, say=tell)
    import zarr

    g = zarr.open_group(str(rp.path / "svd"), mode="a")
    if not g.attrs.get("complete"):
        g.attrs.put({"complete": False})
    bar, update = _progress_bar(p, quiet or p.method == "dense")
    try:
        if stored is None:
            op, sol = net, solve(net, p, state, update)
        else:  # seconds of work: no state to resume from
            op = Operator(stored.F, stored.Ft, p.n, p.N, stored.dtype, stored.device, p.pass_size)
            sol = solve_stored(stored, op, p, update)
    finally:
        if bar is not None:
            bar.close()
    tri = finish(net, sol)  # against the network: a wrong stored F cannot hide here
    passes = {kind: net.passes[kind] - tri.residual_passes[kind] for kind in net.passes}
    attrs = p.attrs() | {
        "calls": passes,
        "residual_calls": tri.residual_passes,
        "pass_size": net.pass_size,
        "iterations": sol.iterations,
        "wall_time": sol.seconds,
        "converged": bool(sol.converged),
        "max_residual": float(np.max(tri.residual)) if tri.residual.size else 0.0,
        "sign_convention": SIGN_CONVENTION,
        "oom_splits": eng.oom_splits,
        "device": str(rp.device),
    } | ({"power_iterations": sol.extra["iterations"], "power_momentum": sol.extra["momentum"]}
         if sol.method == "power" else {}) | ({
             "operator_source": stored.source, "operator_nnz": stored.nnz,
             "operator_seconds": stored.seconds, "products": dict(op.passes)}
        if stored is not None else {})
    write_result(rp.path, p, sol, tri, rp.in_shape, rp.out_shape, attrs)
    state.remove()
    if not quiet:
        how = (f"{attrs['calls']['forward']}+{attrs['calls']['backward']} passes"
               if stored is None else
               f"{op.passes['forward']}+{op.passes['backward']} sparse products"
               * (p.method != "dense") + f" on the stored {stored.source} (assembled in "
               f"{stored.seconds:.1f} s)")
        say(f"svd: σ_1 … σ_{p.k} = {tri.sigma[0]:.4g} … {tri.sigma[-1]:.4g} by {p.method} in "
            f"{how}, max residual {attrs['max_residual']:.2e} (measured with the network)"
            + ("" if sol.converged else f" — NOT converged to tol {p.tol:g}"))
    return time.perf_counter() - t_start


def _stored_operator(rp, cfg, p: Plan, tell):
    """The stored F of a plan on the store operator, or (None, the network plan) with a line
    saying why the store does not hold all of F after all."""
    import zarr

    from precompute import stored_operator as SO

    group = zarr.open_group(str(rp.path), mode="r")
    try:
        stored, why = SO.load_if_whole(rp.path, group, rp.layouts, rp.prep.dtype, rp.device,
                                       prefer=p.source)
    except MemoryError:
        stored, why = None, "assembling it ran out of memory"
    if stored is not None:
        return stored, p
    if getattr(cfg, "operator", "auto") == "store":
        raise UserError(f"analyses.svd.operator: store, but the store does not hold all of F "
                        f"({why}); use operator: auto (or network)")
    tell(f"svd: the store does not hold all of F ({why}): network passes instead")
    return None, resolve(rp, cfg, operator="network")


def solve_stored(stored, op: Operator, p: Plan, progress=None) -> Solution:
    """Run the plan's solver on the stored F: ``dense`` is the exact SVD of
    :meth:`~precompute.stored_operator.StoredF.dense_svd`; ``block`` and ``power`` are the same
    solvers as on the network, on sparse products (``op`` counts them)."""
    if p.method != "dense":
        return solve(op, p, None, progress)
    t0 = time.perf_counter()
    s, u, v = stored.dense_svd(p.k)
    return Solution(s, u.to(op.device, op.dtype), v.to(op.device, op.dtype), True, "dense",
                    seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# `precompute verify`: recheck a few stored triplets against the recomputed interpreter.


def recheck(st, engine, samples: int = 4, seed: int = 0) -> tuple[list[str], bool]:
    """Recompute ``‖F v_i − σ_i u_i‖/σ_i`` and ``‖Fᵀ u_i − σ_i v_i‖/σ_i`` for up to ``samples``
    stored triplets (always the first and the last) with the interpreter rebuilt from the store's
    model and image; they must not exceed the stored residuals by more than the dtype's
    tolerance (that of the column/row check). Also checks unit norms and σ order."""
    g = st.group
    if "svd" not in g:
        return [], True
    a = dict(g["svd"].attrs)
    if not a.get("complete"):
        return ["svd: planned but not complete (run the same `precompute run` to finish it)"], True
    from precompute.integrity import missing_chunks
    from precompute.store import read_whole

    try:
        for name in ("svd/u", "svd/v"):
            problem = missing_chunks(g[name])
            if problem:
                return [f"svd: {problem} (the store is damaged) MISMATCH"], False
        sigma = np.asarray(read_whole(g["svd/sigma"]), np.float64)
        k = len(sigma)
        rng = np.random.default_rng(seed)
        pick = sorted({0, k - 1} | set(rng.choice(k, size=min(samples, k), replace=False).tolist()))
        pick = pick[:max(samples, 2)]
        dt = st.dtype
        u = torch.from_numpy(np.stack([g["svd/u"][i] for i in pick]).astype(dt))
        v = torch.from_numpy(np.stack([g["svd/v"][i] for i in pick]).astype(dt))
        stored = np.asarray(read_whole(g["svd/residual"]), np.float64)[pick]
    except Exception as e:  # noqa: BLE001 — a damaged chunk (checksum) or metadata
        return [f"svd: unreadable ({type(e).__name__}; the store is damaged) MISMATCH"], False
    tol = 1e-9 if dt == np.float64 else 1e-4
    op = Operator.from_engine(engine)
    U, V = u.reshape(len(pick), -1).to(op.device), v.reshape(len(pick), -1).to(op.device)
    s = torch.from_numpy(sigma[pick])
    den = denominators(torch.from_numpy(sigma), zero_floor(op.dtype, op.n, op.N))[pick]
    r1 = (torch.linalg.vector_norm(op.F(V).double().cpu() - s[:, None] * U.double().cpu(), dim=1)
          / den).numpy()
    r2 = (torch.linalg.vector_norm(op.Ft(U).double().cpu() - s[:, None] * V.double().cpu(), dim=1)
          / den).numpy()
    worst = float(np.max(np.stack([r1, r2], 1) - stored))
    norms = float(max(np.abs(np.linalg.norm(U.double().cpu().numpy(), axis=1) - 1).max(),
                      np.abs(np.linalg.norm(V.double().cpu().numpy(), axis=1) - 1).max()))
    ordered = bool(np.all(np.diff(sigma) <= 0))
    ok = worst <= tol and norms <= max(tol, 1e-6) and ordered
    lines = [f"svd: {len(pick)} of {k} triplets recomputed ({a.get('method')}), "
             f"max ‖Fv − σu‖/σ = {r1.max():.3g}, max ‖Fᵀu − σv‖/σ = {r2.max():.3g} "
             f"(stored ≤ {stored.max():.3g}; excess {max(worst, 0):.3g}, tolerance {tol:g}), "
             f"unit norms ±{norms:.1g}, σ {'descending' if ordered else 'NOT descending'} "
             + ("OK" if ok else "MISMATCH")]
    more, good = recheck_stored(st, sigma, tol)
    return lines + more, ok and good


def recheck_stored(st, sigma: np.ndarray, tol: float) -> tuple[list[str], bool]:
    """Every stored triplet against the F the store holds (when it holds all of it: sparse
    products, no network pass): its residuals must not exceed the stored ones (measured with
    the network) by more than ``tol``. Nothing when the store holds only part of F."""
    from precompute import stored_operator as SO

    try:
        stored, _why = SO.load_if_whole(st.path, st.group, list(st.layouts.values()),
                                        torch.from_numpy(np.zeros(0, st.dtype)).dtype, "cpu")
    except MemoryError:
        return [], True
    if stored is None:
        return [], True
    k = len(sigma)
    u = torch.from_numpy(np.asarray(st.array("svd/u"), np.float64).reshape(k, -1))
    v = torch.from_numpy(np.asarray(st.array("svd/v"), np.float64).reshape(k, -1))
    res = np.asarray(st.array("svd/residual"), np.float64)
    s = torch.from_numpy(sigma)
    den = denominators(s, zero_floor(stored.dtype, stored.n, stored.N))
    r1 = torch.linalg.vector_norm(stored.F(v.to(stored.dtype)).double() - s[:, None] * u,
                                  dim=1) / den
    r2 = torch.linalg.vector_norm(stored.Ft(u.to(stored.dtype)).double() - s[:, None] * v,
                                  dim=1) / den
    excess = float(np.max(torch.stack([r1, r2], 1).numpy() - res))
    ok = excess <= tol
    return [f"svd: all {k} triplets against the F of the stored {stored.source} (sparse, no "
            f"network pass): max ‖Fv − σu‖/σ = {float(r1.max()):.3g}, max ‖Fᵀu − σv‖/σ = "
            f"{float(r2.max()):.3g} (excess over stored {max(excess, 0):.3g}, tolerance "
            f"{tol:g}) " + ("OK" if ok else "MISMATCH")], ok
