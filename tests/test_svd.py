"""The SVD solvers against independent float64 oracles (precompute/svd.py).

Every F here is small enough to materialise. The oracle is ``torch.linalg.svd`` of a dense matrix
computed without LinearScope: the Jacobian (``torch.func.jacrev``) of a ReLU/max-pool network (its
frozen interpreter is the Jacobian), or the matrix a linear model was built from with prescribed
singular values (clustered, rank deficient). The solvers see F only through the interpreter's
batched F·V and Fᵀ·U.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from torch.func import jacrev

from precompute import config as precompute_config
from precompute import svd as S
from precompute import svd_solvers as K
from precompute.engine import Engine
from precompute.interpreter import LinearInterpreter

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_svd_oracle", FIXTURES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


M = _load("svd_models")
TINY = _load("tiny_models")


def system(model, in_shape, seed=0, pass_size=8):
    """(interpreter operator, dense oracle F (N × n), oracle σ, U, Vh) in float64."""
    model = model.double().eval()
    x0 = torch.rand((1, *in_shape), generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    li = LinearInterpreter(model, x0, batch=pass_size)
    op = S.Operator.from_engine(Engine(li, x0.device, x0.dtype), pass_size)
    op.li = li
    if hasattr(model, "lin"):  # built from a known matrix: that is the oracle
        F = model.lin.weight.detach().clone()
    else:
        J = jacrev(lambda x: model(x))(x0)  # (1, *out, 1, *in)
        F = J.reshape(li.n_outputs, li.n_inputs).detach()
    U, s, Vh = torch.linalg.svd(F, full_matrices=False)
    return op, F, s, U, Vh


# tolerances: block and dense to 1e-11; Algorithm 1 (one vector per pass, many passes) to 1e-8,
# which still gives σ to ~1e-14 (second order) and subspaces to ~1e-7
TOL = {"block": 1e-11, "power": 1e-8, "dense": None}
ANGLE = {"block": 1e-6, "power": 1e-5, "dense": 1e-6}


def solve(op, method, k, tol=None, block=8, max_calls=None, seed=0):
    tol = TOL[method] if tol is None else tol
    if method == "block":
        sol = S.block_krylov(op, k, block=block, tol=tol, max_passes=max_calls or 400, seed=seed)
    elif method == "power":
        sol = S.power(op, k, tol=tol, max_passes=max_calls or 1000 * k, seed=seed)
    else:
        sol = S.dense(op, k)
    return sol, S.finish(op, sol)


def max_angle(A, B) -> float:
    """Largest principal angle between the row spans of A and B (scipy, independent of ours)."""
    return float(np.max(subspace_angles(np.asarray(A).T, np.asarray(B).T)))


def check_against_oracle(tri, F, s, U, Vh, k, method):
    F = F.numpy()
    sig = tri.sigma
    s1 = s[0].item()
    # singular values to 1e-6 relative
    np.testing.assert_allclose(sig, s[:k].numpy(), rtol=1e-6, atol=1e-6 * s1)
    # subspaces spanned by the top-k eigen-inputs and eigen-outputs (principal angles)
    assert max_angle(tri.v, Vh[:k].numpy()) < ANGLE[method]
    assert max_angle(tri.u, U[:, :k].T.numpy()) < ANGLE[method]
    # each triplet is a singular triplet of the oracle F, with unit norms
    np.testing.assert_allclose(np.linalg.norm(tri.v, axis=1), 1, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(tri.u, axis=1), 1, atol=1e-12)
    tol = 10 * (TOL[method] or 1e-13) * s1
    for i in range(k):
        assert np.linalg.norm(F @ tri.v[i] - sig[i] * tri.u[i]) <= tol
        assert np.linalg.norm(F.T @ tri.u[i] - sig[i] * tri.v[i]) <= tol
    # the sign convention: the largest-magnitude entry of each v_i is positive
    peak = tri.v[np.arange(k), np.abs(tri.v).argmax(axis=1)]
    assert np.all(peak > 0)
    # the measured residuals are what they claim (recomputed here with the oracle F)
    r1 = np.linalg.norm(tri.v @ F.T - sig[:, None] * tri.u, axis=1) / sig
    r2 = np.linalg.norm(tri.u @ F - sig[:, None] * tri.v, axis=1) / sig
    np.testing.assert_allclose(tri.residual, np.stack([r1, r2], 1), atol=1e-9)


def biased_relu_pool_up():
    """ReluPoolUp with large biases: r(x0) is larger than σ_1, so deflating F + r (the paper's
    wording) instead of F would give other triplets than F's."""
    model = TINY.ReluPoolUp().double()
    with torch.no_grad():
        for m in (model.c1, model.c2):
            m.bias.add_(3.0)
    return model


