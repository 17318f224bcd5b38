"""The explorer's filter tiles: which pixels a site shows (region, stride), the site tiles that
hold them, their encoding (sitegen/tiles.py) and the cache that skips unchanged store tiles.

    data/<run>/{columns,rows}/<ty>-<tx>.js   LinearScope.tile(...), one per site tile

:func:`plan` sizes the work before anything is written (exact filter counts × bytes per filter
measured on sample tiles); :func:`write` encodes or keeps each tile. Both take the encoder as an
argument so that the build (and its tests) decide which one runs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sitegen.options import Options
from sitegen.reader import Analysis, Store, StoreError
from sitegen.tiles import channel_block, encode_block, tile_script
from sitegen.util import atomic_write


def selection(store: Store, a: Analysis, opts: Options) -> tuple[tuple[int, int, int, int], int]:
    """The site's region (in the analysis' own pixel grid) and stride, clipped to the grid."""
    H, W = a.grid
    if opts.region is None:
        top, left, h, w = 0, 0, H, W
    else:
        top, left, h, w = opts.region
        if a.kind == "rows":  # region is given in input pixels; rows live on the output grid
            s = store.scale or 1  # the scaling FORMAT.md gives for a run's `pixels` region
            top0, left0 = int(np.floor(top * s)), int(np.floor(left * s))
            h, w = int(np.ceil((top + h) * s)) - top0, int(np.ceil((left + w) * s)) - left0
            top, left = top0, left0
    top, left = min(max(top, 0), H - 1), min(max(left, 0), W - 1)
    h, w = max(1, min(h, H - top)), max(1, min(w, W - left))
    return (top, left, h, w), opts.stride


def selected_mask(shape, region, stride, y0, x0) -> np.ndarray:
    """Boolean mask of selected pixels for a block starting at (y0, x0)."""
    top, left, h, w = region
    ys = np.arange(y0, y0 + shape[0])[:, None]
    xs = np.arange(x0, x0 + shape[1])[None, :]
    return ((ys >= top) & (ys < top + h) & ((ys - top) % stride == 0)
            & (xs >= left) & (xs < left + w) & ((xs - left) % stride == 0))


TILE_BYTES = 1_000_000  # aim of --tile auto: one tile script ≈ 1 MB (notes §3: 135–270 ms to load)


def site_tile(a: Analysis, opts: Options) -> int:
    """Side of the site tiles of an analysis: the user's, or the largest (≤ 16) whose script stays
    near TILE_BYTES given the block size (gzip of float16 noise saves little; base64 adds 1/3)."""
    if opts.tile is not None:
        return opts.tile
    P = a.own_channels if opts.mode == "full" else 1
    Q = 1 if opts.mode == "lum" else a.other_channels
    per = P * Q * a.window[0] * a.window[1] * (2 if opts.precision == "float16" else 4) * 4 / 3
    return int(max(1, min(16, (TILE_BYTES / per) ** 0.5)))


def site_tiles(store: Store, a: Analysis, opts: Options):
    """Site tiles (ty, tx, y0, y1, x0, x1) that hold at least one selected pixel of a done store tile."""
    region, stride = selection(store, a, opts)
    S = site_tile(a, opts)
    H, W = a.grid
    done = {(ty, tx) for ty in range(a.tiles[0]) for tx in range(a.tiles[1])
            if store.tile_done(a.kind, ty, tx)}
    out = []
    for ty in range(-(-H // S)):
        for tx in range(-(-W // S)):
            y0, y1, x0, x1 = ty * S, min(H, ty * S + S), tx * S, min(W, tx * S + S)
            if not selected_mask((y1 - y0, x1 - x0), region, stride, y0, x0).any():
                continue
            T = a.tile
            touched = {(sy, sx) for sy in range(y0 // T, (y1 - 1) // T + 1)
                       for sx in range(x0 // T, (x1 - 1) // T + 1)}
            if touched & done:
                out.append((ty, tx, y0, y1, x0, x1))
    return out


def encode_tile(store: Store, a: Analysis, opts: Options, run_id: str, t) -> tuple[bytes | None, int, np.ndarray]:
    """One site tile → (script bytes or None if empty, pixel count, max|v| per (P, Q))."""
    ty, tx, y0, y1, x0, x1 = t
    region, stride = selection(store, a, opts)
    vals, origin, outside = store.read_block(a.kind, y0, y1, x0, x1)
    mask = selected_mask(vals.shape[:2], region, stride, y0, x0)
    block = channel_block(vals, opts.mode, a.kind)
    P, Q = block.shape[2:4]
    gmax = np.zeros((P, Q), np.float64)
    pixels = []
    for yy in range(vals.shape[0]):
        for xx in range(vals.shape[1]):
            if not mask[yy, xx]:
                continue
            v = block[yy, xx]
            if origin[yy, xx, 0] < 0 or np.isnan(vals[yy, xx]).all():
                continue  # not computed
            v = np.nan_to_num(v, nan=0.0)
            gmax = np.maximum(gmax, np.abs(v).max(axis=(2, 3)))
            scale, blob = encode_block(v, opts.precision)
            out = [float(o) if np.isfinite(o) else -1.0 for o in outside[yy, xx]]
            pixels.append((y0 + yy, x0 + xx, origin[yy, xx, 0], origin[yy, xx, 1], out, scale, blob))
    if not pixels:
        return None, 0, gmax
    return tile_script(run_id, a.kind, ty, tx, pixels), len(pixels), gmax


# -- the encode cache: skip unchanged store tiles without reading them -------------------------

CACHE = ".linearscope-cache.json"
ENCODING = 1  # bump when tiles.py changes what a tile contains


def tile_signature(store: Store, a: Analysis, opts: Options, run_id: str, t) -> str:
    """A digest of everything a site tile's bytes depend on: the encoder, the options, and the
    size and modification time of each store file under it (shards, origin and outside chunks).
    A tile recomputed by `precompute` is an atomic rename, so its mtime changes."""
    _, _, y0, y1, x0, x1 = t
    T = a.tile
    stats = []
    for sy in range(y0 // T, (y1 - 1) // T + 1):
        for sx in range(x0 // T, (x1 - 1) // T + 1):
            for name, idx in ((a.kind, (sy, sx, 0, 0, 0, 0)), (a.kind + "_origin", (sy, sx, 0)),
                              (a.kind + "_outside", (sy, sx, 0))):
                try:
                    st = store.chunk_path(name, idx).stat()
                    stats.append([name, list(idx), st.st_size, st.st_mtime_ns])
                except (StoreError, OSError):
                    stats.append([name, list(idx), None, None])
    key = [ENCODING, run_id, str(store.path.resolve()), a.kind, opts.mode, opts.precision,
           list(opts.region) if opts.region else None, opts.stride, site_tile(a, opts), list(t), stats]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()


def load_cache(out: Path) -> dict:
    try:
        if (out / CACHE).is_symlink():
            return {}
        data = json.loads((out / CACHE).read_text())
        tiles = data.get("tiles", {}) if data.get("encoding") == ENCODING else {}
        return tiles if isinstance(tiles, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def cache_hit(hit, sig: str, size: int | None, shape_of) -> dict | None:
    """A cache entry that can stand for an unchanged tile file: the same signature and size,
    and well-formed values (the cache lives in the site folder, which may come from someone
    else: a malformed entry is re-encoded, never trusted)."""
    a, opts = shape_of
    P = a.own_channels if opts.mode == "full" else 1
    Q = 1 if opts.mode == "lum" else a.other_channels
    if not isinstance(hit, dict) or hit.get("sig") != sig or size is None or hit.get("size") != size:
        return None
    n = hit.get("n")
    try:
        gmax = np.asarray(hit.get("gmax"), np.float64)
    except (TypeError, ValueError):
        return None
    if not (isinstance(n, int) and n >= 0 and gmax.shape == (P, Q) and np.isfinite(gmax).all()):
        return None
    return {"n": n, "gmax": gmax, "size": size}


def save_cache(out: Path, tiles: dict) -> None:
    """Build state next to the site (not part of it, not listed in the manifest)."""
    data = json.dumps({"encoding": ENCODING, "tiles": tiles}, sort_keys=True).encode()
    path = out / CACHE
    if path.is_file() and not path.is_symlink() and path.read_bytes() == data:
        return
    atomic_write(path, data)


# -- plan and write --------------------------------------------------------------------------------

@dataclass
class Plan:
    """Which site tiles of which run to write, and their estimated bytes."""
    items: list = field(default_factory=list)  # (store, run id, kind, analysis, site tiles)
    estimate: int = 0
    pixels: int = 0  # filters to encode


@dataclass
class Written:
    """What :func:`write` made, per (run id, kind): max |v| per channel pair, the site tiles
    written (their [ty, tx]) and the filters in them; plus the next build's cache."""
    gmax: dict = field(default_factory=dict)
    tiles: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)


