"""The `precompute` CLI: user errors are one line with exit 2 and no traceback; dry run, info,
verify, resume refusals, the free-disk check and --shard."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

import precompute
from sweep_helpers import (REPO, TINY, assert_bitwise_equal, cli, cli_subprocess, make_image,
                           write_config)


def _cfg(tmp_path, name="t", image="img.png", **kw):
    if not (tmp_path / "img.png").exists():
        make_image(tmp_path / "img.png", 6, 6)
    cfg = {"name": name, "model": {"arch": "bicubic", "scale": 2}, "image": image,
           "analyses": {"residual": True, "columns": {"window": 4, "tile": 2},
                        "rows": {"window": 3, "tile": 4}},
           "dtype": "float64", "output": str(tmp_path / "runs")}
    cfg.update(kw)
    return write_config(tmp_path / f"{name}.yaml", **cfg)


def _user_error(result, text):
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert text in lines[0], lines[0]
    assert "Traceback" not in result.output + result.stderr


@pytest.mark.parametrize("kw,text", [
    ({"analyses": {"colums": True}}, "did you mean `columns`?"),
    ({"crop": [2, 2, 8, 8]}, "crop [2, 2, 8, 8] ([top, left, height, width]) does not fit"),
    ({"pixels": {"region": [4, 0, 4, 2]}}, "`pixels` region [4, 0, 4, 2] ([top, left, height, width]) leaves the input image of 6×6"),
    ({"model": {"arch": "nosuchnet", "scale": 2}}, "nosuchnet"),
    ({"model": {"arch": f"python:{TINY}:one_channel"}}, "expects 1-channel input, but img.png gave an input of shape (1, 3, 6, 6)"),
    ({"model": {"arch": f"python:{TINY}:big_kernel"}}, "cannot take this image (input shape (1, 3, 6, 6))"),
    ({"model": {"arch": f"python:{TINY}:multiple_of_4"}}, "multiples of 4"),
    ({"model": {"arch": f"python:{TINY}:classifier"}}, "vector model"),
    ({"model": {"arch": f"python:{TINY}:nan_net"}}, "NaN/Inf"),
])
def test_bad_runs_are_one_line_errors(tmp_path, kw, text):
    _user_error(cli("run", _cfg(tmp_path, **kw)), text)
    assert not (tmp_path / "runs" / "t.zarr" / "columns").exists()  # nothing stored


def test_real_process_prints_no_traceback(tmp_path):
    r = cli_subprocess("run", _cfg(tmp_path, dtype="float16"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"error: {tmp_path / 't.yaml'}: `dtype`: expected 'float32' or "
                                "'float64', got 'float16'")
    r = cli_subprocess("info", tmp_path / "nothing.zarr")
    assert r.returncode == 2 and r.stderr.startswith("error: no LinearScope store at")


def test_plan_bigger_than_free_disk_is_refused(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    monkeypatch.setenv("LINEARSCOPE_FREE_BYTES", "1000")
    r = cli("run", cfg)
    _user_error(r, "but only 1.0 KB is free at")
    assert "use smaller windows" in r.stderr
    assert not (tmp_path / "runs" / "t.zarr").exists()
    monkeypatch.setenv("LINEARSCOPE_FREE_BYTES", str(10**9))
    assert cli("run", "-q", cfg).exit_code == 0


def test_dry_run_info_verify_and_done(tmp_path):
    cfg = _cfg(tmp_path)
    r = cli("run", "--dry-run", cfg)
    assert r.exit_code == 0, r.stderr
    # bicubic ×2 reaches 4×4 input px: 4×4 colours × 3 channels carry the 108 columns
    assert ("columns: window 4×4, 9 of 9 tiles of 2×2 px to do, 108 filters: compressed probes, "
            "period 4×4 px") in r.stderr
    assert "48 forward probes" in r.stderr and "one impulse per probe: 108 column probes" in r.stderr
    assert "To write:" in r.stderr and "estimated compute time" in r.stderr
    assert not (tmp_path / "runs" / "t.zarr").exists()

    r = cli("run", cfg)
    assert r.exit_code == 0, r.stderr
    assert "creating" in r.stderr and "done (" in r.stdout
    store = tmp_path / "runs" / "t.zarr"

    r = cli("info", store)
    assert r.exit_code == 0
    assert "columns   window 4×4, tile 2" in r.stdout and ": done" in r.stdout
    assert "reconstruction_abs" in r.stdout

    r = cli("verify", "--samples", "3", store)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "columns: 3 pixels × 3 channels recomputed" in r.stdout and "verify: OK" in r.stdout

    # verify notices a corrupted value
    g = zarr.open_group(str(store), mode="r+")
    block = g["columns"][...]
    block[np.isfinite(block)] += 1e-3
    g["columns"][...] = block
    r = cli("verify", "--samples", "2", store)
    assert r.exit_code == 1 and "MISMATCH" in r.stdout

    r = cli("run", cfg)
    assert r.exit_code == 0 and "already done" in r.stdout


def test_value_changes_are_refused_unless_overwrite(tmp_path):
    assert cli("run", "-q", _cfg(tmp_path)).exit_code == 0
    wider = {"residual": True, "columns": {"window": 5, "tile": 2}, "rows": {"window": 3, "tile": 4}}
    _user_error(cli("run", _cfg(tmp_path, analyses=wider)), "was made with a different analyses")
    _user_error(cli("run", _cfg(tmp_path, interpreter="taylor")), "different interpreter")
    # batch and device may change
    assert cli("run", "-q", _cfg(tmp_path, batch=3, device="cpu")).exit_code == 0
    r = cli("run", "-q", "--overwrite", _cfg(tmp_path, analyses=wider))
    assert r.exit_code == 0, r.stderr
    st = precompute.open_store(tmp_path / "runs" / "t.zarr")
    assert st.layouts["columns"].window == (5, 5) and st.is_complete()


def test_newer_format_is_refused(tmp_path):
    assert cli("run", "-q", _cfg(tmp_path)).exit_code == 0
    store = tmp_path / "runs" / "t.zarr"
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["format_version"] = 99
    (store / "zarr.json").write_text(json.dumps(meta))
    _user_error(cli("info", store), "format_version 99, newer than this LinearScope reads (1)")
    with pytest.raises(precompute.store.StoreError, match="upgrade linearscope"):
        precompute.open_store(store)
    _user_error(cli("run", _cfg(tmp_path)), "format_version 99")


def test_shard_halves_combine_into_the_full_store(tmp_path):
    make_image(tmp_path / "img.png", 6, 6)
    common = dict(model={"arch": f"python:{TINY}:relu_same"}, dtype="float32", batch=4,
                  analyses={"residual": True, "columns": {"window": 3, "tile": 2},
                            "rows": {"window": 3, "tile": 2}})
    full = write_config(tmp_path / "full.yaml", name="s", image="img.png",
                        output=str(tmp_path / "full"), **common)
    half = write_config(tmp_path / "half.yaml", name="s", image="img.png",
                        output=str(tmp_path / "half"), **common)
    assert cli("run", "-q", full).exit_code == 0
    r = cli("run", "-q", "--shard", "1/2", half)
    assert r.exit_code == 0, r.stderr
    st = precompute.open_store(tmp_path / "half" / "s.zarr")
    done = {(t.ty, t.tx) for t in st.done_tiles("columns")}
    assert done == {(t.ty, t.tx) for i, t in enumerate(st.planned_tiles("columns")) if i % 2 == 1}
    assert not st.is_complete()
    r = cli("run", "-q", half, env={"RANK": "0", "WORLD_SIZE": "2"})  # torchrun's variables
    assert r.exit_code == 0, r.stderr
    assert precompute.open_store(tmp_path / "half" / "s.zarr").is_complete()
    assert_bitwise_equal(tmp_path / "full" / "s.zarr", tmp_path / "half" / "s.zarr")
    _user_error(cli("run", "--shard", "2/2", half), "--shard: expected 0 ≤ I < N")


def test_several_images_make_one_store_each(tmp_path):
    make_image(tmp_path / "a.png", 4, 4, seed=1)
    make_image(tmp_path / "b.png", 5, 3, seed=2)
    cfg = write_config(tmp_path / "m.yaml", name="m", model={"arch": "bicubic", "scale": 2},
                       images=["a.png", "b.png"], output=str(tmp_path / "runs"),
                       analyses={"columns": {"window": 3}, "rows": False})
    r = cli("run", "-q", cfg)
    assert r.exit_code == 0, r.stderr
    a = precompute.open_store(tmp_path / "runs" / "m-a.zarr")
    b = precompute.open_store(tmp_path / "runs" / "m-b.zarr")
    assert a.in_shape == (3, 4, 4) and b.in_shape == (3, 5, 3)
    assert a.is_complete() and b.is_complete() and "rows" not in b.layouts
    assert b.attrs["image"]["path"] == str(tmp_path / "b.png")


def test_foreign_data_at_the_store_path_is_never_deleted(tmp_path):
    cfg = _cfg(tmp_path)
    foreign = tmp_path / "runs" / "t.zarr"
    g = zarr.open_group(str(foreign), mode="w", attributes={"owner": "someone else"})
    g.create_array("data", shape=(2,), dtype="int8")
    _user_error(cli("run", "--overwrite", cfg), "is a Zarr group but not a LinearScope store")
    assert (foreign / "data" / "zarr.json").exists()
    (tmp_path / "runs" / "u.zarr").mkdir()
    (tmp_path / "runs" / "u.zarr" / "notes.txt").write_text("mine")
    _user_error(cli("run", _cfg(tmp_path, name="u")), "exists and is not a LinearScope store")
    assert (tmp_path / "runs" / "u.zarr" / "notes.txt").exists()


def test_unwritable_output_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    _user_error(cli("run", _cfg(tmp_path, output=str(tmp_path / "file" / "runs"))),
                "cannot write to the output directory")


def test_store_being_created_is_named_as_such(tmp_path):
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="w", attributes={"linearscope_creating": True})
    g.create_array("input", shape=(1,), dtype="float32")
    _user_error(cli("info", tmp_path / "c.zarr"), "is still being created")


def test_vector_model_without_columns_or_rows_runs(tmp_path):
    """Columns/rows default to off for a classifier: a config without them just works."""
    cfg = _cfg(tmp_path, model={"arch": f"python:{TINY}:classifier"}, analyses={"residual": True})
    r = cli("run", "-q", cfg)
    assert r.exit_code == 0, r.output + r.stderr
    g = zarr.open_group(str(tmp_path / "runs" / "t.zarr"), mode="r")
    assert g.attrs["config"]["analyses"]["columns"] is None and "columns" not in g
    assert g["residual"].shape == g["output"].shape and g["output"].ndim == 1


def test_several_configs_run_in_one_process_as_they_do_one_by_one(tmp_path):
    """`precompute run a.yaml b.yaml` (the README's first command): the stores equal those of
    one process per config, and every config is read before any work."""
    make_image(tmp_path / "img.png", 6, 6)
    image = str(tmp_path / "img.png")  # the same image path from both folders
    a = _cfg(tmp_path, name="a", image=image)
    b = _cfg(tmp_path, name="b", image=image, model={"arch": f"python:{TINY}:relu_same"})
    r = cli("run", "-q", a, b)
    assert r.exit_code == 0, r.output + r.stderr
    alone = tmp_path / "alone"
    alone.mkdir()
    for cfg in (a, b):
        text = cfg.read_text().replace(str(tmp_path / "runs"), str(alone / "runs"))
        (alone / cfg.name).write_text(text)
        assert cli("run", "-q", alone / cfg.name).exit_code == 0
    for name in ("a", "b"):
        assert_bitwise_equal(tmp_path / "runs" / f"{name}.zarr", alone / "runs" / f"{name}.zarr")


def test_several_configs_are_all_checked_before_any_work(tmp_path):
    good = _cfg(tmp_path, name="good")
    bad = _cfg(tmp_path, name="bad", dtype="float16")
    _user_error(cli("run", good, bad), "`dtype`: expected 'float32' or 'float64'")
    assert not (tmp_path / "runs" / "good.zarr").exists()
    same = _cfg(tmp_path, name="good", image="img.png", output=str(tmp_path / "runs"))
    other = tmp_path / "copy.yaml"
    other.write_text(same.read_text())
    _user_error(cli("run", same, other), "would both write")
    assert not (tmp_path / "runs" / "good.zarr").exists()


def test_two_configs_writing_one_dataset_summary_are_refused_before_any_work(tmp_path):
    """Different images, different stores, but one `<name>.summary.zarr`: the second summary
    would silently replace the first."""
    digits = sorted((REPO / "examples" / "images" / "digits").glob("*.png"))
    common = {"name": "d", "model": {"arch": "digits",
                                     "checkpoint": str(REPO / "examples" / "weights" / "digits.pt")},
              "analyses": {"residual": True, "classify": {"top_k": 2}},
              "output": str(tmp_path / "runs")}
    a = write_config(tmp_path / "a.yaml", images=[str(p) for p in digits[:2]], **common)
    b = write_config(tmp_path / "b.yaml", images=[str(p) for p in digits[2:4]], **common)
    _user_error(cli("run", a, b), "its summary")
    assert not (tmp_path / "runs").exists()