@pytest.mark.parametrize("method", ["block", pytest.param("power", marks=pytest.mark.slow),
                                    "dense"])
def test_image_model_matches_dense_svd_of_the_jacobian(method):
    op, F, s, U, Vh = system(biased_relu_pool_up(), (3, 5, 5))
    assert op.N == 300 and op.n == 75
    assert op.li.residual.norm() > 2 * s[0]
    k = 2 if method == "power" else 6
    assert s[k - 1] - s[k] > 1e-2 * s[0]  # a gap after k: the top-k subspaces are unique
    sol, tri = solve(op, method, k)
    assert sol.converged
    check_against_oracle(tri, F, s, U, Vh, k, method)
    assert tri.residual.max() <= 10 * (TOL[method] or 1e-13)
    assert tri.residual_passes == {"forward": 1, "backward": 1}


@pytest.mark.parametrize("method", ["block", pytest.param("power", marks=pytest.mark.slow),
                                    "dense"])
def test_classifier(method):
    op, F, s, U, Vh = system(M.SmallClassifier(), (3, 6, 6))
    assert (op.N, op.n) == (10, 108)
    k = 3 if method == "power" else 4
    sol, tri = solve(op, method, k)
    assert sol.converged
    check_against_oracle(tri, F, s, U, Vh, k, method)
    if method == "dense":  # fewer outputs than inputs: F is materialised from its 10 rows
        # (two backward passes of ≤ 8) plus one forward and one backward to measure residuals
        assert op.passes == {"forward": 1, "backward": 3}


def test_clustered_spectrum_block():
    """A tight cluster of 6 singular values (relative spread 1.7e-4) above a second cluster: the
    block method resolves it in a few sequential calls (block 8 ≥ the cluster size)."""
    op, F, s, U, Vh = system(M.clustered(), (1, 6, 6))
    np.testing.assert_allclose(s[:len(M.CLUSTERED)].numpy(), sorted(M.CLUSTERED, reverse=True),
                               rtol=1e-12)
    k = 6
    sol, tri = solve(op, "block", k)
    assert sol.converged
    check_against_oracle(tri, F, s, U, Vh, k, "block")
    assert op.passes["forward"] <= 6 and op.passes["backward"] <= 6


@pytest.mark.slow
def test_clustered_spectrum_power():
    """Algorithm 1 converges on a moderately clustered spectrum (σ ratios 0.97, 0.97)..."""
    op, F, s, U, Vh = system(M.moderate(), (1, 6, 6))
    sol, tri = solve(op, "power", 2)
    assert sol.converged
    check_against_oracle(tri, F, s, U, Vh, 2, "power")


def test_tight_cluster_power_reports_no_convergence():
    """...but not on the tight cluster within a budget the block method needs a tenth of: it
    stops at its share of passes and says so; the measured residual shows it."""
    op, F, s, U, Vh = system(M.clustered(), (1, 6, 6))
    sol, tri = solve(op, "power", 2, max_calls=160)
    assert not sol.converged
    assert op.passes["forward"] - 1 <= 80
    assert tri.residual.max() > 1e-8
    assert np.all(tri.sigma <= s[0].item() * (1 + 1e-12))


