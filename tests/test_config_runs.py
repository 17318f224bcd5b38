"""A config that names several runs (`runs:`, docs/RUN.md): merged, validated and checked before
any work; a one-run config stays as it was."""

from __future__ import annotations

import pytest

from precompute.config import UserError, load_config, load_configs
from sweep_helpers import REPO, cli, make_image, write_config

SHARED = {"image": "img.png", "interpreter": "freeze", "dtype": "float64"}


@pytest.fixture
def cfgdir(tmp_path):
    make_image(tmp_path / "img.png", 4, 4)
    return tmp_path


def _runs(cfgdir, runs, **shared):
    return write_config(cfgdir / "c.yaml", **{**SHARED, **shared}, runs=runs)


def test_each_run_is_merged_over_the_top_level_keys(cfgdir):
    p = _runs(cfgdir, [{"name": "a", "model": {"arch": "bicubic", "scale": 2}},
                       {"name": "b", "model": {"arch": "bicubic", "scale": 3}, "dtype": "float32"}])
    a, b = load_configs(p)
    assert (a.config.name, a.config.model.scale, a.config.dtype) == ("a", 2, "float64")
    assert (b.config.name, b.config.model.scale, b.config.dtype) == ("b", 3, "float32")
    assert a.images == b.images == [(cfgdir / "img.png").resolve()]
    assert a.store_path(a.images[0]).name == "a.zarr"
    # a key given in a run replaces the top-level one whole (no deep merge)
    p = _runs(cfgdir, [{"name": "a", "model": {"arch": "bicubic", "scale": 2},
                        "analyses": {"rows": False}}],
              analyses={"columns": False, "residual": False})
    (a,) = load_configs(p)
    assert a.config.analyses.residual is True and a.config.analyses.rows is None


def test_one_run_configs_are_unchanged(cfgdir):
    p = write_config(cfgdir / "one.yaml", name="t", model={"arch": "bicubic", "scale": 2},
                     **SHARED)
    (res,) = load_configs(p)
    assert res == load_config(p)
    (digits,) = load_configs(REPO / "examples" / "digits.yaml")
    assert digits == load_config(REPO / "examples" / "digits.yaml")
    zoo = load_configs(REPO / "examples" / "digits-zoo.yaml")
    assert [r.config.name for r in zoo] == ["digits", "digits-vgg", "digits-vgg-bn",
                                            "digits-resnet", "digits-densenet"]
    # the zoo's first run is examples/digits.yaml's: same values, so the same stores
    assert zoo[0].as_dict(zoo[0].images[0]) == digits.as_dict(digits.images[0])
    with pytest.raises(UserError, match="names several runs"):
        load_config(REPO / "examples" / "digits-zoo.yaml")


@pytest.mark.parametrize("runs, shared, expected", [
    ([], {}, "`runs`: expected a non-empty list of mappings"),
    ("a", {}, "`runs`: expected a non-empty list of mappings"),
    ([{"name": "a", "model": {"arch": "bicubic", "scale": 2}}, 3], {},
     "`runs`: expected a non-empty list of mappings"),
    ([{"name": "a", "model": {"arch": "bicubic", "scale": 2}},
      {"name": "a", "model": {"arch": "bicubic", "scale": 3}}], {},
     "`runs.1.name`: 'a' is also the name of `runs.0`"),
    ([{"name": "a", "model": {"arch": "bicubic", "scale": 2}},
      {"name": "b", "model": {"arch": "bicubic", "scael": 3}}], {},
     "(runs.1): unknown key `scael` in `model`; did you mean `scale`?"),
    ([{"name": "a", "model": {"arch": "bicubic", "scale": 2}, "runs": []}], {},
     "`runs.0`: a run cannot hold `runs` itself"),
    ([{"model": {"arch": "bicubic", "scale": 2}}], {}, "(runs.0): missing key `name`"),
])
def test_bad_runs_are_one_line(cfgdir, runs, shared, expected):
    with pytest.raises(UserError) as e:
        load_configs(_runs(cfgdir, runs, **shared))
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_runs_whose_stores_collide_are_refused(cfgdir):
    make_image(cfgdir / "b-c.png", 4, 4)
    make_image(cfgdir / "c.png", 4, 4)
    p = write_config(cfgdir / "c.yaml", model={"arch": "bicubic", "scale": 2},
                     runs=[{"name": "a", "images": ["b-c.png", "c.png"]},
                           {"name": "a-b", "images": ["c.png", "img.png"]}])
    with pytest.raises(UserError, match=r"runs 0 and 1 would both write .*a-b-c\.zarr"):
        load_configs(p)


def test_run_computes_every_run_and_checks_them_all_first(cfgdir):
    out = cfgdir / "runs"
    good = {"name": "a", "model": {"arch": "bicubic", "scale": 2}}
    # the second run's image cannot be read: nothing is computed, not even the first run
    (cfgdir / "bad.png").write_bytes(b"not a png")
    for bad in ({"image": "bad.png"}, {"image": None, "images": ["img.png", "bad.png"]}):
        p = _runs(cfgdir, [good, {"name": "b", "model": {"arch": "bicubic", "scale": 2}, **bad}],
                  output=str(out))
        r = cli("run", p, "-q")
        assert r.exit_code == 2 and "bad.png" in r.output, r.output
        assert not (out / "a.zarr").exists()
    p = _runs(cfgdir, [good, {"name": "b", "model": {"arch": "bicubic", "scale": 3}}],
              output=str(out))
    r = cli("run", p, "-q")
    assert r.exit_code == 0, r.output
    assert (out / "a.zarr").is_dir() and (out / "b.zarr").is_dir()
    again = cli("run", p, "-q")
    assert again.output.count("already done") == 2, again.output
    audit = cli("audit", p)
    assert audit.exit_code == 0 and audit.output.count("intercepted calls") == 2, audit.output
