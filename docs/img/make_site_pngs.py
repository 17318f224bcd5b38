"""Regenerate docs/img/index.png and docs/img/svd-gallery.png: the index's sections and the SVD
gallery of a real store, as a reader sees them.

    python docs/img/make_site_pngs.py RUNS_DIR SVD_RUN_ID [--i 3] [-o docs/img/]

Builds the site of RUNS_DIR into a temporary folder with `sitegen build`, opens it from file:// in
Debian's Chromium (Playwright), screenshots the index's sections, then selects triplet I of the
run's SVD page by clicking its thumbnail and screenshots the run's section (view and gallery).
Both are saved as palette PNGs (256 colours) to keep the repository small.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from sitegen.build import Options, build

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]


def small_png(path: Path) -> None:
    """Rewrite a screenshot as an optimised 256-colour PNG (text and thumbnails stay legible)."""
    with Image.open(path) as im:
        im.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("svd_run")
    ap.add_argument("--i", type=int, default=3, help="triplet to select (1-based)")
    ap.add_argument("-o", "--output", default=str(Path(__file__).parent))
    args = ap.parse_args()
    out = Path(args.output)
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        build([args.runs], site, Options(progress=False))
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
            page = b.new_page(viewport={"width": 1180, "height": 900})
            page.goto((site / "index.html").as_uri())
            page.wait_for_function("window.__linearscope && window.__linearscope.ready")
            last = page.locator("section.story").last.bounding_box()  # the sections, not the table
            page.screenshot(path=str(out / "index.png"), full_page=True,
                            clip={"x": 0, "y": 0, "width": 1180,
                                  "height": last["y"] + last["height"] + 8})
            page.goto((site / "svd" / f"{args.svd_run}.html").as_uri())
            page.wait_for_function("window.__linearscope.svd && window.__linearscope.svd.ready")
            page.locator(f'.thumb[data-run="{args.svd_run}"][data-i="{args.i - 1}"]').click()
            page.wait_for_function(
                "i => { const s = window.__linearscope.svd.shown; "
                "return Object.values(s).every(x => x.i === i && x.status === 'ok'); }",
                arg=args.i - 1)
            page.locator("section.svd-run").first.screenshot(path=str(out / "svd-gallery.png"))
            b.close()
    for name in ("index.png", "svd-gallery.png"):
        small_png(out / name)
        print(f"wrote {out / name} ({(out / name).stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
