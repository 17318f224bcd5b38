"""Writing and reading LinearScope stores (docs/FORMAT.md is the contract; keep them together).

A store is a Zarr v3 group holding one linear interpreter y = F(x0)·x + r(x0) (paper eq. 5).
Writing rules that make a run safe to kill at any moment (see the shared zarr notes):

* every array is created up front, by the one process that writes metadata;
* a tile is written whole by one process (origins, outside fractions, then its shard), never
  pixel by pixel, so no two processes ever touch the same shard;
* zarr's LocalStore writes each file to ``<key>.<uuid>.partial`` and renames it: a shard file
  either exists complete or not at all, hence **a tile is done when its shard file exists**;
* fill value NaN with ``write_empty_chunks`` on, so a computed all-zero filter is still written
  and "exists ⇔ done" is exact; ``*.partial`` leftovers of a killed run are deleted on resume.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from precompute import integrity
from precompute import probes as P
from precompute import shards
from precompute.config import UserError

FORMAT_VERSION = 1
ANALYSES = ("columns", "rows")
CREATING = "linearscope_creating"


class StoreError(UserError):
    """A store that cannot be read or continued (message shown to the user as is)."""


def codecs() -> list:
    """Lossless only: zstd level 3 then a crc32c checksum per (inner) chunk."""
    return [ZstdCodec(level=3), Crc32cCodec()]


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (its nearest existing parent).

    ``LINEARSCOPE_FREE_BYTES`` overrides the measurement (tests and dry planning).
    """
    env = os.environ.get("LINEARSCOPE_FREE_BYTES")
    if env:
        return int(env)
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


# ---------------------------------------------------------------------------------------------
# Layout of one windowed analysis.


