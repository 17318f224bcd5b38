"""The SVD pages of the site: what `sitegen build` writes, and what the real browser shows from
file:// (Debian's Chromium through Playwright, as in test_site_browser.py).

Stores are site fixtures with an ``svd/`` group from numpy's SVD of their known F
(svd_site_fixtures.py), so every value the page shows is checked against an independent one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from site_fixtures import IMAGE_SHA, make_store, make_vector_store
from svd_site_fixtures import (add_svd_to_fixture, add_svd_to_vector_store, read_meta_js)
from sitegen.build import Options, build
from sitegen.tiles import decode_block

EVIL = '<img src=x onerror="window.__pwned=1">'
GROUP = IMAGE_SHA[:12]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("svdsite")
    st = root / "stores"
    a = make_store(st / "netA-test.zarr", name="netA", model_id="netA", seed=1)
    b = make_store(st / "netB-test.zarr", name="netB", model_id="netB", seed=4)
    make_store(st / "colsonly-test.zarr", name="colsonly", model_id="colsonly", seed=2,
               rows=False, image_sha="1" * 64)
    half = make_store(st / "half-test.zarr", name="half", model_id="half", seed=5,
                      image_sha="3" * 64)
    make_vector_store(st / "clf.zarr", name="clf", K=6, image_sha="2" * 64)
    ref = {
        "netA-test": add_svd_to_fixture(a, 6),
        "netB-test": add_svd_to_fixture(b, 4),
        "clf": add_svd_to_vector_store(st / "clf.zarr", 3,
                                       labels=["cat", EVIL, "dog", "a&b", "e", "f"]),
    }
    add_svd_to_fixture(half, 3, complete=False)  # killed before its marker: no SVD
    out = root / "site"
    res = build([st], out, Options(progress=False))
    return out, ref, res, st


# -- the build ---------------------------------------------------------------------------------

def test_pages_data_and_links(site):
    out, ref, res, _ = site
    for rid, k in (("netA-test", 6), ("netB-test", 4), ("clf", 3)):
        assert (out / "svd" / f"{rid}.html").is_file()
        assert sorted(p.name for p in (out / "data" / rid / "svd").iterdir()) == sorted(
            ["meta.js"] + [f"{i}.js" for i in range(k)])
    assert not (out / "svd" / "colsonly-test.html").exists()
    assert not (out / "svd" / "half-test.html").exists()  # incomplete: no page, no data
    assert not (out / "data" / "half-test" / "svd").exists()
    assert (out / "svd" / f"compare-{GROUP}.html").is_file()  # netA and netB share the image
    assert len(list((out / "svd").glob("compare-*.html"))) == 1
    index = (out / "index.html").read_text()
    for rid in ("netA-test", "netB-test", "clf"):
        assert f'href="svd/{rid}.html"' in index
    assert 'href="svd/colsonly-test.html"' not in index
    assert f'href="svd/compare-{GROUP}.html"' in index
    assert index.count(">svd: computed</li>") == 3 and index.count(">svd: not complete</li>") == 1
    assert 'href="../svd/netA-test.html"' in (out / "explorer" / "netA-test.html").read_text()
    assert f'href="../svd/compare-{GROUP}.html"' in (out / "compare" / f"{GROUP}.html").read_text()
    explorer = (out / "explorer" / "netA-test.html").read_text()
    assert "SVD bases</b>: computed (top-6 by dense" in explorer
    assert "SVD bases</b>: not complete" in (out / "explorer" / "half-test.html").read_text()
    assert "SVD bases</b>: not computed" in (out / "explorer" / "colsonly-test.html").read_text()


def test_data_equal_the_store(site):
    """σ and residuals exactly; eigen-vectors to float16 display precision (per-vector scale)."""
    out, ref, _, _ = site
    for rid, shapes in (("netA-test", ((3, 8, 8), (3, 16, 16))), ("clf", ((3, 8, 8), (6,)))):
        meta = read_meta_js(out / "data" / rid / "svd" / "meta.js")
        r = ref[rid]
        assert meta["sigma"] == [float(x) for x in r["sigma"]]
        assert meta["residual"] == [[float(a), float(b)] for a, b in r["residual"]]
        assert meta["input"] == list(shapes[0]) and meta["output"] == list(shapes[1])
        for i in range(meta["k"]):
            text = (out / "data" / rid / "svd" / f"{i}.js").read_text()
            head = f'LinearScope.svdTriplet("{rid}",{i},'
            assert text.startswith(head)
            blobs = json.loads(text[len(head):-3])
            for name, shape in (("v", shapes[0]), ("u", shapes[1])):
                scale, blob = blobs[name]
                got = decode_block(scale, blob, shape, "float16")
                want = r[name][i].reshape(shape)
                assert np.all(np.abs(got - want) <= np.abs(want) * 2.0 ** -11 + scale * 2e-7)


def test_rebuild_is_byte_identical(site, tmp_path):
    out, _, _, stores = site
    again = build([stores], out, Options(progress=False))
    assert again.written == 0 and again.removed == 0
    fresh = build([stores], tmp_path / "fresh", Options(progress=False))
    files = sorted(f.relative_to(out) for f in out.rglob("*")
                   if f.is_file() and f.name != ".linearscope-cache.json")
    assert any(rel.parts[0] == "svd" for rel in files)
    for rel in files:  # the whole site, SVD pages and data included
        assert (tmp_path / "fresh" / rel).read_bytes() == (out / rel).read_bytes(), rel
    assert fresh.files == again.files


def test_size_estimate_covers_svd(site):
    out, _, res, _ = site
    svd_bytes = sum(p.stat().st_size for p in out.rglob("*") if "svd" in p.relative_to(out).parts)
    assert svd_bytes > 0 and res.estimate >= res.total


# -- the browser ---------------------------------------------------------------------------------

class SvdPage:
    def __init__(self, browser, url):
        from browser import watched_page

        self.ctx, self.page, self.problems = watched_page(browser)
        self.page.goto(url)
        self.page.wait_for_function("window.__linearscope.svd && window.__linearscope.svd.ready")

    def shown(self, run, i):
        """The decoded triplet the page drew for ``run`` once it shows index ``i``."""
        self.page.wait_for_function(
            """([run, i]) => { const s = window.__linearscope.svd.shown[run];
               return s && s.i === i && s.status !== undefined; }""", arg=[run, i], timeout=10000)
        return self.page.evaluate(
            """(run) => { const s = window.__linearscope.svd.shown[run];
               return s.status !== "ok" ? s : Object.assign({}, s, {v: Array.from(s.v),
                 u: Array.from(s.u)}); }""", run)

    def hover_point(self, run, i):
        box = self.page.locator(f'circle.pt[data-run="{run}"][data-i="{i}"]').bounding_box()
        self.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)

    def close(self):
        self.ctx.close()
        assert not self.problems, self.problems


def stores_dir(site) -> Path:
    return site[3]


def url(out: Path, rel: str) -> str:
    return (out / rel).as_uri()


def check_vector(got, want, scale):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64).reshape(-1)
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= np.abs(want) * 2.0 ** -11 + scale * 2e-7)


@pytest.mark.browser
def test_svd_page_shows_the_store(site, browser):
    out, ref, _, _ = site
    r = ref["netA-test"]
    p = SvdPage(browser, url(out, "svd/netA-test.html"))
    pg = p.page
    # the table: σ (6 significant digits) and residuals (3) of every triplet, as stored
    rows = pg.locator(".svd-table tbody tr")
    assert rows.count() == 6
    for i in range(6):
        sig = float(rows.nth(i).locator("td.sig").inner_text())
        assert sig == pytest.approx(float(r["sigma"][i]), rel=5e-6)
        for j, cls in enumerate(("r1", "r2")):
            val = float(rows.nth(i).locator(f"td.{cls}").inner_text())
            assert val == pytest.approx(float(r["residual"][i, j]), rel=6e-3)
    # first triplet drawn on load: decoded eigen-input and eigen-output equal the store's
    s = p.shown("netA-test", 0)
    check_vector(s["v"], r["v"][0], s["vScale"])
    check_vector(s["u"], r["u"][0], s["uScale"])
    assert s["sigma"] == float(r["sigma"][0])
    # hovering a point of the spectrum selects it
    p.hover_point("netA-test", 3)
    s = p.shown("netA-test", 3)
    check_vector(s["v"], r["v"][3], s["vScale"])
    read = pg.locator(".triplet").inner_text()
    assert read.startswith("Triplet 4 of 6: σ_4 = ") and f"{float(r['sigma'][3]):.6g}"[:5] in read
    assert pg.locator(".svd-table tr.sel th").inner_text() == "4"
    # keys and the slider
    pg.mouse.move(5, 5)
    pg.keyboard.press("ArrowRight")
    p.shown("netA-test", 4)
    pg.keyboard.press("[")
    pg.keyboard.press("[")
    p.shown("netA-test", 2)
    pg.keyboard.press("End")
    s = p.shown("netA-test", 5)
    check_vector(s["u"], r["u"][5], s["uScale"])
    pg.keyboard.press("ArrowRight")  # already the last: stays
    assert pg.evaluate("window.__linearscope.svd.i") == 5
    pg.locator("#svd-slider").fill("2")
    p.shown("netA-test", 1)
    assert pg.locator("#svd-index").inner_text() == "i = 2 of 6"
    # view controls and the permalink
    pg.select_option("#svd-ch", "1")
    pg.select_option("#svd-cm", "puor")
    link = pg.url
    assert "i=2" in link and "c=1" in link and "cm=puor" in link
    q = SvdPage(browser, link)
    s2 = q.shown("netA-test", 1)
    check_vector(s2["v"], r["v"][1], s2["vScale"])
    assert q.page.input_value("#svd-ch") == "1" and q.page.input_value("#svd-cm") == "puor"
    q.close()
    # the reference images are there
    for pane in ("x0", "y0", "r0"):
        assert pg.locator(f'[data-pane="{pane}"] img').evaluate("i => i.naturalWidth") > 0
    p.close()


@pytest.mark.browser
def test_compare_page_same_index_for_every_run(site, browser):
    out, ref, _, _ = site
    p = SvdPage(browser, url(out, f"svd/compare-{GROUP}.html"))
    pg = p.page
    assert pg.locator("section.svd-run").count() == 2
    assert pg.locator("circle.pt").count() == 6 + 4
    p.hover_point("netB-test", 2)
    for rid in ("netA-test", "netB-test"):
        s = p.shown(rid, 2)
        check_vector(s["v"], ref[rid]["v"][2], s["vScale"])
        check_vector(s["u"], ref[rid]["u"][2], s["uScale"])
    # beyond netB's k = 4: netA still shows its triplet, netB says it has none
    pg.keyboard.press("End")
    s = p.shown("netA-test", 5)
    check_vector(s["v"], ref["netA-test"]["v"][5], s["vScale"])
    assert p.shown("netB-test", 5)["status"] == "none"
    text = pg.locator('section.svd-run[data-run="netB-test"] .triplet').inner_text()
    assert text == "Triplet 6: not computed for this run (k = 4)."
    p.close()


@pytest.mark.browser
def test_classifier_page_bars_escape_labels(site, browser):
    out, ref, _, _ = site
    r = ref["clf"]
    p = SvdPage(browser, url(out, "svd/clf.html"))
    pg = p.page
    s = p.shown("clf", 0)
    check_vector(s["u"], r["u"][0], s["uScale"])
    check_vector(s["v"], r["v"][0], s["vScale"])
    bars = pg.locator("ol.eig-bars li")
    assert bars.count() == 6
    texts = [bars.nth(j).inner_text() for j in range(6)]
    order = np.argsort(-np.abs(r["u"][0]), kind="stable")
    labels = ["cat", EVIL, "dog", "a&b", "e", "f"]
    assert [t.split(": ")[0] for t in texts] == [labels[j] for j in order]
    assert pg.locator("ol.eig-bars img").count() == 0
    assert pg.evaluate("window.__pwned === undefined")
    # f(x0) and r(x0) of the top classes, for reference
    import zarr

    g = zarr.open_group(str(stores_dir(site) / "clf.zarr"), mode="r")
    y, res = g["output"][...], g["residual"][...]
    top = int(np.argmax(y))
    cells = pg.locator('[data-pane="y0"] table.scores tbody tr').first.locator("td")
    assert cells.nth(0).inner_text() == labels[top]
    assert float(cells.nth(1).inner_text()) == pytest.approx(float(y[top]), rel=1e-5)
    assert float(cells.nth(2).inner_text()) == pytest.approx(float(res[top]), rel=1e-5)
    p.close()


# -- the gallery (Figures 5 and 6: every triplet as thumbnails) ---------------------------------------

def expected_thumb(vec: np.ndarray) -> np.ndarray:
    """What a thumbnail must show, computed here from the reference vector: mid-grey 0, ±max |entry|
    of the vector the extremes, channels as RGB (one channel: grey)."""
    v = np.asarray(vec, np.float64)
    if v.shape[0] == 1:
        v = np.repeat(v, 3, axis=0)
    img = 127.5 + 127.5 * v / np.abs(v).max()
    return np.clip(np.round(img), 0, 255).transpose(1, 2, 0)


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im, np.float64)


def test_gallery_thumbnails_equal_the_store(site):
    out, ref, res, _ = site
    for rid, k, shapes in (("netA-test", 6, ((3, 8, 8), (3, 16, 16))),
                           ("netB-test", 4, ((3, 8, 8), (3, 16, 16))), ("clf", 3, ((3, 8, 8), None))):
        thumbs = out / "data" / rid / "svd-thumbs"
        want = sorted([f"v{i}.png" for i in range(k)] + ([f"u{i}.png" for i in range(k)]
                                                         if shapes[1] else []))
        assert sorted(p.name for p in thumbs.iterdir()) == want
        for i in range(k):
            got = read_png(thumbs / f"v{i}.png")
            assert np.abs(got - expected_thumb(ref[rid]["v"][i].reshape(shapes[0]))).max() <= 1
            if shapes[1]:
                got = read_png(thumbs / f"u{i}.png")
                assert np.abs(got - expected_thumb(ref[rid]["u"][i].reshape(shapes[1]))).max() <= 1
    assert not (out / "data" / "half-test" / "svd-thumbs").exists()
    # σ_i under each thumbnail (4 significant digits), i from 1 in the paper's order
    html = (out / "svd" / "netA-test.html").read_text()
    sig = [float(x) for x in re.findall(r'<span class="sig">\d+: ([^<]+)</span>', html)]
    assert sig == pytest.approx([float(s) for s in ref["netA-test"]["sigma"]], rel=5e-4)
    assert [int(x) for x in re.findall(r'<span class="sig">(\d+):', html)] == [1, 2, 3, 4, 5, 6]


def test_thumbnail_of_a_large_vector_is_an_area_average():
    from PIL import Image

    from sitegen.svd_gallery import THUMB, thumb_rgb

    v = np.random.default_rng(5).standard_normal((3, 2 * THUMB, THUMB))
    got = thumb_rgb(v).astype(np.float64)
    assert got.shape == (THUMB, THUMB // 2, 3)
    full = expected_thumb(v)  # (2T, T, 3) at full resolution
    blocks = full.reshape(THUMB, 2, THUMB // 2, 2, 3).mean(axis=(1, 3))
    assert np.abs(got - blocks).max() <= 1
    grey = thumb_rgb(np.ones((1, 4, 4)) * np.arange(4.0))
    assert grey.shape == (4, 4, 3) and (grey[..., 0] == grey[..., 2]).all()
    assert Image.fromarray(grey).size == (4, 4)


@pytest.mark.browser
def test_gallery_click_and_keys_focus_the_triplet(site, browser):
    out, ref, _, _ = site
    r = ref["netA-test"]
    p = SvdPage(browser, url(out, "svd/netA-test.html"))
    pg = p.page
    thumbs = pg.locator('.svd-gallery .thumb[data-run="netA-test"]')
    assert thumbs.count() == 6
    for img in pg.locator(".svd-gallery img").all():  # every thumbnail loaded from file://
        assert img.evaluate("i => i.complete && i.naturalWidth") > 0
    # a click shows that triplet in the view, the decoded vectors equal to the store's
    thumbs.nth(3).click()
    s = p.shown("netA-test", 3)
    check_vector(s["v"], r["v"][3], s["vScale"])
    check_vector(s["u"], r["u"][3], s["uScale"])
    assert pg.locator("#svd-index").inner_text() == "i = 4 of 6"
    assert pg.locator(".svd-gallery .thumb.sel").evaluate("b => +b.dataset.i") == 3
    assert thumbs.nth(3).get_attribute("aria-current") == "true"
    assert [thumbs.nth(j).get_attribute("tabindex") for j in range(6)] == ["-1"] * 3 + ["0"] + ["-1"] * 2
    # keyboard: arrows move the selection and the focus along the gallery
    thumbs.nth(3).focus()
    pg.keyboard.press("ArrowRight")
    s = p.shown("netA-test", 4)
    check_vector(s["v"], r["v"][4], s["vScale"])
    assert pg.evaluate("document.activeElement.dataset.i") == "4"
    pg.keyboard.press("ArrowLeft")
    pg.keyboard.press("ArrowLeft")
    p.shown("netA-test", 2)
    assert pg.evaluate("document.activeElement.dataset.i") == "2"
    # Enter and Space on a focused thumbnail select it
    thumbs.nth(5).focus()
    pg.keyboard.press("Enter")
    s = p.shown("netA-test", 5)
    check_vector(s["u"], r["u"][5], s["uScale"])
    thumbs.nth(0).focus()
    pg.keyboard.press(" ")
    p.shown("netA-test", 0)
    assert pg.evaluate("window.__linearscope.svd.i") == 0
    # Tab from outside lands on the selected thumbnail (one tab stop for the gallery)
    thumbs.nth(2).click()
    pg.locator("#svd-norm").focus()
    for _ in range(10):  # the first thumbnail Tab reaches is the selected one
        pg.keyboard.press("Tab")
        if pg.evaluate("document.activeElement.classList.contains('thumb')"):
            break
    assert pg.evaluate("document.activeElement.className") == "thumb sel"
    assert pg.evaluate("document.activeElement.dataset.i") == "2"
    p.close()


@pytest.mark.browser
def test_compare_gallery_selects_every_run_and_escapes_labels(site, browser):
    out, ref, _, _ = site
    p = SvdPage(browser, url(out, f"svd/compare-{GROUP}.html"))
    pg = p.page
    assert pg.locator('.svd-gallery[data-run="netA-test"] .thumb').count() == 6
    assert pg.locator('.svd-gallery[data-run="netB-test"] .thumb').count() == 4
    pg.locator('.thumb[data-run="netB-test"][data-i="2"]').click()
    for rid in ("netA-test", "netB-test"):
        s = p.shown(rid, 2)
        check_vector(s["v"], ref[rid]["v"][2], s["vScale"])
        assert pg.locator(f'.thumb.sel[data-run="{rid}"]').evaluate("b => +b.dataset.i") == 2
    # netA's last thumbnail: netB has no triplet 6 and says so
    pg.locator('.thumb[data-run="netA-test"][data-i="5"]').click()
    assert p.shown("netB-test", 5)["status"] == "none"
    assert pg.locator('.thumb.sel[data-run="netB-test"]').count() == 0
    p.close()
    # a classifier's eigen-outputs are class scores: the gallery names the largest entry
    q = SvdPage(browser, url(out, "svd/clf.html"))
    labels = ["cat", EVIL, "dog", "a&b", "e", "f"]
    tops = q.page.locator(".svd-gallery .thumb .top")
    assert tops.count() == 3
    for i in range(3):
        u = np.asarray(ref["clf"]["u"][i], np.float64)
        j = int(np.argmax(np.abs(u)))
        assert tops.nth(i).inner_text() == f"{labels[j]} {u[j]:+.2f}"
    assert q.page.locator(".svd-gallery .top img").count() == 0
    assert q.page.evaluate("window.__pwned === undefined")
    q.page.locator('.thumb[data-run="clf"][data-i="1"]').click()
    s = q.shown("clf", 1)
    check_vector(s["u"], ref["clf"]["u"][1], s["uScale"])
    q.close()
