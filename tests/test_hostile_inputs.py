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
from sweep_helpers import REPO, TINY, cli, make_image, write_config


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
    fresh process whose peak memory grows little past what its imports took, with a short line.

    The growth, not the absolute peak, is measured: what importing torch costs varies between
    machines (1.6 GB on CI's, 0.5 GB on a workstation); unguarded, the expansion runs for minutes
    and grows without bound."""
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(_billion_laughs())
    code = ("import resource, sys\n"
            "from precompute.cli import main\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    main(['run', sys.argv[1]])\n"
            "except SystemExit as e:\n"
            "    print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, e.code)\n"
            "    raise\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True,
                       env=env, timeout=120)
    base_kb, peak_kb, status = (int(v) for v in r.stdout.split())
    line = _one_line(r, "aliases expand to more than 100000 values")
    assert status == 2 and len(line) < 300
    assert peak_kb - base_kb < 200_000  # < 200 MB past the imports


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


# --- images -------------------------------------------------------------------------------------

def _x0(tmp_path, image, arch="bicubic"):
    """x0 of a config on ``image`` (the bicubic model: RGB in [0, 1])."""
    from precompute.config import load_config
    from precompute.inputs import prepare

    cfg = load_config(write_config(tmp_path / "x.yaml", name="x", model={"arch": arch, "scale": 2},
                                   image=image.name, output=str(tmp_path / "runs")))
    return prepare(cfg.as_dict(cfg.images[0]), tmp_path, torch.device("cpu")).x0[0].numpy()


def test_16bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    v = np.array([[0, 257, 32767, 32768], [65535, 1000, 128, 60000]], np.uint16)
    Image.fromarray(v).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")  # what Pillow keeps
    x0 = _x0(tmp_path, tmp_path / "g16.png")
    want = np.round(v.astype(np.float64) * 255 / 65535) / 255  # documented: 8 bits of v/65535
    for c in range(3):
        np.testing.assert_allclose(x0[c], want, atol=1e-7)
    assert x0.mean() < 0.6  # the bug made it 99 % white


def test_float_tiff_is_read_as_unit_range_or_refused(tmp_path):
    f = np.array([[0.0, 0.25, 0.5], [0.75, 1.0, 0.1]], np.float32)
    Image.fromarray(f).save(tmp_path / "f.tif")
    x0 = _x0(tmp_path, tmp_path / "f.tif")
    np.testing.assert_allclose(x0[1], np.round(f.astype(np.float64) * 255) / 255, atol=1e-7)
    Image.fromarray(f * 3).save(tmp_path / "big.tif")
    _one_line(cli("run", _base_config(tmp_path, image="big.tif")),
              "holds floating-point values in [0, 3]; LinearScope reads float images as [0, 1]")
    g = f.copy()
    g[0, 0] = np.nan
    Image.fromarray(g).save(tmp_path / "nan.tif")
    _one_line(cli("run", _base_config(tmp_path, image="nan.tif")), "and NaN/Inf")


def test_palette_and_32bit_images(tmp_path):
    rgb = (np.random.default_rng(0).random((4, 4, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    want = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"), np.float64).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(_x0(tmp_path, tmp_path / "p.png"), want, atol=1e-7)
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "i32.tif")
    _one_line(cli("run", _base_config(tmp_path, image="i32.tif")), "pixel mode 'I'")


def test_decompression_bomb_header_is_one_line(tmp_path):
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)  # claims 20000×20000 RGB
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                        + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    _one_line(cli("run", _base_config(tmp_path, image="bomb.png")), "decompression-bomb limit")


# --- memory -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_scale_1000_is_refused_with_numbers_before_the_forward(tmp_path):
    """×1000 bicubic on a 12×12 crop: f(x0) alone is 1.7 GB. With 1 GB available the run is
    refused with the estimate, in a process that never allocated f(x0)."""
    make_image(tmp_path / "img.png", 20, 20)
    cfg = _base_config(tmp_path, model={"arch": "bicubic", "scale": 1000}, crop=[0, 0, 12, 12],
                       dtype="float32")
    # VmHWM: the peak resident size of this process's own memory. (ru_maxrss is not: Linux
    # carries the forking parent's resident size into it across exec, and pytest's process can
    # be larger than f(x0) by the time this test runs.)
    code = ("import re, sys\nfrom precompute.cli import main\n"
            "try:\n    main(['run', sys.argv[1]])\nexcept SystemExit as e:\n"
            "    hwm = re.search(r'VmHWM:\\s*(\\d+) kB', open('/proc/self/status').read())\n"
            "    print(hwm.group(1), e.code)\n"
            "    raise\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), LINEARSCOPE_MEMORY_BYTES=str(10**9))
    r = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True,
                       env=env, timeout=300)
    peak_kb, status = (int(v) for v in r.stdout.split())
    assert status == 2, r.stderr
    line = _one_line(r, "bicubic on x0 3×12×12 needs about 1.7 GB")
    assert "a pass of one probe about" in line and "only 1.0 GB is available on cpu" in line
    assert peak_kb * 1024 < 1_728_000_000  # less than f(x0) alone: the forward never ran
    assert not (tmp_path / "runs").exists()


def test_memory_estimate_matches_hand_counted_tensors():
    """The fake-tensor tally against a hand count (float64, 8×8): x0 (3 channels), conv → h1 (4),
    ReLU → h2 (4; h1 is freed once Sequential drops it), conv → y (2). In-place results are
    views (not counted)."""
    from precompute.memory import estimate

    unit = 64 * 8  # one 8×8 float64 channel
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 3, padding=1)).double()
    x0 = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    est = estimate(net, x0)
    assert est.total == (3 + 4 + 4 + 2) * unit
    assert est.peak == (3 + 4 + 4) * unit  # x0, h1 and h2 during the ReLU; h1 gone before y
    net[1] = torch.nn.ReLU(inplace=True)
    est = estimate(net, x0)
    assert (est.total, est.peak) == ((3 + 4 + 2) * unit, (3 + 4 + 2) * unit)


def test_explicit_batch_too_large_for_cpu_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("LINEARSCOPE_MEMORY_BYTES", str(2 * 10**6))
    cfg = _base_config(tmp_path, batch=100000)
    _one_line(cli("run", cfg), "a pass of batch 100000 probes needs about")
    assert "use batch: auto or at most" in cli("run", cfg).stderr


# --- several images: every one checked before any work -----------------------------------------

@pytest.mark.parametrize("model,second,text", [
    ({"arch": "bicubic", "scale": 2}, (4, 4), "crop [0, 0, 5, 5] ([top, left, height, width]) does not fit in b.png"),
    ({"arch": f"python:{TINY}:multiple_of_4"}, (6, 6), "multiples of 4"),
    ({"arch": f"python:{TINY}:big_kernel"}, (5, 5), "cannot take this image"),
])
def test_every_image_is_checked_before_any_store(tmp_path, model, second, text):
    make_image(tmp_path / "a.png", 8, 8, seed=1)
    make_image(tmp_path / "b.png", *second, seed=2)
    cfg = _base_config(tmp_path, image=None, images=["a.png", "b.png"], model=model,
                       crop=[0, 0, 5, 5] if model["arch"] == "bicubic" else None)
    _one_line(cli("run", cfg), text)
    assert not (tmp_path / "runs").exists()  # not even a's store was started


def test_a_foreign_store_for_the_second_image_is_found_first(tmp_path):
    make_image(tmp_path / "a.png", 6, 6, seed=1)
    make_image(tmp_path / "b.png", 6, 6, seed=2)
    (tmp_path / "runs" / "m-b.zarr").mkdir(parents=True)
    (tmp_path / "runs" / "m-b.zarr" / "notes.txt").write_text("mine")
    cfg = _base_config(tmp_path, name="m", image=None, images=["a.png", "b.png"])
    _one_line(cli("run", cfg), "m-b.zarr exists and is not a LinearScope store")
    assert not (tmp_path / "runs" / "m-a.zarr").exists()


# --- checkpoints --------------------------------------------------------------------------------

def test_zip_bomb_checkpoint_is_refused_before_inflating(tmp_path, monkeypatch):
    """A torch.save archive recompressed with deflate: 32 MB of zeros declared in a few KB.
    Refused from the archive's declared sizes; torch.load (which would inflate it) never runs."""
    import io

    from precompute.models.checkpoint import read_state_dict

    buf = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(8 << 20)}, buf)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert bomb.stat().st_size < 200_000

    def no_load(*a, **k):
        raise AssertionError("torch.load was called on a zip bomb")

    monkeypatch.setattr(torch, "load", no_load)
    from precompute.models import ModelError
    with pytest.raises(ModelError, match=r"declares 33\.6 MB of data in a .* archive .*zip bomb"):
        read_state_dict(bomb)
    _one_line(cli("run", _base_config(tmp_path, model={"arch": "pixelshuffle", "checkpoint": "bomb.pt"})),
              "refusing to inflate it (a zip bomb?)")


