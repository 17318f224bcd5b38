"""`precompute verify`: check every chunk of a store against its checksums, then recompute a
random sample of it from its recorded model and image.

A store may come from someone else: it names its model, and a ``python:FILE:FUNC`` model is code
that recomputing would import and run. That needs the user's consent (``trust_code``, the
``--trust-code`` flag); ``integrity_only`` checks the store without loading any model.

Every sampled column or row is recomputed with one impulse per probe (the paper's probes, eq. 5
and 6), whatever method the store used (compressed probing, rows read out of columns), so the
reported difference checks the compressed method too (0 in float64 up to summation order).
Beyond the samples, every stored tile is checked whole by Freivalds' randomized test
(:func:`precompute.freivalds.stored_tile`: ``Σ v_j·window_j`` against ``F·v`` in one pass per
tile, over the filters whose window holds the whole filter).
"""

from __future__ import annotations

import numpy as np

from precompute import store as S
from precompute.errors import UserError
from precompute.engine import Engine
from precompute.inputs import prepare, resolve_device, set_precision


def require_consent(st: S.Store, trust_code: bool) -> None:
    """Refuse to run the Python code a store names as its model without ``--trust-code``."""
    code = S.model_code(st.attrs)
    if code is not None and not trust_code:
        raise UserError(
            f"{st.path} names Python code as its model ({code}); recomputing would import and run "
            "it. Read that code, then run again with --trust-code to allow it (or use "
            "--integrity-only, which runs nothing from the store)")


def _how(st: S.Store, name: str) -> str:
    """How the store computed ``name`` (compressed probing, docs/FORMAT.md "Probing")."""
    p = (st.attrs.get("probing") or {}).get(name) or {"method": "single"}
    if p["method"] == "single":
        return ""
    what = "compressed probes" if p["method"] == "compressed" else "read out of columns"
    return f" (stored: {what}, period {p['period'][0]}×{p['period'][1]})"


def verify_store(path: str, samples: int = 8, seed: int = 0, device: str = "auto",
                 integrity_only: bool = False, trust_code: bool = False) -> tuple[str, bool]:
    """Check the checksums of every chunk, then recompute ``samples`` random stored columns and
    rows (all their channels) of intact tiles from the model and image recorded in the store,
    and the classifier analyses' scores, class rows and terms
    (:func:`precompute.classify.verify_lines`); report the maximum differences. Returns
    (text, ok)."""
    from precompute.interpreter import LinearInterpreter

    if samples < 0:
        raise UserError(f"--samples: expected a number of pixels ≥ 0, got {samples}")
    dev = resolve_device(device)
    st = S.open_store(path)
    if not integrity_only:
        require_consent(st, trust_code)
    report = st.check_integrity()
    lines = [report.text()]
    if integrity_only:
        lines.append("verify: " + ("OK" if report.ok else "FAILED") + " (integrity only)")
        return "\n".join(lines), report.ok
    try:
        cfg = st.attrs["config"]
        set_precision(dev, cfg.get("precision", "ieee"))
        prep = prepare(cfg, None, dev)
    except (KeyError, TypeError, AttributeError) as e:
        raise S.StoreError(f"{st.path}: its `config` attribute is damaged or incomplete "
                           f"({type(e).__name__}: {str(e)[:80]})") from None
    stored = _readable(st, "input")
    x_diff = float(np.abs(prep.x0[0].cpu().numpy() - stored).max()) if stored is not None else np.inf
    lines.append(f"input x0: max |rebuilt − stored| = {x_diff:.3g}"
                 + ("" if x_diff == 0 else "  (the image or preprocessing changed!)"
                    if stored is not None else "  (the stored input is damaged)"))
    k = max(int(a.get("batch", 16)) for a in st.attrs["analyses"].values() if isinstance(a, dict)) \
        if st.layouts else 16
    li = LinearInterpreter(prep.spec.module, prep.x0, rule=st.attrs["interpreter"], batch=k,
                           exact=cfg.get("precision", "ieee") == "ieee")
    eng = Engine(li, dev, prep.dtype)
    stored = _readable(st, "residual") if "residual" in st.group else None
    if stored is not None:
        r = li.residual.detach().reshape(st.out_shape).cpu().numpy()
        lines.append(f"residual: max |recomputed − stored| = {np.abs(r - stored).max():.3g}")
    tol = 1e-9 if st.dtype == np.float64 else 1e-4
    ok = x_diff == 0 and report.ok
    rng = np.random.default_rng(seed)
    for name, lay in st.layouts.items():
        org = _intact_origins(st, name, report.damaged_tiles.get(name, set()))
        done = np.argwhere(org[..., 0] >= 0)
        if len(done) == 0:
            lines.append(f"{name}: nothing computed yet")
            continue
        pick = done[rng.choice(len(done), size=min(samples, len(done)), replace=False)]
        c_probe, h, w = lay.probe_shape
        worst = worst_rel = worst_out = 0.0
        for i, j in pick:
            flat = [(c * h + int(i)) * w + int(j) for c in range(c_probe)]
            full = eng.probe(flat, name).detach().cpu().numpy()
            oy, ox = lay.origin(int(i), int(j))
            if (oy, ox) != tuple(org[i, j]):
                lines.append(f"{name} ({i}, {j}): stored origin {tuple(org[i, j])} ≠ rule {(oy, ox)}")
                ok = False
            got = full[:, :, oy:oy + lay.window[0], ox:ox + lay.window[1]]
            want = st.group[name][int(i), int(j)]
            d = float(np.abs(got - want).max())
            scale = float(np.abs(want).max()) or 1.0
            worst, worst_rel = max(worst, d), max(worst_rel, d / scale)
            total = np.square(full, dtype=np.float64).sum(axis=(1, 2, 3))
            inside = np.square(got, dtype=np.float64).sum(axis=(1, 2, 3))
            frac = np.where(total > 0, 1 - inside / np.where(total > 0, total, 1), 0)
            worst_out = max(worst_out, float(np.abs(frac - st.outside(name, int(i), int(j))).max()))
        good = worst_rel <= tol and worst_out <= max(tol, 1e-6)
        ok &= good
        lines.append(f"{name}: {len(pick)} pixels × {c_probe} channels recomputed with "
                     f"single-impulse probes{_how(st, name)}, max |Δ| = "
                     f"{worst:.3g} (relative {worst_rel:.3g}, tolerance {tol:g}), outside "
                     f"fraction max |Δ| = {worst_out:.2g} " + ("OK" if good else "MISMATCH"))
    for name, lay in st.layouts.items():
        more, good = _freivalds_lines(st, eng, name, lay, report.damaged_tiles.get(name, set()))
        lines += more
        ok &= good
    from precompute import whole_f
    from precompute.stored_operator import verify_lines as stored_f_lines

    more, good = stored_f_lines(st)
    lines += more
    ok &= good
    more, good = whole_f.verify_lines(st, prep, eng, tol, samples, seed)
    lines += more
    ok &= good
    lines.append("verify: " + ("OK" if ok else "FAILED"))
    return "\n".join(lines), ok


