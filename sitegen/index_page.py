"""The index: every run with its provenance, the datasets and the comparison groups.

    index.html

Registered last: it links to what the other pages wrote (``run["svd"]``, ``run["classify"]``,
``group["svd_compare"]``, ``site.shared["datasets"]``).
"""

from __future__ import annotations

from sitegen.page import Page, Site


class IndexPage(Page):
    name = "index"

    def write(self, site: Site) -> None:
        site.render("index.html", "index.html", root="", runs=site.runs, groups=site.groups,
                    datasets=site.shared.get("datasets", []))
