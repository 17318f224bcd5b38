"""The index, laid out like the paper's supplementary material: one section per story
(super-resolution, image-to-image, classification) with thumbnails of its runs and their pages and
one sentence of what the paper found there, the comparison groups that compare something, then
the full table of runs with their provenance.

    index.html

Registered last: it links to what the other pages wrote (``run["svd"]``, ``run["svd_gallery"]``,
``run["classify"]``, ``group["svd_compare"]``, ``site.shared["datasets"]``).
"""

from __future__ import annotations

import re

from sitegen.page import Page, Site

#: The index's sections, in the paper's order of Case 2, Case 3 and Case 1 (the site's
#: stories start with images): key, title, what the paper found there (one sentence).
SECTIONS = [
    ("super-resolution", "Super-resolution",
     "The paper finds the filters of super-resolution networks local and adapted to the image "
     "with small residuals, and their SVD answering high-frequency, Gabor-like eigen-inputs with "
     "pieces of the image (an eye, a corner) as eigen-outputs, better models (EDSR against "
     "PixelShuffle) focusing on whole objects (Figures 5, 6, 11, 12)."),
    ("image-to-image", "Image-to-image",
     "In image-to-image networks (CycleGAN, instance normalisation) the paper finds larger "
     "filters with strong off-diagonals that copy and move content — a single pixel can create a "
     "template such as a window box — eigen-outputs less sparse than in super-resolution, and "
     "larger residuals (Figures 7, 13, 14, 15)."),
    ("classification", "Classification",
     "For classifiers the paper finds that the residual — the masked biases — carries much of "
     "each score, more in better architectures (Table 3), with layer-wise contributions peaking "
     "early and just before the fully connected layers (Figures 4, 8), and pixels whose "
     "discussions look random but whose votes focus on the object (Figures 3, 9, 10)."),
]


def section_of(run: dict) -> str:
    """A run's section, from its store (docs/FORMAT.md): a vector model classifies; an image
    model with scale > 1 (``geometry.scale``) is an upscaler; any other image model (same size,
    e.g. CycleGAN's generators with s = 1) translates an image into an image."""
    st = run["store"]
    if st.kind != "image":
        return "classification"
    return "super-resolution" if (st.scale or 1) > 1 else "image-to-image"


def natural_key(text: str) -> list:
    """Sort key in which digits-2 comes before digits-10."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower())
            for t in re.split(r"(\d+)", text) if t]


def by_name(runs: list[dict]) -> list[dict]:
    return sorted(runs, key=lambda r: (natural_key(r["prov"]["name"]), natural_key(r["id"])))


def sections(site: Site) -> list[dict]:
    """The sections that have runs (or datasets), each with its runs sorted by name and the
    comparison groups (two or more runs on one image) that hold one of them."""
    out = []
    for key, title, finding in SECTIONS:
        runs = by_name([r for r in site.runs if section_of(r) == key])
        datasets = site.shared.get("datasets", []) if key == "classification" else []
        if not runs and not datasets:
            continue
        ids = {r["id"] for r in runs}
        groups = [g for g in site.groups
                  if g["comparable"] and any(m["id"] in ids for m in g["runs"])]
        out.append({"key": key, "title": title, "finding": finding, "runs": runs,
                    "groups": groups, "datasets": datasets})
    return out


class IndexPage(Page):
    name = "index"

    def write(self, site: Site) -> None:
        site.render("index.html", "index.html", root="", runs=by_name(site.runs),
                    groups=site.groups, sections=sections(site),
                    datasets=site.shared.get("datasets", []))
