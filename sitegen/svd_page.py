"""The SVD pages of the site: singular values, eigen-inputs and eigen-outputs (paper Figures 5, 6,
12, 14 and 15).

For every run whose store holds a complete ``svd/`` (docs/FORMAT.md)::

    svd/<run>.html                     the run's spectrum and triplets
    svd/compare-<group>.html           runs on the same image, the same k side by side
    data/<run>/svd/meta.js             LinearScope.svdRun({...}): σ, residuals, solver attributes
    data/<run>/svd/<i>.js              LinearScope.svdTriplet(run, i, {v, u}): one triplet, loaded
                                       when shown; each vector is one blob of sitegen/tiles.py
                                       (encode_block: float16 display copy or float32)

σ and the measured residuals are written exactly (the store's values as JSON numbers); the eigen-
vectors travel in the site's precision. :func:`write` is the one call build.py makes.
"""

from __future__ import annotations

import numpy as np

from sitegen.reader import Store, SvdResult
from sitegen.tiles import encode_block

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


def triplet_script(rid: str, i: int, res: SvdResult, precision: str, js_literal) -> bytes:
    blobs = {}
    for name, vec in (("v", res.v(i)), ("u", res.u(i))):
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
    return int(plan.get("k", 0) * n * per * 4 / 3) + 20_000


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


def write(w, env, runs: list[dict], groups: list[dict], opts, common: dict, js_literal) -> None:
    """Data, run pages and compare pages of every run with a complete SVD.

    Annotates ``runs`` (``r["svd"]``: the page's meta or None) and ``groups``
    (``g["svd_compare"]``: runs with an SVD, when there are two or more) for the other templates.
    """
    for r in runs:
        st: Store = r["store"]
        res = st.svd()
        r["svd"] = None
        if res is None:
            continue
        rid = r["id"]
        meta = run_meta(st, rid, res, opts.precision)
        w.write(f"data/{rid}/svd/meta.js", f"LinearScope.svdRun({js_literal(meta)});\n".encode())
        for i in range(res.k):
            w.write(f"data/{rid}/svd/{i}.js", triplet_script(rid, i, res, opts.precision, js_literal))
        r["svd"] = meta
    for g in groups:
        members = [r for r in g["runs"] if r["svd"] is not None]
        g["svd_compare"] = members if len(members) > 1 else None
    for r in runs:
        if r["svd"] is None:
            continue
        html = env.get_template("svd.html").render(
            root="../", run=r, runs=[r], ids_json=js_literal([r["id"]]), title=TITLE, **common)
        w.write(f"svd/{r['id']}.html", html.encode())
    for g in groups:
        if not g["svd_compare"]:
            continue
        html = env.get_template("svd_compare.html").render(
            root="../", group=g, runs=g["svd_compare"],
            ids_json=js_literal([r["id"] for r in g["svd_compare"]]), title=TITLE, **common)
        w.write(f"svd/compare-{g['id']}.html", html.encode())
