"""`precompute verify`: recompute a random sample of a store from its recorded model and image."""

from __future__ import annotations

import numpy as np

from precompute import store as S
from precompute.engine import Engine
from precompute.inputs import prepare, resolve_device, set_precision



def verify_store(path: str, samples: int = 8, seed: int = 0, device: str = "auto") -> tuple[str, bool]:
    """Recompute ``samples`` random stored columns and rows (all their channels) from the model
    and image recorded in the store; report the maximum differences. Returns (text, ok)."""
    from precompute.interpreter import LinearInterpreter

    st = S.open_store(path)
    cfg = st.attrs["config"]
    dev = resolve_device(device)
    set_precision(dev, cfg.get("precision", "ieee"))
    prep = prepare(cfg, None, dev)
    lines = []
    x_diff = float(np.abs(prep.x0[0].cpu().numpy() - st.array("input")).max())
    lines.append(f"input x0: max |rebuilt − stored| = {x_diff:.3g}"
                 + ("" if x_diff == 0 else "  (the image or preprocessing changed!)"))
    k = max(int(a.get("batch", 16)) for a in st.attrs["analyses"].values() if isinstance(a, dict)) \
        if st.layouts else 16
    li = LinearInterpreter(prep.spec.module, prep.x0, rule=st.attrs["interpreter"], batch=k,
                           exact=cfg.get("precision", "ieee") == "ieee")
    eng = Engine(li, dev, prep.dtype)
    if "residual" in st.group:
        r = li.residual.detach().reshape(st.out_shape).cpu().numpy()
        lines.append(f"residual: max |recomputed − stored| = {np.abs(r - st.array('residual')).max():.3g}")
    tol = 1e-9 if st.dtype == np.float64 else 1e-4
    ok = x_diff == 0
    rng = np.random.default_rng(seed)
    for name, lay in st.layouts.items():
        org = st.group[f"{name}_origin"][...]
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
        lines.append(f"{name}: {len(pick)} pixels × {c_probe} channels recomputed, max |Δ| = "
                     f"{worst:.3g} (relative {worst_rel:.3g}, tolerance {tol:g}), outside "
                     f"fraction max |Δ| = {worst_out:.2g} " + ("OK" if good else "MISMATCH"))
    from precompute.svd import recheck

    svd_lines, svd_ok = recheck(st, eng, samples=max(2, samples // 2), seed=seed)
    lines += svd_lines
    ok &= svd_ok
    lines.append("verify: " + ("OK" if ok else "FAILED"))
    return "\n".join(lines), ok
