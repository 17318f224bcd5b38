"""The classifier pages of the site (paper §4 Case 1 and §8.A; docs/FORMAT.md "Classifier analyses").

    classify/<run>.html          top-k scores with label names, F·x0, r and the residual share,
                                 class rows; layer-wise contributions (Figure 4); pixel discussions
                                 and votes (Figures 3, 9); clean vs FGSM side by side (Figure 10)
    classify/<summary>.html      a dataset: Table 4 (residual share, mean ± std) and Figure 8
                                 (contributions normalised by the score, mean ± std band)
    data/<run>/classify.js       LinearScope.classifyData({...}): the images of the page as blobs
    data/<run>/adversarial.png   the FGSM image

Numbers are written into the HTML at build time (6 significant digits); images travel as
:func:`sitegen.tiles.encode_block` blobs (the site's precision) that ``static/classify.js``
decodes with ``LinearScope.util`` and draws with the diverging colormap. A map's pixel is the sum
of its channels (the value the votes compare).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from markupsafe import Markup, escape

from sitegen.names import unique_ids
from sitegen.page import Page, Site
from sitegen.reader import Classify, Summary, classify_complete, read_classify
from sitegen.tiles import encode_block
from sitegen.util import js_literal, png_bytes, slug

#: Largest number of term names written under the bars (hover shows every name).
MAX_TICKS = 24


def num(v) -> str:
    """A stored number as the page shows it: 6 significant digits, 'undefined' for NaN."""
    v = float(v)
    return "undefined" if math.isnan(v) else f"{v:.6g}"


def pct(v) -> str:
    v = float(v)
    return "undefined" if math.isnan(v) else f"{100 * v:.1f} %"


def exact(v):
    """A float for the page's JSON (NaN as null): what the browser tests compare with the store."""
    v = float(v)
    return None if math.isnan(v) else v


def _blob(values: np.ndarray, precision: str) -> list:
    scale, blob = encode_block(np.asarray(values, np.float32), precision)
    return [scale, blob]


