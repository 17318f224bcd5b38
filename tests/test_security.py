"""The two security holes of issue 12, end to end in real processes (everything in tmp_path).

1. A site folder someone hands you (its build manifest, links inside it) never makes
   `sitegen build` delete or write anything outside it.
2. A store someone hands you never runs the Python code it names as its model (`python:FILE:FUNC`)
   in `precompute info`, `precompute verify` or `sitegen build` without `--trust-code`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from site_fixtures import make_store
from sweep_helpers import REPO, cli, cli_subprocess, make_image, write_config


def sitegen(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "sitegen.cli", "build", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=300)


def _outside(tmp_path) -> dict[Path, str]:
    """Marker files outside the site, with their contents."""
    out = tmp_path / "outside"
    (out / "dir").mkdir(parents=True)
    markers = {out / "marker-abs.txt": "absolute", out / "marker-dotdot.txt": "dotdot",
               out / "dir" / "marker-link.txt": "through a linked folder",
               out / "victim.html": "a file a link in the site points to",
               out / "victim-tmp": "a planted temporary file", out / "victim-cache": "cache"}
    for p, text in markers.items():
        p.write_text(text)
    return markers


def _unchanged(markers: dict[Path, str]) -> None:
    for p, text in markers.items():
        assert p.is_file() and not p.is_symlink() and p.read_text() == text, p
    assert sorted(q.name for q in (markers and next(iter(markers)).parent).iterdir()) == sorted(
        ["dir", "marker-abs.txt", "marker-dotdot.txt", "victim.html", "victim-tmp", "victim-cache"])


def test_hostile_site_folder_never_touches_files_outside(tmp_path):
    store = make_store(tmp_path / "stores" / "s.zarr", name="s", seed=1, H=4, W=4).path
    markers = _outside(tmp_path)
    out = tmp_path / "outside"
    site = tmp_path / "site"
    (site / "data").mkdir(parents=True)
    (site / "inside.txt").write_text("a file of the site")
    (site / "data" / "linked").symlink_to(out / "dir")  # a folder link (never created by us)
    (site / "index.html").symlink_to(out / "victim.html")  # where the site writes a file
    (site / ".index.html.tmp").symlink_to(out / "victim-tmp")  # where a temporary file goes
    (site / ".linearscope-cache.json").symlink_to(out / "victim-cache")
    (site / "inner-link.txt").symlink_to(site / "inside.txt")  # a link pointing inside
    (site / ".linearscope-build.json").write_text(json.dumps({"files": [
        str(out / "marker-abs.txt"),                   # absolute
        "../outside/marker-dotdot.txt",                # climbing out
        "static/../../outside/marker-dotdot.txt",
        "data/linked/marker-link.txt",                 # through a folder link
        "inner-link.txt",                              # a link itself
        "index.html", "//" + str(out / "marker-abs.txt"), "data\\..\\..\\outside\\victim.html",
        42, None,                                      # not even paths
    ]}))

    r = sitegen(store, "-o", site, "--quiet")
    assert r.returncode == 0, r.stderr
    _unchanged(markers)
    assert "note: 7 entries of the previous manifest" in r.stdout  # 7 paths, index.html ours
    assert (site / "inside.txt").read_text() == "a file of the site"
    assert (site / "inner-link.txt").is_symlink()  # not ours to remove
    # the links where the site writes files were replaced by the site's files
    for name in ("index.html", ".linearscope-cache.json"):
        assert not (site / name).is_symlink() and (site / name).is_file()
    assert not (site / ".index.html.tmp").exists()
    assert "<html" in (site / "index.html").read_text().lower()
    manifest = json.loads((site / ".linearscope-build.json").read_text())["files"]
    assert "index.html" in manifest and all(not f.startswith(("/", "..")) for f in manifest)

    # a rebuild with other options removes what this generator wrote, and still nothing outside
    r = sitegen(store, "-o", site, "--quiet", "--tile", "2")
    assert r.returncode == 0, r.stderr
    _unchanged(markers)


def test_links_where_the_site_needs_folders_are_refused(tmp_path):
    store = make_store(tmp_path / "stores" / "s.zarr", name="s", seed=1, H=4, W=4).path
    markers = _outside(tmp_path)
    for folder, target in (("data", tmp_path / "outside" / "dir"),   # pointing outside
                           ("static", "real")):                      # pointing inside
        site = tmp_path / f"site-{folder}"
        (site / "real").mkdir(parents=True)
        (site / folder).symlink_to(target)
        r = sitegen(store, "-o", site, "--quiet")
        assert r.returncode == 2 and "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {site / folder} is a symbolic link")
        assert "never writes through links" in lines[0]
        _unchanged(markers)
        assert list((site / "real").iterdir()) == []


# --- a store naming Python code ------------------------------------------------------------------

EVIL = '''
from pathlib import Path
Path({marker!r}).write_text("code from the store ran")
import torch

def build():
    return torch.nn.Upsample(scale_factor=2, mode="bicubic", align_corners=False)
'''


def _store_naming_code(tmp_path) -> tuple[Path, Path]:
    """A real store (bicubic ×2) whose recorded config names python:evil.py:build as the model,
    while its `model.id` still says bicubic — as a store edited by someone else would."""
    make_image(tmp_path / "img.png", 4, 4)
    cfg = write_config(tmp_path / "c.yaml", name="gift", model={"arch": "bicubic", "scale": 2},
                       image="img.png", output=str(tmp_path / "runs"), dtype="float64",
                       analyses={"columns": {"window": 3}, "rows": False})
    r = cli("run", "-q", cfg)
    assert r.exit_code == 0, r.stderr
    marker = tmp_path / "outside" / "pwned.txt"
    marker.parent.mkdir()
    evil = tmp_path / "evil.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    store = tmp_path / "runs" / "gift.zarr"
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["config"]["model"] = {"arch": f"python:{evil}:build", "scale": None,
                                             "checkpoint": None, "weights": None,
                                             "preprocess": "auto"}
    (store / "zarr.json").write_text(json.dumps(meta))
    return store, marker


@pytest.mark.slow
def test_store_code_never_runs_without_consent(tmp_path):
    store, marker = _store_naming_code(tmp_path)

    r = cli_subprocess("info", store)
    assert r.returncode == 0, r.stderr
    assert "model     bicubic" in r.stdout  # what the store claims ...
    assert f"the model is Python code: python:{tmp_path / 'evil.py'}:build" in r.stdout  # ... and is
    assert "--trust-code" in r.stdout
    assert not marker.exists()

    r = cli_subprocess("verify", store)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith(f"error: {store} names Python code as its model")
    assert "--trust-code" in line and "--integrity-only" in line
    assert not marker.exists()

    r = cli_subprocess("verify", "--integrity-only", store)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not marker.exists()

    r = sitegen(store, "-o", tmp_path / "site", "--quiet")
    assert r.returncode == 0, r.stderr
    assert not marker.exists()

    # with consent the code runs (that is what --trust-code means)
    r = cli_subprocess("verify", "--trust-code", store)
    assert marker.read_text() == "code from the store ran"
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_module_form_of_python_models_needs_consent_too(tmp_path):
    """python:pkg.mod:FUNC imports a module (from the current directory, even)."""
    store, marker = _store_naming_code(tmp_path)
    (tmp_path / "evilmod.py").write_text(EVIL.format(marker=str(marker)))
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["config"]["model"]["arch"] = "python:evilmod:build"
    (store / "zarr.json").write_text(json.dumps(meta))
    r = cli_subprocess("verify", store, cwd=tmp_path)
    assert r.returncode == 2 and "python:evilmod:build" in r.stderr and "--trust-code" in r.stderr
    assert not marker.exists()
