"""Out-of-memory back-off: passes split in halves, nothing lost, the splits recorded."""

from __future__ import annotations

import numpy as np
import torch

import precompute
from precompute.interpreter import LinearInterpreter
from sweep_helpers import TINY, cli, make_image, write_config


def _cfg(tmp_path, out):
    if not (tmp_path / "img.png").exists():
        make_image(tmp_path / "img.png", 5, 5, seed=2)
    return write_config(
        tmp_path / f"{out}.yaml", name="o", model={"arch": f"python:{TINY}:relu_same"},
        image="img.png", dtype="float64", batch=8, output=str(tmp_path / out),
        analyses={"residual": True, "columns": {"window": 3, "tile": 4}, "rows": {"window": 3, "tile": 4}},
    )


def test_oom_splits_passes_and_loses_nothing(tmp_path, monkeypatch):
    assert cli("run", "-q", _cfg(tmp_path, "ref")).exit_code == 0

    real_apply, real_t = LinearInterpreter.apply, LinearInterpreter.apply_transpose
    sizes = []

    def limited(real):
        def f(self, v):
            sizes.append(v.shape[0])
            if v.shape[0] > 3:  # a device that holds at most 3 probes
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return real(self, v)
        return f

    monkeypatch.setattr(LinearInterpreter, "apply", limited(real_apply))
    monkeypatch.setattr(LinearInterpreter, "apply_transpose", limited(real_t))
    r = cli("run", "-q", _cfg(tmp_path, "oom"))
    assert r.exit_code == 0, r.stderr
    assert "split after running out of memory" in r.stderr
    st = precompute.open_store(tmp_path / "oom" / "o.zarr")
    ref = precompute.open_store(tmp_path / "ref" / "o.zarr")
    assert st.is_complete() and st.attrs["oom_splits"] > 0 and ref.attrs["oom_splits"] == 0
    for name in ("columns", "rows", "columns_origin", "rows_outside"):
        np.testing.assert_allclose(st.array(name), ref.array(name), atol=1e-13, rtol=0)
    assert max(sizes) == 8 and 3 in sizes  # tried the planned pass, then worked in smaller ones


def test_single_probe_oom_is_a_clear_error(tmp_path, monkeypatch):
    def never(self, v):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(LinearInterpreter, "apply", never)
    r = cli("run", _cfg(tmp_path, "never"))
    assert r.exit_code == 2 and "out of memory with a single probe" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "never" / "o.zarr" / "columns").exists()
