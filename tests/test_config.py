"""Config validation: every bad config gives one clear message (what was expected, closest key)."""

from __future__ import annotations

import pytest

from precompute.config import UserError, load_config
from sweep_helpers import make_image, write_config

BASE = {"name": "t", "model": {"arch": "bicubic", "scale": 2}, "image": "img.png"}


@pytest.fixture
def cfgdir(tmp_path):
    make_image(tmp_path / "img.png", 4, 4)
    return tmp_path


def _err(cfgdir, **changes) -> str:
    cfg = {**BASE, **changes}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    p = write_config(cfgdir / "c.yaml", **cfg)
    with pytest.raises(UserError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("changes,expected", [
    ({"analyses": {"colums": {"window": 4}}}, "unknown key `colums` in `analyses`; did you mean `columns`?"),
    ({"dtyp": "float32"}, "unknown key `dtyp`; did you mean `dtype`?"),
    ({"model": {"arch": "bicubic", "scal": 2}}, "unknown key `scal` in `model`; did you mean `scale`?"),
    ({"pixels": {"regoin": [0, 0, 2, 2]}}, "did you mean `region`?"),
    ({"dtype": "float16"}, "`dtype`: expected 'float32' or 'float64', got 'float16'"),
    ({"interpreter": "linear"}, "`interpreter`: expected 'freeze' or 'taylor', got 'linear'"),
    ({"model": {"arch": "bicubic", "scale": "two"}}, "`model.scale`: expected an integer, got 'two'"),
    ({"analyses": {"columns": {"window": 0}}}, "`analyses.columns.window`: expected a window side in pixels (an integer ≥ 1) or 'full', got 0"),
    ({"analyses": {"rows": {"window": "half"}}}, "`analyses.rows.window`: expected a window side"),
    ({"batch": 0}, "`batch`: expected a number of probes per pass (an integer ≥ 1) or 'auto', got 0"),
    ({"device": "gpu"}, "`device`: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ({"crop": [0, 0, 4]}, "`crop`: expected a crop as [top, left, height, width]"),
    ({"pixels": {"stride": 0}}, "`pixels.stride`: expected greater than or equal to 1, got 0"),
    ({"name": None}, "missing key `name`"),
    ({"name": "a/b"}, "`name`: expected a file-name-safe name"),
    ({"images": ["img.png"]}, "give exactly one of `image: FILE` or `images: [FILE, ...]`"),
    ({"image": "nope.png"}, "image not found:"),
    ({"model": {"arch": "edsr", "scale": 4, "checkpoint": "~/nowhere/edsr.pt"}}, "checkpoint not found:"),
    ({"model": {"arch": "python:missing.py:build"}}, "model file not found:"),
    ({"model": {"arch": "python:onlyone"}}, "expected python:FILE.py:FUNC or python:pkg.mod:FUNC"),
])
def test_bad_config_messages(cfgdir, changes, expected):
    assert expected in _err(cfgdir, **changes)


def test_not_yaml_and_not_mapping(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\nmodel: {arch: bicubic\n")
    with pytest.raises(UserError, match=r"not valid YAML \(line 3"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("- just\n- a list\n")
    with pytest.raises(UserError, match="expected a mapping"):
        load_config(tmp_path / "b.yaml")
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_paths_relative_to_config_and_output_to_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "cfgs"
    sub.mkdir()
    make_image(sub / "img.png", 4, 4)
    (sub / "w.pt").write_bytes(b"x")
    p = write_config(sub / "c.yaml", name="t", model={"arch": "edsr", "scale": 2, "checkpoint": "w.pt"},
                     images=["img.png"], output="out")
    monkeypatch.chdir(tmp_path)
    r = load_config(p)
    assert r.images == [sub / "img.png"]
    assert r.checkpoint == sub / "w.pt"
    assert r.output_dir == tmp_path / "out"
    assert r.store_path(r.images[0]) == tmp_path / "out" / "t.zarr"
    d = r.as_dict(r.images[0])
    assert d["image"] == str(sub / "img.png") and d["model"]["checkpoint"] == str(sub / "w.pt")
    # defaults
    assert d["analyses"]["columns"] == "auto" and d["batch"] == "auto"
    d = r.as_dict(r.images[0], vector=False)  # an image model: columns and rows by default
    assert d["analyses"]["columns"]["window"] == "full" and d["analyses"]["rows"]["window"] == "full"
    assert r.as_dict(r.images[0], vector=True)["analyses"]["columns"] is None
    assert d["interpreter"] == "freeze" and d["dtype"] == "float32"


def test_several_images_name_their_stores(tmp_path):
    make_image(tmp_path / "a.png", 4, 4)
    make_image(tmp_path / "b.png", 4, 4)
    p = write_config(tmp_path / "c.yaml", name="run", model={"arch": "bicubic", "scale": 2},
                     images=["a.png", "b.png"], output=str(tmp_path / "o"))
    r = load_config(p)
    assert [r.store_path(i).name for i in r.images] == ["run-a.zarr", "run-b.zarr"]
    # `true` means the defaults, `false` means not computed
    p = write_config(tmp_path / "d.yaml", name="run", model={"arch": "bicubic", "scale": 2},
                     image="a.png", analyses={"columns": True, "rows": False})
    a = load_config(p).config.analyses
    assert a.columns is not None and a.columns.window == "full" and a.rows is None
