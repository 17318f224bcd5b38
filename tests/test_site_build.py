"""`sitegen build` without a browser: tile contents, determinism, incremental writes, errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from site_fixtures import make_store, make_suite
from sitegen.build import BuildError, Options, build
from sitegen.reader import StoreError, open_store
from sitegen.tiles import channel_block, decode_block

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    return root, make_suite(root)


def quiet(**kw):
    return Options(progress=False, **kw)


def sitegen(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sitegen.cli", "build", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or REPO, timeout=120)


def tile_entries(site: Path, run: str, kind: str):
    """All pixel entries of a run's tiles: {(y, x): entry}."""
    out = {}
    for f in sorted((site / "data" / run / kind).glob("*.js")):
        text = f.read_text()
        m = re.match(r'LinearScope\.tile\("([^"]+)","(\w+)",(\d+),(\d+),(.*)\);\n$', text, re.S)
        assert m, f
        assert m.group(1) == run and m.group(2) == kind
        for e in json.loads(m.group(5))["px"]:
            out[(e[0], e[1])] = e
    return out


def files_of(site: Path) -> dict[str, bytes]:
    return {str(p.relative_to(site)): p.read_bytes() for p in sorted(site.rglob("*")) if p.is_file()}


def close16(got, want, scale):
    """float16 display copy: relative half-ulp 2^-11 plus the subnormal floor, times the scale."""
    tol = np.abs(want) * 2.0 ** -11 + scale * 2.0 ** -24 + 1e-7 * scale
    return np.all(np.abs(got - want) <= tol)


def test_tiles_hold_the_store_values(suite, tmp_path):
    root, s = suite
    build([s["both"].path], tmp_path / "site", quiet())
    cols = tile_entries(tmp_path / "site", "netA-test", "columns")
    rows = tile_entries(tmp_path / "site", "netA-test", "rows")
    # store tile (1, 1) of columns and (3, 0) of rows were never computed
    assert len(cols) == 64 - 16 and (5, 5) not in cols and (0, 0) in cols
    assert len(rows) == 256 - 16 and (13, 1) not in rows and (0, 0) in rows
    fx = s["both"]
    for (i, j), e in cols.items():
        want = fx.column(i, j)
        assert tuple(e[2:4]) == fx.col_origin(i, j)
        got = decode_block(e[5], e[6], want.shape, "float16")
        assert close16(got, want, e[5]), (i, j)
        assert e[5] == pytest.approx(np.abs(want).max(), rel=1e-7)
    for (p, q), e in list(rows.items())[::7]:
        want = fx.row(p, q)
        assert tuple(e[2:4]) == fx.row_origin(p, q)
        assert close16(decode_block(e[5], e[6], want.shape, "float16"), want, e[5]), (p, q)
    # exact zeros stay exact
    e = cols[(0, 0)]
    got = decode_block(e[5], e[6], fx.column(0, 0).shape, "float16")
    want = fx.column(0, 0)
    zeros = 0
    for (i, j), e2 in cols.items():
        w2 = fx.column(i, j)
        zeros += int((w2 == 0).sum())
        assert np.all(decode_block(e2[5], e2[6], w2.shape, "float16")[w2 == 0] == 0)
    assert zeros > 0
    # values below float16's range relative to the pixel's max underflow to 0 (documented)
    assert want[0, 0, 0, 0] == np.float32(3e-9) and got[0, 0, 0, 0] == 0


def test_float32_is_exact_and_channel_modes(suite, tmp_path):
    _, s = suite
    fx = s["both2"]
    build([fx.path], tmp_path / "f32", quiet(precision="float32"))
    e = tile_entries(tmp_path / "f32", "netB-test", "columns")[(3, 4)]
    assert np.array_equal(decode_block(e[5], e[6], (3, 3, 16, 16), "float32"), fx.column(3, 4))
    build([fx.path], tmp_path / "rgb", quiet(mode="rgb"))
    e = tile_entries(tmp_path / "rgb", "netB-test", "columns")[(3, 4)]
    want = fx.column(3, 4).astype(np.float64).sum(axis=0, keepdims=True)  # grey impulse
    assert close16(decode_block(e[5], e[6], want.shape, "float16"), want, e[5])
    build([fx.path], tmp_path / "lum", quiet(mode="lum"))
    e = tile_entries(tmp_path / "lum", "netB-test", "rows")[(7, 9)]
    want = fx.row(7, 9).astype(np.float64).mean(axis=0).sum(axis=0)[None, None]
    assert close16(decode_block(e[5], e[6], want.shape, "float16"), want, e[5])
    # both kinds of composite read the same scalar interpreter mean_b sum_a F
    r = channel_block(fx.row(7, 9)[None], "lum", "rows")[0, 0, 0]
    F = fx.F.astype(np.float64)
    oy, ox = fx.row_origin(7, 9)
    assert np.allclose(r, F[:, 7, 9].sum(axis=1).mean(axis=0)[oy:oy + 8, ox:ox + 8], rtol=1e-5)


