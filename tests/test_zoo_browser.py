"""The architecture comparison page (sitegen/zoo_page.py) in a real browser, from file://.

Stores come from `precompute run` of a `runs:` config with two models of the digits zoo on two
shipped digits (classifier analyses with FGSM); a third summary over other images must not join
the group. Every number the page shows is compared with the summary stores, read by sitegen's
torch-free reader.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from precompute.models.digits_zoo import shipped_weights
from sitegen.build import Options, build
from sitegen.reader import Summary, open_store
from sweep_helpers import REPO, cli, write_config
from test_classify_browser import close_pct, shown
from test_site_browser import Page, url

pytestmark = [pytest.mark.browser, pytest.mark.slow]
IMAGES = REPO / "examples" / "images" / "digits"
MODELS = ("digits-vgg", "digits-vgg-bn")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo-site")
    shared = {"images": str(IMAGES / "[89]-*.png"), "output": str(root / "runs"),
              "analyses": {"classify": {"top_k": 2, "adversarial": {"fgsm_eps": 0.1}}}}
    cfg = write_config(root / "zoo.yaml", **shared, runs=[
        {"name": m, "model": {"arch": m, "checkpoint": str(shipped_weights(m))}} for m in MODELS])
    r = cli("run", cfg, "-q")
    assert r.exit_code == 0, r.output
    # the same model on other images: a summary of its own, in no comparison
    other = write_config(root / "other.yaml", **{**shared, "images": str(IMAGES / "[01]-*.png")},
                         name="other", model={"arch": "digits-vgg"})
    r = cli("run", other, "-q")
    assert r.exit_code == 0, r.output
    build([root / "runs"], root / "site", Options(progress=False))
    return root


def test_comparison_page_shows_every_model_as_its_store(site, browser):
    pages = sorted((site / "site" / "classify").glob("zoo-*.html"))
    assert len(pages) == 1, pages  # one group: `other` is over other images
    summaries = {m: Summary(site / "runs" / f"{m}.summary.zarr") for m in MODELS}
    for s in summaries.values():  # each image's sha256, as its store records it
        for im in s.attrs["images"]:
            assert im["sha256"] == open_store(site / "runs" / im["store"]).image["sha256"]
    p = Page(browser, url(site / "site", f"classify/{pages[0].name}"))
    pg = p.page
    rows = pg.locator("table.zoo tbody tr")
    assert rows.count() == len(MODELS)
    for i, m in enumerate(MODELS):
        s = summaries[m]
        row = rows.nth(i)
        assert row.get_attribute("data-store") == f"{m}.summary.zarr"
        assert row.locator("td.id").inner_text() == m
        adv = s.adversarial[0]
        for attr, cls, want in (("clean-mean", ".clean.mean", s.attrs["residual_share_mean"]),
                                ("clean-std", ".clean.std", s.attrs["residual_share_std"]),
                                ("adv-mean", ".adv.mean", adv["residual_share_mean"]),
                                ("adv-std", ".adv.std", adv["residual_share_std"])):
            assert float(row.get_attribute(f"data-{attr}")) == want, (m, attr)
            assert close_pct(shown(row.locator(cls).inner_text()), want), (m, attr)
        # its Figure 8 chart: the exact means and stds of every term, clean and FGSM
        fig = pg.locator(f'figure.zoo-model[data-store="{m}.summary.zarr"]')
        terms = list(s.attrs["terms"])
        for series, (attrs, arr) in (("clean", (s.attrs, s.arrays)), ("adversarial",
                                                                       s.adversarial)):
            pts = fig.locator(f"svg.band circle.pt.{series}")
            index = {t: j for j, t in enumerate(attrs["terms"])}
            assert pts.count() == len(terms)
            for j, t in enumerate(terms):
                assert pts.nth(j).get_attribute("data-term") == t
                assert float(pts.nth(j).get_attribute("data-mean")) == \
                    float(arr["contributions_mean"][index[t]])
                assert float(pts.nth(j).get_attribute("data-std")) == \
                    float(arr["contributions_std"][index[t]])
        # the model links to its dataset page
        assert fig.locator("figcaption a").get_attribute("href") == f"{m}.summary.html"
    # without batch norm the VGG has 7 sites (5 convs, 2 fc); with it, 5 more (the BNs)
    assert [rows.nth(i).locator("td").nth(1).inner_text() for i in range(2)] == ["7", "12"]
    # hover (FGSM points are drawn over the clean ones): the readout names the term
    pts = pg.locator('figure.zoo-model[data-store="digits-vgg-bn.summary.zarr"] '
                     'circle.pt.adversarial')
    pts.nth(3).hover()
    assert re.match(r"adversarial features\.\S+: \S+ ± \S+",
                    pg.locator(".readout").inner_text())
    p.shot("zoo")
    # the index links the page from each member's dataset entry, not from `other`'s
    p.open(url(site / "site", "index.html"))
    links = pg.locator("ul.datasets a.zoo")
    assert links.count() == len(MODELS)
    assert {links.nth(i).get_attribute("href") for i in range(2)} == {
        f"classify/{pages[0].name}"}
    other = pg.locator("ul.datasets li", has=pg.locator('a.dataset[href="classify/other.summary.html"]'))
    assert other.count() == 1 and other.locator("a.zoo").count() == 0
    links.first.click()
    pg.wait_for_function("window.__linearscope && window.__linearscope.ready")
    assert pg.url.endswith(pages[0].name)
    p.close()


def test_the_page_module_imports_no_torch():
    code = ("import sys, sitegen.build, sitegen.zoo_page; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
