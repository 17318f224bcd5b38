"""A failing disk stops the run with one clear message and keeps every finished tile."""

from __future__ import annotations

import errno

import precompute
from precompute import store_create as SC
from sweep_helpers import assert_bitwise_equal, cli, make_image, write_config


def _cfg(tmp_path, out):
    if not (tmp_path / "img.png").exists():
        make_image(tmp_path / "img.png", 6, 6, seed=4)
    return write_config(
        tmp_path / f"{out}.yaml", name="d", model={"arch": "bicubic", "scale": 2}, image="img.png",
        dtype="float32", batch=4, output=str(tmp_path / out),
        analyses={"residual": True, "columns": {"window": 4, "tile": 2}, "rows": False},
    )


def test_disk_error_keeps_finished_tiles_and_resumes(tmp_path, monkeypatch):
    assert cli("run", "-q", _cfg(tmp_path, "ref")).exit_code == 0
    real = SC.write_tile
    calls = []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(SC, "write_tile", failing)
    cfg = _cfg(tmp_path, "full")
    r = cli("run", "-q", cfg)
    assert r.exit_code == 2, r.stderr
    assert "No space left on device" in r.stderr and "run the same command" in r.stderr
    assert "Traceback" not in r.stderr
    st = precompute.open_store(tmp_path / "full" / "d.zarr")
    assert len(st.done_tiles("columns")) == 3  # what was written before the failure is kept

    monkeypatch.setattr(SC, "write_tile", real)
    assert cli("run", "-q", cfg).exit_code == 0
    assert_bitwise_equal(tmp_path / "ref" / "d.zarr", tmp_path / "full" / "d.zarr")
