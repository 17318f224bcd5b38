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


# --- a real store (tiny model) and the checks every reader makes at open -----------------------

from sweep_helpers import TINY, assert_bitwise_equal, cli, make_image, write_config  # noqa: E402


def _config(base, out, name="ref"):
    if not (base / "img.png").exists():
        make_image(base / "img.png", 6, 6, seed=3)
    return write_config(
        base / f"{name}.yaml", name="d", model={"arch": f"python:{TINY}:relu_same"},
        image="img.png", dtype="float32", batch=4, output=str(out),
        analyses={"residual": True, "columns": {"window": 3, "tile": 2},
                  "rows": {"window": 3, "tile": 2}})


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("round2")
    assert cli("run", "-q", _config(tmp, tmp / "ref")).exit_code == 0
    return tmp


def _copy(ref, tmp_path):
    shutil.copytree(ref / "ref", tmp_path / "work", symlinks=True)
    return _config(ref, tmp_path / "work", name=tmp_path.name), tmp_path / "work" / "d.zarr"


def _refused_everywhere(store, tmp_path, text, sitegen=True):
    """info, verify --integrity-only (in-process) and sitegen build (a subprocess, torch-free):
    each one `error:` line containing ``text``, exit status 2, nothing written."""
    for args in (["info", store], ["verify", "--integrity-only", store]):
        r = cli(*args)
        assert r.exit_code == 2, (args, r.output, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr)
        assert "Traceback" not in r.output + r.stderr and text in lines[0], (args, lines[0])
    if sitegen:
        _one_line(_sitegen(store, "-o", tmp_path / "site", timeout=120), text)
        assert not (tmp_path / "site").exists()


def test_missing_chunk_of_an_array_written_whole_is_damage(ref, tmp_path):
    """Item 3: input/c/0/0/0 deleted made x0 read as NaN while verify said "no damage"."""
    from precompute.integrity import check_store, missing_chunks

    _, store = _copy(ref, tmp_path)
    (store / "input/c/0/0/0").unlink()
    _refused_everywhere(store, tmp_path, "array 'input' is written whole but its chunk "
                                         "input/c/0/0/0 is missing")
    rep = check_store(store)  # the integrity report itself names it too
    assert not rep.ok and any("input/c/0/0/0 is missing" in d for d in rep.damaged), rep.damaged
    assert missing_chunks(zarr.open_group(str(store), mode="r")["input"])


def test_shard_replaced_by_a_directory_is_damage_and_resumes(ref, tmp_path):
    """Item 4: a shard file replaced by a directory: verify names the tile, run recomputes it
    (the directory, inside the store, is removed) and the store equals the reference bitwise."""
    from precompute.integrity import check_store

    cfg, store = _copy(ref, tmp_path)
    shard = store / "columns/c/1/0/0/0/0/0"
    shard.unlink()
    shard.mkdir()
    (shard / "junk").write_bytes(b"x")
    rep = check_store(store)
    assert rep.damaged == ["columns tile (1, 0) [columns/c/1/0/0/0/0/0]: a directory, not a "
                           "chunk file"] and rep.damaged_tiles == {"columns": {(1, 0)}}
    r = cli("verify", "--integrity-only", store)
    assert r.exit_code == 1 and "1 damaged" in r.output and "Traceback" not in r.output + r.stderr
    r = cli("run", "-q", cfg)
    assert r.exit_code == 0, (r.output, r.stderr)
    assert_bitwise_equal(ref / "ref" / "d.zarr", store)


def test_array_folder_linked_out_of_the_store_is_refused(ref, tmp_path):
    """Item 5: `columns` replaced by a link to a copy outside the store (one byte flipped): no
    reader follows it; verify's own walk reports it; the copy outside is left untouched."""
    from precompute.integrity import check_store

    _, store = _copy(ref, tmp_path)
    outside = tmp_path / "elsewhere"
    shutil.move(store / "columns", outside)
    f = outside / "c/0/0/0/0/0/0"
    data = bytearray(f.read_bytes())
    data[40] ^= 0xFF
    f.write_bytes(bytes(data))
    before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    (store / "columns").symlink_to(outside, target_is_directory=True)
    _refused_everywhere(store, tmp_path, "columns is a symbolic link")
    assert any(d.startswith("columns: a symbolic link to a directory") for d in
               check_store(store).damaged)
    r = cli("run", "-q", _config(ref, tmp_path / "work", name="again"))
    assert r.exit_code == 2 and "columns is a symbolic link" in r.stderr, r.stderr
    assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == before


