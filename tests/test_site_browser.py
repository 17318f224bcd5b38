"""The built site in a real browser: Debian's Chromium driven by Playwright, pages opened from file://.

Playwright (Python) is used instead of a hand-written DevTools client: it gives waiting, mouse,
keyboard, downloads and console/failed-request events in a few lines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from browser import watched_page
from site_fixtures import make_suite
from sitegen.build import Options, build

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    stores = make_suite(root / "stores")
    build([root / "stores"], root / "site", Options(progress=False))
    return root / "site", stores


class Page:
    """A page plus everything that went wrong while it was open."""

    def __init__(self, browser, url):
        self.ctx, self.page, self.problems = watched_page(browser, accept_downloads=True)
        self.open(url)

    def open(self, url):
        self.page.goto(url)
        self.page.wait_for_function("window.__linearscope && window.__linearscope.ready")

    def pixel(self, pane, y, x, run=None, click=False):
        """Move the mouse to the centre of pixel (y, x) of a pane."""
        if click:  # hover first: the page must not move under the mouse before the click
            self.pixel(pane, y, x, run)
        sec = f'section.run[data-run="{run}"] ' if run else ""
        stage = self.page.locator(f'{sec}[data-pane="{pane}"] .stage').first
        stage.scroll_into_view_if_needed()
        box = stage.bounding_box()
        H, W = self.page.evaluate(
            """([s, pane]) => { const sec = s ? document.querySelector(s) : document;
               const img = sec.querySelector('[data-pane="' + pane + '"] img');
               return [img.naturalHeight, img.naturalWidth]; }""",
            [sec.strip() or None, pane])
        px, py = box["x"] + (x + 0.5) * box["width"] / W, box["y"] + (y + 0.5) * box["height"] / H
        if click:
            self.page.mouse.click(px, py)
        else:
            self.page.mouse.move(px, py)

    def filter(self, run, kind, y, x):
        self.page.wait_for_function(
            """([run, kind, y, x]) => { const f = window.__linearscope.filters[run];
               return f && f.kind === kind && f.pixel[0] === y && f.pixel[1] === x; }""",
            arg=[run, kind, y, x], timeout=10000)
        # data is the decoded Float32Array the page drew from
        return self.page.evaluate(
            """(run) => { const f = window.__linearscope.filters[run];
               return Object.assign({}, f, {data: Array.from(f.data)}); }""", run)

    def shot(self, name):
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self):
        self.ctx.close()
        assert not self.problems, self.problems


def url(site_dir: Path, rel: str) -> str:
    return (site_dir / rel).as_uri()


def check_values(f, want):
    """The page's decoded filter equals the store's values to float16 display precision."""
    got = np.asarray(f["data"], np.float64).reshape(f["shape"])
    assert got.shape == want.shape
    scale = f["scale"]
    tol = np.abs(want) * 2.0 ** -11 + scale * (2.0 ** -24 + 1e-7)
    assert np.all(np.abs(got - want) <= tol), np.abs(got - want).max()
    assert np.all(got[want == 0] == 0)


def test_index_lists_runs_and_groups(site, browser):
    d, _ = site
    p = Page(browser, url(d, "index.html"))
    rows = p.page.locator("table.runs tbody tr")
    assert rows.count() == 4
    assert p.page.locator('a[href="compare/b4298686047a.html"]').count() >= 1
    for rid in ("netA-test", "netB-test", "colsonly-test", "rowsonly-test"):
        assert p.page.locator(f'a[href="explorer/{rid}.html"]').count() >= 1
    p.shot("index")
    p.page.locator('a[href="explorer/netA-test.html"]').first.click()
    p.page.wait_for_function("window.__linearscope && window.__linearscope.ready")
    p.close()


def test_hover_column_and_row_match_store(site, browser):
    d, s = site
    fx = s["both"]
    p = Page(browser, url(d, "explorer/netA-test.html"))
    for (i, j) in ((0, 0), (2, 5), (7, 0)):
        p.pixel("input", i, j)
        f = p.filter("netA-test", "columns", i, j)
        assert tuple(f["origin"]) == fx.col_origin(i, j)
        check_values(f, fx.column(i, j))
    for (q, r) in ((0, 0), (9, 4), (15, 15)):
        p.pixel("output", q, r)
        f = p.filter("netA-test", "rows", q, r)
        assert tuple(f["origin"]) == fx.row_origin(q, r)
        check_values(f, fx.row(q, r))
    # the footprint of the window is outlined on the input, the crosshair is on both panes
    assert p.page.locator('[data-pane="input"] .fp').is_visible()
    assert p.page.locator('[data-pane="output"] .xh-h').is_visible()
    # value under the cursor in the filter window
    box = p.page.locator(".fcanvas").bounding_box()
    p.page.mouse.move(box["x"] + 1, box["y"] + 1)
    assert "value at input (" in p.page.locator(".readout .val").inner_text()
    assert "%" in p.page.locator(".readout .outside").inner_text()
    p.shot("explorer")
    p.close()


def test_pin_permalink_keys_and_controls(site, browser):
    d, s = site
    p = Page(browser, url(d, "explorer/netA-test.html"))
    pg = p.page
    p.pixel("output", 6, 3, click=True)
    p.filter("netA-test", "rows", 6, 3)
    p.pixel("input", 3, 1)  # pinned: hovering elsewhere does not move the probe...
    pg.wait_for_timeout(150)
    # ...and reads the pinned row where the mouse is: input (3, 1) is in its window
    f = p.filter("netA-test", "rows", 6, 3)
    want = s["both"].row(6, 3)[0, 0, 3 - f["origin"][0], 1 - f["origin"][1]]
    text = pg.locator(".readout .val").inner_text()
    assert text.startswith("value at input (3, 1): ")
    assert float(text.split(": ")[1]) == pytest.approx(want, rel=2e-3, abs=1e-6)
    assert pg.evaluate("window.__linearscope.state.pin") is True
    assert p.filter("netA-test", "rows", 6, 3)["pixel"] == [6, 3]
    pg.keyboard.press("ArrowRight")
    p.filter("netA-test", "rows", 6, 4)
    pg.keyboard.press("Shift+ArrowDown")
    p.filter("netA-test", "rows", 15, 4)  # 16 - 1: clamped to the image
    pg.keyboard.press("ArrowUp")
    f = p.filter("netA-test", "rows", 14, 4)
    check_values(f, s["both"].row(14, 4))
    pg.select_option("#ls-cmap", "puor")
    pg.select_option("#ls-norm", "g")
    pg.select_option("#ls-tail", "log")
    pg.select_option("#ls-own", "1")
    pg.select_option("#ls-other", "2")
    pg.select_option("#ls-size", "1")  # larger panes: 448 px
    assert pg.locator('[data-pane="output"] .stage').bounding_box()["width"] == 448
    before = p.filter("netA-test", "rows", 14, 4)
    assert (before["a"], before["b"]) == (1, 2)
    state = pg.evaluate("window.__linearscope.state")
    link = pg.url
    assert "pin=1" in link and "cm=puor" in link
    p.shot("explorer-pinned")
    # reopen through the permalink: same pixel, same view
    q = Page(pg.context.browser, link)
    f2 = q.filter("netA-test", "rows", 14, 4)
    assert q.page.evaluate("window.__linearscope.state") == state
    assert f2["data"] == before["data"] and (f2["a"], f2["b"], f2["max"]) == (1, 2, before["max"])
    assert q.page.input_value("#ls-cmap") == "puor" and q.page.input_value("#ls-tail") == "log"
    assert q.page.locator('[data-pane="input"] .stage').bounding_box()["width"] == 448
    assert q.page.locator(".fcanvas").bounding_box()["width"] == 448
    caption = q.page.locator(".fcap").inner_text()
    assert "output pixel (14, 4)" in caption and "global" in caption and "log" in caption
    q.close()
    # Esc releases the pin; hovering follows the mouse again
    pg.keyboard.press("Escape")
    assert pg.evaluate("window.__linearscope.state.pin") is False
    p.pixel("input", 1, 1)
    p.filter("netA-test", "columns", 1, 1)
    # export the shown filter as PNG
    with pg.expect_download() as dl:
        pg.click("#ls-export")
    assert dl.value.suggested_filename.startswith("netA-test-columns-1-1")
    path = dl.value.path()
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    ARTIFACTS.mkdir(exist_ok=True)
    img = Image.open(path)
    img.save(ARTIFACTS / "export.png")
    assert img.size == (510, 510 + 40)  # 6×6 window ×85, colorbar and ticks below
    p.close()


def test_keyboard_only(site, browser):
    d, _ = site
    p = Page(browser, url(d, "explorer/netB-test.html"))
    pg = p.page
    pg.keyboard.press("Tab")  # breadcrumb links and controls come first; focus the input pane
    pg.locator('[data-pane="input"] .stage').focus()
    pg.keyboard.press("ArrowLeft")
    f = pg.evaluate("window.__linearscope.state")
    assert f["d"] == "in" and f["pin"] is True
    p.filter("netB-test", "columns", f["y"], f["x"])
    p.close()


def test_not_computed_states(site, browser):
    d, _ = site
    p = Page(browser, url(d, "explorer/netA-test.html"))
    p.pixel("input", 5, 5)  # store tile (1, 1) of columns was never computed
    p.page.wait_for_function("document.querySelector('.fmsg').textContent.includes('not computed')")
    assert p.page.locator(".fstage.nc").count() == 1
    p.close()
    for rid, pane, kind in (("colsonly-test", "output", "Rows"), ("rowsonly-test", "input", "Columns")):
        p = Page(browser, url(d, f"explorer/{rid}.html"))
        p.pixel(pane, 1, 1)
        p.page.wait_for_function(
            f"document.querySelector('.fmsg').textContent.includes('{kind}') && "
            "document.querySelector('.fmsg').textContent.includes('not computed for this run')")
        other = "input" if pane == "output" else "output"
        p.pixel(other, 2, 3)
        p.filter(rid, "columns" if other == "input" else "rows", 2, 3)
        p.shot(f"explorer-{rid}")
        p.close()


def test_compare_one_cursor(site, browser):
    d, s = site
    p = Page(browser, url(d, "compare/b4298686047a.html"))
    assert p.page.locator("section.run").count() == 2
    p.pixel("input", 3, 6, run="netB-test")
    fa = p.filter("netA-test", "columns", 3, 6)
    fb = p.filter("netB-test", "columns", 3, 6)
    check_values(fa, s["both"].column(3, 6))
    check_values(fb, s["both2"].column(3, 6))
    p.pixel("output", 10, 2, run="netA-test")
    check_values(p.filter("netB-test", "rows", 10, 2), s["both2"].row(10, 2))
    check_values(p.filter("netA-test", "rows", 10, 2), s["both"].row(10, 2))
    p.shot("compare")
    p.close()


def test_vector_model_pages(browser, tmp_path):
    from site_fixtures import make_vector_store

    make_vector_store(tmp_path / "stores" / "cls.zarr")
    build([tmp_path / "stores"], tmp_path / "site", Options(progress=False))
    p = Page(browser, url(tmp_path / "site", "explorer/cls.html"))
    assert p.page.locator("table.scores tbody tr").count() == 5
    p.pixel("input", 2, 2)
    p.page.wait_for_function(
        "document.querySelector('.fmsg').textContent.includes('not computed: vector')")
    assert p.page.locator(".fstage.nc").count() == 1
    p.shot("explorer-vector")
    p.close()
    p = Page(browser, url(tmp_path / "site", "index.html"))
    assert p.page.locator("table.runs tbody tr").count() == 1
    p.close()


def test_same_site_behind_a_static_server(site, browser):
    """Unchanged files served over http:// (Python's http.server) behave as from disk."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    d, s = site

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(d)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}/"
        p = Page(browser, base + "index.html")
        p.page.locator('a[href="explorer/netB-test.html"]').first.click()
        p.page.wait_for_function("window.__linearscope && window.__linearscope.ready")
        p.pixel("input", 4, 4)
        check_values(p.filter("netB-test", "columns", 4, 4), s["both2"].column(4, 4))
        p.close()
    finally:
        srv.shutdown()
        srv.server_close()


