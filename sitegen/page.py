"""The page protocol: what every kind of site page implements, and what the build hands it.

A page kind is one module with one :class:`Page` subclass, registered in sitegen/pages.py.
The build (sitegen/build.py) calls, in this order:

1. ``estimate(store, opts)`` for every run, before anything is written: the site bytes this
   page adds for that run (the build refuses a site larger than ``--max-size``);
2. ``status(site, run, name, title)`` for each entry of :data:`ANALYSES` the page names in
   ``analyses``: the run's "Analyses in this store" line (``{"name", "title", "state",
   "detail"}``), shown by the explorer and the index;
3. ``write(site)`` once, pages in registry order: data files and HTML through ``site.w``. A page
   may annotate the runs and groups (``run["svd"]``, ``group["svd_compare"]``, …) or publish
   into ``site.shared`` for the pages after it (the index comes last and reads them all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jinja2

import sitegen
from sitegen.options import Options

TEMPLATES = Path(sitegen.__file__).resolve().parents[1] / "templates"

# Analyses a store may contain, in page order. Pages are driven by this list: what a store
# lacks is shown as "not computed". Reserved entries will get their own panels.
ANALYSES = [
    ("residual", "Residual r(x0)"),
    ("columns", "Columns: projective filters (hover the input)"),
    ("rows", "Rows: receptive filters (hover the output)"),
    ("svd", "SVD bases"),
    ("classify", "Classifier analyses: scores, contributions, discussions, votes"),
]


@dataclass
class Site:
    """What a build hands to its pages.

    ``runs``: one dict per store (``id``, ``store``, ``prov``, ``sha``, ``group``; ``meta``
    once the run data is written; ``status``), in build order. ``groups``: runs on the same
    image (``id``, ``sha``, ``runs``, ``image``, ``comparable``). ``tiles``: the explorer's
    filter tiles (sitegen/filters.Written). ``common``: template values of every page."""
    w: object  # sitegen.writer.SiteWriter
    env: jinja2.Environment
    opts: Options
    runs: list[dict]
    groups: list[dict]
    summaries: list = field(default_factory=list)
    common: dict = field(default_factory=dict)
    tiles: object = None
    shared: dict = field(default_factory=dict)

    def render(self, template: str, rel: str, **values) -> None:
        """Render a template into the site file ``rel`` (with the values every page has)."""
        html = self.env.get_template(template).render(**values, **self.common)
        self.w.write(rel, html.encode())


class Page:
    """One kind of site page (see the module's docstring for when each method is called)."""

    name = ""
    analyses: tuple[str, ...] = ()  # the ANALYSES entries whose status this page gives

    def estimate(self, store, opts: Options) -> int:
        return 0

    def status(self, site: Site, run: dict, name: str, title: str) -> dict:
        raise NotImplementedError(f"page {self.name} names {name} but gives no status")

    def write(self, site: Site) -> None:
        raise NotImplementedError


def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                              autoescape=jinja2.select_autoescape(["html"]),
                              keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