def _meta(store, name):
    zj = store / name / "zarr.json"
    return zj, json.loads(zj.read_text())


def test_absurd_array_metadata_is_refused(ref, tmp_path):
    """Item 6: rows_origin declaring 2**70 rows passed info and verify."""
    _, store = _copy(ref, tmp_path)
    zj, meta = _meta(store, "rows_origin")
    meta["shape"][0] = 2**70
    zj.write_text(json.dumps(meta))
    _refused_everywhere(store, tmp_path, "array 'rows_origin' has shape (1180591620717411303424, "
                                         "6, 2), expected (6, 6, 2)")


@pytest.mark.parametrize("name, key, value, text", [
    ("display/input", "chunk_grid", {"name": "regular", "configuration": {"chunk_shape": [1, 1, 1]}},
     "array 'display/input' has chunks (1, 1, 1), expected (6, 6, 3)"),
    ("columns_outside", "data_type", "float64",
     "array 'columns_outside' has dtype float64, expected float32"),
    ("output", "shape", [3, 6, 7], "array 'display/output' has shape (6, 6, 3), expected (6, 7, 3)"),
])
def test_array_metadata_against_the_attributes(ref, tmp_path, name, key, value, text):
    _, store = _copy(ref, tmp_path)
    zj, meta = _meta(store, name)
    meta[key] = value
    zj.write_text(json.dumps(meta))
    _refused_everywhere(store, tmp_path, text, sitegen=False)


def test_chunk_count_is_bounded_by_the_attributes(tmp_path):
    """Item 7: display/input re-declared 2000×2000×3 in 1×1×1 chunks with no chunk file: sitegen
    ran for minutes; now one line at open, in well under the subprocess timeout."""
    store = make_store(tmp_path / "s.zarr", name="s", seed=1).path
    zj, meta = _meta(store, "display/input")
    meta["shape"] = [2000, 2000, 3]
    meta["chunk_grid"]["configuration"]["chunk_shape"] = [1, 1, 1]
    zj.write_text(json.dumps(meta))
    shutil.rmtree(store / "display/input/c")
    _one_line(_sitegen(store, "-o", tmp_path / "site", timeout=60),
              "array 'display/input' has shape (2000, 2000, 3), expected (8, 8, 3)")


def _deep(n):
    return "[" * n + "]" * n


def test_deeply_nested_json_is_one_line(ref, tmp_path):
    """Item 10: a 200,000-deep array in the root zarr.json: RecursionError before."""
    _, store = _copy(ref, tmp_path)
    zj = store / "zarr.json"
    text = zj.read_text()
    zj.write_text(text[:-1] + ', "deep": ' + _deep(200_000) + "}")
    _refused_everywhere(store, tmp_path, "zarr.json is nested too deeply to be metadata")
    r = cli("run", "-q", _config(ref, tmp_path / "work", name="again"))
    assert r.exit_code == 2 and "nested too deeply" in r.stderr and "Traceback" not in r.stderr


def _set(attrs, path, value):
    d = attrs
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


@pytest.mark.parametrize("path, value, text", [
    (("geometry", "scale"), float("nan"), "`geometry.scale` must be a finite number"),
    (("geometry", "scale"), float("inf"), "`geometry.scale` must be a finite number"),
    (("geometry", "scale"), "2", "`geometry.scale`"),
    (("geometry",), [1, 0], "`geometry`"),
    (("model",), "tiny", "`model`"),
    (("image",), ["a.png"], "`image`"),
    (("analyses",), ["columns"], "`analyses`"),
    (("analyses", "columns", "tile"), "big", "`analyses.columns.tile`"),
    (("analyses", "columns", "region"), "all", "`analyses.columns.region`"),
    (("analyses", "columns", "stride"), 0, "`analyses.columns.stride` input should be greater "
                                           "than or equal to 1, got 0"),
    (("analyses", "rows", "window"), [3, 99], "`analyses.rows.window` [3, 99] is larger than"),
    (("analyses", "rows", "region"), [0, 0, 13, 12], "`analyses.rows.region` [0, 0, 13, 12] leaves"),
    (("checks",), [1, 2], "`checks`"),
    (("dtype",), "float16", "`dtype`"),
    (("probing", "columns", "period"), None, "`probing.columns` method compressed needs a "
                                              "`period` and a `block`"),
])
def test_attributes_follow_one_schema_on_both_sides(ref, tmp_path, path, value, text):
    """Item 12: attribute types confused (tracebacks in sitegen and info before): one schema,
    checked at open by precompute and by sitegen's (torch-free) reader."""
    _, store = _copy(ref, tmp_path)
    zj = store / "zarr.json"
    meta = json.loads(zj.read_text())
    if path[0] == "probing":
        meta["attributes"]["probing"] = {"columns": {"method": "compressed", "block": 2}}
    _set(meta["attributes"], path, value)
    zj.write_text(json.dumps(meta))
    _refused_everywhere(store, tmp_path, text)


