"""The SVD on the F a store holds (precompute/stored_operator.py, issue 17).

Oracle: the dense SVD (numpy, float64) of F built column by column from single impulses through
the interpreter rebuilt from the store's config — independent of the stored windows, of
compressed probing and of the sparse assembly. σ must agree to 1e-6 relative and the singular
subspaces by their principal angles (at a gap of the spectrum: inside a degenerate cluster only
the subspace is defined)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

import precompute
from precompute import stored_operator as SO
from precompute.inputs import prepare, resolve_device
from precompute.interpreter import LinearInterpreter
from sweep_helpers import REPO, cli, make_image, write_config

MODELS = REPO / "tests" / "fixtures" / "svd_models.py"
EXAMPLES = REPO / "examples"


def impulse_svd(store):
    """F from single-impulse columns of the rebuilt interpreter, and its dense SVD (float64)."""
    st = precompute.open_store(store)
    prep = prepare(st.attrs["config"], None, resolve_device("cpu"))
    li = LinearInterpreter(prep.spec.module, prep.x0, rule=st.attrs["interpreter"], batch=64)
    n = math.prod(st.in_shape)
    F = li.columns(list(range(n))).double().reshape(n, -1).T.numpy()
    U, s, Vh = np.linalg.svd(F, full_matrices=False)
    return F, s, U, Vh


def gap_k(s, k):
    """The largest k' ≤ k after which the spectrum has a gap (σ_k' − σ_k'+1 > 1e-6 σ_1)."""
    return max(j for j in range(1, k + 1) if s[j - 1] - s[j] > 1e-6 * s[0])


def check_against_oracle(store, k):
    st = precompute.open_store(store)
    d = st.svd()
    F, s, U, Vh = impulse_svd(store)
    np.testing.assert_allclose(d["sigma"], s[:k], rtol=1e-6)
    kk = gap_k(s, k)
    v, u = d["v"].reshape(k, -1)[:kk], d["u"].reshape(k, -1)[:kk]
    assert np.max(subspace_angles(v.T, Vh[:kk].T)) < 1e-6
    assert np.max(subspace_angles(u.T, U[:, :kk])) < 1e-6
    assert d["residual"].max() < 1e-9  # measured with the network
    return st, F


def example_config(tmp_path, example, crop, **svd):
    import yaml

    cfg = yaml.safe_load((EXAMPLES / example).read_text())
    cfg["model"].pop("checkpoint", None)
    if "pixelshuffle" in example:
        cfg["model"]["checkpoint"] = str(EXAMPLES / "weights" / "pixelshuffle_x3.pt")
    cfg["image"] = str(EXAMPLES / cfg["image"])
    cfg.update(dtype="float64", device="cpu", crop=crop, output=str(tmp_path / "out"))
    cfg["analyses"]["svd"] = dict(cfg["analyses"]["svd"], **svd)
    return write_config(tmp_path / example, **cfg), tmp_path / "out" / f"{cfg['name']}.zarr"


@pytest.mark.parametrize("example, k", [("pixelshuffle.yaml", 16), ("bicubic-x3.yaml", 16)])
def test_shipped_examples_svd_on_the_stored_f_is_the_dense_svd(tmp_path, example, k):
    """The shipped examples on a 16×16 crop (output 48×48, windows 36: they cover the structural
    support, so the store holds F): `method: auto` takes the exact SVD of the stored F, no
    network pass but the residual measurement, and equals the oracle."""
    cfg, store = example_config(tmp_path, example, [8, 8, 16, 16])
    r = cli("run", cfg)
    assert r.exit_code == 0, r.output
    assert "on the F the store holds (the columns: their 36×36 windows cover the structural " \
           "support" in r.stderr
    st, F = check_against_oracle(store, k)
    a = st.svd_attrs
    assert a["operator"] == "store" and a["operator_source"] == "columns"
    assert a["method"] == "dense" and a["calls"] == {"forward": 0, "backward": 0}
    assert a["residual_calls"] == {"forward": 1, "backward": 1}
    assert a["operator_nnz"] == np.count_nonzero(F)
    # the assembled matrix is F itself
    sf, _ = SO.load_if_whole(store, st.group, list(st.layouts.values()), torch.float64, "cpu")
    np.testing.assert_allclose(sf.matrix.toarray(), F, rtol=0, atol=1e-12 * np.abs(F).max())
    ver = cli("verify", store)
    assert ver.exit_code == 0, ver.output
    assert "svd: all 16 triplets against the F of the stored columns" in ver.output
    assert "stored F: the columns and the rows hold the same F" in ver.output


