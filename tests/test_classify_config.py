"""`images:` as a dataset (a folder or a glob, alone or in a list) and its store names."""

from __future__ import annotations

import re

import pytest

from precompute.config import UserError, load_config
from sweep_helpers import make_image, write_config


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for name in ("b.png", "a.png", "c.jpg"):
        make_image(d / name, 4, 4)
    (d / "README.md").write_text("not an image")
    (d / "sub").mkdir()
    make_image(d / "sub" / "z.png", 4, 4)  # folders are not searched recursively
    return d


def _load(tmp_path, images):
    return load_config(write_config(tmp_path / "c.yaml", name="n", model={"arch": "digits"},
                                    images=images, output=str(tmp_path / "out")))


def test_a_folder_is_its_image_files_sorted(tmp_path, folder):
    res = _load(tmp_path, "imgs")
    assert [p.name for p in res.images] == ["a.png", "b.png", "c.jpg"]
    assert res.dataset
    assert res.store_path(res.images[0]).name == "n-a.zarr"


def test_a_glob_relative_to_the_config(tmp_path, folder):
    res = _load(tmp_path, "imgs/*.png")
    assert [p.name for p in res.images] == ["a.png", "b.png"]
    assert res.dataset


def test_a_dataset_of_one_image_still_names_stores_per_image(tmp_path, folder):
    res = _load(tmp_path, "imgs/c.*")
    assert [p.name for p in res.images] == ["c.jpg"]
    assert res.store_path(res.images[0]).name == "n-c.zarr"


def test_lists_mix_files_folders_and_patterns(tmp_path, folder):
    res = _load(tmp_path, ["imgs/sub/z.png", "imgs/*.jpg"])
    assert [p.name for p in res.images] == ["z.png", "c.jpg"]
    res = _load(tmp_path, ["imgs/sub/z.png"])  # a plain list of one file: as before
    assert not res.dataset and res.store_path(res.images[0]).name == "n.zarr"


@pytest.mark.parametrize("images, msg", [
    ("empty", "no image files"),
    ("imgs/*.gif", "no file matches the pattern 'imgs/*.gif'"),
    (["imgs/a.png", "imgs/*.png"], "distinct file names"),
    ("imgs/nothing.png", "image not found"),
])
def test_dataset_errors(tmp_path, folder, images, msg):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=re.escape(msg)):
        _load(tmp_path, images)


def test_image_key_takes_a_file_only(tmp_path, folder):
    cfg = write_config(tmp_path / "c.yaml", name="n", model={"arch": "digits"}, image="imgs")
    with pytest.raises(UserError, match="image not found"):
        load_config(cfg)
