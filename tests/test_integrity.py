"""Damaged stores (issue 12): a zero-byte, truncated or bit-flipped shard is never "done".

`run` recomputes damaged tiles (the store then equals an uninterrupted one bitwise), `verify`
checks every chunk's checksum and names damaged tiles, `info` says what it did not check, and a
damaged or foreign store is one line on every command, never a traceback.
"""

from __future__ import annotations

import json
import shutil

import pytest

import precompute
from precompute.integrity import check_store
from sweep_helpers import TINY, assert_bitwise_equal, cli, make_image, write_config


def _config(base, out, name="ref"):
    """A config next to the image in ``base``, writing to the folder ``out``."""
    if not (base / "img.png").exists():
        make_image(base / "img.png", 6, 6, seed=3)
    return write_config(
        base / f"{name}.yaml", name="d", model={"arch": f"python:{TINY}:relu_same"},
        image="img.png", dtype="float32", batch=4, output=str(out),
        analyses={"residual": True, "columns": {"window": 3, "tile": 2},
                  "rows": {"window": 3, "tile": 2}},
    )


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """An uninterrupted reference store (and its image, which the copies' configs share)."""
    tmp = tmp_path_factory.mktemp("integrity")
    assert cli("run", "-q", _config(tmp, tmp / "ref")).exit_code == 0
    return tmp


def _copy(stores, tmp_path):
    """The reference store copied under tmp_path/work, with a config that resumes it."""
    shutil.copytree(stores / "ref", tmp_path / "work")
    return _config(stores, tmp_path / "work", name=tmp_path.name), tmp_path / "work" / "d.zarr"


def _flip(path, at=40):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage(store):
    """Four kinds of damage, each in its own tile; returns what must be reported."""
    (store / "columns/c/0/1/0/0/0/0").write_bytes(b"")  # power loss: zero-byte shard
    _flip(store / "columns/c/1/1/0/0/0/0")  # a flipped bit inside an inner chunk
    shard = store / "rows/c/2/0/0/0/0/0"
    shard.write_bytes(shard.read_bytes()[:-30])  # truncated: the index is cut
    _flip(store / "rows_origin/c/1/2/0", at=-1)  # the checksum of a tile's origin chunk
    return {("columns", 0, 1): "empty file (0 bytes)",
            ("columns", 1, 1): "inner chunk",
            ("rows", 2, 0): "shard index checksum mismatch",
            ("rows", 1, 2): "checksum mismatch"}


def _lines(result):
    assert "Traceback" not in result.output + result.stderr
    return result.output.splitlines()


def test_run_recomputes_damaged_tiles_bitwise(stores, tmp_path):
    cfg, store = _copy(stores, tmp_path)
    _damage(store)
    st = precompute.open_store(store)
    assert not st.is_complete()  # the zero-byte and truncated shards are not done (index check)
    info = cli("info", store)
    assert info.exit_code == 0
    assert "columns   " in info.stdout and "(1 damaged: recomputed by `precompute run`)" in info.stdout
    assert "integrity not checked" in info.stdout and "--integrity-only" in info.stdout

    r = cli("run", "-q", cfg)
    assert r.exit_code == 0, r.stderr
    assert "done (4 tile(s) written)" in r.stdout  # the 4 damaged tiles, not "already done"
    assert "damaged file(s) of unfinished tiles deleted" in r.stderr
    assert check_store(store).ok
    assert_bitwise_equal(stores / "ref" / "d.zarr", store)
    r = cli("run", "-q", cfg)
    assert r.exit_code == 0 and "already done" in r.stdout


def test_verify_names_damaged_tiles_without_traceback(stores, tmp_path):
    _, store = _copy(stores, tmp_path)
    expected = _damage(store)
    for args in (["--integrity-only"], ["--trust-code", "--samples", "1000"], ["--trust-code"]):
        r = cli("verify", *args, store)
        lines = _lines(r)
        assert r.exit_code == 1, r.output
        assert "4 damaged" in lines[0] and lines[-1].startswith("verify: FAILED")
        for (name, ty, tx), problem in expected.items():
            assert any(f"{name} tile ({ty}, {tx}) [" in ln and problem in ln for ln in lines), (name, ty, tx)
    # the samples came from the 7 intact tiles of each analysis only, and agree with the model
    r = cli("verify", "--trust-code", "--samples", "1000", store)
    for name in ("columns", "rows"):
        line = next(ln for ln in r.output.splitlines() if ln.startswith(f"{name}: "))
        assert line.startswith(f"{name}: 28 pixels × 3 channels recomputed") and line.endswith(" OK")


def test_integrity_of_an_intact_store(stores):
    r = cli("verify", "--integrity-only", stores / "ref" / "d.zarr")
    assert r.exit_code == 0, r.output
    assert "no damage" in r.output and r.output.strip().endswith("verify: OK (integrity only)")
    rep = check_store(stores / "ref" / "d.zarr")
    assert rep.ok and rep.files > 50 and rep.unchecked == 0


def test_damaged_core_array_needs_overwrite(stores, tmp_path):
    cfg, store = _copy(stores, tmp_path)
    _flip(store / "input/c/0/0/0")
    r = cli("run", "-q", cfg)
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {store} is damaged (input/c/0/0/0: checksum mismatch)")
    assert "--overwrite" in r.stderr
    r = cli("verify", "--trust-code", store)  # damaged input: reported, never a traceback
    assert r.exit_code == 1 and "input/c/0/0/0: checksum mismatch" in r.output
    assert "(the stored input is damaged)" in r.output and "Traceback" not in r.output
    r = cli("run", "-q", "--overwrite", cfg)
    assert r.exit_code == 0, r.stderr
    assert_bitwise_equal(stores / "ref" / "d.zarr", store)


