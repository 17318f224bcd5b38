"""The SVD solvers: top-k singular triplets of F seen only through batched products.

``F(x0) v_i = σ_i u_i`` with unit eigen-inputs ``v_i`` (input domain) and eigen-outputs ``u_i``
(output domain), σ_1 ≥ σ_2 ≥ …: the paper's §3 "Singular Value Decomposition". Every solver sees
F only through :class:`Operator` — the :class:`~precompute.engine.Engine`'s
``LinearInterpreter.apply`` (F·V, eq. 5 with the constants off) and ``apply_transpose`` (Fᵀ·U,
eq. 6), or the sparse F a store holds (:mod:`precompute.stored_operator`) — and counts the
sequential batched passes it makes:

``dense``
    materialise F with impulse probes (columns, or rows when there are fewer outputs) and take the
    exact SVD (``torch.linalg.svd`` in float64).
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

The block and power solvers save and resume through a :class:`precompute.svd_state.State`
(passed in as ``state``, or None; this module does not import it: the state imports the
solvers' types).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

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
                 state=None, progress=None) -> Solution:
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
          state=None, progress=None) -> Solution:
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
