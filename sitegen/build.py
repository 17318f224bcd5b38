"""Build the static site from stores: the steps of a build, and the page registry they drive.

Layout of the output folder (every path relative, so it works from file:// and any server)::

    index.html                     every run, provenance, comparison groups (sitegen/index_page.py)
    explorer/<run>.html            one run: input, output, residual, hover filters
    compare/<group>.html           runs on the same image (same sha256), one cursor
                                   (both: sitegen/explorer_page.py)
    svd/<run>.html, svd/compare-<group>.html   SVD pages (sitegen/svd_page.py)
    classify/<run>.html, classify/<summary>.html   classifier pages (sitegen/classify_page.py)
    classify/zoo-<group>.html      architectures compared on the same images (sitegen/zoo_page.py)
    static/*.{js,css}              the viewers (vanilla, classic scripts)
    data/<run>/meta.js             LinearScope.run({...}): what the run contains
    data/<run>/{input,output,residual}.png
    data/<run>/{columns,rows}/<ty>-<tx>.js   LinearScope.tile(...), one per site tile
                                   (sitegen/filters.py)

A build: open the stores (:func:`run_ids` names the runs), plan the filter tiles and estimate
the size (every page's ``estimate``), write the static files, the filter tiles and each run's
data, ask the pages for each run's analysis states, then let every page of the registry write
(sitegen/pages.py; the protocol: sitegen/page.py). Adding a page is one module plus one line in
sitegen/pages.py.

Writes are incremental and deterministic: a file is written only when its bytes change, the
bytes depend only on the stores and the options, and files a previous build wrote but this one
does not are removed (listed in ``.linearscope-build.json``; nothing else is ever deleted).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import sitegen
from sitegen import filters, pages as registry
from sitegen.classify_page import summary_paths
from sitegen.explorer_page import provenance, write_run_data
from sitegen.filters import encode_tile, save_cache, site_tile  # noqa: F401 (site_tile: API)
# (build() hands ``encode_tile`` to the filter steps by its name here, so a caller can swap it)
from sitegen.names import unique_ids
from sitegen.options import Options
from sitegen.page import ANALYSES, TEMPLATES, Page, Site, environment
from sitegen.reader import Store, Summary, find_stores, open_store
from sitegen.tiles import MODE_TEXT
from sitegen.util import BuildError, human, slug  # noqa: F401 (BuildError: API)
from sitegen.writer import MANIFEST, SiteWriter

STATIC_BYTES = 60_000  # templates/static/*, roughly


@dataclass
class BuildResult:
    out: Path
    estimate: int
    total: int
    written: int
    unchanged: int
    removed: int
    files: int
    runs: list = field(default_factory=list)


# -- runs ----------------------------------------------------------------------------------------

def run_ids(stores: list[Store]) -> list[str]:
    """Distinct ids (file names) of the runs, after their stores' folders (sitegen/names.py)."""
    return unique_ids([slug(st.path.name.removesuffix(".zarr")) for st in stores])


def load_stores(paths: list[Path]) -> list[Store]:
    stores = [open_store(p) for p in paths]
    stores.sort(key=lambda s: (s.image.get("sha256", ""), s.name, str(s.path)))
    return stores


def resolve_sources(sources: list[str | Path]) -> list[Path]:
    """Store paths, or folders holding stores, → store paths (sorted, unique)."""
    out: list[Path] = []
    for src in sources:
        p = Path(src)
        if (p / "zarr.json").is_file() and p.suffix == ".zarr":
            out.append(p)
        elif (p / "zarr.json").is_file():
            out.append(p)  # a store without the .zarr suffix: the reader decides
        elif p.is_dir():
            found = find_stores(p)
            if not found:
                raise BuildError(f"no stores found under {p}")
            out.extend(found)
        else:
            raise BuildError(f"{p} does not exist")
    uniq = sorted({q.resolve() for q in out})
    return uniq


def comparison_groups(runs: list[dict]) -> list[dict]:
    """Runs on the same image (same sha256 of the image file); sets ``run["group"]``."""
    groups: dict[str, list] = {}
    for r in runs:
        groups.setdefault(r["sha"], []).append(r)
    group_list = []
    gids = unique_ids([slug(sha[:12]) if sha else "unknown" for sha in sorted(groups)])
    for gid, (sha, members) in zip(gids, sorted(groups.items())):
        group_list.append({"id": gid, "sha": sha, "runs": members,
                           "image": Path(members[0]["prov"]["image_path"]).name,
                           "comparable": len(members) > 1})
    for r in runs:
        r["group"] = next(g for g in group_list if g["sha"] == r["sha"])
    return group_list


def statuses(site: Site, pages: list[Page], run: dict) -> list[dict]:
    """The run's "Analyses in this store" lines, in ANALYSES order, each from the page that
    names it (an analysis no page shows: stored, or not computed)."""
    owner = {name: p for p in pages for name in p.analyses}
    out = []
    for name, title in ANALYSES:
        if name in owner:
            out.append(owner[name].status(site, run, name, title))
        else:
            ok = run["store"].has_array(name)
            out.append({"name": name, "title": title,
                        "state": "stored (no viewer yet)" if ok else "not computed", "detail": ""})
    return out


