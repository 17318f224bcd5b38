"""Whole-F analyses (svd, classify) added to, or changed in, a finished store.

The rows, columns and residual of a store took the sweep; an SVD or a classifier analysis asked
for afterwards must be computed into the same store without recomputing them, give exactly what
a store made with it from the start holds, and a changed one needs `--overwrite`, which then
replaces that analysis only.
"""

from __future__ import annotations

import numpy as np
import yaml

import precompute
from sweep_helpers import REPO, TINY, attrs, cli, make_image, read_all, write_config

MODELS = REPO / "tests" / "fixtures" / "svd_models.py"


def _config(tmp_path, out, analyses, model=f"python:{TINY}:relu_same"):
    if not (tmp_path / "img.png").exists():
        make_image(tmp_path / "img.png", 6, 6, seed=3)
    return write_config(tmp_path / f"{out}.yaml", name="net", model={"arch": model},
                        image="img.png", dtype="float64", output=str(tmp_path / out),
                        analyses=analyses)


def _files(store):
    """Every file of the rows/columns/residual (path → (inode, mtime_ns)): untouched means the
    same file, not rewritten."""
    out = {}
    for sub in ("columns", "rows", "residual"):
        for f in sorted((store / sub).rglob("*")):
            if f.is_file():
                st = f.stat()
                out[str(f.relative_to(store))] = (st.st_ino, st.st_mtime_ns)
    return out


SWEEP = {"residual": True, "columns": {"window": "full"}, "rows": {"window": "full"}}


def test_svd_added_to_a_finished_store_keeps_the_sweep_and_equals_a_fresh_run(tmp_path):
    cfg = _config(tmp_path, "out", SWEEP)
    assert cli("run", "-q", cfg).exit_code == 0
    store = tmp_path / "out" / "net.zarr"
    before = _files(store)
    assert before and not (store / "svd").exists()

    cfg = _config(tmp_path, "out", SWEEP | {"svd": {"k": 4, "method": "dense"}})
    r = cli("run", cfg)
    assert r.exit_code == 0, r.output + r.stderr
    assert "adding svd to the finished store" in r.stderr
    assert _files(store) == before  # the sweep was not computed again
    a = attrs(store)
    assert a["config"]["analyses"]["svd"] == {"k": 4, "method": "dense"} | {
        k: v for k, v in a["config"]["analyses"]["svd"].items() if k not in ("k", "method")}
    assert a["analyses"]["svd"]["k"] == 4

    fresh = _config(tmp_path, "fresh", SWEEP | {"svd": {"k": 4, "method": "dense"}})
    assert cli("run", "-q", fresh).exit_code == 0
    got, want = read_all(store), read_all(tmp_path / "fresh" / "net.zarr")
    for name in ("svd/sigma", "svd/u", "svd/v", "columns", "rows", "residual"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # and the next run has nothing left to do
    again = cli("run", cfg)
    assert again.exit_code == 0 and "already done" in again.output + again.stderr


def test_changed_svd_needs_overwrite_which_replaces_it_only(tmp_path):
    cfg = _config(tmp_path, "out", SWEEP | {"svd": {"k": 4, "method": "dense"}})
    assert cli("run", "-q", cfg).exit_code == 0
    store = tmp_path / "out" / "net.zarr"
    before = _files(store)

    cfg = _config(tmp_path, "out", SWEEP | {"svd": {"k": 2, "method": "dense"}})
    r = cli("run", cfg)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--overwrite" in lines[0]
    assert "rows, columns and residual are kept" in lines[0]
    assert precompute.open_store(store).svd()["sigma"].shape == (4,)  # untouched

    r = cli("run", "--overwrite", cfg)
    assert r.exit_code == 0, r.output + r.stderr
    assert _files(store) == before
    st = precompute.open_store(store)
    assert st.svd()["sigma"].shape == (2,) and attrs(store)["analyses"]["svd"]["k"] == 2
    np.testing.assert_array_equal(st.svd()["sigma"], read_all(store)["svd/sigma"])


def test_a_dropped_whole_f_analysis_is_kept(tmp_path):
    cfg = _config(tmp_path, "out", SWEEP | {"svd": {"k": 3, "method": "dense"}})
    assert cli("run", "-q", cfg).exit_code == 0
    store = tmp_path / "out" / "net.zarr"
    r = cli("run", _config(tmp_path, "out", SWEEP))
    assert r.exit_code == 0 and "already done" in r.output + r.stderr
    assert precompute.open_store(store).svd()["sigma"].shape == (3,)


def test_sweep_changes_still_refuse_without_overwrite(tmp_path):
    cfg = _config(tmp_path, "out", SWEEP)
    assert cli("run", "-q", cfg).exit_code == 0
    r = cli("run", _config(tmp_path, "out", SWEEP | {"rows": {"window": 3},
                                                   "svd": {"k": 2, "method": "dense"}}))
    assert r.exit_code == 2 and "analyses" in r.stderr and "--overwrite" in r.stderr


def test_classify_added_to_a_classifier_store(tmp_path):
    model = f"python:{MODELS}:small_classifier"
    cfg = _config(tmp_path, "out", {"residual": True}, model=model)
    assert cli("run", "-q", cfg).exit_code == 0
    store = tmp_path / "out" / "net.zarr"
    residual = (store / "residual").stat().st_mtime_ns if (store / "residual").exists() else None

    analyses = {"residual": True, "classify": {"top_k": 2}}
    r = cli("run", _config(tmp_path, "out", analyses, model=model))
    assert r.exit_code == 0, r.output + r.stderr
    assert "adding classify" in r.stderr
    fresh = _config(tmp_path, "fresh", analyses, model=model)
    assert cli("run", "-q", fresh).exit_code == 0
    got, want = read_all(store), read_all(tmp_path / "fresh" / "net.zarr")
    names = [n for n in want if n.startswith("classify/")]
    assert "classify/contributions" in names and "classify/votes" in names
    for name in names:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    if residual is not None:
        assert (store / "residual").stat().st_mtime_ns == residual
    assert yaml.safe_load(yaml.safe_dump(attrs(store)["config"]))["analyses"]["classify"][
        "top_k"] == 2


def test_svd_state_counts_in_the_disk_check(tmp_path, monkeypatch):
    """The block solver's resumable state is written while it runs: a disk too small for it is
    refused before the SVD starts, with the numbers."""
    cfg = _config(tmp_path, "out", SWEEP)
    assert cli("run", "-q", cfg).exit_code == 0
    cfg = _config(tmp_path, "out", SWEEP | {"svd": {"k": 2, "method": "block",
                                                    "operator": "network"}})  # (its state)
    monkeypatch.setenv("LINEARSCOPE_FREE_BYTES", "4096")  # 108 × 108 F: the state is larger
    r = cli("run", cfg)
    assert r.exit_code == 2 and "is free at" in r.stderr, r.output + r.stderr
    assert not (tmp_path / "out" / "net.zarr" / "svd").exists()
    monkeypatch.setenv("LINEARSCOPE_FREE_BYTES", str(10**9))
    assert cli("run", "-q", cfg).exit_code == 0
    assert precompute.open_store(tmp_path / "out" / "net.zarr").svd()["sigma"].shape == (2,)
