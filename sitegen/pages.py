"""The registry of page kinds, in the order the build writes them.

Adding a page: one module with a :class:`sitegen.page.Page` subclass, and one line here
(``register(MyPage)`` puts it before the index, which links to everything written before it).
"""

from __future__ import annotations

from sitegen.classify_page import ClassifyPage
from sitegen.explorer_page import ComparePage, ExplorerPage
from sitegen.index_page import IndexPage
from sitegen.page import Page
from sitegen.svd_page import SvdPage
from sitegen.zoo_page import ZooPage

#: Page kinds in write order. Classifier and SVD pages first: they annotate the runs
#: (``run["classify"]``, ``run["svd"]``) that the explorer, Compare and the index link to.
PAGES: list[type[Page]] = [ClassifyPage, ZooPage, SvdPage, ExplorerPage, ComparePage, IndexPage]


def register(page: type[Page], before: str = "index") -> None:
    """Add a page kind before the one named ``before`` (the index by default)."""
    if page in PAGES:
        return
    at = next((k for k, p in enumerate(PAGES) if p.name == before), len(PAGES))
    PAGES.insert(at, page)


def pages() -> list[Page]:
    """Fresh instances of every registered page kind, in write order (one set per build)."""
    return [p() for p in PAGES]
