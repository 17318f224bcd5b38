"""A run killed by SIGKILL at several points, then resumed, equals an uninterrupted run bitwise."""

from __future__ import annotations


import pytest

import precompute
from sweep_helpers import (TINY, assert_bitwise_equal, cli, cli_subprocess, make_image,
                           run_and_kill, run_shards, shard_files, write_config)


def _config(tmp_path, out):
    if not (tmp_path / "img.png").exists():
        make_image(tmp_path / "img.png", 6, 6, seed=5)
    return write_config(
        tmp_path / f"{out}.yaml", name="tiny", model={"arch": f"python:{TINY}:relu_same"},
        image="img.png", dtype="float32", batch=3, output=str(tmp_path / out),
        analyses={"residual": True, "columns": {"window": 3, "tile": 2},
                  "rows": {"window": 4, "tile": 2}},
    )


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    ref_cfg = _config(tmp_path, "ref")
    r = cli("run", "-q", ref_cfg)
    assert r.exit_code == 0, r.output
    ref = tmp_path / "ref" / "tiny.zarr"

    cfg = _config(tmp_path, "killed")
    store = tmp_path / "killed" / "tiny.zarr"
    kill_points = [
        lambda s: (s / "zarr.json").exists(),  # during creation
        lambda s: shard_files(s, "columns") >= 2,
        lambda s: shard_files(s, "columns") >= 7,
        lambda s: shard_files(s, "rows") >= 4,
    ]
    killed = [run_and_kill(cfg, store, ready) for ready in kill_points]
    assert sum(killed) >= 3, killed  # the kills really interrupted runs
    # a leftover temporary file of a killed writer (as LocalStore names them) is cleaned up
    stale = store / "rows" / "c" / "2" / "2" / "0" / "0" / "0" / "0.0123456789abcdef.partial"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"torn")
    assert not precompute.open_store(store).is_complete()

    r = cli_subprocess("run", "-q", cfg)
    assert r.returncode == 0, r.stderr
    assert not stale.exists()
    assert not list(store.rglob("*.partial"))
    assert precompute.open_store(store).is_complete()
    assert_bitwise_equal(ref, store)

    # a finished run is reported as done, and nothing changes
    r = cli("run", "-q", cfg)
    assert r.exit_code == 0 and "already done" in r.stdout
    assert_bitwise_equal(ref, store)


@pytest.mark.slow
def test_two_shard_processes_at_once_fill_one_store(tmp_path):
    ref_cfg = _config(tmp_path, "ref")
    assert cli("run", "-q", ref_cfg).exit_code == 0
    cfg = _config(tmp_path, "par")
    run_shards(cfg)
    store = tmp_path / "par" / "tiny.zarr"
    assert precompute.open_store(store).is_complete()
    assert_bitwise_equal(tmp_path / "ref" / "tiny.zarr", store)
