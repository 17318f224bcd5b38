"""A compressed store killed at any moment and resumed, or filled by two --shard processes at
once, equals an uninterrupted compressed store bitwise; a resumed run with `probing: auto`
repeats the store's method, and `probing: single` may finish a compressed store."""

from __future__ import annotations


import numpy as np
import pytest

import precompute
from sweep_helpers import (REPO, assert_bitwise_equal, cli, cli_subprocess, make_image,
                           run_and_kill, run_shards, shard_files, write_config)

FIX = REPO / "tests" / "fixtures" / "support_models.py"
# blocks of at most 2×2 tiles (4 column blocks and their 4 row blocks at tile 4 on 16×16 px)
BLOCK_BYTES = "30000"


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setenv("LINEARSCOPE_BLOCK_BYTES", BLOCK_BYTES)


def _config(tmp_path, out, probing="auto"):
    if not (tmp_path / "img.png").exists():
        make_image(tmp_path / "img.png", 16, 16, seed=5)
    return write_config(
        tmp_path / f"{out}.yaml", name="c", model={"arch": f"python:{FIX}:relu_same"},
        image="img.png", dtype="float32", batch=7, probing=probing, output=str(tmp_path / out),
        analyses={"residual": True, "columns": {"window": 3, "tile": 4},
                  "rows": {"window": 4, "tile": 4}},
    )


def _reference(tmp_path, probing="auto"):
    r = cli("run", "-q", _config(tmp_path, f"ref-{probing}", probing))
    assert r.exit_code == 0, r.stderr
    ref = tmp_path / f"ref-{probing}" / "c.zarr"
    return ref, precompute.open_store(ref)


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    ref, st = _reference(tmp_path)
    p = st.attrs["probing"]
    assert p["columns"] == {"method": "compressed", "period": [5, 5], "block": 2, "crop": 1}
    # rows blocks are the columns blocks (halo crops: rows read out of the same passes)
    assert p["rows"]["method"] == "from_columns" and p["rows"]["block"] == 2
    cfg = _config(tmp_path, "killed")
    store = tmp_path / "killed" / "c.zarr"
    kill_points = [
        lambda s: (s / "zarr.json").exists(),
        lambda s: shard_files(s, "columns") >= 1,
        lambda s: shard_files(s, "columns") >= 9,
        lambda s: shard_files(s, "rows") >= 3,
    ]
    killed = [run_and_kill(cfg, store, ready) for ready in kill_points]
    assert sum(killed) >= 3, killed
    assert not precompute.open_store(store).is_complete()
    r = cli_subprocess("run", "-q", cfg)
    assert r.returncode == 0, r.stderr
    assert precompute.open_store(store).is_complete()
    assert_bitwise_equal(ref, store)


@pytest.mark.slow
def test_two_shard_processes_at_once_fill_one_compressed_store(tmp_path):
    ref, _ = _reference(tmp_path)
    cfg = _config(tmp_path, "par")
    run_shards(cfg)
    store = tmp_path / "par" / "c.zarr"
    assert precompute.open_store(store).is_complete()
    assert_bitwise_equal(ref, store)


def test_shards_get_whole_blocks(tmp_path):
    cfg = _config(tmp_path, "half")
    r = cli("run", "--shard", "1/2", cfg)
    assert r.exit_code == 0, r.stderr
    st = precompute.open_store(tmp_path / "half" / "c.zarr")
    done = {(t.ty, t.tx) for t in st.done_tiles("columns")}
    # blocks of 2×2 tiles, round-robin: shard 1 owns blocks (0, 1) and (1, 1)
    assert done == {(y, x) for y in range(4) for x in (2, 3)}, done
    assert "this process's share: 8" in r.stderr


def test_resume_repeats_the_stored_method(tmp_path):
    # started with one impulse per probe: `probing: auto` continues that way
    ref, _ = _reference(tmp_path, "single")
    cfg = _config(tmp_path, "mixed", "single")
    assert cli("run", "-q", "--shard", "0/2", cfg).exit_code == 0
    r = cli("run", "-q", _config(tmp_path, "mixed", "auto"))
    assert r.exit_code == 0, r.stderr
    st = precompute.open_store(tmp_path / "mixed" / "c.zarr")
    assert st.attrs["probing"]["columns"] == {"method": "single"}
    assert_bitwise_equal(ref, tmp_path / "mixed" / "c.zarr")


def test_probing_single_finishes_a_compressed_store(tmp_path):
    _, ref = _reference(tmp_path)
    assert cli("run", "-q", "--shard", "0/2", _config(tmp_path, "sw")).exit_code == 0
    r = cli("run", _config(tmp_path, "sw", "single"))
    assert r.exit_code == 0, r.stderr
    assert "note: probing: single differs from the store's compressed columns" in r.stderr
    st = precompute.open_store(tmp_path / "sw" / "c.zarr")
    assert st.is_complete() and st.attrs["probing"]["columns"]["method"] == "compressed"
    for name in ("columns", "rows", "columns_outside", "rows_outside"):
        np.testing.assert_allclose(st.array(name), ref.array(name), rtol=0, atol=1e-6)
