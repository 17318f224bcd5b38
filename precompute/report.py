"""``precompute info``: a store in words (docs/FORMAT.md names every attribute read here).

Reads a store and runs nothing from it. It sits above the storage layer and the analyses, so the
storage layer never imports an analysis to describe it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from precompute import classify
from precompute import integrity
from precompute import store as S
from precompute import store_create as SC
from precompute import whole_f
from precompute.errors import StoreError
from precompute.tile_store import open_tiles


def _group_attrs(path: Path) -> dict:
    """The attributes in a group's zarr.json, or {} when there is none or it is unreadable
    (``open_store`` then says what is wrong, in one line)."""
    try:
        return open_tiles(path).read_attrs()
    except StoreError:
        return {}


def probing_text(probing: dict) -> str:
    """``attrs.probing`` in words (docs/FORMAT.md, "Probing")."""
    parts = []
    for name in SC.ANALYSES:
        p = probing.get(name)
        if p is None:
            continue
        if p["method"] == "single":
            parts.append(f"{name} one impulse per probe")
        else:
            how = "compressed" if p["method"] == "compressed" else "read out of columns"
            parts.append(f"{name} {how} (period {p['period'][0]}×{p['period'][1]} px, blocks of "
                         f"{p['block']}×{p['block']} tiles)")
    sup = probing.get("support")
    if sup:
        if sup.get("global"):
            parts.append(f"support global: {sup['global']}")
        else:
            parts.append(f"support: rows ≤ {sup['rows'][0]}×{sup['rows'][1]} input px, columns ≤ "
                         f"{sup['columns'][0]}×{sup['columns'][1]} output px")
    return "; ".join(parts)


def info_text(path: str | os.PathLike) -> str:
    """A human summary of a store (``precompute info``); reads the store, runs nothing from it."""
    if _group_attrs(Path(path)).get("kind") == "summary":
        return classify.summary_info(Path(path))
    st = S.open_store(path)
    try:
        return "\n".join(_info_lines(st))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise S.StoreError(f"{st.path}: its attributes are damaged or incomplete "
                         f"({type(e).__name__}: {str(e)[:80]})") from None


def _info_lines(st: S.Store) -> list[str]:
    a = st.attrs
    m, im = a["model"], a["image"]
    code = S.model_code(a)
    lines = [
        f"{st.path}  (format_version {a['format_version']}, created {a.get('created')})",
        f"model     {m['id']}  kind {m['kind']}  scale {m.get('scale')}"
        + (f"  checkpoint {m['checkpoint']} (sha256 {str(m['checkpoint_sha256'])[:12]}…)"
           if m.get("checkpoint") else ""),
    ]
    if code is not None:
        lines.append(f"code      the model is Python code: {code}; `precompute verify` imports and "
                     "runs it only with --trust-code")
    lines += [
        f"image     {im['path']}  crop {im['crop']}  size {im['size'][0]}×{im['size'][1]}"
        f"  sha256 {im['sha256'][:12]}…",
        f"x0 {'×'.join(map(str, st.in_shape))} → f(x0) {'×'.join(map(str, st.out_shape))}; "
        f"{a['interpreter']} interpreter, {a['dtype']}, geometry {a.get('geometry')}",
    ]
    for name, lay in st.layouts.items():
        found = [st.tiles.tile_problem(st.arrays, name, t.ty, t.tx, full=False)
                 for t in lay.tiles()]
        done, planned = found.count(None), len(found)
        damaged = planned - done - found.count(integrity.MISSING)
        state = "done" if done == planned else f"{done}/{planned} tiles"
        state += f" ({damaged} damaged: recomputed by `precompute run`)" if damaged else ""
        lines.append(
            f"{name:9} window {lay.window[0]}×{lay.window[1]}{' (full)' if lay.full else ''}, "
            f"tile {lay.tile}, region {lay.attrs()['region']} stride {lay.selection.stride}, "
            f"batch {a['analyses'][name].get('batch')}: {state}"
        )
    probing = a.get("probing")
    if probing:
        lines.append("probing   " + probing_text(probing))
    if "residual" in st.group:
        try:
            lines.append(f"residual  max |r| = {np.abs(st.array('residual')).max():.3g}")
        except Exception:  # noqa: BLE001 — a damaged chunk (checksum) or metadata
            lines.append("residual  unreadable (damaged; see precompute verify --integrity-only)")
    lines += whole_f.info_lines(st)
    ch = a.get("checks", {})
    lines.append("checks    " + ", ".join(f"{k} {v:.2e}" for k, v in ch.items()))
    t = a.get("timings", {})
    lines.append("timings   " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items())
                 + f"; oom_splits {a.get('oom_splits', 0)}; last device {a.get('device')}")
    lines.append(f"size      {st.tiles.size() / 1e6:.1f} MB on disk")
    lines.append("integrity not checked (only that tile shards exist with intact indexes); "
                 f"`precompute verify --integrity-only {st.path}` checks every chunk's checksum")
    return lines
