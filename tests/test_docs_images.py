"""The screenshots the docs show exist, stay small, and cover each page of the site (issue 19:
"docs/ shows a screenshot of each new page")."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _images(md: Path) -> list[Path]:
    return [(md.parent / m).resolve() for m in re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)",
                                                          md.read_text())]


def test_every_shown_image_exists_and_is_small():
    shown = [p for md in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
             for p in _images(md)]
    assert shown
    for p in shown:
        assert p.is_file(), p
        assert p.stat().st_size < 300_000, (p, p.stat().st_size)


def test_site_md_shows_each_page():
    names = {p.name for p in _images(REPO / "docs" / "SITE.md")}
    # the index with its sections, the SVD page's gallery (SR and I2I), the toon explorer, the
    # architecture comparison page
    assert {"index.png", "svd-gallery.png", "toon-svd.png", "toon-explorer.png",
            "zoo.png"} <= names, names