def plan(stores: list[Store], ids: list[str], opts: Options, encode=encode_tile) -> Plan:
    """The tiles to write and a size estimate: exact filter counts × bytes per filter measured
    on up to three encoded sample tiles per analysis."""
    p = Plan()
    for st, rid in zip(stores, ids):
        for kind, a in st.analyses.items():
            tiles = site_tiles(st, a, opts)
            region, stride = selection(st, a, opts)
            if not tiles:
                continue
            # exact count of the filters to encode: selected pixels with a stored origin
            # (origins are small int arrays; a not-computed pixel has origin -1)
            origin = st.read(kind + "_origin")
            H, W = a.grid
            sel = selected_mask((H, W), region, stride, 0, 0) & (origin[..., 0] >= 0)
            n_sel = int(sel.sum())
            tiles = [t for t in tiles if sel[t[2]:t[3], t[4]:t[5]].any()]
            if not tiles:
                continue
            # bytes per filter from up to three encoded sample tiles (first, middle, last)
            picks = sorted({0, len(tiles) // 2, len(tiles) - 1})
            size = count = 0
            for k in picks:
                data, n, _ = encode(st, a, opts, rid, tiles[k])
                size += len(data or b"")
                count += n
            p.pixels += n_sel
            p.estimate += int(size / max(count, 1) * n_sel)
            p.items.append((st, rid, kind, a, tiles))
    return p


def write(w, out: Path, p: Plan, opts: Options, encode=encode_tile) -> Written:
    """Write (or keep, when the cache says its store tiles are untouched) every planned tile."""
    res = Written()
    bar = tqdm(total=sum(len(item[4]) for item in p.items), desc="sitegen tiles", unit="tile",
               disable=not opts.progress, file=sys.stderr, leave=False)
    old_cache = load_cache(out)
    for st, rid, kind, a, tiles in p.items:
        key = (rid, kind)
        res.tiles[key] = []
        res.counts[key] = 0
        for t in tiles:
            rel = f"data/{rid}/{kind}/{t[0]}-{t[1]}.js"
            sig = tile_signature(st, a, opts, rid, t)
            hit = cache_hit(old_cache.get(rel), sig, w.existing_size(rel), (a, opts))
            if hit is not None:
                # the store tiles under this site tile are untouched since the last build:
                # keep the file without reading or encoding anything
                n, m = hit["n"], hit["gmax"]
                w.keep(rel, hit["size"])
                data_size = hit["size"]
            else:
                data, n, m = encode(st, a, opts, rid, t)
                data_size = None
                if data is not None:
                    w.write(rel, data)
                    data_size = len(data)
            res.gmax[key] = m if key not in res.gmax else np.maximum(res.gmax[key], m)
            if data_size is not None:
                res.tiles[key].append([t[0], t[1]])
                res.counts[key] += n
                res.cache[rel] = {"sig": sig, "size": data_size, "n": n, "gmax": m.tolist()}
            bar.update(1)
    bar.close()
    return res