# -- the build -----------------------------------------------------------------------------------

def check_output(out: Path) -> None:
    """Refuse, before reading any store, an output folder nothing can be written to."""
    p = out
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise BuildError(f"cannot write the site to {out}: {p} is not a folder")
    if os.statvfs(p).f_blocks == 0:  # /proc, /sys
        raise BuildError(f"cannot write the site to {out}: {p} is on a virtual file system "
                         "without storage (such as /proc or /sys)")
    if not os.access(p, os.W_OK | os.X_OK):
        raise BuildError(f"cannot write the site to {out}: {p} is not writable")


def check_region(stores: list[Store], opts: Options) -> None:
    """A region must lie inside the input image of every run with filters (it is never clipped:
    a region outside an image would silently show one edge pixel)."""
    if opts.region is None:
        return
    top, left, h, w = opts.region
    for st in stores:
        if not st.analyses:
            continue
        _, H, W = st.input_shape
        if top + h > H or left + w > W:
            raise BuildError(f"--region {top},{left},{h},{w} (top, left, height, width) leaves the "
                             f"input image of {st.name}, which is {H}×{W} pixels")


def open_runs(sources: list[str | Path], opts: Options) -> tuple[list[dict], list[Summary]]:
    """The runs of the build (one dict per store, in build order) and the dataset summaries."""
    paths, summary_paths_ = summary_paths(resolve_sources(sources))
    if not paths:
        raise BuildError("no stores found")
    stores = load_stores(paths)
    check_region(stores, opts)
    runs = []
    for st, rid in zip(stores, run_ids(stores)):
        prov = provenance(st)
        runs.append({"id": rid, "store": st, "prov": prov, "sha": prov["image_sha256"]})
    return runs, [Summary(p) for p in summary_paths_]


def plan_and_estimate(runs: list[dict], pages: list[Page], opts: Options,
                      echo) -> tuple[filters.Plan, int]:
    """Plan the filter tiles and refuse a site estimated larger than ``opts.max_bytes``."""
    tiles = filters.plan([r["store"] for r in runs], [r["id"] for r in runs], opts,
                         encode=encode_tile)
    estimate = tiles.estimate + STATIC_BYTES
    estimate += sum(p.estimate(r["store"], opts) for r in runs for p in pages)
    echo(f"sitegen: {len(runs)} run(s), {tiles.pixels} filter(s) to encode "
         f"(channels {opts.mode}, {opts.precision}, tile {opts.tile or 'auto'}); "
         f"estimated size {human(estimate)}")
    if opts.max_bytes is not None and estimate > opts.max_bytes:
        raise BuildError(f"the site would take about {human(estimate)}, more than the limit "
                         f"{human(opts.max_bytes)}: choose fewer pixels (--region, --stride), "
                         "--channels rgb or lum, or raise --max-size")
    return tiles, estimate


def write_static(w: SiteWriter) -> None:
    for f in sorted((TEMPLATES / "static").iterdir()):
        if f.is_file():
            w.write(f"static/{f.name}", f.read_bytes())


def build(sources: list[str | Path], out: str | Path, opts: Options | None = None,
          echo=print) -> BuildResult:
    opts = opts or Options()
    opts.check()
    out = Path(out)
    check_output(out)
    runs, summaries = open_runs(sources, opts)
    groups = comparison_groups(runs)
    pages = registry.pages()
    plan, estimate = plan_and_estimate(runs, pages, opts, echo)

    w = SiteWriter(out)
    common = {"mode_text": MODE_TEXT[opts.mode], "mode": opts.mode, "precision": opts.precision,
              "precision_text": precision_text(opts.precision),
              "version": getattr(sitegen, "__version__", "")}
    site = Site(w=w, env=environment(), opts=opts, runs=runs, groups=groups,
                summaries=summaries, common=common)
    write_static(w)
    site.tiles = filters.write(w, out, plan, opts, encode=encode_tile)
    write_run_data(site)
    for r in runs:
        r["status"] = statuses(site, pages, r)
    for p in pages:
        p.write(site)
    w.finish()
    save_cache(out, site.tiles.cache)
    return report(w, out, estimate, runs, echo)


def report(w: SiteWriter, out: Path, estimate: int, runs: list[dict], echo) -> BuildResult:
    echo(f"sitegen: wrote {out}/ — {human(w.total)} in {len(w.files)} files "
         f"({w.written} written, {w.unchanged} unchanged, {w.removed} removed)")
    if w.skipped:
        echo(f"sitegen: note: {w.skipped} entr{'y' if w.skipped == 1 else 'ies'} of the previous "
             f"manifest {MANIFEST} could not be this generator's files (outside the site, through "
             "a link, or not regular files) and were left alone")
    return BuildResult(out=out, estimate=estimate, total=w.total, written=w.written,
                       unchanged=w.unchanged, removed=w.removed, files=len(w.files),
                       runs=[r["id"] for r in runs])


def precision_text(precision: str) -> str:
    if precision == "float16":
        return ("display copy: each filter divided by its max |value| and stored as float16 "
                "(about 3 significant digits, exact zeros kept); exact values stay in the Zarr store")
    return "exact float32 copy of the store's values (float64 stores are rounded to float32)"
