"""Freivalds checks of the written filters (issue 15, precompute.freivalds).

A decoder that goes wrong on one column must stop the run — exit 2, one `error:` line naming
the block, the error and the tolerance, pointing at `probing: single` — with nothing of that block
on disk, while the blocks before it are kept. The control run (check switched off) shows the same
corruption would otherwise reach the store. Passing runs record the worst error per analysis in
``attrs.checks``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import precompute
from precompute import compressed as Cm
from precompute import freivalds as Fv
from sweep_helpers import REPO, cli, make_image, write_config

#: conv 3×3, ReLU, max pool 2 + nearest upsampling, conv 1×1: a support of 4×4 px
MODEL = f"python:{REPO / 'tests' / 'fixtures' / 'index_models.py'}:local_pool"
BAD = (1, 1)  # the block whose decoding is corrupted
TILE = 8


def _config(tmp_path, analyses, probing="auto", dtype="float64"):
    make_image(tmp_path / "img.png", 16, 16, seed=5)
    an = {"residual": True, "columns": False, "rows": False} | analyses
    return write_config(tmp_path / "c.yaml", name="s", model={"arch": MODEL},
                        image="img.png", dtype=dtype, batch=16, probing=probing,
                        output=str(tmp_path / "runs"), analyses=an)


def _corrupt(monkeypatch, name):
    """Wrap the decoder ``name`` so that one decoded filter of block BAD is wrong: columns, the
    first probe's output is off by 1 at its first impulse's output pixel (×3); rows (read out
    of columns), every probe's output is off by 1 at the block's first output pixel."""
    real = getattr(Cm, name)
    seen = set()

    def decode(buf, geo, lat, y, pr, *rest):
        b = buf.block
        if (b.by, b.bx) == BAD and not seen:
            y = y.copy()
            if name == "_decode_own":
                seen.add(pr)
                y[0, pr.rows[0], pr.cols[0]] += 1.0
            else:
                y[0, b.y0, b.x0] += 1.0
        return real(buf, geo, lat, y, pr, *rest)

    monkeypatch.setattr(Cm, name, decode)


def _blocks_on_disk(path, name, tile=TILE):
    """{block: all its pixels written?} for blocks of one tile (origin ≥ 0 where written)."""
    org = precompute.open_store(path).array(f"{name}_origin")[..., 0]
    h, w = org.shape
    return {(by, bx): bool((org[by * tile:(by + 1) * tile, bx * tile:(bx + 1) * tile] >= 0).all())
            for by in range((h + tile - 1) // tile) for bx in range((w + tile - 1) // tile)}


ENV = {"LINEARSCOPE_BLOCK_BYTES": "1"}  # blocks of one tile: several blocks per analysis


@pytest.mark.parametrize("analysis, decoder", [("columns", "_decode_own"),
                                               ("rows", "_decode_rows_from_columns")])
def test_a_corrupted_column_stops_the_run_before_its_block_is_written(tmp_path, monkeypatch,
                                                                      analysis, decoder):
    an = {analysis: {"window": 5, "tile": TILE}}
    cfg = _config(tmp_path, an)
    _corrupt(monkeypatch, decoder)
    r = cli("run", "-q", cfg, env=ENV)
    assert r.exit_code == 2, r.output + r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{analysis} of block (1, 1)" in err[0] and "Freivalds" in err[0], err[0]
    assert "tolerance 1.5e-11" in err[0] and "probing: single" in err[0], err[0]
    assert "nothing of this block was written" in err[0]
    path = tmp_path / "runs" / "s.zarr"
    done = _blocks_on_disk(path, analysis)
    assert not done[BAD], "a tile of the failing block reached the disk"
    assert done[(0, 0)] and done[(0, 1)], "blocks checked before the failure must be kept"
    st = precompute.open_store(path)
    assert st.attrs["probing"][analysis]["method"] != "single"
    assert st.attrs["probing"][analysis]["block"] == 1


def test_without_the_check_the_same_corruption_reaches_the_store(tmp_path, monkeypatch):
    # the control: proves the test above corrupts a stored value (the check is what stops it)
    an = {"columns": {"window": 5, "tile": TILE}}
    cfg = _config(tmp_path, an)
    (tmp_path / "ok").mkdir()
    ok = _config(tmp_path / "ok", an)
    assert cli("run", "-q", ok, env=ENV).exit_code == 0
    _corrupt(monkeypatch, "_decode_own")
    monkeypatch.setattr(Fv, "check", lambda engine, sketches, tol: [0.0] * len(sketches))
    r = cli("run", "-q", cfg, env=ENV)
    assert r.exit_code == 0, r.output + r.stderr
    bad = precompute.open_store(tmp_path / "runs" / "s.zarr").array("columns")
    good = precompute.open_store(tmp_path / "ok" / "runs" / "s.zarr").array("columns")
    diff = np.nan_to_num(np.abs(bad - good))
    assert diff.max() == pytest.approx(1.0)
    ys, xs = np.nonzero(diff.max(axis=tuple(range(2, diff.ndim))))
    assert {(int(y) // TILE, int(x) // TILE) for y, x in zip(ys, xs)} == {BAD}


@pytest.mark.parametrize("probing", ["auto", "single"])
def test_passing_checks_are_recorded(tmp_path, probing):
    an = {"columns": {"window": 5, "tile": TILE}, "rows": {"window": 5, "tile": TILE}}
    cfg = _config(tmp_path, an, probing=probing, dtype="float32")
    r = cli("run", "-q", cfg, env=ENV)
    assert r.exit_code == 0, r.output + r.stderr
    st = precompute.open_store(tmp_path / "runs" / "s.zarr")
    ch = st.attrs["checks"]
    tol = float(2**16 * torch.finfo(torch.float32).eps)
    # 2×2 tiles of 8 px (one block per tile) per analysis
    assert ch["freivalds_columns_units"] == 4 and ch["freivalds_rows_units"] == 4
    assert 0 < ch["freivalds_columns_rel"] < tol and 0 < ch["freivalds_rows_rel"] < tol
    # a resumed run that has nothing to do keeps them
    assert cli("run", "-q", cfg, env=ENV).exit_code == 0
    assert precompute.open_store(tmp_path / "runs" / "s.zarr").attrs["checks"] == ch


def test_sketch_of_dense_columns_and_rows_matches_the_interpreter():
    # Sketch.add_full against the dense F of a tiny model (float64): Σ_j v_j·F[:, j] for the
    # columns of a tile, F[i, :]·v for its rows
    from precompute import probes as P
    from precompute import layout as L
    from precompute.engine import Engine
    from precompute.interpreter import LinearInterpreter

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(3, 2, 3, padding=1)).double()
    x0 = torch.rand(1, 2, 6, 6, dtype=torch.float64)
    li = LinearInterpreter(net, x0, batch=8)
    eng = Engine(li, torch.device("cpu"), torch.float64)
    dense = li.dense().reshape(2 * 36, 2 * 36).numpy()
    for name in ("columns", "rows"):
        lay = L.make_layout(name, 6, 3, P.Selection(None, 1), (2, 6, 6), (2, 6, 6), 1.0, 0.0, 8)
        tile = lay.tiles()[1]
        sk = Fv.tile_sketch(lay, tile)
        probes = P.tile_probes(tile, 2, 6, 6, lay.selection)
        full = eng.probe([p.flat for p in probes], name)
        sk.add_full(full, [p.c for p in probes], [p.i for p in probes], [p.j for p in probes])
        fv = (sk.v.reshape(2, -1) @ dense.T).reshape(sk.acc.shape)
        if name == "rows":  # only the tile's output pixels hold rows
            fv = fv * sk.mask
        np.testing.assert_allclose(sk.acc, fv, rtol=0, atol=1e-12)
        assert Fv.check(eng, [sk], 1e-11)[0] < 1e-13
        y, x = tile.y0, tile.x0
        sk.acc[0, 0, y, x] += 1e-3  # a wrong sum fails
        with pytest.raises(Fv.FreivaldsError, match="Freivalds"):
            Fv.check(eng, [sk], 1e-11)


@pytest.mark.parametrize("rows_window", [2, 9])
def test_verify_checks_every_stored_tile_and_finds_a_changed_value(tmp_path, rows_window):
    import zarr

    # columns windows hold the whole filter (support 4×4 within 7×7); rows windows of 2 px do
    # not (left to the samples), of 9 px they do (checked by Fᵀu)
    an = {"columns": {"window": 7, "tile": TILE}, "rows": {"window": rows_window, "tile": TILE}}
    cfg = _config(tmp_path, an)
    assert cli("run", "-q", cfg).exit_code == 0
    path = tmp_path / "runs" / "s.zarr"
    v = cli("verify", "--samples", "2", "--trust-code", path)
    assert v.exit_code == 0 and "verify: OK" in v.stdout, v.stdout
    lines = [ln for ln in v.stdout.splitlines() if "Freivalds" in ln]
    cols = [ln for ln in lines if ln.startswith("columns tile")]
    assert len(cols) == 4 and all("over 192 of 192 filters" in ln and ln.endswith("OK")
                                  for ln in cols), lines
    rows = [ln for ln in lines if ln.startswith("rows tile")]
    if rows_window == 2:
        assert len(rows) == 4 and all("samples" in ln for ln in rows), rows
    else:
        assert len(rows) == 4 and all("over 192 of 192 filters" in ln and ln.endswith("OK")
                                      for ln in rows), rows
    # one stored value changed (checksums rewritten: only the numbers can tell)
    g = zarr.open_group(str(path), mode="r+")
    a = g["columns"]
    y, x = 8 + 3, 0 + 5
    val = a[y, x]
    val[1, 2, 3, 3] += 1e-3 * np.abs(val).max()
    a[y, x] = val
    v = cli("verify", "--samples", "0", "--trust-code", path)
    assert v.exit_code == 1 and "verify: FAILED" in v.stdout, v.stdout
    # exactly the changed tile fails Freivalds' test (the comparison of the stored columns with
    # the stored rows, where both are stored, also sees the change)
    bad = [ln for ln in v.stdout.splitlines() if "MISMATCH" in ln and "Freivalds" in ln]
    assert len(bad) == 1 and bad[0].startswith("columns tile (1, 0): Freivalds"), v.stdout