def test_legacy_checkpoint_declaring_a_huge_storage_is_refused_in_bounded_memory(tmp_path):
    """The published EDSR and CycleGAN files predate the zip format, so legacy (tar-less pickle)
    checkpoints must load; one whose pickle declares an 8 GB storage over 40 bytes of data is
    refused in one line by a fresh process whose memory grows little past its imports (PyTorch's
    legacy reader checks each storage's recorded size before reading it)."""
    import io
    import pickle

    torch.save({"w": torch.zeros(10)}, tmp_path / "small.pt",
               _use_new_zipfile_serialization=False)
    data = (tmp_path / "small.pt").read_bytes()
    f = io.BytesIO(data)
    for _ in range(3):  # magic number, protocol version, system info
        pickle.load(f)
    main = f.tell()
    at = data.index(b"K\x0a", main)  # the storage's numel (BININT1 10) in the persistent id
    bomb = data[:at] + b"J" + (2**31 - 1).to_bytes(4, "little") + data[at + 2:]
    (tmp_path / "bomb.pt").write_bytes(bomb)
    code = ("import resource, sys\n"
            "from precompute.models.checkpoint import read_state_dict\n"
            "from precompute.models import ModelError\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    read_state_dict(sys.argv[1])\nexcept ModelError as e:\n"
            "    print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
            "    print(str(e).splitlines()[0])\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "bomb.pt")],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    sizes, line = r.stdout.splitlines()[:2]
    base_kb, peak_kb = (int(v) for v in sizes.split())
    assert peak_kb - base_kb < 500_000  # < 0.5 GB past the imports (8 GB declared)
    assert line.startswith("cannot read checkpoint") and "corrupt" in line, line
    _one_line(cli("run", _base_config(tmp_path, model={"arch": "pixelshuffle",
                                                       "checkpoint": "bomb.pt"})),
              "cannot read checkpoint")


class _Net:  # a class a pickle refers to (never imported back: the unpickler blocks it)
    pass


def test_checkpoint_errors_are_one_line_with_detail_behind_verbose(tmp_path):
    import pickle

    from precompute.models.pixelshuffle import PixelShuffleSR

    torch.save(PixelShuffleSR(3), tmp_path / "module.pth")  # a whole pickled module
    cfg = _base_config(tmp_path, model={"arch": "pixelshuffle", "checkpoint": "module.pth"})
    line = _one_line(cli("run", cfg), "blocked global precompute.models.pixelshuffle.PixelShuffleSR")
    assert "--verbose" in line and "Weights only load failed" not in line
    r = cli("run", "--verbose", cfg)
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0] == line and len(lines) > 3
    assert any("weights_only=False" in ln for ln in lines) and any(ln.startswith("PyTorch: ") for ln in lines)

    # a plain pickle (pickle.dump, not torch.save) of a class instance: the blocked global is
    # named (PyTorch's unpickler stops at the first opcode and calls the file corrupt)
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"conv1.weight": _Net()}))
    cfg = _base_config(tmp_path, model={"arch": "pixelshuffle", "checkpoint": "raw.pkl"})
    line = _one_line(cli("run", cfg), "is a plain Python pickle (pickle.dump) that refers to the "
                     "blocked global(s) test_hostile_inputs._Net")
    assert "corrupt" not in line

    # wrong keys: counts and the hint on the first line, the key lists behind --verbose
    torch.save({"conv1.weight": torch.zeros(64, 1, 5, 5), "conv9.weight": torch.zeros(1),
                "conv4.weight": torch.zeros(9, 32, 3, 3)}, tmp_path / "keys.pt")
    cfg = _base_config(tmp_path, model={"arch": "pixelshuffle", "checkpoint": "keys.pt"})
    line = _one_line(cli("run", cfg), "does not match pixelshuffle ×3 (conv1..conv4): 6 missing keys, "
                     "1 unexpected key (--verbose lists them)")
    r = cli("run", "-v", cfg)
    assert '  unexpected keys (1): "conv9.weight"' in r.stderr