def test_compare_through_crops(browser, tmp_path):
    """Runs on the same image file with different crops share the cursor in image coordinates."""
    from site_fixtures import make_store

    a = make_store(tmp_path / "s" / "whole.zarr", name="whole", model_id="whole", seed=8)
    c = make_store(tmp_path / "s" / "crop.zarr", name="crop", model_id="crop", seed=9, H=6, W=6,
                   crop=[2, 2, 6, 6], tile=3)
    build([tmp_path / "s"], tmp_path / "site", Options(progress=False))
    p = Page(browser, url(tmp_path / "site", "compare/b4298686047a.html"))
    p.pixel("input", 5, 4, run="whole")
    check_values(p.filter("whole", "columns", 5, 4), a.column(5, 4))
    check_values(p.filter("crop", "columns", 3, 2), c.column(3, 2))
    p.pixel("output", 4, 5, run="crop")  # crop output (4, 5) is whole output (8, 9)
    check_values(p.filter("whole", "rows", 8, 9), a.row(8, 9))
    check_values(p.filter("crop", "rows", 4, 5), c.row(4, 5))
    p.pixel("input", 0, 0, run="whole")
    p.page.wait_for_function(
        """() => document.querySelector('section[data-run="crop"] .fmsg').textContent
                 .includes("outside this run's crop")""")
    p.close()


