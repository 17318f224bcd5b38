"""End to end: `precompute run` on a tiny bicubic config, then `sitegen build` on its store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from PIL import Image

from test_site_build import close16, tile_entries

REPO = Path(__file__).resolve().parents[1]


def run(module, *args, cwd):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.browser
def test_precompute_then_sitegen(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8), "RGB").save(tmp_path / "tiny.png")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({
        "name": "tiny-bicubic", "model": {"arch": "bicubic", "scale": 2}, "image": "tiny.png",
        "interpreter": "freeze",
        "analyses": {"residual": True, "columns": {"window": "full"}, "rows": {"window": "full"}},
        "device": "cpu", "dtype": "float32", "output": "runs/",
    }, sort_keys=False))
    r = run("precompute.cli", "run", "-q", "tiny.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run("sitegen.cli", "build", "--quiet", cwd=tmp_path)  # bare: runs/ -> site/
    assert r.returncode == 0, r.stdout + r.stderr
    assert "estimated size" in r.stdout and "wrote site/" in r.stdout
    site = tmp_path / "site"
    assert (site / "index.html").is_file() and (site / "explorer/tiny-bicubic.html").is_file()
    store = zarr.open_group(str(tmp_path / "runs/tiny-bicubic.zarr"), mode="r")
    cols, rows = store["columns"][...], store["rows"][...]
    assert cols.shape == (6, 6, 3, 3, 12, 12) and rows.shape == (12, 12, 3, 3, 6, 6)
    ce = tile_entries(site, "tiny-bicubic", "columns")
    re_ = tile_entries(site, "tiny-bicubic", "rows")
    assert len(ce) == 36 and len(re_) == 144
    from sitegen.tiles import decode_block
    for (i, j), e in ce.items():
        assert close16(decode_block(e[5], e[6], cols.shape[2:], "float16"), cols[i, j], e[5])
    for (p, q), e in re_.items():
        assert close16(decode_block(e[5], e[6], rows.shape[2:], "float16"), rows[p, q], e[5])
    # bicubic is channel-wise: the off-diagonal channel blocks are exactly zero on the site too
    e = ce[(2, 3)]
    block = decode_block(e[5], e[6], cols.shape[2:], "float16")
    assert np.all(block[0, 1] == 0) and np.abs(block[1, 1]).max() > 0
    index = (site / "index.html").read_text()
    assert "bicubic" in index and "freeze" in index
    # and in the browser, from file://: the page's decoded column equals the store's
    from browser import chromium
    from test_site_browser import Page, check_values

    with chromium() as browser:
        p = Page(browser, (site / "explorer/tiny-bicubic.html").as_uri())
        p.pixel("input", 4, 1)
        check_values(p.filter("tiny-bicubic", "columns", 4, 1), cols[4, 1])
        p.pixel("output", 7, 10)
        check_values(p.filter("tiny-bicubic", "rows", 7, 10), rows[7, 10])
        p.shot("explorer-e2e-bicubic")
        p.close()