def test_output_under_proc_is_named_as_such(tmp_path):
    _one_line(cli("run", _base_config(tmp_path, output="/proc/linearscope-runs")),
              "/proc is on a virtual file system without storage")


# --- sitegen arguments, configs and damaged stores ----------------------------------------------

def _sitegen(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "sitegen.cli", "build", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=300)


@pytest.fixture(scope="module")
def site_store(tmp_path_factory):
    from site_fixtures import make_store

    return make_store(tmp_path_factory.mktemp("sitegen") / "s.zarr", name="s", seed=2, H=8, W=8).path


@pytest.mark.parametrize("args,text", [
    (["--stride", "0"], "--stride must be a whole number ≥ 1, got '0'"),
    (["--max-size", "-5GB"], "--max-size must be a positive size or 'none', got '-5GB'"),
    (["--region", "20,20,4,4"], "--region 20,20,4,4 (top, left, height, width) leaves the input image of s, which is 8×8 pixels"),
    (["--region", "6,0,4,4"], "leaves the input image of s"),
])
def test_sitegen_arguments_are_refused_not_bent(site_store, tmp_path, args, text):
    r = _sitegen(site_store, "-o", tmp_path / "site", *args)
    _one_line(r, text)
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize("content,text", [
    (b"stores: [a]\nstride: 2\nstride: 0\n", "duplicate key `stride`"),
    ("stores: [caf\xe9]\n".encode("latin-1"), "is not UTF-8 text"),
    (("channels: [&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol], "
      + ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10))
      + "]\n").encode(), "`channels` has the wrong type (list)"),  # billion laughs, never expanded
    (b"stride: 0\n", "--stride must be a whole number"),
    (b"channels: [1, 2]\n", "`channels` has the wrong type (list)"),
    (b"stores: [[a]]\n", "`stores` must be a path or a list of paths"),
])
def test_sitegen_configs(tmp_path, content, text):
    (tmp_path / "site.yaml").write_bytes(content)
    r = _sitegen(tmp_path / "site.yaml", cwd=tmp_path)
    line = _one_line(r, text)
    assert len(line) < 300


def test_sitegen_output_under_proc(site_store):
    _one_line(_sitegen(site_store, "-o", "/proc/linearscope-site"),
              "/proc is on a virtual file system without storage")


def test_sitegen_zero_byte_shard_is_an_error_not_fewer_pixels(site_store, tmp_path):
    import shutil

    store = tmp_path / "s.zarr"
    shutil.copytree(site_store, store)
    (store / "columns/c/1/0/0/0/0/0").write_bytes(b"")
    line = _one_line(_sitegen(store, "-o", tmp_path / "site"), "columns tile (1, 0) is damaged")
    assert "columns/c/1/0/0/0/0/0 is 0 bytes" in line and "precompute run" in line


def test_sitegen_string_format_version(site_store, tmp_path):
    import json
    import shutil

    store = tmp_path / "s.zarr"
    shutil.copytree(site_store, store)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["format_version"] = "1"
    (store / "zarr.json").write_text(json.dumps(meta))
    _one_line(_sitegen(store, "-o", tmp_path / "site"), "has format_version '1', not an integer")
