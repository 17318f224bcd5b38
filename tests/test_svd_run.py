"""`analyses.svd` in `precompute run`: the store's `svd/` group, `info`, `verify`, resuming.

The stored triplets are checked against an independent oracle: the SVD of the Jacobian
(``torch.func.jacrev``) of the same model at the stored x0, in float64.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from torch.func import jacrev

import precompute
from precompute import svd as S
from precompute.store import StoreError
from sweep_helpers import (REPO, TINY, assert_bitwise_equal, attrs, cli, cli_subprocess, make_image,
                           write_config)

MODELS = REPO / "tests" / "fixtures" / "svd_models.py"


def _module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def config(tmp_path, out, model, svd, size=6, **analyses):
    if not (tmp_path / "img.png").exists():
        make_image(tmp_path / "img.png", size, size, seed=7)
    return write_config(tmp_path / f"{out}.yaml", name="net", model={"arch": model},
                        image="img.png", dtype="float64", output=str(tmp_path / out),
                        analyses={"svd": svd, **analyses})


def oracle(store, module):
    """SVD of the Jacobian of ``module`` at the store's x0 (float64, no LinearScope)."""
    x0 = torch.from_numpy(precompute.open_store(store).array("input"))[None].double()
    model = module.double().eval()
    J = jacrev(model)(x0)
    F = J.reshape(J[0].numel() // x0.numel(), x0.numel()) if J.dim() > 2 else J
    F = F.reshape(-1, x0.numel()).detach()
    U, s, Vh = torch.linalg.svd(F, full_matrices=False)
    return F.numpy(), s.numpy(), U.numpy(), Vh.numpy()


def angle(A, B):
    return float(np.max(subspace_angles(np.asarray(A).T, np.asarray(B).T)))


def svd_attrs(store):
    return json.loads((store / "svd" / "zarr.json").read_text())["attributes"]


@pytest.mark.parametrize("method", ["auto", "block"])
def test_classifier_with_only_svd(tmp_path, method):
    """A vector model with `analyses: {svd: ...}` only (columns/rows default to off)."""
    cfg = config(tmp_path, "out", f"python:{MODELS}:small_classifier",
                 {"k": 4, "method": method})
    r = cli("run", "-q", cfg)
    assert r.exit_code == 0, r.output
    store = tmp_path / "out" / "net.zarr"
    st = precompute.open_store(store)
    assert st.layouts == {} and st.has_svd()
    d = st.svd()
    assert d["sigma"].shape == (4,) and d["u"].shape == (4, 10)
    assert d["v"].shape == (4, 3, 6, 6) and d["residual"].shape == (4, 2)
    a = st.svd_attrs
    assert a["method"] == ("dense" if method == "auto" else "block")  # N·n = 1080 ≤ 10⁷
    assert a["complete"] and a["converged"] and a["k"] == 4 and a["tol"] == 1e-8
    assert set(a["calls"]) == {"forward", "backward"} and a["wall_time"] > 0
    assert st.attrs["analyses"]["svd"]["method"] == a["method"]
    F, s, U, Vh = oracle(store, _module(MODELS, "m_clf").small_classifier())
    np.testing.assert_allclose(d["sigma"], s[:4], rtol=1e-6)
    v = d["v"].reshape(4, -1)
    assert angle(v, Vh[:4]) < 1e-6 and angle(d["u"], U[:, :4].T) < 1e-6
    for i in range(4):
        assert np.linalg.norm(F @ v[i] - d["sigma"][i] * d["u"][i]) < 1e-7 * s[0]
    assert d["residual"].max() <= 1e-8

    info = cli("info", store)
    assert f"svd       top-4 by {a['method']}" in info.output and "converged" in info.output
    ver = cli("verify", "--trust-code", store)  # a python: test model
    assert ver.exit_code == 0, ver.output
    assert "svd: 4 of 4 triplets recomputed" in ver.output and "OK" in ver.output


def test_image_run_columns_rows_and_svd_agree(tmp_path):
    """Full columns from the sweep and the SVD describe the same F: F v_i = σ_i u_i with the
    stored F; both match the Jacobian."""
    cfg = config(tmp_path, "out", f"python:{TINY}:relu_pool_up", {"k": 5, "method": "block"},
                 size=5, columns={"window": "full"}, rows=False)
    r = cli("run", "-q", cfg)
    assert r.exit_code == 0, r.output
    store = tmp_path / "out" / "net.zarr"
    st = precompute.open_store(store)
    d = st.svd()
    assert d["u"].shape == (5, 3, 10, 10) and d["v"].shape == (5, 3, 5, 5)
    Fs = st.dense()
    F, s, U, Vh = oracle(store, _module(TINY, "m_tiny").relu_pool_up())
    np.testing.assert_allclose(Fs, F, atol=1e-12)
    u, v = d["u"].reshape(5, -1), d["v"].reshape(5, -1)
    np.testing.assert_allclose(v @ Fs.T, d["sigma"][:, None] * u, atol=1e-7 * s[0])
    np.testing.assert_allclose(d["sigma"], s[:5], rtol=1e-6)
    peak = v[np.arange(5), np.abs(v).argmax(axis=1)]
    assert np.all(peak > 0)  # the documented sign convention


def test_verify_detects_a_wrong_triplet(tmp_path):
    cfg = config(tmp_path, "out", f"python:{MODELS}:small_classifier", {"k": 3})
    assert cli("run", "-q", cfg).exit_code == 0
    store = tmp_path / "out" / "net.zarr"
    import zarr

    sig = zarr.open_array(str(store / "svd" / "sigma"), mode="r+")
    sig[0] = sig[0] * 1.001
    ver = cli("verify", "--trust-code", store)  # a python: test model
    assert ver.exit_code == 1 and "MISMATCH" in ver.output


def test_k_above_the_rank_bound_is_one_line(tmp_path):
    cfg = config(tmp_path, "out", f"python:{MODELS}:small_classifier", {"k": 11})
    r = cli_subprocess("run", cfg)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: analyses.svd.k = 11 is more than F (10 × 108) has singular values; use k ≤ 10"]
    assert not (tmp_path / "out" / "net.zarr").exists()


def _interrupt_after(monkeypatch, name, calls):
    """Make the n-th call of Operator.<name> raise KeyboardInterrupt (Ctrl-C)."""
    real = getattr(S.Operator, name)
    count = {"n": 0}

    def patched(self, X):
        count["n"] += 1
        if count["n"] >= calls:
            raise KeyboardInterrupt
        return real(self, X)

    monkeypatch.setattr(S.Operator, name, patched)


def _resume_equals_reference(tmp_path, monkeypatch, model, svd, interrupt_at, expect, op="F"):
    ref_cfg = config(tmp_path, "ref", model, svd)
    assert cli("run", "-q", ref_cfg).exit_code == 0
    ref = tmp_path / "ref" / "net.zarr"
    cfg = config(tmp_path, "cut", model, svd)
    store = tmp_path / "cut" / "net.zarr"
    with monkeypatch.context() as m:
        _interrupt_after(m, op, interrupt_at)
        r = cli("run", "-q", cfg)
    assert r.exit_code == 130, r.output
    st = precompute.open_store(store)
    assert not st.has_svd()  # never a half-written result
    with pytest.raises(StoreError):
        st.svd()
    assert "not complete" in cli("info", store).output
    state = json.loads((store / "svd" / "state" / "zarr.json").read_text())["attributes"]
    r = cli("run", cfg)  # not quiet: it says what it resumes
    assert r.exit_code == 0, r.output
    assert expect in r.stderr
    assert not (store / "svd" / "state").exists()
    assert_bitwise_equal(ref, store)
    a, b = svd_attrs(ref), svd_attrs(store)
    assert a.pop("wall_time") > 0 and b.pop("wall_time") > 0
    assert a == b
    return state["progress"]


def test_block_resumes_from_its_last_saved_block(tmp_path, monkeypatch):
    progress = _resume_equals_reference(
        tmp_path, monkeypatch, f"python:{TINY}:relu_pool_up",
        {"k": 4, "method": "block", "block": 4, "tol": 1e-12, "operator": "network"}, interrupt_at=4,
        expect="svd: resuming block Krylov after 3 saved iteration(s)")
    assert progress["iterations"] == 3 and progress["passes"] == {"forward": 3, "backward": 3}


@pytest.mark.slow
def test_power_resumes_from_its_last_saved_triplet(tmp_path, monkeypatch):
    _resume_equals_reference(
        tmp_path, monkeypatch, f"python:{MODELS}:small_classifier",
        {"k": 2, "method": "power", "tol": 1e-6}, interrupt_at=45,
        expect="svd: resuming the power method after 1 of 2 saved triplet(s)")


def test_dense_restarts_and_says_so(tmp_path, monkeypatch):
    _resume_equals_reference(
        tmp_path, monkeypatch, f"python:{MODELS}:small_classifier", {"k": 3, "method": "dense"},
        interrupt_at=1, expect="svd: the dense SVD keeps no intermediate state: restarting it",
        op="Ft")  # a classifier's F is materialised from its rows


def test_killed_before_the_marker_leaves_no_result(tmp_path, monkeypatch):
    """Killed after the result arrays but before `complete`: readers see no SVD; the next run
    finishes it (from the saved state) and equals an uninterrupted run."""
    svd = {"k": 3, "method": "block", "block": 4}
    model = f"python:{MODELS}:small_classifier"
    assert cli("run", "-q", config(tmp_path, "ref", model, svd)).exit_code == 0
    cfg = config(tmp_path, "cut", model, svd)
    store = tmp_path / "cut" / "net.zarr"

    def boom(group, a):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(S, "mark_complete", boom)
        assert cli("run", "-q", cfg).exit_code == 130
    assert (store / "svd" / "sigma" / "zarr.json").is_file()  # the arrays are there...
    st = precompute.open_store(store)
    assert not st.has_svd()  # ...but not a result
    from sitegen.reader import open_store as site_open

    assert site_open(store).svd() is None
    r = cli("run", cfg)
    assert r.exit_code == 0 and "resuming block Krylov" in r.stderr
    assert_bitwise_equal(tmp_path / "ref" / "net.zarr", store)


@pytest.mark.slow
def test_sigkill_during_block_then_resume(tmp_path):
    svd = {"k": 4, "method": "block", "block": 4, "tol": 1e-13, "max_calls": 16,
           "operator": "network"}  # the network solver's saved state (the stored F keeps none)
    model = f"python:{TINY}:relu_pool_up"
    assert cli("run", "-q", config(tmp_path, "ref", model, svd)).exit_code == 0
    cfg = config(tmp_path, "cut", model, svd)
    store = tmp_path / "cut" / "net.zarr"
    state = store / "svd" / "state" / "zarr.json"

    def iterations():
        try:
            return json.loads(state.read_text())["attributes"]["progress"]["iterations"]
        except (OSError, ValueError, KeyError):
            return 0

    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-m", "precompute.cli", "run", "-q", str(cfg)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while p.poll() is None and time.monotonic() < deadline and iterations() < 2:
        time.sleep(0.005)
    killed = p.poll() is None
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert killed, "the run finished before it could be killed"
    assert not precompute.open_store(store).has_svd()
    r = cli_subprocess("run", cfg)
    assert r.returncode == 0, r.stderr
    assert "resuming block Krylov" in r.stderr
    assert_bitwise_equal(tmp_path / "ref" / "net.zarr", store)
    assert attrs(store)["analyses"]["svd"]["max_calls"] == 16


def test_damaged_svd_chunk_is_one_line_in_info_and_a_failed_verify(tmp_path):
    cfg = config(tmp_path, "out", f"python:{MODELS}:small_classifier", {"k": 3})
    assert cli("run", "-q", cfg).exit_code == 0
    store = tmp_path / "out" / "net.zarr"
    chunk = next(p for p in (store / "svd" / "v" / "c").rglob("*") if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the crc32c of that chunk no longer matches
    chunk.write_bytes(bytes(data))
    info = cli("info", store)
    assert info.exit_code == 0 and "svd       top-3 by dense: unreadable" in info.output
    ver = cli("verify", "--trust-code", store)  # a python: test model
    assert ver.exit_code == 1 and "svd: unreadable" in ver.output