def net_config(tmp_path, name, window, svd, probing="auto"):
    if not (tmp_path / "img.png").exists():
        make_image(tmp_path / "img.png", 10, 10, seed=3)
    return write_config(tmp_path / f"{name}.yaml", name="net",
                        model={"arch": f"python:{MODELS}:small_support"}, image="img.png",
                        dtype="float64", device="cpu", probing=probing,
                        output=str(tmp_path / name),
                        analyses={"columns": {"window": window}, "rows": False, "svd": svd})


@pytest.mark.parametrize("method", ["auto", "block", "power"])
def test_random_conv_net_on_the_stored_f(tmp_path, method):
    # the iterative solvers stop at their tolerance (float64 default 1e-8); the oracle check
    # asks for residuals below 1e-9
    svd = {"k": 6, "method": method} | ({"tol": 1e-10} if method != "auto" else {})
    cfg = net_config(tmp_path, "out", 12, svd)
    r = cli("run", cfg)
    assert r.exit_code == 0, r.output
    store = tmp_path / "out" / "net.zarr"
    st, _ = check_against_oracle(store, 6) if method != "power" else (None, None)
    a = json.loads((store / "svd" / "zarr.json").read_text())["attributes"]
    assert a["operator"] == "store"
    assert a["method"] == {"auto": "dense"}.get(method, method)
    assert a["calls"] == {"forward": 0, "backward": 0}
    if method != "auto":  # the solvers on sparse products
        assert a["products"]["forward"] > 0 and a["products"]["backward"] > 0
    if method == "power":  # Algorithm 1 converges to its own tolerance only
        d = precompute.open_store(store).svd()
        _, s, _, _ = impulse_svd(store)
        np.testing.assert_allclose(d["sigma"], s[:6], rtol=1e-6)


@pytest.mark.parametrize("probing", ["auto", "single"])
def test_windowed_store_falls_back_to_network_passes_and_says_so(tmp_path, probing):
    """Windows of 4×4 output pixels, smaller than a column's support (10×10): the store holds
    part of F only. The plan knows it from the structural support (probing auto); with
    `probing: single` it is found after the sweep. Either way the network computes the SVD."""
    cfg = net_config(tmp_path, "out", 4, {"k": 6}, probing)
    r = cli("run", cfg)
    assert r.exit_code == 0, r.output
    if probing == "auto":
        assert ("by network passes (the store does not hold all of F: the columns are cut to "
                "4×4 windows, smaller than their structural support)") in r.stderr
    else:
        assert "svd: the store does not hold all of F (" in r.stderr
        assert "have part of their norm outside their 4×4 window" in r.stderr
        assert "network passes instead" in r.stderr
    store = tmp_path / "out" / "net.zarr"
    st, _ = check_against_oracle(store, 6)
    a = st.svd_attrs
    assert a["operator"] == "network" and a["calls"]["forward"] > 0
    assert "operator_source" not in a
    # and operator: store on such a store is one clear line, before any work
    cfg2 = net_config(tmp_path, "strict", 4, {"k": 6, "operator": "store"}, "auto")
    r = cli("run", cfg2)
    assert r.exit_code == 2
    assert "analyses.svd.operator: store needs a store that holds all of F" in r.output


def test_operator_network_is_kept_for_comparison(tmp_path):
    cfg = net_config(tmp_path, "out", 12, {"k": 6, "operator": "network"})
    r = cli("run", cfg)
    assert r.exit_code == 0, r.output
    assert "by network passes (operator: network)" in r.stderr
    st, _ = check_against_oracle(tmp_path / "out" / "net.zarr", 6)
    assert st.svd_attrs["operator"] == "network" and st.svd_attrs["calls"]["forward"] > 0


def test_wrong_stored_f_cannot_hide(tmp_path):
    """A column altered in the store after the sweep: the SVD computed from the stored F is
    consistent with it, but its residuals are measured with the network — and they show it."""
    import zarr

    cfg = net_config(tmp_path, "out", "full", {"k": 6})
    r = cli("run", cfg)
    assert r.exit_code == 0
    store = tmp_path / "out" / "net.zarr"
    assert precompute.open_store(store).svd_attrs["max_residual"] < 1e-9
    g = zarr.open_group(str(store), mode="r+")
    col = g["columns"][5, 5]
    g["columns"][5, 5] = col * 1.5
    cfg2 = write_config(tmp_path / "again.yaml", **dict(
        __import__("yaml").safe_load(cfg.read_text()),
        analyses={"columns": {"window": "full"}, "rows": False, "svd": {"k": 6, "seed": 1}}))
    r = cli("run", "--overwrite", cfg2)
    assert r.exit_code == 0, r.output
    assert precompute.open_store(store).svd_attrs["max_residual"] > 1e-3


