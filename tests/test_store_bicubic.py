"""Stores of the bicubic upscaler against an interpolation matrix built here from first principles,
and the window origin rule of docs/FORMAT.md (borders, ×3)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import precompute
from oracles import bicubic_matrix_1d
from sweep_helpers import cli, make_image, write_config


def interp_1d(n: int, s: int) -> np.ndarray:
    """(n·s × n) bicubic matrix (Keys a = −0.75, half-pixel centres, clamped taps): tests/oracles.py."""
    return bicubic_matrix_1d(n, s).numpy()


def oracle_F(h: int, w: int, s: int, c: int = 3) -> np.ndarray:
    """F[(b, p, q), (a, i, j)] = [a = b]·Ay[p, i]·Ax[q, j], as (C', H', W', C, H, W)."""
    ay, ax = interp_1d(h, s), interp_1d(w, s)
    sep = np.einsum("pi,qj->pqij", ay, ax)
    F = np.zeros((c, h * s, w * s, c, h, w))
    for b in range(c):
        F[b, :, :, b] = sep
    return F


def expected_origin_col(i: int, s: int, w: int, size: int) -> int:
    # FORMAT.md: clip(floor(s·(i + ½) + o − w/2), 0, H' − w), o = 0
    return int(np.clip(math.floor(s * (i + 0.5) - w / 2), 0, size - w))


def expected_origin_row(p: int, s: int, w: int, size: int) -> int:
    # FORMAT.md: clip(floor((p + ½ − o)/s − w/2), 0, H − w), o = 0
    return int(np.clip(math.floor((p + 0.5) / s - w / 2), 0, size - w))


def _run(tmp_path, scale, h, w, columns, rows, name="bic"):
    img = make_image(tmp_path / "img.png", h, w)
    cfg = write_config(
        tmp_path / "c.yaml", name=name, model={"arch": "bicubic", "scale": scale}, image="img.png",
        analyses={"residual": True, "columns": columns, "rows": rows}, dtype="float64",
        output=str(tmp_path / "runs"),
    )
    r = cli("run", "-q", cfg)
    assert r.exit_code == 0, r.output + r.stderr
    return precompute.open_store(tmp_path / "runs" / f"{name}.zarr"), img


def test_bicubic_full_windows_equal_interpolation_matrix(tmp_path):
    st, _ = _run(tmp_path, 2, 6, 5, {"window": "full", "tile": 4}, {"window": "full", "tile": 4})
    F = oracle_F(6, 5, 2)
    got = st.dense()
    np.testing.assert_allclose(got, F.reshape(3 * 12 * 10, 3 * 6 * 5), atol=1e-14, rtol=0)
    # the same F from the rows alone
    rows = st.group["rows"][...]  # (H', W', C', C, H, W)
    np.testing.assert_allclose(rows.transpose(2, 0, 1, 3, 4, 5), F, atol=1e-14, rtol=0)
    assert np.all(st.array("residual") == 0)
    assert st.checks["reconstruction_abs"] < 1e-12
    assert np.all(st.group["columns_outside"][...] == 0)


@pytest.mark.parametrize("scale,h,w,wc,wr", [(2, 7, 6, 5, 3), (3, 5, 7, 4, 3)])
def test_windows_follow_origin_rule(tmp_path, scale, h, w, wc, wr):
    st, _ = _run(tmp_path, scale, h, w, {"window": wc, "tile": 2}, {"window": wr, "tile": 4})
    F = oracle_F(h, w, scale)
    H, W = h * scale, w * scale
    cols, corg, cout = (st.group[k][...] for k in ("columns", "columns_origin", "columns_outside"))
    assert cols.shape == (h, w, 3, 3, wc, wc)
    for i in range(h):
        for j in range(w):
            oy, ox = expected_origin_col(i, scale, wc, H), expected_origin_col(j, scale, wc, W)
            assert tuple(corg[i, j]) == (oy, ox)
            for a in range(3):
                full = F[:, :, :, a, i, j]
                np.testing.assert_allclose(cols[i, j, a], full[:, oy:oy + wc, ox:ox + wc], atol=1e-14)
                inside = np.square(full[:, oy:oy + wc, ox:ox + wc]).sum()
                total = np.square(full).sum()
                assert cout[i, j, a] == pytest.approx(1 - inside / total, abs=1e-12)
            # the reader's full-size image puts the window back where it belongs
            img = st.column(i, j)
            np.testing.assert_allclose(img[1], np.where(
                np.pad(np.ones((wc, wc)), ((oy, H - oy - wc), (ox, W - ox - wc))) > 0,
                F[:, :, :, 1, i, j], 0), atol=1e-14)
    rows, rorg = st.group["rows"][...], st.group["rows_origin"][...]
    for p in range(H):
        for q in range(W):
            oy, ox = expected_origin_row(p, scale, wr, h), expected_origin_row(q, scale, wr, w)
            assert tuple(rorg[p, q]) == (oy, ox)
            for b in range(3):
                np.testing.assert_allclose(rows[p, q, b], F[b, p, q][:, oy:oy + wr, ox:ox + wr],
                                           atol=1e-14)
    # borders actually clamp (the rule is exercised, not just the interior)
    assert corg[0, 0].tolist() == [0, 0] and corg[h - 1, w - 1].tolist() == [H - wc, W - wc]


def test_pixel_region_and_stride(tmp_path):
    make_image(tmp_path / "img.png", 8, 8)
    cfg = write_config(
        tmp_path / "c.yaml", name="roi", model={"arch": "bicubic", "scale": 2}, image="img.png",
        pixels={"region": [2, 1, 5, 4], "stride": 2},
        analyses={"residual": False, "columns": {"window": 4, "tile": 4}, "rows": {"window": 3}},
        dtype="float64", output=str(tmp_path / "runs"),
    )
    r = cli("run", "-q", cfg)
    assert r.exit_code == 0, r.output + r.stderr
    st = precompute.open_store(tmp_path / "runs" / "roi.zarr")
    assert "residual" not in st.group
    org = st.group["columns_origin"][...]
    chosen = {(i, j) for i in range(8) for j in range(8) if org[i, j, 0] >= 0}
    assert chosen == {(i, j) for i in (2, 4, 6) for j in (1, 3)}
    assert np.isnan(st.column(0, 0)).all() and not np.isnan(st.column(2, 1)).any()
    # rows: the region scaled to output pixels ([4, 2, 10, 8]), same stride
    rorg = st.group["rows_origin"][...]
    rchosen = {(p, q) for p in range(16) for q in range(16) if rorg[p, q, 0] >= 0}
    assert rchosen == {(p, q) for p in range(4, 14, 2) for q in range(2, 10, 2)}
    assert st.attrs["analyses"]["rows"]["region"] == [4, 2, 10, 8]
