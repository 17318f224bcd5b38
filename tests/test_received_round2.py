"""Received stores and sites, round two (issue 18): names that collide, damage that read as "no
damage", links out of a store, absurd metadata, hangs, and tracebacks instead of one line.

Every hostile input is built in tmp_path; the outcome is the correct result, or one ``error:``
line with a non-zero exit and no traceback, touching nothing outside the output folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from site_fixtures import make_store
from sitegen.build import Options, build
from sitegen.names import unique_ids

REPO = Path(__file__).resolve().parents[1]


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO))


def _sitegen(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "sitegen.cli", "build", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or REPO, env=_env(),
                          timeout=timeout)


def _precompute(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "precompute.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=env or _env(),
                          timeout=timeout)


def _one_line(r, text, code=2):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert text in lines[0], lines[0]
    return lines[0]


# --- 1, 2: names that collide --------------------------------------------------------------------

def test_unique_ids_never_collide_and_keep_first_names():
    assert unique_ids(["ref", "ref", "ref-2"]) == ["ref", "ref-3", "ref-2"]
    assert unique_ids(["ref-2", "ref", "ref"]) == ["ref-2", "ref", "ref-3"]
    assert unique_ids(["Ref", "ref"]) == ["Ref", "ref-2"]  # one file on macOS/Windows
    assert unique_ids(["a", "b"], taken={"A"}) == ["a-2", "b"]
    ids = unique_ids(["x", "x", "x-2", "x-3", "x", "X-2"])
    assert len({i.casefold() for i in ids}) == len(ids)


def test_run_ids_collide_no_more(tmp_path):
    """a/ref.zarr, b/ref.zarr and c/ref-2.zarr: three runs, three pages, each with its own data."""
    stores = [make_store(tmp_path / d / f"{n}.zarr", name=n, seed=k, H=8, W=8).path
              for k, (d, n) in enumerate([("a", "ref"), ("b", "ref"), ("c", "ref-2")])]
    out = tmp_path / "site"
    build(stores, out, Options(progress=False), echo=lambda *a: None)
    pages = sorted(p.name for p in (out / "explorer").glob("*.html"))
    assert pages == ["ref-2.html", "ref-3.html", "ref.html"]
    inputs = {p.parent.name: p.read_bytes() for p in (out / "data").glob("*/input.png")}
    assert len(inputs) == 3 and len(set(inputs.values())) == 3  # three different images


def _summary(path: Path, name: str, share: float, stores: list[str]):
    g = zarr.open_group(str(path), mode="w")
    n = len(stores)
    for key, arr in {"contributions_mean": np.array([0.5, 0.25], np.float32),
                     "contributions_std": np.array([0.1, 0.1], np.float32),
                     "top1": np.zeros(n, np.int32),
                     "residual_share": np.full(n, share, np.float32)}.items():
        a = g.create_array(key, shape=arr.shape, dtype=arr.dtype, chunks=arr.shape)
        a[...] = arr
    g.attrs.put({"format_version": 1, "kind": "summary", "name": name, "terms": ["input", "fc"],
                 "residual_share_mean": share, "residual_share_std": 0.0, "count": n,
                 "stores": stores, "model": {"id": "m"}})


def test_summaries_collide_no_more(tmp_path):
    """a/digits.summary.zarr and b/digits.summary.zarr: two summary pages, neither overwritten."""
    make_store(tmp_path / "a" / "img.zarr", name="img", seed=1)
    make_store(tmp_path / "b" / "img.zarr", name="img", seed=2)
    _summary(tmp_path / "a" / "digits.summary.zarr", "digits A", 0.125, ["img.zarr"])
    _summary(tmp_path / "b" / "digits.summary.zarr", "digits B", 0.375, ["img.zarr"])
    out = tmp_path / "site"
    build([tmp_path / "a", tmp_path / "b"], out, Options(progress=False), echo=lambda *a: None)
    pages = sorted((out / "classify").glob("digits*.html"))
    assert [p.name for p in pages] == ["digits.summary-2.html", "digits.summary.html"]
    texts = [p.read_text() for p in pages]
    assert sum("digits A" in t for t in texts) == 1 and sum("digits B" in t for t in texts) == 1
