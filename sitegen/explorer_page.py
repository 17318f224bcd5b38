"""The explorer (one run) and Compare (runs on one image) pages, and the run data they read.

    explorer/<run>.html            one run: input, output, residual, hover filters (Figures 7, 13)
    compare/<group>.html           runs on the same image (same sha256), one cursor (Figure 11)
    data/<run>/meta.js             LinearScope.run({...}): what the run contains
    data/<run>/{input,output,residual}.png

The run data (:func:`write_run_data`) is written before any page: every page's template shows
the run's title, shapes and images from ``run["meta"]``. Filter tiles: sitegen/filters.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sitegen.filters import selection, site_tile
from sitegen.page import Page, Site
from sitegen.reader import KINDS, Store
from sitegen.tiles import MODE_TEXT
from sitegen.util import fmt_float, js_literal, nice_number, png_bytes, residual_rgb


def provenance(st: Store) -> dict:
    m, im = st.model, st.image
    sha = m.get("checkpoint_sha256")
    return {
        "model": m.get("id", "?"), "arch": m.get("arch", ""), "scale": nice_number(m.get("scale")),
        "checkpoint": m.get("checkpoint") or "none",
        "checkpoint_sha256": sha or "none", "checkpoint_short": (sha or "none")[:12],
        "description": m.get("description", ""),
        "rule": st.attrs.get("interpreter", "?"), "dtype": st.attrs.get("dtype", "?"),
        "created": st.attrs.get("created", "?"), "date": str(st.attrs.get("created", "?"))[:10],
        "requirement3": fmt_float(st.checks.get("requirement3_rel")),
        "requirement3_abs": fmt_float(st.checks.get("requirement3_abs")),
        "reconstruction": fmt_float(st.checks.get("reconstruction_rel")),
        "image_path": im.get("path", "?"), "image_sha256": im.get("sha256", ""),
        "image_size": im.get("size"), "crop": im.get("crop"), "device": st.attrs.get("device", "?"),
        "oom_splits": st.attrs.get("oom_splits"), "name": st.name, "kind": st.kind,
        "format_version": st.format_version,
    }


def _images(w, st: Store, rid: str) -> tuple[dict, float | None]:
    """Write the run's display PNGs; returns their names and max |r| (None: no residual)."""
    images = {}
    if st.has_array("display/input"):
        w.write(f"data/{rid}/input.png", png_bytes(st.read("display/input")))
        images["input"] = "input.png"
    resid_max = None
    if st.kind == "image":
        if st.has_array("display/output"):
            w.write(f"data/{rid}/output.png", png_bytes(st.read("display/output")))
            images["output"] = "output.png"
        resid = st.read("residual") if st.has_array("residual") else None
        if resid is not None and not np.isnan(resid).all():  # all NaN: not computed
            img, resid_max = residual_rgb(resid)
            w.write(f"data/{rid}/residual.png", png_bytes(img))
            images["residual"] = "residual.png"
    return images, resid_max


def _analyses(site: Site, st: Store, rid: str) -> dict:
    """What the viewer needs to load and draw the run's filter tiles."""
    opts, tiles = site.opts, site.tiles
    analyses = {}
    for name in KINDS:
        if name not in st.analyses:
            continue
        a = st.analyses[name]
        key = (rid, name)
        region, stride = selection(st, a, opts)
        m = tiles.gmax.get(key)
        analyses[name] = {
            "window": list(a.window), "full": a.full, "grid": list(a.grid),
            "other": list(a.other), "own": a.own_channels, "otherChannels": a.other_channels,
            "mode": opts.mode, "precision": opts.precision, "tile": site_tile(a, opts),
            "tiles": tiles.tiles.get(key, []), "region": list(region), "stride": stride,
            "pixels": tiles.counts.get(key, 0),
            "globalMax": [[float(np.float32(x)) for x in row] for row in m.tolist()]
            if m is not None else None,
        }
    return analyses


def _scores(st: Store) -> list | None:
    """A classifier's top scores with their labels (None for an image model)."""
    if st.kind == "image":
        return None
    y = np.asarray(st.read("output"), np.float64).reshape(-1)
    labels = st.model.get("labels") or [str(k) for k in range(len(y))]
    top = sorted(range(len(y)), key=lambda k: (-y[k], k))[:10]
    return [[str(labels[k]) if k < len(labels) else str(k), float(f"{y[k]:.6g}")] for k in top]


def write_run_data(site: Site) -> None:
    """Images and ``meta.js`` of every run; sets ``run["meta"]``."""
    for r in site.runs:
        st, rid, prov = r["store"], r["id"], r["prov"]
        images, resid_max = _images(site.w, st, rid)
        C, H, W = st.input_shape
        meta = {
            "id": rid, "name": st.name, "title": f"{prov['model']} on {Path(prov['image_path']).name}",
            "kind": st.kind, "scale": nice_number(st.scale), "offset": st.offset,
            "input": [C, H, W], "output": list(st.output_shape), "images": images,
            "residualMax": resid_max, "analyses": _analyses(site, st, rid), "provenance": prov,
            "modeText": MODE_TEXT[site.opts.mode], "scores": _scores(st),
        }
        site.w.write(f"data/{rid}/meta.js", f"LinearScope.run({js_literal(meta)});\n".encode())
        r["meta"] = meta


class ExplorerPage(Page):
    """One run: input, output, residual and the filters under the mouse."""

    name = "explorer"
    analyses = ("residual", "columns", "rows")

    def estimate(self, st: Store, opts) -> int:
        C, H, W = st.input_shape
        out_px = int(np.prod(st.output_shape[-2:])) if st.kind == "image" else 0
        return 3 * H * W + 6 * out_px + 40_000  # PNGs (≤ 3 bytes a pixel), pages: roughly

    def status(self, site: Site, run: dict, name: str, title: str) -> dict:
        st, meta = run["store"], run["meta"]
        if name in KINDS and name in st.analyses:
            a = st.analyses[name]
            n = site.tiles.counts.get((run["id"], name), 0)
            detail = (f"{n} of {a.grid[0] * a.grid[1]} pixels on this site, window "
                      f"{a.window[0]}×{a.window[1]}{' (full)' if a.full else ''}")
            return {"name": name, "title": title, "state": "computed" if n else "not computed",
                    "detail": detail}
        if name == "residual":
            ok = "residual" in meta["images"]
            return {"name": name, "title": title, "state": "computed" if ok else "not computed",
                    "detail": f"max |r| = {meta['residualMax']:.3g}" if ok else ""}
        ok = st.has_array(name)
        return {"name": name, "title": title,
                "state": "stored (no viewer yet)" if ok else "not computed", "detail": ""}

    def write(self, site: Site) -> None:
        for r in site.runs:
            site.render("explorer.html", f"explorer/{r['id']}.html", root="../", run=r, runs=[r],
                        ids_json=js_literal([r["id"]]))


class ComparePage(Page):
    """Runs on the same image under one cursor (written only when a group has two or more)."""

    name = "compare"

    def write(self, site: Site) -> None:
        for g in site.groups:
            if not g["comparable"]:
                continue
            site.render("compare.html", f"compare/{g['id']}.html", root="../", group=g,
                        runs=g["runs"], ids_json=js_literal([r["id"] for r in g["runs"]]))