@pytest.mark.parametrize("example, block", [("pixelshuffle.yaml", 8), ("bicubic-x3.yaml", 16)])
def test_shipped_examples_block_lanczos_on_the_gram_matrix(tmp_path, example, block):
    """`method: block` on the stored F is block Lanczos on FᵀF (precompute/svd_gram.py): the
    same triplets as the oracle's dense SVD (σ to 1e-6, subspaces to 1e-6 at a gap), no
    network pass but the residual measurement. bicubic's top σ come in clusters of up to 6
    equal values (each harmonic once per colour channel, twice by symmetry): a block of 16
    holds a whole cluster."""
    cfg, store = example_config(tmp_path, example, [8, 8, 16, 16], method="block", block=block,
                                tol=1e-11, max_calls=400)
    r = cli("run", cfg)
    assert r.exit_code == 0, r.output
    assert f"by block Lanczos on the Gram matrix FᵀF (blocks of {block}" in r.stderr
    st, _ = check_against_oracle(store, 16)
    a = st.svd_attrs
    assert a["operator"] == "store" and a["method"] == "block" and a["converged"]
    assert a["calls"] == {"forward": 0, "backward": 0}
    assert a["products"]["forward"] > 0 and a["products"]["backward"] > 0


def _sparse_operator(A):
    import scipy.sparse as sp

    from precompute.svd_solvers import Operator

    M = sp.csr_array(A)
    return Operator(lambda V: torch.from_numpy(np.ascontiguousarray((M @ V.numpy().T).T)),
                    lambda U: torch.from_numpy(np.ascontiguousarray((M.T @ U.numpy().T).T)),
                    A.shape[1], A.shape[0], torch.float64, torch.device("cpu"), 8)


@pytest.mark.parametrize("shape", [(300, 120), (120, 300)])
def test_gram_lanczos_against_numpy_svd(shape):
    """The Gram solver alone, on a random sparse F of known decaying spectrum (tall: FᵀF; wide:
    FFᵀ), with blocks too small to span the space before convergence: σ to 1e-10 relative,
    the singular subspaces by principal angles, and its residual estimates are the residuals."""
    from precompute.svd_gram import gram_lanczos

    rng = np.random.default_rng(7)
    N, n = shape
    mask = rng.random(shape) < 0.05
    U0, _, Vh0 = np.linalg.svd(rng.standard_normal(shape) * mask, full_matrices=False)
    A = (U0 * np.geomspace(10, 1e-3, min(shape))) @ Vh0
    op = _sparse_operator(A)
    sol = gram_lanczos(op, 6, block=4, tol=1e-10, max_passes=400, seed=3)
    assert sol.converged and sol.iterations < min(shape) // 4  # stopped before the whole space
    U, s, Vh = np.linalg.svd(A)
    np.testing.assert_allclose(sol.sigma.numpy(), s[:6], rtol=1e-10)
    u, v = sol.u.numpy(), sol.v.numpy()
    assert np.max(subspace_angles(v.T, Vh[:6].T)) < 1e-8
    assert np.max(subspace_angles(u.T, U[:, :6])) < 1e-8
    r1 = np.linalg.norm(A @ v.T - u.T * sol.sigma.numpy(), axis=0) / sol.sigma.numpy()
    r2 = np.linalg.norm(A.T @ u.T - v.T * sol.sigma.numpy(), axis=0) / sol.sigma.numpy()
    assert max(r1.max(), r2.max()) <= 1e-10
    passes = op.passes["forward"] + op.passes["backward"]
    assert passes == 2 * sol.iterations + 1  # G·V = Fᵀ(F·V) per block, then F·V_k once


def test_gram_lanczos_rank_deficient_and_budget():
    """F of rank 3 asked for k = 5: the two zero singular values come out as 0 with orthonormal
    vectors; with a budget of 4 products it stops early, unconverged, and says so."""
    from precompute.svd_gram import gram_lanczos

    rng = np.random.default_rng(1)
    A = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 30))
    sol = gram_lanczos(_sparse_operator(A), 5, block=4, tol=1e-10, max_passes=200, seed=0)
    s = np.linalg.svd(A, compute_uv=False)
    np.testing.assert_allclose(sol.sigma.numpy()[:3], s[:3], rtol=1e-10)
    assert np.all(sol.sigma.numpy()[3:] < 1e-12 * s[0])
    np.testing.assert_allclose(sol.v.numpy() @ sol.v.numpy().T, np.eye(5), atol=1e-10)
    short = gram_lanczos(_sparse_operator(A), 5, block=2, tol=1e-14, max_passes=4, seed=0)
    assert not short.converged
