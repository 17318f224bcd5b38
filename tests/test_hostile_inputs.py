"""Hostile and careless inputs (issue 12): configs, images, checkpoints and command-line values.

Every case is one line ``error: …`` with exit status 2 (or a clear UserError), no traceback, and
bounded memory; everything is built in tmp_path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from precompute.config import MAX_CONFIG_BYTES, UserError, load_config
from sweep_helpers import REPO, TINY, cli, cli_subprocess, make_image, write_config


def _one_line(result, text):
    """A CLI result (in-process or subprocess) that is one `error:` line with exit status 2."""
    code = getattr(result, "exit_code", getattr(result, "returncode", None))
    err = result.stderr
    assert code == 2, (code, getattr(result, "output", ""), err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert text in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def _base_config(tmp_path, name="t", **kw):
    if not (tmp_path / "img.png").exists():
        make_image(tmp_path / "img.png", 6, 6)
    cfg = {"name": name, "model": {"arch": "bicubic", "scale": 2}, "image": "img.png",
           "analyses": {"residual": True, "columns": {"window": 3, "tile": 2}, "rows": False},
           "dtype": "float64", "output": str(tmp_path / "runs")}
    cfg.update(kw)
    return write_config(tmp_path / f"{name}.yaml", **cfg)


# --- YAML configs -------------------------------------------------------------------------------

def _billion_laughs(levels: int = 9) -> str:
    lines = ['name: x', 'model: {arch: bicubic, scale: 2}', 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    lines.append(f"image: *a{levels}")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_in_bounded_memory(tmp_path):
    """9 levels of 9 aliases: 387 million strings once expanded; refused before expansion, in a
    fresh process whose peak memory stays small, with a short line."""
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(_billion_laughs())
    code = ("import resource, sys\n"
            "from precompute.cli import main\n"
            "try:\n    main(['run', sys.argv[1]])\n"
            "except SystemExit as e:\n"
            "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, e.code, file=sys.stdout)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True,
                       env=env, timeout=120)
    peak_kb, status = (int(v) for v in r.stdout.split())
    assert status == 2
    line = r.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line and len(line) < 300, line[:500]
    assert "aliases expand to more than" in line
    assert peak_kb < 1_000_000  # < 1 GB (the unguarded loader reached 1.4 GB)


def test_recursive_alias_is_refused(tmp_path):
    (tmp_path / "rec.yaml").write_text("name: &x [1, *x]\n")
    with pytest.raises(UserError, match="aliases expand to more than"):
        load_config(tmp_path / "rec.yaml")


def test_duplicate_keys_are_refused(tmp_path):
    make_image(tmp_path / "img.png", 4, 4)
    (tmp_path / "dup.yaml").write_text(
        "name: first\nmodel: {arch: bicubic, scale: 2}\nimage: img.png\nname: second\n")
    with pytest.raises(UserError, match=r"line 4.*duplicate key `name` \(first given on line 1\)"):
        load_config(tmp_path / "dup.yaml")
    (tmp_path / "dup2.yaml").write_text(
        "name: a\nmodel: {arch: bicubic, scale: 2, scale: 3}\nimage: img.png\n")
    with pytest.raises(UserError, match="duplicate key `scale`"):
        load_config(tmp_path / "dup2.yaml")
    # YAML merge keys still override (not duplicates)
    (tmp_path / "merge.yaml").write_text(
        "name: m\nbase: &b {arch: bicubic, scale: 2}\nmodel:\n  <<: *b\n  scale: 3\nimage: img.png\n")
    with pytest.raises(UserError, match="unknown key `base`"):  # a merge source is an ordinary key
        load_config(tmp_path / "merge.yaml")


def test_non_utf8_and_oversized_configs(tmp_path):
    (tmp_path / "latin.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    r = cli("run", tmp_path / "latin.yaml")
    _one_line(r, "not UTF-8 text (byte 0xe9 at offset 9)")
    (tmp_path / "big.yaml").write_bytes(b"# " + b"x" * MAX_CONFIG_BYTES + b"\n")
    _one_line(cli("run", tmp_path / "big.yaml"), "larger than 1024 KB")


def test_huge_values_give_a_short_line(tmp_path):
    cfg = _base_config(tmp_path, batch=["x" * 100] * 1000)
    line = _one_line(cli("run", cfg), "`batch`: expected a number of probes per pass")
    assert len(line) < 400


def test_symlink_loops_and_long_names_are_one_line(tmp_path):
    make_image(tmp_path / "img.png", 6, 6)
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop2.png")
    (tmp_path / "loop2.png").symlink_to(tmp_path / "loop.png")
    _one_line(cli("run", _base_config(tmp_path, image="loop.png")), "symbolic link loop")
    (tmp_path / "ck.pt").symlink_to(tmp_path / "ck.pt")
    _one_line(cli("run", _base_config(tmp_path, model={"arch": "pixelshuffle", "checkpoint": "ck.pt"})),
              "symbolic link loop")
    _one_line(cli("run", _base_config(tmp_path, image="x" * 300 + ".png")), "File name too long")
    # a name that fits the schema (≤ 200) but not a file name once joined with a long image stem
    long_stem = "s" * 120
    make_image(tmp_path / f"{long_stem}.png", 6, 6)
    cfg = _base_config(tmp_path, name="n" * 150, image=None,
                       images=["img.png", f"{long_stem}.png"])
    _one_line(cli("run", cfg), "too long for a file name")
    assert not (tmp_path / "runs").exists()