def test_display_input_with_a_string_dtype(tmp_path):
    store = make_store(tmp_path / "s.zarr", name="s", seed=1).path
    zj, meta = _meta(store, "display/input")
    meta["data_type"] = "string"
    meta["fill_value"] = ""
    meta["codecs"] = [{"name": "vlen-utf8"}]
    zj.write_text(json.dumps(meta))
    r = _sitegen(store, "-o", tmp_path / "site", timeout=120)
    _one_line(r, "display/input")
    r = cli("info", store)
    assert r.exit_code == 2 and "display/input" in r.stderr and "Traceback" not in r.stderr


def test_sitegen_never_imports_torch(tmp_path):
    """sitegen reads stores through precompute.store_format (the shared schema) without torch."""
    store = make_store(tmp_path / "s.zarr", name="s", seed=1).path
    code = ("import sys\nfrom sitegen.build import Options, build\n"
            f"build([{str(store)!r}], {str(tmp_path / 'site')!r}, Options(progress=False), "
            "echo=lambda *a: None)\n"
            "assert (__import__('pathlib').Path(sys.argv[1]) / 'index.html').is_file()\n"
            "print('torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], capture_output=True,
                       text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


# --- 11: deep YAML; 13: the launcher's environment ------------------------------------------

@pytest.mark.parametrize("text", ["a: " + "[" * 100_000 + "]" * 100_000 + "\n",
                                  "- " * 100_000 + "x\n"], ids=["flow", "block"])
def test_deep_yaml_is_one_line_in_run_and_site_configs(tmp_path, text):
    """Item 11: a 100,000-deep YAML list (200 KB): RecursionError before, in both loaders."""
    cfg = tmp_path / "deep.yaml"
    cfg.write_text(text)
    r = cli("run", cfg)
    assert r.exit_code == 2 and "Traceback" not in r.output + r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nested deeper than 64 levels" in lines[0], r.stderr
    _one_line(_sitegen(cfg, cwd=tmp_path, timeout=120), "nested deeper than 64 levels")


@pytest.mark.parametrize("env, text", [
    ({"RANK": "x", "WORLD_SIZE": "2"}, "environment variable RANK='x': expected a whole number"),
    ({"RANK": "0", "WORLD_SIZE": "two"}, "environment variable WORLD_SIZE='two'"),
    ({"RANK": "5", "WORLD_SIZE": "2"}, "RANK=5 and WORLD_SIZE=2: expected 0 ≤ RANK < WORLD_SIZE"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, "environment variable RANK='-1'"),
    ({"RANK": "1"}, "RANK=1 and WORLD_SIZE=1"),
    ({"WORLD_SIZE": "0"}, "environment variable WORLD_SIZE='0': expected a whole number ≥ 1"),
    ({"LOCAL_RANK": "gpu0"}, "environment variable LOCAL_RANK='gpu0'"),
])
def test_launcher_environment_is_checked_like_shard(tmp_path, env, text):
    """Item 13: RANK=x was a traceback, RANK=5 WORLD_SIZE=2 "done (0 tiles)"."""
    make_image(tmp_path / "img.png", 6, 6)
    cfg = write_config(tmp_path / "c.yaml", name="t", model={"arch": "bicubic", "scale": 2},
                       image="img.png", device="cuda" if "LOCAL_RANK" in env else "cpu",
                       analyses={"residual": True, "columns": False, "rows": False},
                       output=str(tmp_path / "runs"))
    if "LOCAL_RANK" in env:  # read only for a CUDA device: checked directly
        from precompute.config import UserError
        from precompute.inputs import resolve_device

        old = os.environ.get("LOCAL_RANK")
        os.environ["LOCAL_RANK"] = env["LOCAL_RANK"]
        try:
            with pytest.raises(UserError, match=re.escape(text)):
                resolve_device("cuda")
        finally:
            os.environ.pop("LOCAL_RANK") if old is None else os.environ.__setitem__("LOCAL_RANK", old)
        return
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    r = _precompute("run", "-q", cfg, env=dict(clean, PYTHONPATH=str(REPO), **env), timeout=300)
    _one_line(r, text)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.zarr"))


# --- 14: malformed permalinks ------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.parametrize("page, ready, hash", [
    ("explorer", "window.__linearscope && window.__linearscope.ready", "#b=%E0%A4%A"),
    ("explorer", "window.__linearscope && window.__linearscope.ready", "#d=in&y=%&x=1"),
    ("svd", "window.__linearscope.svd && window.__linearscope.svd.ready", "#i=%"),
    ("svd", "window.__linearscope.svd && window.__linearscope.svd.ready", "#i=2&cm=%E0%A4%A"),
])
def test_malformed_permalink_opens_the_default_state(browser, tmp_path, page, ready, hash):
    """Item 14: decodeURIComponent's URIError stopped the page initialising; a bad link now
    opens the page as the link without a fragment does, with no page error."""
    from browser import watched_page
    from svd_site_fixtures import add_svd_to_fixture

    fx = make_store(tmp_path / "s" / "r.zarr", name="r", seed=1)
    add_svd_to_fixture(fx, 3)
    build([tmp_path / "s"], tmp_path / "site", Options(progress=False), echo=lambda *a: None)
    html = tmp_path / "site" / page / "r.html"
    state = ("window.__linearscope.state" if page == "explorer"
             else "window.__linearscope.svd.state")
    states = []
    for fragment in ("", hash):
        ctx, pg, problems = watched_page(browser)
        pg.goto(html.as_uri() + fragment)
        pg.wait_for_function(ready, timeout=20000)
        states.append(pg.evaluate(f"JSON.stringify({state})"))
        ctx.close()
        assert not problems, problems
    assert states[0] == states[1] and states[0] not in ("null", "undefined", None)