def test_missing_origin_chunk_of_a_done_tile(stores, tmp_path):
    cfg, store = _copy(stores, tmp_path)
    (store / "columns_origin/c/2/2/0").unlink()
    rep = check_store(store)
    assert rep.damaged == ["columns tile (2, 2) [columns_origin/c/2/2/0]: missing (the tile's shard exists)"]
    r = cli("run", "-q", cfg)
    assert r.exit_code == 0 and "done (1 tile(s) written)" in r.stdout
    assert_bitwise_equal(stores / "ref" / "d.zarr", store)


def test_symlinked_shard_is_reported_not_followed(stores, tmp_path):
    _, store = _copy(stores, tmp_path)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret" * 100)
    shard = store / "columns/c/0/0/0/0/0/0"
    shard.unlink()
    shard.symlink_to(outside)
    rep = check_store(store)
    assert rep.damaged == ["columns tile (0, 0) [columns/c/0/0/0/0/0/0]: a symbolic link (not followed)"]


# --- broken metadata: one line on info, verify and run ------------------------------------------

def _group_meta(store):
    return json.loads((store / "zarr.json").read_text())


@pytest.mark.parametrize("breakage,text", [
    (lambda s: (s / "zarr.json").write_text(""), "unreadable zarr.json"),
    (lambda s: (s / "zarr.json").write_text((s / "zarr.json").read_text()[:200]), "unreadable zarr.json"),
    (lambda s: shutil.rmtree(s / "input"), "array 'input' is missing"),
    (lambda s: (s / "zarr.json").write_text(json.dumps(
        _group_meta(s) | {"attributes": _group_meta(s)["attributes"] | {"format_version": "1"}})),
     "has format_version '1', not an integer"),
])
def test_broken_metadata_is_one_line_everywhere(stores, tmp_path, breakage, text):
    cfg, store = _copy(stores, tmp_path)
    breakage(store)
    for args in (["info", store], ["verify", "--trust-code", store],
                 ["verify", "--integrity-only", store], ["run", cfg]):
        r = cli(*args)
        assert r.exit_code == 2, (args, r.output, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
        assert text in lines[0] or (args[0] == "run" and "missing" in text and "damaged" in lines[0]), (args, lines[0])


def test_verify_arguments_are_checked(stores):
    store = stores / "ref" / "d.zarr"
    r = cli("verify", "--samples", "-3", store)
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "error: --samples: expected a number of pixels ≥ 0, got -3"
    r = cli("verify", "--device", "banana", store)
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "error: device: expected auto, cpu, cuda or cuda:N, got 'banana'"


def test_index_with_a_valid_checksum_pointing_outside(stores, tmp_path):
    """An index rewritten with a correct crc32c but an offset past the end (a crafted shard)."""
    import google_crc32c
    import numpy as np

    _, store = _copy(stores, tmp_path)
    shard = store / "rows/c/0/1/0/0/0/0"
    data = bytearray(shard.read_bytes())
    n = 2 * 2  # inner chunks of a 2×2 tile
    index = np.frombuffer(bytes(data[-(16 * n + 4):-4]), "<u8").copy()
    index[0] = 2**64 - 8  # would wrap around in uint64 arithmetic
    body = index.tobytes()
    data[-(16 * n + 4):] = body + np.uint32(google_crc32c.value(body)).astype("<u4").tobytes()
    shard.write_bytes(bytes(data))
    rep = check_store(store)
    assert rep.damaged == ["rows tile (0, 1) [rows/c/0/1/0/0/0/0]: inner chunk 0 points outside the file"]


def _declare(store, name, shape):
    """Rewrite an array's declared shape (a store made to blow up whoever reads it)."""
    zj = store / name / "zarr.json"
    meta = json.loads(zj.read_text())
    meta["shape"] = list(shape)
    zj.write_text(json.dumps(meta))


@pytest.mark.parametrize("name, shape", [("input", (3, 100_000, 100_000)),
                                         ("residual", (3, 60_000, 60_000))])
def test_a_shape_beyond_the_chunks_on_disk_is_refused_before_reading(stores, tmp_path, name,
                                                                    shape):
    """A 120 GB (43 GB) array declared over one 6×6 chunk: no command allocates it (info hung
    before). run, verify, info and sitegen refuse it in one line naming the array: its shape
    departs from what the store's attributes and the input/output shapes define (issue 18)."""
    import os
    import subprocess
    import sys

    from sweep_helpers import REPO, cli_subprocess

    cfg, store = _copy(stores, tmp_path)
    _declare(store, name, shape)
    sitegen = subprocess.run([sys.executable, "-m", "sitegen.cli", "build", "--quiet", store, "-o",
                              tmp_path / "site"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    refused = [cli_subprocess("verify", "--integrity-only", store, timeout=120),
               cli_subprocess("run", "-q", cfg, timeout=120), sitegen]
    refused.append(cli_subprocess("info", store, timeout=120))
    for r in refused:
        out = (r.stdout + r.stderr).strip()
        assert r.returncode in (1, 2) and "Traceback" not in out, (r.args, out)
        assert name in out and ("declares shape" in out or "has shape" in out), (r.args, out)
        if r.returncode == 2:
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (r.args, r.stderr)
