"""Shared helpers of the sweep/store/CLI tests: tiny images, configs, running the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from click.testing import CliRunner
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "fixtures" / "tiny_models.py"


def make_image(path: Path, h: int, w: int, seed: int = 0, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    Image.fromarray((rng.random(shape) * 255).astype(np.uint8), mode=mode).save(path)
    return path


def write_config(path: Path, **cfg) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cli(*args, env: dict | None = None):
    """Run `precompute ARGS` in-process; returns click's Result (exit_code, stdout, stderr)."""
    from precompute.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=True)


def cli_subprocess(*args, cwd=None, env_extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "precompute.cli", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, **kw)


def read_all(store: Path) -> dict[str, np.ndarray]:
    """Every array of a store, by name."""
    import zarr

    g = zarr.open_group(str(store), mode="r")
    out = {}
    for name, arr in g.arrays():
        out[name] = arr[...]
    for name, sub in g.groups():
        for n2, arr in sub.arrays():
            out[f"{name}/{n2}"] = arr[...]
    return out


def attrs(store: Path) -> dict:
    import zarr

    return dict(zarr.open_group(str(store), mode="r").attrs)


def assert_bitwise_equal(a: Path, b: Path, ignore=("timings", "created", "device")):
    """Two stores hold bitwise-identical arrays and the same attributes (but timing ones)."""
    xa, xb = read_all(a), read_all(b)
    assert sorted(xa) == sorted(xb)
    for k in xa:
        assert xa[k].dtype == xb[k].dtype and xa[k].shape == xb[k].shape, k
        assert xa[k].tobytes() == xb[k].tobytes(), f"array {k} differs"
    aa, ab = attrs(a), attrs(b)
    for k in ignore:
        aa.pop(k, None)
        ab.pop(k, None)
    aa["config"].pop("output", None)
    ab["config"].pop("output", None)
    # the Freivalds checks record what the processes that finished checked (a killed process's
    # checked blocks are not counted): provenance of the run, like its timings
    for at in (aa, ab):
        at["checks"] = {k: v for k, v in (at.get("checks") or {}).items()
                        if not k.startswith("freivalds_")}
    assert aa == ab


def shard_files(store: Path, analysis: str) -> int:
    """How many finished shard files an analysis of ``store`` holds (``.partial`` ones excluded)."""
    d = store / analysis / "c"
    if not d.exists():
        return 0
    return sum(1 for f in d.rglob("*") if f.is_file() and not f.name.endswith(".partial"))


def run_and_kill(cfg: Path, store: Path, ready) -> bool:
    """Start ``precompute run -q CFG`` in a process, SIGKILL it as soon as ``ready(store)``; True
    if it was killed mid-run (False: it finished or hung for 120 s first)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-m", "precompute.cli", "run", "-q", str(cfg)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while p.poll() is None and time.monotonic() < deadline:
        if ready(store):
            p.send_signal(signal.SIGKILL)
            p.wait()
            return True
        time.sleep(0.01)
    p.wait()
    return False


def run_shards(cfg: Path, n: int = 2) -> None:
    """``precompute run -q --shard i/n CFG`` for every i, as n processes at once; each must
    succeed."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-m", "precompute.cli", "run", "-q", "--shard",
                               f"{i}/{n}", str(cfg)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