def _freivalds_lines(st: S.Store, eng: Engine, name: str, lay, damaged: set) -> tuple[list[str], bool]:
    """Freivalds' test of every stored, intact tile of ``name`` (:func:`freivalds.stored_tile`),
    one line per tile: the whole stored F, not a sample."""
    from precompute import freivalds as Fv

    tol = Fv.tolerance(eng)
    lines, ok = [], True
    for t in st.done_tiles(name):
        if (t.ty, t.tx) in damaged:
            continue
        ys, xs = slice(t.y0, t.y1), slice(t.x0, t.x1)
        err, n_full, n_stored = Fv.stored_tile(
            eng, lay, st.group[name][ys, xs], st.group[f"{name}_origin"][ys, xs],
            st.group[f"{name}_outside"][ys, xs], t, tol)
        where = f"{name} tile ({t.ty}, {t.tx}): Freivalds"
        if err is None:
            lines.append(f"{where}: no window of its {n_stored} filters holds the whole filter "
                         "(outside > 0): checked by the samples only")
            continue
        good = err <= tol
        ok &= good
        part = "" if n_full == n_stored else (f" ({n_stored - n_full} with outside > 0 left to "
                                              "the samples)")
        lines.append(f"{where} over {n_full} of {n_stored} filters{part}: relative error "
                     f"{err:.2g} (tolerance {tol:.2g}) " + ("OK" if good else "MISMATCH"))
    return lines, ok


def _intact_origins(st: S.Store, name: str, damaged: set) -> np.ndarray:
    """Window origins of the pixels of done, intact tiles (−1 elsewhere), read tile by tile so
    that a damaged chunk is never decoded."""
    arr = st.group[f"{name}_origin"]
    org = np.full(arr.shape, -1, np.int32)
    for t in st.done_tiles(name):
        if (t.ty, t.tx) not in damaged:
            org[t.y0:t.y1, t.x0:t.x1] = arr[t.y0:t.y1, t.x0:t.x1]
    return org


def _readable(st: S.Store, name: str) -> np.ndarray | None:
    """A small array, or None when it cannot be decoded (the integrity report names why)."""
    try:
        return st.array(name)
    except Exception:  # noqa: BLE001 — a checksum error or damaged metadata
        return None