# --- 8: a received store naming a FIFO ---------------------------------------------------------

def test_verify_refuses_a_fifo_image_without_blocking(tmp_path):
    """Item 8: a store whose image path is a FIFO made `verify` block forever (no --trust-code
    needed: a zoo model). The same regular-file check as `run`, in a subprocess with a timeout."""
    make_image(tmp_path / "img.png", 6, 6)
    cfg = write_config(tmp_path / "c.yaml", name="t", model={"arch": "bicubic", "scale": 2},
                       image="img.png", dtype="float64",
                       analyses={"residual": True, "columns": {"window": 3, "tile": 2},
                                 "rows": False}, output=str(tmp_path / "runs"))
    assert cli("run", "-q", cfg).exit_code == 0
    store = tmp_path / "runs" / "t.zarr"
    (tmp_path / "img.png").unlink()
    os.mkfifo(tmp_path / "img.png")  # the path the store recorded
    r = _precompute("verify", store, timeout=120)
    _one_line(r, f"image {tmp_path / 'img.png'} is a FIFO, not a regular file")


# --- 15: EXIF orientation ----------------------------------------------------------------------

def test_exif_orientation_is_applied_and_recorded(tmp_path):
    """Item 15: a phone JPEG stored sideways with orientation 6 is computed upright (as every
    viewer shows it), the orientation recorded in attrs.image; the crop is in upright pixels.
    Lossless PNG (Pillow writes EXIF into PNGs) so x0 can be compared exactly."""
    from PIL import Image

    rng = np.random.default_rng(5)
    upright = (rng.random((6, 10, 3)) * 255).astype(np.uint8)  # 6 rows × 10 columns, as shown
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # 10×6: as a sideways camera stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)
    Image.fromarray(upright).save(tmp_path / "plain.png")
    runs = {}
    for name in ("phone", "plain"):
        cfg = write_config(tmp_path / f"{name}.yaml", name=name, image=f"{name}.png",
                           model={"arch": "bicubic", "scale": 2}, dtype="float64",
                           crop=[1, 2, 4, 6],
                           analyses={"residual": True, "columns": False, "rows": False},
                           output=str(tmp_path / "runs"))
        r = cli("run", "-q", cfg)
        assert r.exit_code == 0, r.stderr
        runs[name] = zarr.open_group(str(tmp_path / "runs" / f"{name}.zarr"), mode="r")
    x_phone, x_plain = runs["phone"]["input"][...], runs["plain"]["input"][...]
    assert x_phone.shape == (3, 4, 6)
    np.testing.assert_array_equal(x_phone, x_plain)
    np.testing.assert_array_equal(x_phone, (upright[1:5, 2:8].transpose(2, 0, 1) / np.float32(255)))
    assert runs["phone"].attrs["image"]["orientation"] == 6
    assert runs["plain"].attrs["image"]["orientation"] == 1
    r = cli("verify", tmp_path / "runs" / "phone.zarr")
    assert r.exit_code == 0 and "input x0: max |rebuilt − stored| = 0" in r.output, r.output