@dataclass(frozen=True)
class Layout:
    """Geometry of ``columns`` or ``rows``.

    ``probe_shape`` (C, H, W) is the domain whose pixels are probed (input for columns, output for
    rows), ``other_shape`` the domain the stored windows live in. ``window`` is (wh, ww).
    """

    name: str
    probe_shape: tuple[int, int, int]
    other_shape: tuple[int, int, int]
    window: tuple[int, int]
    full: bool
    tile: int
    selection: P.Selection
    scale: float
    offset: float

    @property
    def chunk(self) -> tuple[int, ...]:
        return (1, 1, self.probe_shape[0], self.other_shape[0], *self.window)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.probe_shape[1], self.probe_shape[2], self.probe_shape[0], self.other_shape[0],
                *self.window)

    def bytes_per_pixel(self, itemsize: int) -> int:
        return math.prod(self.chunk) * itemsize

    def origin(self, i: int, j: int) -> tuple[int, int]:
        """Window origin (oy, ox) in the other domain for probed pixel (i, j) (FORMAT.md)."""
        rule = P.column_origin if self.name == "columns" else P.row_origin
        _, oh, ow = self.other_shape
        return (rule(i, self.scale, self.offset, self.window[0], oh),
                rule(j, self.scale, self.offset, self.window[1], ow))

    def selected_pixels(self) -> int:
        """How many pixels the selection holds (arithmetic, without listing tiles)."""
        top, left, h, w = self.selection.as_list(self.probe_shape[1], self.probe_shape[2])
        s = self.selection.stride
        return (-(-h // s)) * (-(-w // s))  # ceil(h/s)·ceil(w/s)

    def tiles(self) -> list[P.Tile]:
        return P.planned_tiles(self.probe_shape[1], self.probe_shape[2], self.tile, self.selection)

    def attrs(self, batch: int | None = None) -> dict:
        d = {
            "window": list(self.window),
            "full": self.full,
            "tile": self.tile,
            "region": self.selection.as_list(self.probe_shape[1], self.probe_shape[2]),
            "stride": self.selection.stride,
        }
        if batch is not None:
            d["batch"] = batch
        return d

    @classmethod
    def from_attrs(cls, name: str, a: dict, in_shape, out_shape, geometry: dict) -> "Layout":
        probe, other = (in_shape, out_shape) if name == "columns" else (out_shape, in_shape)
        region = tuple(a["region"])
        sel = P.Selection(None if region == (0, 0, probe[1], probe[2]) else region, a["stride"])
        return cls(name, tuple(probe), tuple(other), tuple(a["window"]), a["full"], a["tile"], sel,
                   geometry["scale"], geometry["offset"])


def selected_bytes(lay: Layout, itemsize: int) -> int:
    """Bytes of the windows of every selected pixel (before compression)."""
    return lay.selected_pixels() * lay.bytes_per_pixel(itemsize)


def make_layout(name: str, window: int | str, tile: int | str, sel: P.Selection,
                in_shape, out_shape, scale: float, offset: float, itemsize: int) -> Layout:
    probe, other = (in_shape, out_shape) if name == "columns" else (out_shape, in_shape)
    wh, ww = P.window_side(window, other[1]), P.window_side(window, other[2])
    full = (wh, ww) == (other[1], other[2])
    bpp = math.prod((probe[0], other[0], wh, ww)) * itemsize
    t = P.auto_tile(bpp, probe[1], probe[2]) if tile == "auto" else int(tile)
    return Layout(name, tuple(probe), tuple(other), (wh, ww), full, t, sel, scale, offset)


# ---------------------------------------------------------------------------------------------
# Writing.


def create_store(path: Path, *, attrs: dict, dtype: str, input: np.ndarray, output: np.ndarray,
                 residual: np.ndarray | None, display_input: np.ndarray,
                 display_output: np.ndarray | None, layouts: list[Layout]) -> zarr.Group:
    """Create the group and every array, write the small arrays, then the group attributes.

    The attributes (with ``format_version``) are written last, in one atomic file: a store
    without them is an interrupted creation and may be deleted and made again.
    """
    # marker until the real attributes replace it: lets a resumed run tell its own interrupted
    # creation (safe to delete) from someone else's Zarr data (never deleted)
    g = zarr.open_group(str(path), mode="w", attributes={CREATING: True})
    c = codecs()

    def small(name, arr, fill):
        a = g.create_array(name, shape=arr.shape, chunks=arr.shape, dtype=arr.dtype,
                           fill_value=fill, compressors=c, config={"write_empty_chunks": True})
        a[...] = arr

    small("input", input.astype(dtype), np.nan)
    small("output", output.astype(dtype), np.nan)
    if residual is not None:
        small("residual", residual.astype(dtype), np.nan)
    small("display/input", display_input.astype(np.uint8), 0)
    if display_output is not None:
        small("display/output", display_output.astype(np.uint8), 0)
    for lay in layouts:
        t = lay.tile
        g.create_array(lay.name, shape=lay.shape, chunks=lay.chunk,
                       shards=(t, t, *lay.chunk[2:]), dtype=dtype, fill_value=np.nan,
                       compressors=c, config={"write_empty_chunks": True})
        h, w = lay.shape[:2]
        g.create_array(f"{lay.name}_origin", shape=(h, w, 2), chunks=(t, t, 2), dtype="int32",
                       fill_value=-1, compressors=c)
        g.create_array(f"{lay.name}_outside", shape=(h, w, lay.probe_shape[0]),
                       chunks=(t, t, lay.probe_shape[0]), dtype=dtype, fill_value=np.nan,
                       compressors=c, config={"write_empty_chunks": True})
    g.attrs.put(attrs)
    return g


def shard_file(path: Path, array: zarr.Array, name: str, tile: P.Tile) -> Path:
    key = array.metadata.encode_chunk_key((tile.ty, tile.tx) + (0,) * (array.ndim - 2))
    return Path(path) / name / key


def write_tile(group: zarr.Group, lay: Layout, tile: P.Tile, block: np.ndarray,
               origin: np.ndarray, outside: np.ndarray) -> None:
    """Write one tile: origins and outside fractions first, then the whole shard (atomically).

    Only the shard's existence marks the tile done, so a kill between the writes just makes
    the tile recomputed and rewritten.
    """
    ys, xs = slice(tile.y0, tile.y1), slice(tile.x0, tile.x1)
    group[f"{lay.name}_origin"][ys, xs] = origin
    group[f"{lay.name}_outside"][ys, xs] = outside
    arr = group[lay.name]
    level = shards.fast_path(arr)
    root = getattr(group.store, "root", None)
    if level is None or root is None:
        arr[ys, xs] = block
        return
    # the same bytes zarr would write, without its per-chunk overhead (precompute/shards.py)
    full = np.full(arr.metadata.chunk_grid.chunk_shape, np.nan, dtype=arr.dtype.to_native_dtype()
                   if hasattr(arr.dtype, "to_native_dtype") else arr.dtype)
    full[:block.shape[0], :block.shape[1]] = block
    inner = arr.metadata.codecs[0].chunk_shape
    shards.write_shard(shard_file(Path(root), arr, lay.name, tile),
                       shards.encode_shard(full, tuple(inner), level))


def tiled_arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    """The tiled arrays of a store (``columns``, ``rows`` and their ``_origin`` / ``_outside``),
    opened once: the tile functions below take this mapping (or the group itself) and look
    arrays up per tile, which costs a metadata read each on a group."""
    names = [n + part for n in ANALYSES for part in ("", "_origin", "_outside")]
    members = {name for name, _ in group.arrays()}
    return {n: group[n] for n in names if n in members}


def tile_done(path: Path, group: zarr.Group, lay: Layout, tile: P.Tile, full: bool = True) -> bool:
    """A tile is done when its shard exists and it is intact: the shard's index and inner-chunk
    checksums, and its origin and outside chunks (:mod:`precompute.integrity`). ``full=False``
    checks the shard's index only (a small read at its end): empty and truncated shards, not
    flipped bytes inside a chunk."""
    return integrity.tile_problem(path, group, lay.name, tile.ty, tile.tx, full) is None


def tile_files(path: Path, group: zarr.Group, lay: Layout, tile: P.Tile) -> dict[str, Path]:
    """The files of one tile: its shard, origin chunk and outside chunk, by array name."""
    files = {lay.name: shard_file(path, group[lay.name], lay.name, tile)}
    for name in (f"{lay.name}_origin", f"{lay.name}_outside"):
        if name in group:
            files[name] = Path(path) / name / group[name].metadata.encode_chunk_key(
                (tile.ty, tile.tx, 0))
    return files


def clear_damaged(path: Path, group: zarr.Group, lay: Layout, tiles: list[P.Tile]) -> list[str]:
    """Delete the damaged files of tiles left to do, so that they are written anew rather than
    merged into (zarr reads a chunk it writes only in part): every file of a tile whose shard is
    on disk but not intact, and any origin/outside chunk that fails its checksum. Returns the
    deleted files (relative to the store)."""
    found = []
    for t in tiles:
        problem = integrity.tile_problem(path, group, lay.name, t.ty, t.tx)
        if problem is None:
            continue  # done meanwhile (another process)
        for name, f in tile_files(path, group, lay, t).items():
            if not (f.exists() or f.is_symlink()):
                continue
            if problem == integrity.MISSING and not integrity.file_problem(f, group[name]):
                continue  # left intact by a killed run: simply overwritten
            f.unlink()
            found.append(str(f.relative_to(path)))
    return found


def read_whole(arr) -> np.ndarray:
    """``arr[...]`` of an array written whole, once :func:`integrity.missing_chunks` finds nothing wrong
    (else a one-line :class:`StoreError`)."""
    problem = integrity.missing_chunks(arr)
    if problem:
        raise StoreError(f"{arr.store.root}: {problem}; the store is damaged")
    return arr[...]


def core_damage(path: Path, group: zarr.Group, attrs: dict) -> list[str]:
    """Damage outside the tiles: unreadable array metadata, or a missing or damaged chunk of the
    arrays written at creation (``input``, ``output``, ``residual``, ``display/*``, FORMAT.md).
    A store with such damage cannot be resumed; ``--overwrite`` makes it again."""
    names = ["input", "output", "display/input"]
    if (attrs.get("analyses") or {}).get("residual"):
        names.append("residual")
    if (attrs.get("model") or {}).get("kind", "image") == "image":
        names.append("display/output")
    found = []
    for name in names + [lay for lay in (attrs.get("analyses") or {}) if lay in ANALYSES]:
        try:
            arr = group[name]
        except Exception as e:  # noqa: BLE001 — missing or unreadable metadata
            found.append(f"{name}: {'missing' if isinstance(e, KeyError) else 'unreadable metadata'}")
            continue
        if name in ANALYSES:
            continue  # tiles are checked one by one
        missing = integrity.missing_chunks(arr)
        if missing:
            found.append(missing)
            continue
        f = Path(path) / name / arr.metadata.encode_chunk_key((0,) * arr.ndim)
        problem = integrity.file_problem(f, arr) if f.exists() or f.is_symlink() else "missing"
        if problem:
            found.append(f"{f.relative_to(path)}: {problem}")
    return found


def remove_partials(path: Path, names: list[str], owned: set[tuple[str, int, int]] | None,
                    root: bool) -> int:
    """Delete ``*.partial`` leftovers of killed writers; return how many.

    With ``owned`` (a set of (analysis, ty, tx)) only files of those tiles are touched, so a
    process never deletes the in-flight temporary file of another shard process. ``root``:
    also the group-level leftovers (metadata, small arrays), for the metadata process.
    """
    n = 0
    path = Path(path)
    for f in path.rglob("*.partial"):
        rel = f.relative_to(path).parts
        base = rel[0].removesuffix("_origin").removesuffix("_outside")
        if base in names and len(rel) >= 4 and rel[1] == "c":
            try:
                key = (base, int(rel[2]), int(rel[3].split(".")[0]))
            except ValueError:
                continue
            if owned is not None and key not in owned:
                continue  # another process's tile: its writer may be renaming this file now
        elif not root:
            continue
        f.unlink(missing_ok=True)
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# Reading.


def read_attrs(path: Path) -> dict:
    """The group attributes of the store at ``path``, read from its ``zarr.json`` with a
    one-line StoreError for anything unreadable (missing, empty, truncated, not a group)."""
    meta = Path(path) / "zarr.json"
    try:
        if not meta.is_file():
            raise StoreError(f"no LinearScope store at {path}")
        node = json.loads(meta.read_text(encoding="utf-8"))
    except StoreError:
        raise
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise StoreError(f"{path}: unreadable zarr.json ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:100] if str(e) else 'empty'}); the store is "
                         "damaged") from None
    if not isinstance(node, dict) or node.get("node_type") != "group":
        raise StoreError(f"{path} is not a LinearScope store (its zarr.json is not a Zarr group)")
    attrs = node.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise StoreError(f"{path}: damaged zarr.json (attributes are not a mapping)")
    return attrs


def _check_version(attrs: dict, path: Path) -> None:
    v = attrs.get("format_version")
    if v is None and attrs.get(CREATING):
        raise StoreError(f"{path} is still being created (or its creation was interrupted: run the "
                         "same `precompute run` command to finish it)")
    if v is None:
        raise StoreError(f"{path} is not a LinearScope store (no format_version attribute)")
    if not isinstance(v, int) or isinstance(v, bool):
        raise StoreError(f"{path} has format_version {str(v)[:20]!r}, not an integer: damaged, "
                         "or not a LinearScope store")
    if v > FORMAT_VERSION:
        raise StoreError(
            f"{path} has format_version {v}, newer than this LinearScope reads "
            f"({FORMAT_VERSION}); upgrade linearscope to read it"
        )


class Store:
    """A store opened read-only. See docs/FORMAT.md for the meaning of every field."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.attrs: dict[str, Any] = read_attrs(self.path)
        _check_version(self.attrs, self.path)
        try:
            self.group = zarr.open_group(str(self.path), mode="r")
            for name in ("input", "output"):
                missing = integrity.missing_chunks(self.group[name])
                if missing:
                    raise StoreError(f"{self.path}: {missing}; the store is damaged or not a "
                                     "LinearScope store")
            self.in_shape = tuple(self.group["input"].shape)
            self.out_shape = tuple(self.group["output"].shape)
            self.layouts: dict[str, Layout] = {}
            self.arrays = tiled_arrays(self.group)  # opened once for the per-tile checks
            geometry = self.attrs.get("geometry")
            for name in ANALYSES:
                a = self.attrs.get("analyses", {}).get(name)
                if a is not None and name in self.group:
                    self.layouts[name] = Layout.from_attrs(name, a, self.in_shape, self.out_shape,
                                                           geometry)
        except KeyError as e:
            raise StoreError(f"{self.path}: array {e} is missing; the store is damaged") from None
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 — damaged metadata surfaces as many types
            raise StoreError(f"{self.path}: the store is damaged ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:100] if str(e) else ''})") from None

    # provenance ---------------------------------------------------------------------------
    @property
    def format_version(self) -> int:
        return self.attrs["format_version"]

    @property
    def checks(self) -> dict:
        """Errors measured at run time (requirement (3), reconstruction, linearity, adjoint)."""
        return dict(self.attrs.get("checks", {}))

    @property
    def provenance(self) -> dict:
        """Everything recorded about how the store was made (all attributes but the checks)."""
        return {k: v for k, v in self.attrs.items() if k != "checks"}

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.attrs["dtype"])

    def array(self, name: str) -> np.ndarray:
        """A whole array (``input``, ``residual``, ``svd/u``, …), read only when its chunks are
        all on disk."""
        return read_whole(self.group[name])

    # progress -----------------------------------------------------------------------------
    def planned_tiles(self, analysis: str) -> list[P.Tile]:
        return self.layouts[analysis].tiles()

    def done_tiles(self, analysis: str) -> list[P.Tile]:
        """Tiles whose shard exists with an intact index (finished, whatever happened later to
        the run); the checksums of their chunks are checked by :meth:`check_integrity`."""
        lay = self.layouts[analysis]
        return [t for t in lay.tiles() if tile_done(self.path, self.arrays, lay, t, full=False)]

    def check_integrity(self) -> "integrity.Report":
        """Every file of the store checked against its checksums (reads the whole store)."""
        return integrity.check_store(self.path)

    def is_complete(self) -> bool:
        return all(len(self.done_tiles(a)) == len(self.planned_tiles(a)) for a in self.layouts)

    # filters ------------------------------------------------------------------------------
    def window(self, analysis: str, i: int, j: int) -> tuple[int, int, int, int] | None:
        """(oy, ox, wh, ww) of the stored window of pixel (i, j), or None if not computed."""
        oy, ox = (int(v) for v in self.group[f"{analysis}_origin"][i, j])
        if oy < 0:
            return None
        wh, ww = self.layouts[analysis].window
        return (oy, ox, wh, ww)

    def _full(self, analysis: str, i: int, j: int, channel: int | None) -> np.ndarray:
        lay = self.layouts[analysis]
        c_other, h, w = lay.other_shape
        win = self.window(analysis, i, j)
        n_probe = lay.probe_shape[0]
        out = np.zeros((n_probe, c_other, h, w), dtype=self.dtype)
        if win is None:
            out[...] = np.nan
        else:
            oy, ox, wh, ww = win
            out[:, :, oy:oy + wh, ox:ox + ww] = self.group[analysis][i, j]
        return out if channel is None else out[channel]

    def column(self, i: int, j: int, channel: int | None = None) -> np.ndarray:
        """Column(s) of input pixel (i, j) as full output-size images: (C, C', H', W'), or
        (C', H', W') for one input ``channel``. Zeros outside the window, NaN if not computed;
        ``outside`` tells how much of the column the window cut off."""
        return self._full("columns", i, j, channel)

    def row(self, p: int, q: int, channel: int | None = None) -> np.ndarray:
        """Row(s) of output pixel (p, q) as full input-size images: (C', C, H, W), or (C, H, W)
        for one output ``channel``. Zeros outside the window, NaN if not computed."""
        return self._full("rows", p, q, channel)

    def outside(self, analysis: str, i: int, j: int) -> np.ndarray:
        """Fraction of each filter's squared norm outside its window (per probed channel)."""
        return self.group[f"{analysis}_outside"][i, j]

    def dense(self) -> np.ndarray:
        """The whole filter matrix F (N × n, FORMAT.md index order) of a small store.

        Built from full-window columns if all are computed, else from full-window rows; any
        other store holds only part of F and this raises StoreError.
        """
        n = math.prod(self.in_shape)
        big = n * math.prod(self.out_shape) * self.dtype.itemsize
        if big > 2**31:
            raise StoreError(f"F would take {big / 2**30:.1f} GiB; dense() is for small stores")
        for name, order in (("columns", (3, 4, 5, 2, 0, 1)), ("rows", (2, 0, 1, 3, 4, 5))):
            lay = self.layouts.get(name)
            if lay is None or not lay.full:
                continue
            if lay.selection != P.Selection(None, 1) or not self.is_analysis_complete(name):
                continue
            a = read_whole(self.group[name])
            return np.ascontiguousarray(a.transpose(order)).reshape(math.prod(self.out_shape), n)
        raise StoreError(
            f"{self.path} holds no complete full-window columns or rows of every pixel, so it "
            "does not determine the whole F"
        )

    def classify(self, adversarial: bool = False) -> dict | None:
        """The classifier analyses (FORMAT.md "Classifier analyses") as ``{"attrs": {...},
        <array name>: array, ...}``; ``adversarial`` for the FGSM copy. None when the store has
        none, or they are incomplete (a killed run)."""
        name = "classify/adversarial" if adversarial else "classify"
        if not (self.path / name / "zarr.json").is_file():
            return None
        g = self.group[name]
        attrs = dict(g.attrs)
        if not attrs.get("complete"):
            return None
        return {"attrs": attrs} | {k: a[...] for k, a in g.arrays()}

    def is_analysis_complete(self, analysis: str) -> bool:
        return len(self.done_tiles(analysis)) == len(self.planned_tiles(analysis))

    # svd (precompute/svd.py) --------------------------------------------------------------
    @property
    def svd_attrs(self) -> dict | None:
        """Attributes of the ``svd/`` group (method, calls, converged, ...), or None if absent."""
        return dict(self.group["svd"].attrs) if "svd" in self.group else None

    def has_svd(self) -> bool:
        """True when the ``svd/`` result is complete (its ``complete`` attribute is written last)."""
        a = self.svd_attrs
        return bool(a and a.get("complete"))

    def svd(self) -> dict[str, np.ndarray]:
        """The complete SVD result: ``sigma`` (k), ``u`` (k, C', H', W') or (k, K), ``v``
        (k, C, H, W), ``residual`` (k, 2); StoreError if it is absent or incomplete."""
        if not self.has_svd():
            raise StoreError(f"{self.path} holds no complete SVD (analyses.svd not run or not "
                             "finished: run the same `precompute run` to finish it)")
        return {name: read_whole(self.group[f"svd/{name}"])
                for name in ("sigma", "u", "v", "residual")}


def open_store(path: str | os.PathLike) -> Store:
    """Open a store written by ``precompute run`` read-only (see docs/FORMAT.md)."""
    return Store(path)


def _size_on_disk(path: Path) -> int:
    """Bytes of the store's regular files (links are not followed)."""
    total = 0
    for f in Path(path).rglob("*"):
        st = f.lstat()
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def model_code(attrs: dict) -> str | None:
    """The Python code a store names as its model (``python:FILE:FUNC`` / ``python:pkg.mod:FUNC``
    in ``config.model.arch``, what ``verify`` would import), or None for a zoo model."""
    arch = ((attrs.get("config") or {}).get("model") or {}).get("arch")
    if not isinstance(arch, str):
        return None
    return arch if arch.startswith("python:") else None


def _group_attrs(path: Path) -> dict:
    """The attributes in a group's zarr.json, or {} when there is none or it is unreadable
    (``open_store`` then says what is wrong, in one line)."""
    try:
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes")
    except (OSError, ValueError, AttributeError):
        return {}
    return attrs if isinstance(attrs, dict) else {}


def probing_text(probing: dict) -> str:
    """``attrs.probing`` in words (docs/FORMAT.md, "Probing")."""
    parts = []
    for name in ANALYSES:
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


def _svd_info(st: Store) -> list[str]:
    """`precompute info` lines of the SVD (docs/FORMAT.md, section SVD)."""
    planned = st.attrs.get("analyses", {}).get("svd")
    if planned is None:
        return []
    head = f"svd       top-{planned['k']} by {planned['method']}"
    if not st.has_svd():
        return [head + ": not complete (run the same command to finish it)"]
    try:
        a, d = st.svd_attrs, st.svd()
    except Exception:  # noqa: BLE001 — a damaged chunk (checksum) or metadata
        return [head + ": unreadable (damaged; see precompute verify)"]
    sig, res = d["sigma"], d["residual"]
    c, rc = a["calls"], a.get("residual_calls", {})
    return [
        head + (f" (blocks of {a['block']})" if a["method"] == "block" else "")
        + f": σ_1 = {sig[0]:.4g} … σ_{len(sig)} = {sig[-1]:.4g}; "
        + (f"on the stored {a.get('operator_source')} ({a['products']['forward']} + "
           f"{a['products']['backward']} sparse products), " if a.get("operator") == "store"
           else "")
        + f"{c['forward']} forward + {c['backward']} backward passes"
        + (f" (+{rc.get('forward', 0)}+{rc.get('backward', 0)} to measure residuals)" if rc else "")
        + f", {a['wall_time']:.1f} s; "
        + ("converged" if a["converged"] else f"NOT converged to tol {a['tol']:g}"),
        f"          residuals max ‖Fv − σu‖/σ = {res[:, 0].max():.2e}, "
        f"max ‖Fᵀu − σv‖/σ = {res[:, 1].max():.2e} (tol {a['tol']:g})",
    ]


def info_text(path: str | os.PathLike) -> str:
    """A human summary of a store (``precompute info``); reads the store, runs nothing from it."""
    from precompute import classify

    if _group_attrs(Path(path)).get("kind") == "summary":
        return classify.summary_info(Path(path))
    st = open_store(path)
    try:
        return "\n".join(_info_lines(st))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise StoreError(f"{st.path}: its attributes are damaged or incomplete "
                         f"({type(e).__name__}: {str(e)[:80]})") from None


def _info_lines(st: Store) -> list[str]:
    a = st.attrs
    m, im = a["model"], a["image"]
    code = model_code(a)
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
        found = [integrity.tile_problem(st.path, st.arrays, name, t.ty, t.tx, full=False)
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
    from precompute import classify  # (imports this module)

    lines += classify.info_lines(st.group)
    lines += _svd_info(st)
    ch = a.get("checks", {})
    lines.append("checks    " + ", ".join(f"{k} {v:.2e}" for k, v in ch.items()))
    t = a.get("timings", {})
    lines.append("timings   " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items())
                 + f"; oom_splits {a.get('oom_splits', 0)}; last device {a.get('device')}")
    lines.append(f"size      {_size_on_disk(st.path) / 1e6:.1f} MB on disk")
    lines.append("integrity not checked (only that tile shards exist with intact indexes); "
                 f"`precompute verify --integrity-only {st.path}` checks every chunk's checksum")
    return lines
