"""The index laid out like the paper's supplementary material (issue 19, item 3): sections
Super-resolution, Image-to-image and Classification with thumbnails of their runs and pages and
the paper's finding, runs sorted by name, comparison groups only when they compare something,
and the full run table below. Checked in the real browser (Chromium, file://).

The section of each fixture run is known by construction: scale 2 (an upscaler), scale 1 (the
same size: image-to-image, as CycleGAN's generators) and a vector model (a classifier).
"""

from __future__ import annotations

import pytest

from site_fixtures import make_store, make_vector_store
from svd_site_fixtures import add_svd_to_fixture
from sitegen.build import Options, build
from test_classify_site import _classify

SECTIONS = ["super-resolution", "image-to-image", "classification"]
TITLES = ["Super-resolution", "Image-to-image", "Classification"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("index")
    st = root / "stores"
    # file order (sha256 of the image, then name) differs from name order on purpose
    make_store(st / "sr-10.zarr", name="sr-10", model_id="upA", seed=1)
    b = make_store(st / "sr-2.zarr", name="sr-2", model_id="upB", seed=4)
    add_svd_to_fixture(b, 3)
    make_store(st / "i2i-a.zarr", name="i2i-a", model_id="gen", seed=5, scale=1,
               image_sha="0" * 64)
    clf = make_vector_store(st / "clf-b.zarr", name="clf-b", image_sha="4" * 64)
    _classify(clf, adversarial=False)
    build([st], root / "site", Options(progress=False))
    return root / "site"


def test_sections_cards_and_groups(site):
    html = (site / "index.html").read_text()
    # sections in the paper's order, then the full table, then the comparison groups
    at = [html.index(f'id="{k}"') for k in SECTIONS] + [html.index('id="runs"'),
                                                      html.index('id="groups"')]
    assert at == sorted(at)
    assert "nothing to compare)" not in html  # no line per image that compares nothing


@pytest.mark.browser
def test_index_sections_in_the_browser(site, browser):
    from test_site_browser import Page, url

    p = Page(browser, url(site, "index.html"))
    pg = p.page
    assert pg.locator("section.story").evaluate_all("s => s.map(e => e.id)") == SECTIONS
    assert pg.locator("section.story h2").all_inner_texts() == TITLES
    for key in SECTIONS:  # one sentence of what the paper found, with its figures
        finding = pg.locator(f"#{key} .finding").inner_text()
        assert finding.startswith(("The paper finds", "In image-to-image", "For classifiers"))
        assert "Figure" in finding and finding.count(". ") == 0
    cards = {k: pg.locator(f"#{k} .card").evaluate_all("c => c.map(e => e.dataset.run)")
             for k in SECTIONS}
    assert cards == {"super-resolution": ["sr-2", "sr-10"], "image-to-image": ["i2i-a"],
                     "classification": ["clf-b"]}
    # thumbnails of each run's pages: the explorer always, the SVD and classifier pages if any
    links = {r: pg.locator(f'.card[data-run="{r}"] a.page').evaluate_all(
        "a => a.map(e => e.getAttribute('href'))") for r in ("sr-2", "sr-10", "i2i-a", "clf-b")}
    assert links == {"sr-2": ["explorer/sr-2.html", "svd/sr-2.html"],
                     "sr-10": ["explorer/sr-10.html"], "i2i-a": ["explorer/i2i-a.html"],
                     "clf-b": ["explorer/clf-b.html", "classify/clf-b.html"]}
    for img in pg.locator(".card img").all():
        assert img.evaluate("i => i.complete && i.naturalWidth") > 0
    # comparison groups only where two runs share an image: the two upscalers
    assert pg.locator("#super-resolution a.compare").count() == 1
    assert pg.locator("#image-to-image a.compare, #classification a.compare").count() == 0
    assert pg.locator("ul.groups li").count() == 1
    # the full table stays below, every run, sorted by name
    names = pg.locator("table.runs tbody th").all_inner_texts()
    assert names == ["clf-b", "i2i-a", "sr-2", "sr-10"]
    # a page thumbnail opens its page
    pg.locator('.card[data-run="sr-2"] a.svd').click()
    pg.wait_for_function("window.__linearscope.svd && window.__linearscope.svd.ready")
    assert pg.url.split("#")[0].endswith("svd/sr-2.html")
    # the page goes on loading its triplets' data after `ready`; leaving before it is done
    # aborts those loads (a failed load the page would not otherwise have)
    pg.wait_for_load_state("networkidle")
    pg.go_back()
    pg.wait_for_function("window.__linearscope && window.__linearscope.ready")
    pg.locator('.card[data-run="clf-b"] a.classify').click()
    pg.wait_for_function("window.__linearscope && window.__linearscope.ready")
    assert pg.url.endswith("classify/clf-b.html")
    p.close()