@pytest.mark.parametrize("method", ["block", "power", "dense"])
def test_rank_deficient_prescribed(method):
    """rank F = 5 < k = 7: σ_6 = σ_7 = 0 (to rounding); v_6, v_7 lie in the null space of F and
    u_6, u_7 in that of Fᵀ; residuals of zero σ are relative to σ_1."""
    op, F, s, U, Vh = system(M.rank_five(), (3, 4, 4))
    k = 7
    sol, tri = solve(op, method, k, block=4)
    assert sol.converged
    np.testing.assert_allclose(tri.sigma[:5], [5, 4, 3, 2, 1], rtol=1e-9)
    assert max_angle(tri.v[:5], Vh[:5].numpy()) < ANGLE[method]
    assert np.all(np.abs(tri.sigma[5:]) <= 1e-12 * 5)
    Fm = F.numpy()
    for i in (5, 6):  # (the earlier triplets are accurate to the tolerance)
        assert np.linalg.norm(Fm @ tri.v[i]) <= 50 * (TOL[method] or 1e-13)
        assert np.linalg.norm(Fm.T @ tri.u[i]) <= 50 * (TOL[method] or 1e-13)
    orth = max(1e-10, 10 * (TOL[method] or 0))
    np.testing.assert_allclose(tri.v @ tri.v.T, np.eye(k), atol=orth)
    np.testing.assert_allclose(tri.u @ tri.u.T, np.eye(k), atol=orth)
    assert tri.residual.max() <= 10 * (TOL[method] or 1e-13)


def test_rank_deficient_network_blocks():
    """A 1-channel bottleneck: rank F ≤ 16 < n = 48, so F·V_j of the third block of 8 lies in
    the span found so far; the random completions keep the iteration exact."""
    op, F, s, U, Vh = system(M.Bottleneck(), (3, 4, 4))
    rank = int((s > 1e-10 * s[0]).sum())
    assert rank <= 16
    k = 10
    assert s[k - 1] - s[k] > 1e-3 * s[0]
    sol, tri = solve(op, "block", k, block=8)
    assert sol.converged
    check_against_oracle(tri, F, s, U, Vh, k, "block")


def test_block_is_deterministic_for_a_seed():
    op, F, s, U, Vh = system(TINY.ReluPoolUp(), (3, 5, 5))
    _, a = solve(op, "block", 5, seed=3)
    _, b = solve(op, "block", 5, seed=3)
    _, c = solve(op, "block", 5, seed=4)
    for x, y in ((a.sigma, b.sigma), (a.u, b.u), (a.v, b.v), (a.residual, b.residual)):
        assert x.tobytes() == y.tobytes()
    # another seed: other Krylov bases, the same triplets (signs fixed by the convention)
    np.testing.assert_allclose(c.sigma, a.sigma, rtol=1e-10)
    np.testing.assert_allclose(c.v, a.v, atol=1e-7)


def test_block_budget_is_respected_and_reported():
    """A pass budget too small to converge: the solver stops before exceeding it, says it did not
    converge, and the measured residuals show how far it got."""
    op, F, s, U, Vh = system(TINY.ReluPoolUp(), (3, 5, 5))
    sol, tri = solve(op, "block", 6, block=6, tol=1e-12, max_calls=4)
    assert not sol.converged
    assert op.passes["forward"] - 1 <= 2 and op.passes["backward"] - 1 <= 2
    assert tri.residual.max() > 1e-12
    # Ritz values of a subspace never exceed the true singular values (interlacing)
    assert np.all(tri.sigma <= s[:6].numpy() * (1 + 1e-12))


