"""Regenerate docs/img/explorer.png: the explorer of a real store, probe pinned on an output pixel.

    python docs/img/make_explorer_png.py RUNS_DIR RUN_ID Y X [--kind rows|columns] [--small] [-o docs/img/explorer.png]

Builds the site of RUNS_DIR into a temporary folder with `sitegen build`, opens the run's explorer
from file:// in Debian's Chromium (Playwright), pins the probe at pixel (Y, X) of the output (rows)
or the input (columns) through the page's permalink, and saves a screenshot of the page.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from sitegen.build import Options, build

sys.path.insert(0, str(Path(__file__).parent))
from make_site_pngs import small_png  # noqa: E402  (the script next to this one)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("run_id")
    ap.add_argument("y", type=int)
    ap.add_argument("x", type=int)
    ap.add_argument("--kind", choices=("rows", "columns"), default="rows")
    ap.add_argument("--view", default="a=0&b=0&n=f&cm=rdbu&t=lin&p=0.5")
    ap.add_argument("--small", action="store_true",
                    help="save as a 256-colour PNG (make_site_pngs.small_png), for docs/img")
    ap.add_argument("-o", "--output", default=str(Path(__file__).with_name("explorer.png")))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        build([args.runs], Path(tmp) / "site", Options(progress=False))
        d = "out" if args.kind == "rows" else "in"
        page_url = (Path(tmp) / "site" / "explorer" / f"{args.run_id}.html").as_uri()
        page_url += f"#d={d}&r=0&y={args.y}&x={args.x}&pin=1&{args.view}"
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                  args=["--no-sandbox", "--disable-gpu",
                                        "--disable-background-networking",
                                        "--disable-component-update"])
            page = b.new_page(viewport={"width": 1320, "height": 900})
            page.goto(page_url)
            page.wait_for_function("window.__linearscope.lastFilter !== null")
            page.locator("section.run").first.screenshot(path=args.output)
            if args.small:
                small_png(Path(args.output))
            b.close()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
