"""The SVD pages of the site: singular values, eigen-inputs and eigen-outputs (paper Figures 5, 6,
12, 14 and 15).

For every run whose store holds a complete ``svd/`` (docs/FORMAT.md)::

    svd/<run>.html                     the run's spectrum and triplets
    svd/compare-<group>.html           runs on the same image, the same k side by side
    data/<run>/svd/meta.js             LinearScope.svdRun({...}): σ, residuals, solver attributes
    data/<run>/svd/<i>.js              LinearScope.svdTriplet(run, i, {v, u}): one triplet, loaded
                                       when shown; each vector is one blob of sitegen/tiles.py
                                       (encode_block: float16 display copy or float32)
    data/<run>/svd-thumbs/{v,u}<i>.png the gallery's thumbnails (sitegen/svd_gallery.py)

σ and the measured residuals are written exactly (the store's values as JSON numbers); the eigen-
vectors travel in the site's precision. :class:`SvdPage` is its entry in the page registry (sitegen/pages.py).
"""

from __future__ import annotations

import numpy as np

from sitegen.reader import Store, SvdResult
from sitegen import svd_gallery
from sitegen.page import Page, Site
from sitegen.tiles import encode_block
from sitegen.util import js_literal

TITLE = "SVD: eigen-inputs, eigen-outputs and singular values"


def _num(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def run_meta(st: Store, rid: str, res: SvdResult, precision: str) -> dict:
    """What the page needs about one run's SVD (exact σ and residuals, solver attributes)."""
    a = res.attrs
    meta = {
        "id": rid, "k": res.k, "kind": st.kind, "precision": precision,
        "input": list(st.input_shape), "output": list(st.output_shape),
        "sigma": [_num(s) for s in res.sigma],
        "residual": [[_num(r[0]), _num(r[1])] for r in res.residual],
        "method": a.get("method"), "block": a.get("block"), "tol": a.get("tol"),
        "calls": a.get("calls"), "residualCalls": a.get("residual_calls"),
        "wallTime": a.get("wall_time"), "converged": a.get("converged"),
        "sign": a.get("sign_convention"),
        "operator": a.get("operator", "network"), "operatorSource": a.get("operator_source"),
    }
    if st.kind != "image":
        labels = [str(x) for x in (st.model.get("labels") or [])]
        meta["labels"] = labels
        y = np.asarray(st.read("output"), np.float64).reshape(-1)
        r = (np.asarray(st.read("residual"), np.float64).reshape(-1)
             if st.has_array("residual") else np.full_like(y, np.nan))
        top = sorted(range(len(y)), key=lambda j: (-y[j], j))[:5]
        meta["scores"] = [[labels[j] if j < len(labels) else str(j), f"{y[j]:.6g}",
                           f"{r[j]:.6g}" if np.isfinite(r[j]) else "not computed"] for j in top]
    return meta


def triplet_script(rid: str, i: int, v: np.ndarray, u: np.ndarray, precision: str) -> bytes:
    blobs = {}
    for name, vec in (("v", v), ("u", u)):
        scale, blob = encode_block(np.nan_to_num(np.asarray(vec, np.float64)), precision)
        blobs[name] = [scale, blob]
    head = js_literal([rid, int(i)])[1:-1]
    return f"LinearScope.svdTriplet({head},{js_literal(blobs)});\n".encode("ascii")


def estimate(st: Store, precision: str) -> int:
    """Rough site bytes of a run's SVD (float16 noise compresses little; base64 adds 1/3)."""
    plan = (st.attrs.get("analyses") or {}).get("svd")
    if not plan:
        return 0
    per = 2 if precision == "float16" else 4
    n = int(np.prod(st.input_shape)) + int(np.prod(st.output_shape))
    k = int(plan.get("k", 0))
    thumbs = svd_gallery.estimate(k, st.input_shape, st.output_shape, st.kind == "image")
    return int(k * n * per * 4 / 3) + 20_000 + thumbs


def status(st: Store, title: str) -> dict:
    """The run's "Analyses in this store" entry for the SVD."""
    plan = (st.attrs.get("analyses") or {}).get("svd")
    res = st.svd()
    if res is not None:
        a = res.attrs
        return {"name": "svd", "title": title, "state": "computed",
                "detail": f"top-{res.k} by {a.get('method')}, σ_1 = {res.sigma[0]:.4g}, "
                          + ("converged" if a.get("converged") else "not converged")}
    return {"name": "svd", "title": title,
            "state": "not complete" if plan else "not computed", "detail": ""}


class SvdPage(Page):
    """The SVD page of every run with a complete SVD, and a compare page per image with two."""

    name = "svd"
    analyses = ("svd",)

    def estimate(self, st: Store, opts) -> int:
        return estimate(st, opts.precision)

    def status(self, site: Site, run: dict, name: str, title: str) -> dict:
        return status(run["store"], title)

    def write(self, site: Site) -> None:
        """Data, run pages and compare pages of every run with a complete SVD.

        Annotates the runs (``r["svd"]``: the page's meta or None) and the groups
        (``g["svd_compare"]``: runs with an SVD, when there are two or more) for the other pages.
        """
        write_data(site.w, site.runs, site.opts.precision)
        for g in site.groups:
            members = [r for r in g["runs"] if r["svd"] is not None]
            g["svd_compare"] = members if len(members) > 1 else None
        for r in site.runs:
            if r["svd"] is not None:
                site.render("svd.html", f"svd/{r['id']}.html", root="../", run=r, runs=[r],
                            ids_json=js_literal([r["id"]]), title=TITLE)
        for g in site.groups:
            if g["svd_compare"]:
                site.render("svd_compare.html", f"svd/compare-{g['id']}.html", root="../",
                            group=g, runs=g["svd_compare"],
                            ids_json=js_literal([r["id"] for r in g["svd_compare"]]), title=TITLE)


def write_data(w, runs: list[dict], precision: str) -> None:
    """``meta.js``, one script and the gallery's thumbnails per triplet of every run with a
    complete SVD; sets ``r["svd"]`` (the meta) and ``r["svd_gallery"]`` (the thumbnails)."""
    for r in runs:
        st: Store = r["store"]
        res = st.svd()
        r["svd"] = r["svd_gallery"] = None
        if res is None:
            continue
        rid = r["id"]
        meta = run_meta(st, rid, res, precision)
        w.write(f"data/{rid}/svd/meta.js", f"LinearScope.svdRun({js_literal(meta)});\n".encode())
        gallery = []
        for i in range(res.k):
            v, u = res.v(i), res.u(i)
            w.write(f"data/{rid}/svd/{i}.js", triplet_script(rid, i, v, u, precision))
            entry = svd_gallery.write_thumbs(w, rid, i, v, u, st.kind == "image",
                                             meta.get("labels", []))
            entry["sigma"] = f"{res.sigma[i]:.4g}"
            gallery.append(entry)
        r["svd"] = meta
        r["svd_gallery"] = gallery