def test_block_counts_one_pass_per_block_and_reaches_the_whole_space():
    """Blocks of 8 vectors with passes of 8: one forward and one backward pass per iteration.
    With a tolerance no float64 residual reaches, the iteration runs until V spans all n = 75
    inputs, where the Ritz values are exact."""
    op, F, s, U, Vh = system(TINY.ReluPoolUp(), (3, 5, 5))
    sol = S.block_krylov(op, 4, block=8, tol=0.0, max_passes=1000, seed=0)
    assert sol.converged  # exact: the bases span the whole input space
    assert op.passes == {"forward": math.ceil(75 / 8), "backward": math.ceil(75 / 8)}
    assert sol.extra["basis"][1] == 75
    np.testing.assert_allclose(sol.sigma.numpy(), s[:4].numpy(), rtol=1e-12)


def test_power_momentum_estimate():
    """Xu et al.'s β = λ₂²/4 from the Rayleigh quotients of plain power steps: on a diagonal
    A = diag(λ) the estimate recovers λ₂ from the decay rate; unusable histories give 0."""
    lam = np.array([1.0, 0.8, 0.3, 0.1])
    x = np.ones(4)
    ray = []
    for _ in range(10):
        ray.append(float(x @ (lam * x) / (x @ x)))
        x = lam * x
    beta = K._momentum(ray)
    assert beta == pytest.approx(0.8 ** 2 / 4, rel=0.05)
    assert K._momentum([1.0, 1.0, 1.0, 1.0, 1.0]) == 0.0
    assert K._momentum([1.0, 0.9]) == 0.0


def test_extend_basis_identity_and_completion():
    """W = c_old·Q + c_new·block with an orthonormal extension; a rank-deficient W (two equal
    rows, one row inside span Q) is completed by random orthonormal directions."""
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(20, 3, generator=g, dtype=torch.float64))
    Q = Q.T
    a = torch.randn(20, generator=g, dtype=torch.float64)
    W = torch.stack([a, a, Q[0] * 2 + Q[2]])
    blk, c_old, c_new = K.extend_basis(Q, W, 17, float(W.norm()), seed=1)
    assert blk.shape == (3, 20)
    np.testing.assert_allclose((blk @ blk.T).numpy(), np.eye(3), atol=1e-14)
    np.testing.assert_allclose((blk @ Q.T).numpy(), 0, atol=1e-14)
    np.testing.assert_allclose((c_old @ Q + c_new @ blk).numpy(), W.numpy(), atol=1e-13)
    assert np.linalg.matrix_rank(c_new.numpy(), tol=1e-10) == 1
    # no room left: an empty block, the coefficients still reproduce W
    full, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    blk, c_old, c_new = K.extend_basis(full.T, W, 0, 1.0, seed=1)
    assert blk.shape == (0, 20) and c_new.shape == (3, 0)
    np.testing.assert_allclose((c_old @ full.T).numpy(), W.numpy(), atol=1e-13)


def test_top_k_in_python_is_the_run_solver():
    """precompute.svd.top_k(li, k): the same plan (auto → dense for a small F) and conventions
    as `analyses.svd`, without a store; the interpreter's batch is left as it was."""
    model = M.SmallClassifier().double().eval()
    x0 = torch.rand((1, 3, 6, 6), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    li = LinearInterpreter(model, x0, batch=5)
    tri = S.top_k(li, 3)
    assert li.batch == 5
    F = jacrev(model)(x0).reshape(10, 108).detach()
    s = torch.linalg.svdvals(F)
    np.testing.assert_allclose(tri.sigma, s[:3].numpy(), rtol=1e-10)
    assert tri.residual.max() < 1e-12
    blk = S.top_k(li, 3, method="block", tol=1e-12)
    np.testing.assert_allclose(blk.sigma, tri.sigma, rtol=1e-10)
    np.testing.assert_allclose(np.abs(blk.v @ tri.v.T), np.eye(3), atol=1e-8)
    with pytest.raises(precompute_config.UserError, match="k ≤ 10"):
        S.top_k(li, 11)
