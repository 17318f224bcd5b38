"""Top-k SVD by block Lanczos on the Gram matrix of the smaller side (the stored F's solver).

On the F a store holds (:mod:`precompute.stored_operator`) a product costs a sparse matrix
product, not a network pass, and the block Lanczos *bidiagonalisation* of
:func:`precompute.svd_solvers.block_krylov` spends most of its time elsewhere: re-orthogonalising
its output-side basis, vectors of length N (measured on the shipped PixelShuffle at 144²,
N = 186,624 = 9 n: 100 s of Gram–Schmidt and tall SVDs against 12 s of sparse products). Here
only one basis is kept, on the smaller side: with ``G = FᵀF`` (n ≤ N; ``FFᵀ`` otherwise) the
block Krylov space ``K_j(G, V_1)`` is the same space the bidiagonalisation builds on that side,
each block ``G·V_j = Fᵀ(F·V_j)`` costs one forward and one backward sparse product (G is never
formed: on PixelShuffle at 144² forming it took longer than the whole solve), and every vector
kept is n long.

Rayleigh–Ritz on ``T = Vᵀ G V`` gives θ_i = σ_i² and v_i; with ``u_i = F v_i / σ_i`` the
singular-triplet residual is ``‖Fᵀ u_i − σ_i v_i‖ / σ_i = ‖G v_i − θ_i v_i‖ / θ_i``, known from
T's last block row without a product (the stopping test, ≤ tol). The end is a Rayleigh–Ritz step
on F itself: the SVD of ``F·V_k`` (k more vectors, one forward product) gives σ to the precision
of F rather than of the squared Gram matrix, and u. The paper's SVD (§3) is this decomposition;
the solver is the symmetric block Lanczos method with full re-orthogonalisation (Golub & Van
Loan, Matrix Computations, §10.3.6).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from precompute.svd_solvers import (Basis, Operator, Solution, _grow, _randn, _seed, denominators,
                                    extend_basis, ritz_due, zero_floor)


def _ritz_sym(T: Tensor, m_f: int, k: int, floor2: float) -> tuple[Tensor, Tensor, Tensor]:
    """(θ descending, Y (m_f, r), relative residual estimates) from ``T`` (m × m_f): the square
    part ``T[:m_f]`` is Vᵀ G V on the multiplied blocks (symmetrised against rounding), and
    ``‖G V y − θ V y‖ = ‖T y − θ [y; 0]‖`` (the rows below m_f are the newest block's)."""
    S = T[:m_f]
    w, Y = torch.linalg.eigh((S + S.T) / 2)
    r = min(k, w.numel())
    w, Y = w.flip(0)[:r], Y.flip(1)[:, :r]
    pad = torch.zeros(T.shape[0], r, dtype=torch.float64)
    pad[:m_f] = Y * w
    res = torch.linalg.vector_norm(T @ Y - pad, dim=0)
    theta = w.clamp(min=0)
    den = denominators(theta.sqrt(), floor2 ** 0.5) ** 2
    return theta, Y, res / den


def gram_lanczos(op: Operator, k: int, *, block: int, tol: float, max_passes: int, seed: int,
                 progress=None) -> Solution:
    """Top-k triplets of F by block Lanczos on the Gram matrix of the smaller side.

    ``op`` counts the products (each F·X or Fᵀ·Y of ≤ pass_size vectors is one). Stops when the
    top-k estimates ``‖G v_i − θ_i v_i‖/θ_i`` are ≤ tol, when the basis spans the whole side
    (exact), or before the next block (two products, plus one for the final Rayleigh–Ritz step
    on F) would exceed ``max_passes``. No saved state: on sparse products a killed run redoes it
    in seconds.
    """
    t0 = time.perf_counter()
    wide = op.n > op.N                          # work on the output side: G = F Fᵀ
    A, At = (op.Ft, op.F) if wide else (op.F, op.Ft)
    d = min(op.n, op.N)
    floor = zero_floor(op.dtype, op.n, op.N)
    V = Basis(d, op.dtype, op.device)
    V1, _, _ = extend_basis(None, _randn(block, d, _seed(seed, 0), op.dtype, op.device), d, 1.0,
                            _seed(seed, 0, 1))
    V.append(V1)
    T = torch.zeros(V1.shape[0], 0, dtype=torch.float64)
    scale, converged, t, est, theta, Y = 0.0, False, 0, None, None, None
    final = -(-k // op.pass_size)
    while True:
        m_f = T.shape[1]
        if t and ritz_due(t, m_f):
            theta, Y, est = _ritz_sym(T, m_f, k, floor ** 2)
            enough = theta.numel() >= k
            if progress is not None:
                progress(op.total_passes, float(est.max()) if enough else float("inf"))
            if enough and bool((est <= tol).all()):
                converged = True
                break
        Vt = V.block(t)
        if Vt.shape[0] == 0:                      # V spans the whole side: T is G exactly
            converged = True
            break
        cost = 2 * -(-Vt.shape[0] // op.pass_size)
        if op.total_passes + cost + final > max_passes:
            break
        GV = At(A(Vt))
        scale = max(scale, float(torch.linalg.vector_norm(GV, dim=1).max()))
        m = V.m
        Vb, c_old, c_new = extend_basis(V.rows(), GV, d - m, scale, _seed(seed, t + 1))
        T = _grow(T, m + Vb.shape[0], m_f + Vt.shape[0])
        T[:m, m_f:] = c_old.T
        T[m:, m_f:] = c_new.T
        V.append(Vb)
        t += 1
    m_f = T.shape[1]
    if Y is None or Y.shape[0] != m_f:  # the last block was not looked at
        theta, Y, est = _ritz_sym(T, m_f, k, floor ** 2)
    return _finish_on_F(op, A, V.rows(t), theta, Y, est, k, wide, converged, t, t0)


def _finish_on_F(op: Operator, A, Vrows: Tensor, theta: Tensor, Y: Tensor, est: Tensor, k: int,
                 wide: bool, converged: bool, t: int, t0: float) -> Solution:
    """Rayleigh–Ritz on F: the SVD of ``F·V_k`` (one product of k vectors) gives σ and u, and
    rotates V_k within its span (a cluster's vectors are only defined as a subspace)."""
    r = theta.numel()
    d, D = Vrows.shape[1], (op.N if not wide else op.n)
    Vk = Y.T.to(op.dtype).to(op.device) @ Vrows if r else Vrows.new_zeros((0, d))
    if r:
        FV = A(Vk).double().cpu()                 # (r, D)
        P, s, Wt = torch.linalg.svd(FV.T, full_matrices=False)
        small = (P.T.to(op.device, op.dtype), Wt.to(op.device, op.dtype) @ Vk)
        sigma = s
    else:
        small, sigma = (Vk.new_zeros((0, D)), Vk), torch.zeros(0, dtype=torch.float64)
    u, v = small
    if r < k:  # too few products for k Ritz vectors: pad (never converged)
        u = torch.cat([u, u.new_zeros((k - r, D))])
        v = torch.cat([v, v.new_zeros((k - r, d))])
        sigma = torch.cat([sigma, torch.zeros(k - r, dtype=torch.float64)])
        est = torch.cat([est, torch.full((k - r,), float("inf"), dtype=torch.float64)])
        converged = False
    if wide:  # the Gram side was the output side: its vectors are the u_i
        u, v = v, u
    return Solution(sigma, u, v, converged, "block", iterations=t,
                    seconds=time.perf_counter() - t0,
                    extra={"estimates": [float(e) for e in est], "basis": [0, Vrows.shape[0]],
                           "gram_side": "output" if wide else "input"})