# --- 9: memory ---------------------------------------------------------------------------------

def test_memory_check_covers_the_identity_checks(monkeypatch):
    """Item 9: a residual-only run still runs the identity checks. Every run checks F·x0 + r =
    f(x0) on the whole image (f(x0), r, the reference and a pass of x0), refused before the
    first forward; a gate on the whole image (columns and rows, forward and backward) is
    refused before it runs, both with the numbers."""
    import torch

    from precompute.config import UserError
    from precompute.memory import GATE_PROBES, Estimate, check, check_gate

    e = Estimate(peak=100 << 20, total=300 << 20, output=50 << 20)
    whole = 3 * e.output + e.columns_pass(1)
    assert e.whole_checks() == whole == (150 + 400 + 300) << 20
    gate = 3 * e.output + max(e.columns_pass(GATE_PROBES) + 2 * e.output,
                              GATE_PROBES * e.output + e.rows_pass(1))
    assert e.gate() == gate == (150 + 800 + 300 + 100) << 20
    cpu = torch.device("cpu")
    monkeypatch.setenv("LINEARSCOPE_MEMORY_BYTES", str(whole - 1))
    with pytest.raises(UserError, match=r"about 891\.3 MB for the identity checks .* only 891\.3 MB"):
        check(e, what="m on x0", device=cpu, rows=False, columns=False, batch="auto")
    monkeypatch.setenv("LINEARSCOPE_MEMORY_BYTES", str(whole))
    check(e, what="m on x0", device=cpu, rows=False, columns=False, batch="auto")  # fits
    monkeypatch.setenv("LINEARSCOPE_MEMORY_BYTES", str(gate - 1))
    with pytest.raises(UserError, match=r"about 1\.4 GB .* on the whole image\), but only 1\.4 GB"):
        check_gate(e, what="m on x0", device=cpu)
    monkeypatch.setenv("LINEARSCOPE_MEMORY_BYTES", str(gate))
    check_gate(e, what="m on x0", device=cpu)  # fits


@pytest.mark.parametrize("rows,columns", [(True, False), (False, True), (True, True)])
def test_suggested_batch_is_the_largest_that_fits(monkeypatch, rows, columns):
    """The `batch` an explicit-batch refusal suggests fits (by the pass formulas the check
    uses) and one more does not."""
    import re

    import torch

    from precompute.config import UserError
    from precompute.memory import Estimate, check

    e = Estimate(peak=3 << 20, total=7 << 20, output=1 << 20)
    free = 400 << 20
    monkeypatch.setenv("LINEARSCOPE_MEMORY_BYTES", str(free))

    def need(k):
        return max(e.rows_pass(k) if rows else 0, e.columns_pass(k) if columns else 0, e.peak)

    with pytest.raises(UserError, match="at most") as err:
        check(e, what="m", device=torch.device("cpu"), rows=rows, columns=columns, batch=10**4)
    fits = int(re.search(r"at most (\d+)", str(err.value)).group(1))
    assert need(fits) <= free < need(fits + 1)


_PEAK = """
import sys
def kb(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) << 10
import precompute.run, precompute.cli
base = kb("VmRSS")
sys.argv = ["precompute", "run", "-q", sys.argv[1]]
try:
    precompute.cli.main()
except SystemExit as e:
    assert not e.code, e.code
print(base, kb("VmHWM"))
"""