def test_region_and_stride_select_pixels(suite, tmp_path):
    _, s = suite
    fx = s["both2"]
    res = build([fx.path], tmp_path / "site", quiet(region=(2, 2, 4, 4), stride=2))
    cols = tile_entries(tmp_path / "site", "netB-test", "columns")
    assert sorted(cols) == [(y, x) for y in (2, 4) for x in (2, 4)]
    rows = tile_entries(tmp_path / "site", "netB-test", "rows")  # region ×2 in output pixels
    assert sorted(rows) == [(y, x) for y in (4, 6, 8, 10) for x in (4, 6, 8, 10)]
    meta = (tmp_path / "site/data/netB-test/meta.js").read_text()
    assert '"region":[4,4,8,8]' in meta and '"stride":2' in meta
    full = build([fx.path], tmp_path / "full", quiet())
    assert res.total < full.total / 3


def test_two_builds_are_byte_identical(suite, tmp_path):
    root, _ = suite
    build([root], tmp_path / "a", quiet())
    # the second build in another process (another hash seed, fresh imports)
    r = sitegen(root, "-o", tmp_path / "b", "--quiet")
    assert r.returncode == 0, r.stderr
    a, b = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    assert sorted(a) == sorted(b)
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    pages = [k for k in a if k.endswith(".html")]
    assert "index.html" in pages and "explorer/netA-test.html" in pages
    assert "compare/" + "b4298686047a.html" in pages  # netA and netB share the image sha256


def test_rebuild_is_incremental(tmp_path, monkeypatch):
    import sitegen.build as sb

    encoded = []
    real = sb.encode_tile
    monkeypatch.setattr(sb, "encode_tile", lambda *a: encoded.append(a[-1]) or real(*a))
    fx = make_store(tmp_path / "stores" / "inc.zarr", name="inc", seed=7)
    site = tmp_path / "site"
    first = build([tmp_path / "stores"], site, quiet(tile=4))
    n_first = len(encoded)
    mtimes = {p: p.stat().st_mtime_ns for p in site.rglob("*") if p.is_file()}
    encoded.clear()
    again = build([tmp_path / "stores"], site, quiet(tile=4))
    assert again.written == 0 and again.unchanged == first.files == again.files
    assert mtimes == {p: p.stat().st_mtime_ns for p in site.rglob("*") if p.is_file()}
    # nothing re-encoded but the size-estimate samples (≤ 3 per analysis)
    assert len(encoded) <= 6 < n_first
    encoded.clear()
    # change one stored column (a re-computed tile): only its site tile is rewritten
    arr = zarr.open_array(str(fx.path / "columns"), mode="r+")
    arr[0:4, 4:8] = arr[0:4, 4:8] * 0.5
    third = build([tmp_path / "stores"], site, quiet(tile=4))
    changed = {p for p in site.rglob("*") if p.is_file() and p.stat().st_mtime_ns != mtimes.get(p)
               and p.name != ".linearscope-cache.json"}  # build state, not the site
    assert len([t for t in encoded if t[:2] == (0, 1)]) == 1  # re-encoded because it changed
    assert len(encoded) <= 7
    # the tile, and meta.js because the run's global max|v| (global normalisation) changed
    assert {p.relative_to(site).as_posix() for p in changed} == {"data/inc/columns/0-1.js",
                                                                "data/inc/meta.js"}
    assert third.written == 2
    # a build with other options removes the tiles it no longer makes, and nothing else
    (site / "mine.txt").write_text("not the generator's")
    fourth = build([tmp_path / "stores"], site, quiet(tile=8))
    assert fourth.removed > 0 and not (site / "data/inc/columns/0-1.js").exists()
    assert (site / "data/inc/columns/0-0.js").exists() and (site / "mine.txt").exists()


def test_cli_prints_estimate_and_total(suite, tmp_path):
    root, _ = suite
    r = sitegen(root, "-o", tmp_path / "site", "--quiet")
    assert r.returncode == 0, r.stderr
    est = re.search(r"estimated size ([\d.]+) (KB|MB)", r.stdout)
    tot = re.search(r"wrote .* — ([\d.]+) (KB|MB) in (\d+) files", r.stdout)
    assert est and tot, r.stdout
    assert r.stdout.index("estimated") < r.stdout.index("wrote")
    unit = {"KB": 1, "MB": 1024}
    e, t = float(est.group(1)) * unit[est.group(2)], float(tot.group(1)) * unit[tot.group(2)]
    assert 0.5 * t < e < 2 * t
    assert (tmp_path / "site/index.html").is_file()
    # progress bar on stderr when not quiet
    r = sitegen(root, "-o", tmp_path / "site2")
    assert r.returncode == 0 and "sitegen tiles" in r.stderr