def test_compare_columns_only_with_rows_only(browser, tmp_path):
    """A Compare page of a columns-only and a rows-only run: each shows what it has."""
    from site_fixtures import make_store

    c = make_store(tmp_path / "s" / "c.zarr", name="c", model_id="c", seed=12, rows=False)
    r = make_store(tmp_path / "s" / "r.zarr", name="r", model_id="r", seed=13, columns=False)
    build([tmp_path / "s"], tmp_path / "site", Options(progress=False))
    p = Page(browser, url(tmp_path / "site", "compare/b4298686047a.html"))
    p.pixel("input", 2, 2, run="r")
    check_values(p.filter("c", "columns", 2, 2), c.column(2, 2))
    p.page.wait_for_function(
        """() => document.querySelector('section[data-run="r"] .fmsg').textContent
                 .includes("Columns (projective filters) not computed for this run")""")
    p.pixel("output", 5, 9, run="c")
    check_values(p.filter("r", "rows", 5, 9), r.row(5, 9))
    p.page.wait_for_function(
        """() => document.querySelector('section[data-run="c"] .fmsg').textContent
                 .includes("Rows (receptive filters) not computed for this run")""")
    p.shot("compare-columns-only-rows-only")
    p.close()


def test_compare_grey_and_colour_models(browser, tmp_path):
    """A 1-channel (Y) model next to an RGB one: channel choices apply where they exist."""
    from site_fixtures import make_store

    y = make_store(tmp_path / "s" / "y.zarr", name="y", model_id="y", seed=14, C=1)
    rgb = make_store(tmp_path / "s" / "rgb.zarr", name="rgb", model_id="rgb", seed=15)
    build([tmp_path / "s"], tmp_path / "site", Options(progress=False))
    p = Page(browser, url(tmp_path / "site", "compare/b4298686047a.html"))
    labels = p.page.locator("#ls-other option").all_inner_texts()
    assert labels == ["RGB composite", "R", "G", "B"]
    p.page.select_option("#ls-other", "2")
    p.pixel("input", 6, 1, run="y")
    fy, fc = p.filter("y", "columns", 6, 1), p.filter("rgb", "columns", 6, 1)
    check_values(fy, y.column(6, 1))
    check_values(fc, rgb.column(6, 1))
    assert (fy["a"], fy["b"]) == (0, 0) and (fc["a"], fc["b"]) == (0, 2)
    p.page.select_option("#ls-other", "rgb")  # composite of the RGB model's output channels
    p.page.wait_for_function("window.__linearscope.filters['rgb'].b === 'rgb'")
    assert "RGB composite" in p.page.locator('section[data-run="rgb"] .fcap').inner_text()
    assert p.page.evaluate("window.__linearscope.filters['y'].b") == 0
    p.shot("compare-grey-colour")
    p.close()


def test_float16_fallback_without_Float16Array(site, browser):
    """Browsers without Float16Array decode the display copy with the page's own converter."""
    d, s = site
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.add_init_script("delete window.Float16Array;")
    p = Page.__new__(Page)
    p.ctx, p.page, p.problems = ctx, ctx.new_page(), []
    p.page.on("pageerror", lambda e: p.problems.append(f"page error: {e}"))
    p.open(url(d, "explorer/netA-test.html"))
    assert p.page.evaluate("typeof Float16Array") == "undefined"
    p.pixel("input", 0, 0)  # holds a value below float16's range (flushed to 0) and exact zeros
    check_values(p.filter("netA-test", "columns", 0, 0), s["both"].column(0, 0))
    p.pixel("output", 3, 7)
    check_values(p.filter("netA-test", "rows", 3, 7), s["both"].row(3, 7))
    p.close()


def test_residual_pane_probes_rows(site, browser):
    d, s = site
    p = Page(browser, url(d, "explorer/netA-test.html"))
    p.pixel("residual", 11, 6)
    check_values(p.filter("netA-test", "rows", 11, 6), s["both"].row(11, 6))
    p.close()
