"""Build the static site from stores: pages, display PNGs, lazily loaded filter tiles.

Layout of the output folder (every path relative, so it works from file:// and any server)::

    index.html                     every run, provenance, comparison groups
    explorer/<run>.html            one run: input, output, residual, hover filters
    compare/<group>.html           runs on the same image (same sha256), one cursor
    svd/<run>.html, svd/compare-<group>.html   SVD pages (sitegen/svd_page.py)
    static/linearscope.{js,css}    the viewer (vanilla, classic script)
    data/<run>/meta.js             LinearScope.run({...}): what the run contains
    data/<run>/{input,output,residual}.png
    data/<run>/{columns,rows}/<ty>-<tx>.js   LinearScope.tile(...), one per site tile

Writes are incremental and deterministic: a file is written only when its bytes change, the
bytes depend only on the stores and the options, and files a previous build wrote but this one
does not are removed (listed in ``.linearscope-build.json``; nothing else is ever deleted).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
from PIL import Image
from tqdm import tqdm

import sitegen
from sitegen import classify_page, svd_page
from sitegen.names import unique_ids
from sitegen.reader import (KINDS, Analysis, Store, StoreError, Summary, classify_complete,
                            find_stores, open_store)
from sitegen.tiles import MODE_TEXT, MODES, PRECISIONS, channel_block, encode_block, tile_script

MANIFEST = ".linearscope-build.json"
TEMPLATES = Path(sitegen.__file__).resolve().parents[1] / "templates"

# Analyses a store may contain, in page order. Pages are driven by this list: what a store
# lacks is shown as "not computed". Reserved entries will get their own panels.
ANALYSES = [
    ("residual", "Residual r(x0)"),
    ("columns", "Columns: projective filters (hover the input)"),
    ("rows", "Rows: receptive filters (hover the output)"),
    ("svd", "SVD bases"),
    ("classify", "Classifier analyses: scores, contributions, discussions, votes"),
]


class BuildError(Exception):
    """A build that cannot go ahead; the message is shown to the user as is."""


@dataclass
class Options:
    mode: str = "full"  # channel mode, see tiles.MODES
    precision: str = "float16"
    region: tuple[int, int, int, int] | None = None  # input pixels: top, left, height, width
    stride: int = 1
    tile: int | None = None  # site tile side in pixels; None: auto (tile scripts of ~1 MB)
    max_bytes: int | None = 2 * 1024 ** 3
    progress: bool = True

    def check(self) -> None:
        if self.mode not in MODES:
            raise BuildError(f"unknown channel mode '{self.mode}' (choose from {', '.join(MODES)})")
        if self.precision not in PRECISIONS:
            raise BuildError(f"unknown precision '{self.precision}' "
                             f"(choose from {', '.join(PRECISIONS)})")
        if self.stride < 1:
            raise BuildError("stride must be at least 1")
        if self.tile is not None and self.tile < 1:
            raise BuildError("tile must be at least 1")
        if self.region is not None and (len(self.region) != 4 or self.region[2] < 1
                                        or self.region[3] < 1 or min(self.region[:2]) < 0):
            raise BuildError("region must be TOP,LEFT,HEIGHT,WIDTH with positive height and width")


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


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


class SiteWriter:
    """Writes files under ``out`` only when their bytes change; removes what is no longer built.

    A site folder may come from someone else, so nothing outside ``out`` is ever touched: paths
    are relative and free of ``..``; no symbolic link inside the folder is followed — a link
    where a folder must be is an error, a link where a file goes is replaced by the file (the
    link itself, never its target), and the manifest of a previous build only ever removes
    regular files reached through real folders.
    """

    def __init__(self, out: Path):
        self.out = out
        self.files: dict[str, int] = {}
        self.written = 0
        self.unchanged = 0
        self.removed = 0
        self.skipped = 0  # manifest entries that could not be ours (never removed)
        self._folders: set[Path] = set()
        out.mkdir(parents=True, exist_ok=True)  # the folder the user named (may be a link)

    @staticmethod
    def _parts(rel: str) -> list[str] | None:
        """The components of a site-relative path, or None if it could leave the folder."""
        if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
            return None
        parts = rel.split("/")
        return None if any(p in ("", ".", "..") for p in parts) else parts

    def _folder(self, parts: list[str], create: bool) -> Path | None:
        """The real folder ``out/parts…`` (made when ``create``), or None if it does not exist;
        BuildError where a link or a file stands in the way of writing."""
        d = self.out
        for part in parts:
            d = d / part
            if d in self._folders:
                continue
            if d.is_symlink():
                if not create:
                    return None
                raise BuildError(f"{d} is a symbolic link; sitegen never writes through links "
                                 "inside the output folder: remove it (or choose another -o)")
            if not d.is_dir():
                if not create:
                    return None
                if d.exists():
                    raise BuildError(f"{d} is in the way of the site's folder {d.name}/")
                d.mkdir()
            self._folders.add(d)
        return d

    def write(self, rel: str, data: bytes) -> None:
        parts = self._parts(rel)
        if parts is None:
            raise BuildError(f"refusing to write outside the site: {rel!r}")
        path = self._folder(parts[:-1], create=True) / parts[-1]
        self.files[rel] = len(data)
        try:
            st = path.lstat()
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise BuildError(f"{path} is a folder where the site has a file")
        if (st is not None and stat.S_ISREG(st.st_mode) and st.st_size == len(data)
                and path.read_bytes() == data):
            self.unchanged += 1
            return
        atomic_write(path, data)
        self.written += 1

    def finish(self) -> None:
        for rel in read_manifest(self.out):
            if rel in self.files or rel == MANIFEST:
                continue
            parts = self._parts(rel)
            folder = self._folder(parts[:-1], create=False) if parts else None
            p = folder / parts[-1] if folder is not None else None
            if p is None or not p.is_file() or p.is_symlink():
                self.skipped += 1
                continue
            p.unlink()
            self.removed += 1
        data = json.dumps({"files": sorted(self.files)}, indent=0).encode() + b"\n"
        self.write(MANIFEST, data)

    def existing_size(self, rel: str) -> int | None:
        """Size of the regular file a previous build left at ``rel`` (not through links)."""
        parts = self._parts(rel)
        folder = self._folder(parts[:-1], create=False) if parts else None
        try:
            st = (folder / parts[-1]).lstat() if folder is not None else None
        except OSError:
            return None
        return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else None

    def keep(self, rel: str, size: int) -> None:
        """Count a file this build makes, known unchanged without producing its bytes."""
        self.files[rel] = size
        self.unchanged += 1

    @property
    def total(self) -> int:
        return sum(self.files.values())


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` (a name in a real folder) through a fresh hidden temporary file and a
    rename: a link or leftover at the temporary name is removed, never written through, and
    the rename replaces a link at ``path`` itself, not its target."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_manifest(out: Path) -> list[str]:
    """The files a previous build listed (only strings; a link or an unreadable manifest is
    ignored: nothing is removed on its word)."""
    man = out / MANIFEST
    try:
        if man.is_symlink() or not man.is_file():
            return []
        files = json.loads(man.read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


# -- pixel selection -------------------------------------------------------------------------

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


# -- images ------------------------------------------------------------------------------------

def png_bytes(rgb: np.ndarray) -> bytes:
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = rgb[..., None]
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    rgb = rgb[..., :3]  # RGB only (notes §1: no alpha)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB").save(
        buf, format="PNG", compress_level=9)
    return buf.getvalue()


def residual_rgb(r: np.ndarray) -> tuple[np.ndarray, float]:
    """r (C', H', W') → mid-grey-centred RGB scaled by max|r|; returns the image and max|r|."""
    r = np.nan_to_num(np.asarray(r, np.float64))
    if r.ndim != 3:
        return np.zeros((1, 1, 3), np.uint8), 0.0
    if r.shape[0] != 3:
        r = np.repeat(r.mean(axis=0, keepdims=True), 3, axis=0)
    m = float(np.abs(r).max())
    img = 127.5 + (127.5 * r / m if m > 0 else 0 * r)
    return np.clip(np.round(img), 0, 255).astype(np.uint8).transpose(1, 2, 0), m


# -- runs ----------------------------------------------------------------------------------------

def slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return s or "run"


def run_ids(stores: list[Store]) -> list[str]:
    """Distinct ids (file names) of the runs, after their stores' folders (sitegen/names.py)."""
    return unique_ids([slug(st.path.name.removesuffix(".zarr")) for st in stores])


def fmt_float(v) -> str:
    if v is None:
        return "not measured"
    try:
        return f"{float(v):.2e}"
    except (TypeError, ValueError):
        return str(v)


def nice_number(v):
    """3.0 → 3 (scales are written as floats), anything else unchanged."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


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


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=jinja2.select_autoescape(["html"]),
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env


def js_literal(obj) -> str:
    """JSON safe to embed in a <script> element."""
    s = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return s.replace("</", "<\\/")


def build(sources: list[str | Path], out: str | Path, opts: Options | None = None,
          echo=print) -> BuildResult:
    opts = opts or Options()
    opts.check()
    out = Path(out)
    check_output(out)
    paths, summary_paths = classify_page.summary_paths(resolve_sources(sources))
    if not paths:
        raise BuildError("no stores found")
    stores = load_stores(paths)
    check_region(stores, opts)
    summaries = [Summary(p) for p in summary_paths]
    ids = run_ids(stores)

    # plan: which tiles of which run, and a size estimate (exact filter counts × bytes per
    # filter measured on up to three encoded sample tiles per analysis)
    plan = []
    estimate = 0
    npix_total = 0
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
                data, n, _ = encode_tile(st, a, opts, rid, tiles[k])
                size += len(data or b"")
                count += n
            npix_total += n_sel
            estimate += int(size / max(count, 1) * n_sel)
            plan.append((st, rid, kind, a, tiles))
        C, H, W = st.input_shape
        out_px = int(np.prod(st.output_shape[-2:])) if st.kind == "image" else 0
        estimate += 3 * H * W + 6 * out_px + 40_000  # PNGs (≤ 3 bytes a pixel), pages: roughly
        estimate += svd_page.estimate(st, opts.precision)
    estimate += 60_000  # static files
    echo(f"sitegen: {len(stores)} run(s), {npix_total} filter(s) to encode "
         f"(channels {opts.mode}, {opts.precision}, tile {opts.tile or 'auto'}); "
         f"estimated size {human(estimate)}")
    if opts.max_bytes is not None and estimate > opts.max_bytes:
        raise BuildError(f"the site would take about {human(estimate)}, more than the limit "
                         f"{human(opts.max_bytes)}: choose fewer pixels (--region, --stride), "
                         "--channels rgb or lum, or raise --max-size")

    w = SiteWriter(out)
    env = _env()
    static = TEMPLATES / "static"
    for f in sorted(static.iterdir()):
        if f.is_file():
            w.write(f"static/{f.name}", f.read_bytes())

    # tiles
    gmax: dict[tuple[str, str], np.ndarray] = {}
    written_tiles: dict[tuple[str, str], list] = {}
    counts: dict[tuple[str, str], int] = {}
    total_tiles = sum(len(p[4]) for p in plan)
    bar = tqdm(total=total_tiles, desc="sitegen tiles", unit="tile", disable=not opts.progress,
               file=sys.stderr, leave=False)
    old_cache = load_cache(out)
    new_cache: dict[str, dict] = {}
    for st, rid, kind, a, tiles in plan:
        key = (rid, kind)
        written_tiles[key] = []
        counts[key] = 0
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
                data, n, m = encode_tile(st, a, opts, rid, t)
                data_size = None
                if data is not None:
                    w.write(rel, data)
                    data_size = len(data)
            gmax[key] = m if key not in gmax else np.maximum(gmax[key], m)
            if data_size is not None:
                written_tiles[key].append([t[0], t[1]])
                counts[key] += n
                new_cache[rel] = {"sig": sig, "size": data_size, "n": n, "gmax": m.tolist()}
            bar.update(1)
    bar.close()

    # per run: images, meta, explorer page
    runs = []
    for st, rid in zip(stores, ids):
        prov = provenance(st)
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
        analyses = {}
        status = []
        for name, title in ANALYSES:
            if name in KINDS and name in st.analyses:
                a = st.analyses[name]
                key = (rid, name)
                region, stride = selection(st, a, opts)
                m = gmax.get(key)
                analyses[name] = {
                    "window": list(a.window), "full": a.full, "grid": list(a.grid),
                    "other": list(a.other), "own": a.own_channels, "otherChannels": a.other_channels,
                    "mode": opts.mode, "precision": opts.precision, "tile": site_tile(a, opts),
                    "tiles": written_tiles.get(key, []), "region": list(region), "stride": stride,
                    "pixels": counts.get(key, 0),
                    "globalMax": [[float(np.float32(x)) for x in row] for row in m.tolist()]
                    if m is not None else None,
                }
                n_all = a.grid[0] * a.grid[1]
                state = "computed" if counts.get(key, 0) else "not computed"
                detail = (f"{counts.get(key, 0)} of {n_all} pixels on this site, window "
                          f"{a.window[0]}×{a.window[1]}{' (full)' if a.full else ''}")
                status.append({"name": name, "title": title, "state": state, "detail": detail})
            elif name == "classify":
                ok = classify_complete(st.path)
                status.append({"name": name, "title": title,
                               "state": "computed" if ok else "not computed",
                               "detail": "see the classifier page" if ok else ""})
            elif name == "svd":
                status.append(svd_page.status(st, title))
            elif name == "residual":
                ok = "residual" in images
                status.append({"name": name, "title": title,
                               "state": "computed" if ok else "not computed",
                               "detail": f"max |r| = {resid_max:.3g}" if ok else ""})
            else:
                ok = st.has_array(name)
                status.append({"name": name, "title": title,
                               "state": "stored (no viewer yet)" if ok else "not computed",
                               "detail": ""})
        C, H, W = st.input_shape
        outshape = list(st.output_shape)
        scores = None
        if st.kind != "image":  # a classifier: show its top scores (class rows will follow)
            y = np.asarray(st.read("output"), np.float64).reshape(-1)
            labels = st.model.get("labels") or [str(k) for k in range(len(y))]
            top = sorted(range(len(y)), key=lambda k: (-y[k], k))[:10]
            scores = [[str(labels[k]) if k < len(labels) else str(k), float(f"{y[k]:.6g}")]
                      for k in top]
        meta = {
            "id": rid, "name": st.name, "title": f"{prov['model']} on {Path(prov['image_path']).name}",
            "kind": st.kind, "scale": nice_number(st.scale), "offset": st.offset,
            "input": [C, H, W], "output": outshape, "images": images,
            "residualMax": resid_max, "analyses": analyses, "provenance": prov,
            "modeText": MODE_TEXT[opts.mode], "scores": scores,
        }
        w.write(f"data/{rid}/meta.js", f"LinearScope.run({js_literal(meta)});\n".encode())
        runs.append({"id": rid, "store": st, "prov": prov, "meta": meta, "status": status,
                     "sha": prov["image_sha256"]})

    # comparison groups: runs on the same image
    groups = {}
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

    common = {"mode_text": MODE_TEXT[opts.mode], "mode": opts.mode, "precision": opts.precision,
              "precision_text": precision_text(opts.precision),
              "version": getattr(sitegen, "__version__", "")}
    datasets = classify_page.write_pages(w, env, runs, summaries, common, opts.precision)
    svd_page.write(w, env, runs, group_list, opts, common, js_literal)
    for r in runs:
        html = env.get_template("explorer.html").render(
            root="../", run=r, runs=[r], ids_json=js_literal([r["id"]]), **common)
        w.write(f"explorer/{r['id']}.html", html.encode())
    for g in group_list:
        if not g["comparable"]:
            continue
        html = env.get_template("compare.html").render(
            root="../", group=g, runs=g["runs"], ids_json=js_literal([r["id"] for r in g["runs"]]),
            **common)
        w.write(f"compare/{g['id']}.html", html.encode())
    html = env.get_template("index.html").render(root="", runs=runs, groups=group_list,
                                                 datasets=datasets, **common)
    w.write("index.html", html.encode())
    w.finish()
    save_cache(out, new_cache)
    total = w.total
    echo(f"sitegen: wrote {out}/ — {human(total)} in {len(w.files)} files "
         f"({w.written} written, {w.unchanged} unchanged, {w.removed} removed)")
    if w.skipped:
        echo(f"sitegen: note: {w.skipped} entr{'y' if w.skipped == 1 else 'ies'} of the previous "
             f"manifest {MANIFEST} could not be this generator's files (outside the site, through "
             "a link, or not regular files) and were left alone")
    return BuildResult(out=out, estimate=estimate, total=total, written=w.written,
                       unchanged=w.unchanged, removed=w.removed, files=len(w.files),
                       runs=[r["id"] for r in runs])


def precision_text(precision: str) -> str:
    if precision == "float16":
        return ("display copy: each filter divided by its max |value| and stored as float16 "
                "(about 3 significant digits, exact zeros kept); exact values stay in the Zarr store")
    return "exact float32 copy of the store's values (float64 stores are rounded to float32)"
