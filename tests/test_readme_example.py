"""The README's first command on the shipped example, end to end: run, verify, build the site.

Runs exactly `examples/pixelshuffle.yaml` (the trained PixelShuffle ×3 network that ships) in a
temporary working directory, then checks the store against the interpreter's own definition
through `precompute verify` (recomputation) and the paper's requirement (3) recorded at run time,
and builds the site from it.
"""

from __future__ import annotations

import numpy as np

import precompute
from sweep_helpers import REPO, cli_subprocess


def test_shipped_example_runs_verifies_and_builds(tmp_path):
    proc = cli_subprocess("run", REPO / "examples" / "pixelshuffle.yaml", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    store_path = tmp_path / "runs" / "astronaut-pixelshuffle-x3.zarr"
    st = precompute.open_store(store_path)
    checks = st.attrs["checks"]
    assert checks["requirement3_rel"] < 1e-6 and checks["reconstruction_rel"] < 1e-5
    # Every column and row is computed, and the windows hold (almost) all of each filter.
    for name in ("columns", "rows"):
        data = st.group[name][...]
        assert not np.isnan(data).any(), name
        assert float(np.nanmax(st.group[f"{name}_outside"][...])) < 1e-3, name
    # ...and the top-16 SVD (auto: F is 9,216 × 1,024, small enough for the exact dense SVD)
    assert st.has_svd() and st.svd_attrs["method"] == "dense" and st.svd_attrs["k"] == 16
    assert float(st.svd()["residual"].max()) < 1e-4
    verify = cli_subprocess("verify", store_path, "--samples", "4", cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "svd: " in verify.stdout and "triplets recomputed" in verify.stdout

    from click.testing import CliRunner

    from sitegen.cli import main as sitegen

    result = CliRunner().invoke(sitegen, ["build", str(tmp_path / "runs"), "-o",
                                          str(tmp_path / "site"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "explorer" / "astronaut-pixelshuffle-x3.html").is_file()
    assert (tmp_path / "site" / "svd" / "astronaut-pixelshuffle-x3.html").is_file()
