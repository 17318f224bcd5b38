"""The classifier pages in a real browser (Chromium via Playwright), opened from file://.

Stores come from `precompute run` on two shipped digits (analyses.classify with FGSM, as a
dataset); the site is built from them. Every number the pages show is compared with the store.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import zarr

from precompute.models.digits import SHIPPED_WEIGHTS
from sitegen.build import Options, build
from sweep_helpers import REPO, cli, write_config
from test_site_browser import Page, url

pytestmark = [pytest.mark.browser, pytest.mark.slow]
IMAGES = REPO / "examples" / "images" / "digits"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify-site")
    cfg = write_config(root / "d.yaml", name="dg",
                       model={"arch": "digits", "checkpoint": str(SHIPPED_WEIGHTS)},
                       images=str(IMAGES / "[89]-*.png"),
                       analyses={"classify": {"top_k": 3, "adversarial": {"fgsm_eps": 0.1}}},
                       output=str(root / "runs"))
    r = cli("run", cfg, "-q")
    assert r.exit_code == 0, r.output
    build([root / "runs"], root / "site", Options(progress=False))
    return root


def shown(text: str) -> float:
    text = text.strip()
    if text.endswith("%"):
        return float(text[:-1]) / 100
    return math.nan if text == "undefined" else float(text)


def close_pct(got: float, want: float) -> bool:
    """``got`` is the fraction ``want`` as the page prints it: a percentage with one decimal."""
    return abs(got - want) <= 0.0005 + 1e-12


def close(got: float, want: float, digits: int = 6) -> bool:
    """``got`` is ``want`` as the page prints it (``digits`` significant digits)."""
    if math.isnan(want):
        return math.isnan(got)
    return abs(got - want) <= 0.51 * 10 ** (math.floor(math.log10(abs(want) or 1)) - digits + 1)


def test_classifier_page_shows_the_store(site, browser):
    store = site / "runs" / "dg-8-0028.zarr"
    p = Page(browser, url(site / "site", "classify/dg-8-0028.html"))
    pg = p.page
    for key, group in (("clean", "classify"), ("adversarial", "classify/adversarial")):
        g = zarr.open_group(str(store / group), mode="r")
        sec = pg.locator(f'section.cpanel[data-panel="{key}"]')
        top = g["top"][...]
        rows = sec.locator("table.cscores tbody tr")
        assert rows.count() == len(top) == 3
        for i, k in enumerate(top):
            row = rows.nth(i)
            assert row.get_attribute("data-label") == str(k)
            assert row.locator(".lab").inner_text() == g.attrs["labels"][k]
            for cls, want in (("score", g["scores"][k]), ("input", g["input_term"][i]),
                              ("residual", g["residual"][i]), ("factor",
                                                               g["discussion_factor"][i])):
                assert close(shown(row.locator(f".{cls}").inner_text()), float(want)), cls
            assert close_pct(shown(row.locator(".share").inner_text()),
                             float(g["residual_share"][i]))
            assert int(row.locator(".votes").inner_text()) == g["vote_counts"][k]
        # the contribution bars carry the exact stored terms, input first, forward order
        terms = g["contributions"].attrs["terms"]
        bars = sec.locator('.chart[data-i="0"] g.bar')
        assert bars.count() == len(terms)
        for j, t in enumerate(terms):
            assert bars.nth(j).get_attribute("data-term") == t
            assert float(bars.nth(j).get_attribute("data-value")) == float(g["contributions"][0, j])
        bars.nth(2).hover()
        text = sec.locator(".readout").inner_text()
        assert text.startswith(f"{terms[2]}: ")
        assert float(text.rsplit("exact ", 1)[1]) == float(g["contributions"][0, 2])
        # decoded maps: channel sums of the stored rows and discussions (float16 display copy)
        data = pg.evaluate(f"window.__linearscope.classify.panels.find(p => p.key === '{key}')"
                           ".decoded")
        votes = np.asarray(data["votes"]).reshape(32, 32)
        assert np.array_equal(votes, g["votes"][...])
        for i in range(3):
            for kind, arr in (("row", "rows"), ("discussion", "discussions")):
                want = g[arr][i].astype(np.float64).sum(0)
                got = np.asarray(data["maps"][i][kind]).reshape(32, 32)
                scale = np.abs(want).max()
                assert np.all(np.abs(got - want) <= np.abs(want) * 2 ** -10 + scale * 1e-6), kind
        # the vote mask: transparent exactly where the pixel votes for the label
        alpha = np.asarray(pg.evaluate(
            """(key) => { const c = document.querySelector('section.cpanel[data-panel="' + key +
               '"] canvas.cvote[data-i="0"]'); return Array.from(c.getContext('2d')
               .getImageData(0, 0, c.width, c.height).data); }""", key)).reshape(32, 32, 4)[..., 3]
        assert np.array_equal(alpha == 0, g["vote_masks"][0])
    # the label selector shows the chart of another score
    sel = pg.locator('section.cpanel[data-panel="clean"] select.clabel')
    sel.select_option("2")
    assert pg.locator('section.cpanel[data-panel="clean"] .chart[data-i="2"]').is_visible()
    assert not pg.locator('section.cpanel[data-panel="clean"] .chart[data-i="0"]').is_visible()
    a = dict(zarr.open_group(str(store / "classify/adversarial"), mode="r").attrs)
    assert f"ε = {a['fgsm_eps']:g}" in pg.locator("section.cpanel[data-panel=adversarial] h2") \
        .inner_text()
    p.shot("classify")
    p.close()


def test_dataset_page_shows_table4_and_figure8(site, browser):
    s = zarr.open_group(str(site / "runs" / "dg.summary.zarr"), mode="r")
    p = Page(browser, url(site / "site", "classify/dg.summary.html"))
    pg = p.page
    for series, attrs in (("clean", dict(s.attrs)), ("FGSM", dict(s["adversarial"].attrs))):
        row = pg.locator(f'table.table4 tr[data-series="{series}"]')
        assert close_pct(shown(row.locator(".mean").inner_text()), attrs["residual_share_mean"])
        assert close_pct(shown(row.locator(".std").inner_text()), attrs["residual_share_std"])
    pts = pg.locator("svg.band circle.pt.clean")
    terms = list(s.attrs["terms"])
    assert pts.count() == len(terms)
    for j, t in enumerate(terms):
        assert pts.nth(j).get_attribute("data-term") == t
        assert float(pts.nth(j).get_attribute("data-mean")) == float(s["contributions_mean"][j])
        assert float(pts.nth(j).get_attribute("data-std")) == float(s["contributions_std"][j])
    assert pg.locator("svg.band polygon.sd.clean").count() == 1
    assert pg.locator("svg.band polygon.sd.adversarial").count() == 1
    pts.nth(1).hover()
    assert re.match(rf"clean {re.escape(terms[1])}: \S+ ± \S+", pg.locator(".readout").inner_text())
    p.shot("classify-dataset")
    pg.locator('a[href="dg-9-0037.html"]').click()
    pg.wait_for_function("window.__linearscope && window.__linearscope.ready")
    p.close()


def test_index_and_explorer_link_to_the_classifier_pages(site, browser):
    p = Page(browser, url(site / "site", "index.html"))
    pg = p.page
    assert pg.locator('a.dataset[href="classify/dg.summary.html"]').count() == 1
    assert pg.locator("#run-dg-9-0037 li").inner_text() == "classify: computed"
    pg.locator('a[href="explorer/dg-9-0037.html"]').first.click()
    pg.wait_for_function("window.__linearscope && window.__linearscope.ready")
    pg.locator("a.classify").click()
    pg.wait_for_function("window.__linearscope && window.__linearscope.ready")
    assert pg.url.endswith("classify/dg-9-0037.html")
    p.close()
