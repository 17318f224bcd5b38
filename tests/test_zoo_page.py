"""Which dataset summaries the architecture comparison page puts together (sitegen/zoo_page.py):
those over the same images, found by the images' sha256 recorded in the summary, or, for a
summary written before it recorded them, by the run stores of the build."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from sitegen.zoo_page import groups


def _summary(name: str, images: list[tuple[str, str | None]]):
    """A stand-in for sitegen.reader.Summary: a name, a path and the `images` attribute."""
    return SimpleNamespace(name=name, path=Path(f"/runs/{name}.summary.zarr"), attrs={
        "images": [{"path": f"/img/{store}.png", "store": f"{store}.zarr",
                    **({"sha256": sha} if sha else {})} for store, sha in images]})


def _run(store: str, sha: str) -> dict:
    return {"store": SimpleNamespace(path=Path(f"/runs/{store}.zarr")), "sha": sha}


def test_summaries_over_the_same_images_form_one_group():
    a = _summary("a", [("a-1", "s1"), ("a-2", "s2")])
    b = _summary("b", [("b-2", "s2"), ("b-1", "s1")])          # other order: same images
    old = _summary("old", [("old-1", None), ("old-2", None)])  # no sha256: from the runs
    other = _summary("other", [("o-1", "s1"), ("o-3", "s3")])  # other images
    alone = _summary("alone", [("x-1", "s1")])
    unknown = _summary("unknown", [("u-1", None), ("u-2", None)])  # runs not in the build
    runs = [_run("old-1", "s1"), _run("old-2", "s2")]
    got = groups([other, b, unknown, old, alone, a], runs)
    assert [[s.name for s in g] for _, g in got] == [["a", "b", "old"]]
    # the id depends on the images only: the same with `old` alone beside `a`, another for
    # `other` beside a summary over its images
    other2 = _summary("other2", [("p-3", "s3"), ("p-1", "s1")])
    ((key, _),) = got
    assert groups([old, a], runs)[0][0] == key != groups([other, other2], [])[0][0]
    # a multiset: the same image twice is not the same dataset as it once
    twice = _summary("twice", [("t-1", "s1"), ("t-2", "s1"), ("t-3", "s2")])
    assert groups([a, twice], []) == []