def _max_abs(a: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    finite = a[np.isfinite(a)]
    return float(np.abs(finite).max()) if finite.size else 0.0


# -- SVG charts (written at build time: deterministic, readable without JavaScript) ---------------

def bars_svg(terms: list[str], values: np.ndarray, score: float, chart_id: str) -> Markup:
    """Figure 4: one bar per term (input first, sites in forward order), height = term / score;
    each bar carries its term name and exact value for the hover readout."""
    n = len(terms)
    bw = max(3, min(28, 900 // max(n, 1)))
    left, top, h = 56, 12, 200
    width = left + n * bw + 12
    height = top + h + (90 if n <= MAX_TICKS else 24)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.asarray(values, np.float64) / score if score != 0 else np.full(n, np.nan)
    m = _max_abs(norm) or 1.0
    y0 = top + h / 2
    parts = [f'<svg class="bars" id="{escape(chart_id)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="layer-wise contributions">',
             f'<line class="axis" x1="{left}" y1="{y0}" x2="{width - 8}" y2="{y0}"/>',
             f'<text class="tick" x="{left - 4}" y="{top + 4}" text-anchor="end">'
             f'{m * 100:+.3g} %</text>',
             f'<text class="tick" x="{left - 4}" y="{y0 + 4}" text-anchor="end">0</text>',
             f'<text class="tick" x="{left - 4}" y="{top + h}" text-anchor="end">'
             f'{-m * 100:+.3g} %</text>']
    every = 1 if n <= MAX_TICKS else n  # names under the bars only when they fit
    for i, (t, v, r) in enumerate(zip(terms, values, norm)):
        x = left + i * bw
        hgt = 0.0 if not np.isfinite(r) else abs(r) / m * (h / 2)
        y = y0 - hgt if r >= 0 else y0
        kind = "input" if i == 0 else ("pos" if v >= 0 else "neg")
        label = f"{t}: {num(v)} ({pct(r)} of the score)"
        parts.append(
            f'<g class="bar" data-i="{i}" data-term="{escape(t)}" data-value="{float(v)!r}">'
            f'<rect class="hit" x="{x}" y="{top}" width="{bw}" height="{h}"/>'
            f'<rect class="{kind}" x="{x + 0.5}" y="{y:.2f}" width="{max(bw - 1, 1)}" '
            f'height="{max(hgt, 0.5):.2f}"/><title>{escape(label)}</title></g>')
        if i % every == 0 and n <= MAX_TICKS:
            parts.append(f'<text class="name" transform="translate({x + bw / 2},{top + h + 6}) '
                         f'rotate(60)">{escape(t)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def band_svg(terms: list[str], series: list[tuple[str, np.ndarray, np.ndarray]]) -> Markup:
    """Figure 8: mean (line and points) ± std (shaded band) of each series per term."""
    n = len(terms)
    step = max(6, min(40, 900 // max(n, 1)))
    left, top, h = 56, 12, 220
    width = left + max(n - 1, 1) * step + 24
    height = top + h + (90 if n <= MAX_TICKS else 24)
    lo = min([float(np.nanmin(mu - sd)) for _, mu, sd in series if np.isfinite(mu - sd).any()]
             + [0.0])
    hi = max([float(np.nanmax(mu + sd)) for _, mu, sd in series if np.isfinite(mu + sd).any()]
             + [0.0])
    span = (hi - lo) or 1.0

    def y(v):
        return top + (hi - v) / span * h

    def x(i):
        return left + 12 + i * step

    parts = [f'<svg class="band" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="contributions normalised by the score, mean ± std">',
             f'<line class="axis" x1="{left}" y1="{y(0):.2f}" x2="{width - 8}" y2="{y(0):.2f}"/>',
             f'<text class="tick" x="{left - 4}" y="{top + 4}" text-anchor="end">{hi:+.3g}</text>',
             f'<text class="tick" x="{left - 4}" y="{top + h}" text-anchor="end">{lo:+.3g}</text>']
    bands, lines, points = [], [], []
    for key, mu, sd in series:  # bands below lines below points (which take the hover)
        ok = [i for i in range(n) if np.isfinite(mu[i])]
        upper = " ".join(f"{x(i):.2f},{y(mu[i] + np.nan_to_num(sd[i])):.2f}" for i in ok)
        lower = " ".join(f"{x(i):.2f},{y(mu[i] - np.nan_to_num(sd[i])):.2f}" for i in reversed(ok))
        bands.append(f'<polygon class="sd {key}" points="{upper} {lower}"/>')
        lines.append(f'<polyline class="mean {key}" points="'
                     + " ".join(f"{x(i):.2f},{y(mu[i]):.2f}" for i in ok) + '"/>')
        for i in ok:
            label = f"{terms[i]}: {num(mu[i])} ± {num(sd[i])}"
            points.append(f'<circle class="pt {key}" cx="{x(i):.2f}" cy="{y(mu[i]):.2f}" r="3.5" '
                          f'data-term="{escape(terms[i])}" data-mean="{float(mu[i])!r}" '
                          f'data-std="{float(sd[i])!r}" data-series="{key}">'
                          f'<title>{escape(label)}</title></circle>')
    parts += bands + lines + points
    if n <= MAX_TICKS:
        for i, t in enumerate(terms):
            parts.append(f'<text class="name" transform="translate({x(i)},{top + h + 6}) '
                         f'rotate(60)">{escape(t)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


# -- one run ----------------------------------------------------------------------------------------

def _panel(c: Classify, labels: list[str], key: str, title: str, image: str,
           precision: str) -> tuple[dict, dict]:
    """What the template shows of one group (clean or FGSM) and its part of the JS payload."""
    a, arr = c.attrs, c.arrays
    top = [int(k) for k in arr["top"]]
    scores = arr["scores"]
    terms = list(a["terms"])
    rows_tbl, charts, payload_maps = [], [], []
    votes = arr["votes"]
    for i, k in enumerate(top):
        row_map = np.asarray(arr["rows"][i], np.float64).sum(0)
        disc_map = np.asarray(arr["discussions"][i], np.float64).sum(0)
        rows_tbl.append({
            "rank": i + 1, "label": labels[k] if k < len(labels) else str(k), "index": k,
            "score": num(scores[k]), "input": num(arr["input_term"][i]),
            "residual": num(arr["residual"][i]), "share": pct(arr["residual_share"][i]),
            "votes": int(arr["vote_counts"][k]), "factor": num(arr["discussion_factor"][i]),
            "row_max": num(_max_abs(row_map)), "disc_max": num(_max_abs(disc_map)),
        })
        charts.append(bars_svg(terms, arr["contributions"][i], float(scores[k]),
                               f"bars-{key}-{i}"))
        payload_maps.append({"row": _blob(row_map, precision),
                             "discussion": _blob(disc_map, precision)})
    numbers = {
        "top": top, "scores": [exact(v) for v in scores],
        "input_term": [exact(v) for v in arr["input_term"]],
        "residual": [exact(v) for v in arr["residual"]],
        "residual_share": [exact(v) for v in arr["residual_share"]],
        "discussion_factor": [exact(v) for v in arr["discussion_factor"]],
        "contributions": [[exact(v) for v in r] for r in arr["contributions"]],
        "terms": terms, "vote_counts": [int(v) for v in arr["vote_counts"]],
    }
    ranked = sorted(range(len(scores)), key=lambda k: -int(arr["vote_counts"][k]))
    most_votes = [{"label": labels[k] if k < len(labels) else str(k), "votes": int(
        arr["vote_counts"][k])} for k in ranked[:5] if arr["vote_counts"][k] > 0]
    view = {"key": key, "title": title, "image": image, "rows": rows_tbl, "charts": charts,
            "terms": len(terms) - 1, "conservation": num(a["conservation"]["max_abs"]),
            "most_votes": most_votes, "pixels": int(votes.size),
            "shape": list(votes.shape)}
    payload = {"key": key, "maps": payload_maps, "votes": _blob(votes.astype(np.float32),
                                                                "float32"),
               "top": top, "numbers": numbers}
    return view, payload


def run_page(st, rid: str, c: Classify, precision: str, write) -> dict:
    """Write the data of one run's classifier page; returns the template's view of it."""
    labels = [str(v) for v in (c.attrs.get("labels") or st.model.get("labels") or [])]
    if not labels:
        labels = [str(k) for k in range(len(c.arrays["scores"]))]
    panels, payloads = [], []
    view, payload = _panel(c, labels, "clean", "Clean image x0", "input.png", precision)
    panels.append(view)
    payloads.append(payload)
    adv = None
    if c.adversarial is not None:
        a = c.adversarial.attrs
        write(f"data/{rid}/adversarial.png", png_bytes(c.adversarial.arrays["display_input"]))
        view, payload = _panel(c.adversarial, labels, "adversarial",
                               f"FGSM, ε = {a['fgsm_eps']:g}", "adversarial.png", precision)
        panels.append(view)
        payloads.append(payload)
        adv = {"eps": f"{a['fgsm_eps']:g}", "label": labels[a["label"]],
               "clean": labels[a["clean_top1"]], "top1": labels[a["top1"]],
               "changed": bool(a["changed"])}
    H, W = c.arrays["votes"].shape
    data = {"id": rid, "precision": precision, "shape": [int(H), int(W)], "panels": payloads}
    write(f"data/{rid}/classify.js", f"LinearScope.classifyData({js_literal(data)});\n".encode())
    return {"panels": panels, "adversarial": adv, "labels": len(labels),
            "top_k": int(c.attrs["top_k"]), "share_rule": c.attrs.get("share_rule", "")}


# -- the pages --------------------------------------------------------------------------------------

def summary_view(s: Summary, run_by_store: dict[str, dict], sid: str | None = None) -> dict:
    a, arr = s.attrs, s.arrays
    terms = list(a["terms"])
    series = [("clean", arr["contributions_mean"], arr["contributions_std"])]
    table = [{"what": "clean", "mean": pct(a["residual_share_mean"]),
              "std": pct(a["residual_share_std"]), "n": int(a["count"])}]
    if s.adversarial is not None:
        b, barr = s.adversarial
        index = {t: i for i, t in enumerate(b["terms"])}
        mean = np.array([barr["contributions_mean"][index[t]] if t in index else np.nan
                         for t in terms])
        std = np.array([barr["contributions_std"][index[t]] if t in index else np.nan
                        for t in terms])
        series.append(("adversarial", mean, std))
        table.append({"what": "FGSM", "mean": pct(b["residual_share_mean"]),
                      "std": pct(b["residual_share_std"]), "n": int(b["count"])})
    stats = [{"term": t, "mean": num(m), "std": num(d)}
             for t, m, d in zip(terms, arr["contributions_mean"], arr["contributions_std"])]
    labels = [str(v) for v in ((a.get("model") or {}).get("labels") or [])]
    images = []
    for i, name in enumerate(a.get("stores", [])):
        r = run_by_store.get(name)
        images.append({"store": name, "id": r["id"] if r else None,
                       "has_page": bool(r and r.get("classify")),
                       "top1": _label(labels, int(arr["top1"][i])),
                       "share": pct(arr["residual_share"][i])})
    model = (a.get("model") or {}).get("id", "?")
    return {"id": sid or slug_summary(s), "name": s.name, "model": model, "table": table,
            "plot": band_svg(terms, series), "stats": stats, "images": images,
            "share_rule": a.get("share_rule", ""), "std_rule": a.get("std", ""),
            "adversarial": s.adversarial is not None}


def _label(labels: list[str], k: int) -> str:
    return labels[k] if 0 <= k < len(labels) else str(k)


def slug_summary(s: Summary) -> str:
    return slug(s.path.name.removesuffix(".zarr"))


class ClassifyPage(Page):
    """Classifier pages of every run with classifier analyses and of every summary."""

    name = "classify"
    analyses = ("classify",)

    def status(self, site: Site, run: dict, name: str, title: str) -> dict:
        ok = classify_complete(run["store"].path)
        return {"name": name, "title": title, "state": "computed" if ok else "not computed",
                "detail": "see the classifier page" if ok else ""}

    def write(self, site: Site) -> None:
        """Sets ``run["classify"]`` (the page's view, or None) for the explorer and the index;
        publishes the summaries' views as ``site.shared["datasets"]`` for the index."""
        for r in site.runs:
            c = read_classify(r["store"])
            r["classify"] = None
            if c is None:
                continue
            r["classify"] = run_page(r["store"], r["id"], c, site.opts.precision, site.w.write)
        # a summary names its images' stores by folder name: a name two runs share links to neither
        names = [r["store"].path.name for r in site.runs]
        by_store = {n: r for n, r in zip(names, site.runs) if names.count(n) == 1}
        # summaries' pages share classify/ with the runs' pages: ids distinct from both
        sids = unique_ids([slug_summary(s) for s in site.summaries],
                          taken={r["id"] for r in site.runs})
        views = [summary_view(s, by_store, sid) for s, sid in zip(site.summaries, sids)]
        for r in site.runs:
            if r["classify"] is not None:
                site.render("classify.html", f"classify/{r['id']}.html", root="../", run=r)
        for v in views:
            site.render("summary.html", f"classify/{v['id']}.html", root="../", summary=v)
        site.shared["datasets"] = views


def summary_paths(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(run stores, summary stores) of the build's sources."""
    from sitegen.reader import is_summary

    return [p for p in paths if not is_summary(p)], [p for p in paths if is_summary(p)]