@pytest.mark.slow
def test_memory_estimate_covers_what_the_run_allocates(tmp_path):
    """Item 9 (the issue's case, at a scale that fits a test): bicubic ×300 on a 12×12 crop,
    residual only, where output-sized tensors are all the memory. The process's peak above its
    start is within the estimate that `memory.check` compares with free memory — and not far
    below it (an estimate too large would refuse runs that fit)."""
    import subprocess

    import torch

    from precompute.memory import estimate
    from precompute.models import load_model

    make_image(tmp_path / "img.png", 12, 12)
    cfg = write_config(tmp_path / "c.yaml", name="big", model={"arch": "bicubic", "scale": 300},
                       image="img.png", output=str(tmp_path / "runs"),
                       analyses={"residual": True, "columns": False, "rows": False})
    r = subprocess.run([sys.executable, "-c", _PEAK, str(cfg)], capture_output=True, text=True,
                       env=_env(), timeout=900)
    assert r.returncode == 0, r.stderr
    base, peak = map(int, r.stdout.split()[-2:])
    e = estimate(load_model("bicubic", scale=300).module, torch.rand(1, 3, 12, 12))
    assert e.output == 3 * 3600 * 3600 * 4
    assert peak - base <= max(e.gate(), e.peak), (peak - base, e.gate())
    assert peak - base >= 0.6 * e.gate(), (peak - base, e.gate())


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                 "memory: you tried to allocate 17280000000 bytes. Error code 12"),
    MemoryError(),
])
def test_any_allocation_failure_is_one_line(tmp_path, monkeypatch, error):
    """Item 9: an allocation failing past the estimate was a traceback."""
    import precompute.run as runner

    def fail(*a, **k):
        raise error

    monkeypatch.setattr(runner, "run", fail)
    make_image(tmp_path / "img.png", 6, 6)
    cfg = write_config(tmp_path / "c.yaml", name="t", model={"arch": "bicubic", "scale": 2},
                       image="img.png", output=str(tmp_path / "runs"))
    r = cli("run", cfg)
    assert r.exit_code == 2 and "Traceback" not in r.output + r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: out of memory ("), r.stderr
    assert "lower `batch`" in lines[0]
    if isinstance(error, RuntimeError):
        assert "17280000000 bytes" in lines[0]


def test_other_runtime_errors_are_not_called_memory(tmp_path, monkeypatch):
    import precompute.run as runner

    monkeypatch.setattr(runner, "run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    make_image(tmp_path / "img.png", 6, 6)
    cfg = write_config(tmp_path / "c.yaml", name="t", model={"arch": "bicubic", "scale": 2},
                       image="img.png", output=str(tmp_path / "runs"))
    r = cli("run", cfg)
    assert r.exit_code != 0 and "out of memory" not in (r.stderr or "")


@pytest.mark.parametrize("key, value, text", [
    ("count", "2", "`count`"), ("terms", "input", "`terms`"), ("model", "m", "`model`"),
    ("residual_share_mean", [0.1], "`residual_share_mean`"),
])
def test_summary_attributes_follow_the_schema_on_both_sides(tmp_path, key, value, text):
    """Item 12 for dataset summaries: `info` and sitegen check the same schema."""
    make_store(tmp_path / "s" / "img.zarr", name="img", seed=1)
    path = tmp_path / "s" / "d.summary.zarr"
    _summary(path, "d", 0.25, ["img.zarr"])
    g = zarr.open_group(str(path), mode="r+")
    g.attrs.put(dict(g.attrs) | {key: value})
    r = cli("info", path)
    assert r.exit_code == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], r.stderr
    _one_line(_sitegen(tmp_path / "s", "-o", tmp_path / "site", timeout=120), text)


def test_fifo_inside_a_store_is_refused_not_read(tmp_path):
    """Links' class: a FIFO where an origin chunk belongs would block zarr's read forever."""
    store = make_store(tmp_path / "s.zarr", name="s", seed=1).path
    f = store / "columns_origin/c/0/0/0"
    f.unlink()
    os.mkfifo(f)
    _one_line(_sitegen(store, "-o", tmp_path / "site", timeout=60),
              "columns_origin/c/0/0/0 is not a regular file (a FIFO, socket or device)")