def test_cli_config_and_bare_runs(suite, tmp_path):
    root, s = suite
    runs = tmp_path / "runs"
    make_store(runs / "x.zarr", name="x", seed=3, H=4, W=4)
    r = sitegen("--quiet", cwd=tmp_path)  # bare: runs/ -> site/
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "site/explorer/x.html").is_file()
    cfg = tmp_path / "site.yaml"
    cfg.write_text(f"stores: [{s['cols'].path}]\noutput: out\nchannels: lum\nstride: 2\n")
    r = sitegen(cfg, "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "channels lum" in r.stdout
    assert len(tile_entries(tmp_path / "out", "colsonly-test", "columns")) == 16


def _error(r):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    return r.stderr


def test_cli_errors(suite, tmp_path):
    root, s = suite
    assert "no stores" in _error(sitegen(cwd=tmp_path))
    (tmp_path / "empty").mkdir()
    assert "no stores found" in _error(sitegen(tmp_path / "empty", "-o", tmp_path / "o"))
    assert "does not exist" in _error(sitegen(tmp_path / "nope", "-o", tmp_path / "o"))
    newer = make_store(tmp_path / "new.zarr", name="new", seed=5, H=4, W=4, format_version=2)
    err = _error(sitegen(newer.path, "-o", tmp_path / "o"))
    assert "format_version 2" in err and "upgrade" in err
    bad = tmp_path / "bad.zarr"
    bad.mkdir()
    (bad / "zarr.json").write_text("{ not json")
    assert "unreadable zarr.json" in _error(sitegen(bad, "-o", tmp_path / "o"))
    creating = tmp_path / "creating.zarr"  # FORMAT.md: the marker of an unfinished creation
    zarr.open_group(str(creating), mode="w").attrs["linearscope_creating"] = True
    assert "still being created" in _error(sitegen(creating, "-o", tmp_path / "o"))
    broken = make_store(tmp_path / "broken.zarr", name="broken", seed=6)
    shard = broken.path / "columns/c/0/0/0/0/0/0"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    err = _error(sitegen(broken.path, "-o", tmp_path / "o"))
    assert "cannot read 'columns'" in err and "checksum" in err
    assert "limit" in _error(sitegen(s["both"].path, "-o", tmp_path / "o", "--max-size", "10KB"))
    assert "region" in _error(sitegen(s["both"].path, "-o", tmp_path / "o", "--region", "1,2"))
    with pytest.raises(StoreError, match="newer"):
        open_store(newer.path)
    with pytest.raises(BuildError, match="channel mode"):
        build([s["both"].path], tmp_path / "o", quiet(mode="nope"))


def test_pages_follow_store_contents(suite, tmp_path):
    root, _ = suite
    build([root], tmp_path / "site", quiet())
    index = (tmp_path / "site/index.html").read_text()
    for rid in ("netA-test", "netB-test", "colsonly-test", "rowsonly-test"):
        assert f'href="explorer/{rid}.html"' in index
    assert "rows: not computed" in index and "columns: not computed" in index
    assert "9304aaf13b6e" in index  # checkpoint sha256 (short), provenance
    cols = (tmp_path / "site/explorer/colsonly-test.html").read_text()
    assert "Rows not computed for this run." in cols and "SVD bases</b>: not computed" in cols
    assert "../static/linearscope.js" in cols and "../data/colsonly-test/meta.js" in cols
    for page in (tmp_path / "site").rglob("*.html"):
        text = page.read_text()
        assert "http://" not in text and "https://" not in text and 'type="module"' not in text


def test_auto_tile_keeps_scripts_near_one_megabyte():
    from sitegen.build import site_tile
    from sitegen.reader import Analysis

    def an(window, c):
        return Analysis(kind="rows", window=(window, window), full=False, tile=16,
                        region=(0, 0, 256, 256), stride=1, grid=(256, 256), other=(128, 128),
                        own_channels=c, other_channels=c)

    # EDSR-like: 3×3 blocks of 64×64 float16 ≈ 98 KB of base64 per filter → 3×3 pixels a tile
    assert site_tile(an(64, 3), Options()) == 3
    assert site_tile(an(64, 3), Options(mode="lum")) == 9  # one 64×64 map ≈ 11 KB
    assert site_tile(an(12, 1), Options()) == 16  # small filters: capped at 16×16 pixels
    assert site_tile(an(64, 3), Options(tile=5)) == 5


def test_residual_not_computed(tmp_path):
    make_store(tmp_path / "s" / "n.zarr", name="n", seed=2)
    # written as precompute writes it: the NaN chunk on disk (arrays written whole have every
    # chunk, issue 18)
    zarr.open_array(str(tmp_path / "s/n.zarr/residual"), mode="r+").with_config(
        {"write_empty_chunks": True})[...] = np.nan
    build([tmp_path / "s"], tmp_path / "site", quiet())
    page = (tmp_path / "site/explorer/n.html").read_text()
    assert "Residual not computed." in page and "Residual r(x0)</b>: not computed" in page
    assert not (tmp_path / "site/data/n/residual.png").exists()
