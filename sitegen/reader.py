"""Read a LinearScope store exactly as docs/FORMAT.md describes it, with zarr and nothing else.

The site generator never imports the model or the precompute package: a store is the whole
contract. Everything a user can get wrong (a path that is not a store, a store written by a newer
LinearScope, a damaged array) raises :class:`StoreError` with one sentence for the user.
"""

from __future__ import annotations

import math
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from precompute import shards, store_format  # torch-free (precompute/__init__.py imports lazily)

FORMAT_VERSION = store_format.FORMAT_VERSION
KINDS = ("columns", "rows")



def _whole(arr) -> np.ndarray:
    """``arr[...]`` of an array a store holds whole, refused (one-line StoreError) when its shape
    declares more chunks than are on disk: a store must not make us allocate what it does not
    hold. Counting stops at the files present."""
    _check_declared(arr)
    return np.asarray(arr[...])


def _check_declared(arr) -> None:
    if arr.path in store_format.WRITTEN_WHOLE:
        problem = store_format.whole_missing(arr)  # every chunk, whatever the size
        if problem:
            raise StoreError(f"{arr.store.root}: {problem}; the store is damaged")
        return
    if math.prod(int(n) for n in arr.shape) * arr.dtype.itemsize <= 64 << 20:
        return  # small enough to read whatever it declares (empty chunks may be absent)
    grid = arr.shards or arr.chunks
    expected = math.prod(-(-int(n) // max(int(c), 1)) for n, c in zip(arr.shape, grid))
    root, n = Path(arr.store.root) / arr.path / "c", 0
    if root.is_dir():
        for f in root.rglob("*"):
            n += f.is_file()
            if n >= expected:
                break
    if n < expected:
        raise StoreError(f"{arr.store.root}: array '{arr.path}' declares shape {tuple(arr.shape)} "
                         "but not all of its chunks are on disk; the store is damaged")

class StoreError(Exception):
    """A store that cannot be read; the message is shown to the user as is."""


@dataclass(frozen=True)
class Analysis:
    """One planned filter analysis (``columns`` or ``rows``) of a store.

    ``grid`` is the pixel grid the filters are indexed by (input pixels for columns, output pixels
    for rows); ``other`` the size of the domain the filters live in; ``own_channels`` the channel
    count of the indexing domain, ``other_channels`` that of the filter images.
    """

    kind: str
    window: tuple[int, int]
    full: bool
    tile: int
    region: tuple[int, int, int, int]
    stride: int
    grid: tuple[int, int]
    other: tuple[int, int]
    own_channels: int
    other_channels: int

    @property
    def tiles(self) -> tuple[int, int]:
        T = self.tile
        return (-(-self.grid[0] // T), -(-self.grid[1] // T))


class Store:
    """A read-only view of one store (one model × one image)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        zj = self.path / "zarr.json"
        if not self.path.is_dir() or not zj.is_file():
            raise StoreError(f"{self.path} is not a LinearScope store (no zarr.json)")
        try:
            attrs = store_format.root_attributes(self.path)  # bounded size and nesting
        except store_format.FormatError as e:
            raise StoreError(str(e)) from None
        problem = store_format.version_problem(attrs, self.path)
        if problem:
            raise StoreError(problem)
        try:
            self.group = zarr.open_group(str(self.path), mode="r")
            self.attrs = dict(self.group.attrs)
        except Exception as e:  # zarr raises many types for damaged metadata
            raise StoreError(f"{self.path}: cannot open the Zarr group ({e})") from None
        # attributes (schema), links, array metadata, arrays written whole: the check precompute
        # makes too (precompute/store_format.py, torch-free); here no link at all is followed
        try:
            problem = store_format.store_problem(self.path, self.group, self.attrs)
        except Exception as e:  # noqa: BLE001 — an array's metadata zarr cannot parse
            problem = f"unreadable array metadata ({type(e).__name__})"
        if problem:
            raise StoreError(f"{self.path}: {problem}; the store is damaged or not a "
                             "LinearScope store")
        self.format_version = attrs["format_version"]
        self.model = self.attrs.get("model") or {}
        self.image = self.attrs.get("image") or {}
        self.geometry = self.attrs.get("geometry")
        self.checks = self.attrs.get("checks") or {}
        self.name = str(self.attrs.get("name") or self.path.stem)
        self.kind = self.model.get("kind", "image")
        self.input_shape = tuple(self._array("input").shape)
        self.output_shape = tuple(self._array("output").shape)
        for name in ("input", "output"):  # every other shape is checked against these
            _check_declared(self._array(name))
        self.analyses: dict[str, Analysis] = {}
        for kind in KINDS:
            a = self._analysis(kind)
            if a is not None:
                self.analyses[kind] = a

    # -- arrays -----------------------------------------------------------------------------
    def _array(self, name: str):
        cache = self.__dict__.setdefault("_arrays", {})
        if name in cache:
            return cache[name]
        try:
            cache[name] = self.group[name]
            return cache[name]
        except KeyError:
            raise StoreError(f"{self.path}: array '{name}' is missing") from None
        except Exception as e:
            raise StoreError(f"{self.path}: cannot open array '{name}' ({e})") from None

    def has_array(self, name: str) -> bool:
        return (self.path / name / "zarr.json").is_file()

    def read(self, name: str) -> np.ndarray:
        """A whole array; refused when its shape declares more chunks than are on disk (a store
        that would make us allocate what it does not hold)."""
        arr = self._array(name)
        try:
            return _whole(arr)
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"{self.path}: cannot read array '{name}' ({e})") from None

    def _analysis(self, kind: str) -> Analysis | None:
        plan = (self.attrs.get("analyses") or {}).get(kind)
        if not plan or self.kind != "image" or not self.has_array(kind):
            return None
        shape = self._array(kind).shape
        C, H, W = self.input_shape
        Co, Ho, Wo = self.output_shape
        grid, other = ((H, W), (Ho, Wo)) if kind == "columns" else ((Ho, Wo), (H, W))
        own_c, other_c = (C, Co) if kind == "columns" else (Co, C)
        if tuple(shape[:4]) != (*grid, own_c, other_c):
            raise StoreError(f"{self.path}: array '{kind}' has shape {tuple(shape)}, "
                             f"expected {(*grid, own_c, other_c)}+window")
        window = (int(shape[4]), int(shape[5]))
        region = plan.get("region") or [0, 0, grid[0], grid[1]]
        return Analysis(kind=kind, window=window, full=bool(plan.get("full", False)),
                        tile=int(plan.get("tile") or self._array(kind).shards[0]),
                        region=tuple(int(v) for v in region), stride=int(plan.get("stride") or 1),
                        grid=grid, other=other, own_channels=own_c, other_channels=other_c)

    def tile_done(self, kind: str, ty: int, tx: int) -> bool:
        """A store tile is done when its shard of ``columns``/``rows`` exists (FORMAT.md).

        A shard file shorter than its own index (empty after a power loss, truncated) is damage,
        not an unfinished tile: StoreError, so that the site never silently shows fewer pixels
        (zarr would read such a shard as all fill values). So is a link (stores have none).
        Damage inside a shard is caught by its checksums when it is read.
        """
        p = self.chunk_path(kind, (ty, tx, 0, 0, 0, 0))
        try:
            st = p.lstat()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StoreError(f"{self.path}: cannot read {p.relative_to(self.path)} ({e.strerror})") from None
        arr = self._array(kind)
        inner = math.prod(s // c for s, c in zip(arr.shards or arr.chunks, arr.chunks))
        index = 16 * inner + 4
        if not stat.S_ISREG(st.st_mode) or st.st_size < index:
            what = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                    if not stat.S_ISREG(st.st_mode) else f"{st.st_size} bytes, less than its "
                    f"{index}-byte index")
            raise StoreError(f"{self.path}: {kind} tile ({ty}, {tx}) is damaged "
                             f"({p.relative_to(self.path)} is {what}); `precompute run` on its "
                             "config recomputes it, `precompute verify --integrity-only` lists "
                             "all damage")
        return True

    def chunk_path(self, name: str, index: tuple) -> Path:
        """The file of one chunk (or shard) of an array of this (directory) store."""
        return self.path / name / self._array(name).metadata.encode_chunk_key(index)

    def read_block(self, kind: str, y0: int, y1: int, x0: int, x1: int):
        """Filters, window origins and outside-energy fractions of pixels [y0:y1, x0:x1]."""
        try:
            vals = self._filters(kind, y0, y1, x0, x1)
            origin = np.asarray(self._array(kind + "_origin")[y0:y1, x0:x1])
            if self.has_array(kind + "_outside"):
                outside = np.asarray(self._array(kind + "_outside")[y0:y1, x0:x1])
            else:
                outside = np.full(vals.shape[:3], np.nan, np.float32)
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"{self.path}: cannot read '{kind}' tile ({e})") from None
        return vals, origin, outside

    def _filters(self, kind: str, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """``kind[y0:y1, x0:x1]``, the same array zarr reads.

        zarr decodes each one-pixel inner chunk through its async pipeline (~0.5 ms a chunk,
        still 5-10x a direct decode with ``codec_pipeline.batch_size`` raised, see
        docs/benchmarks.md), which made reading the slowest stage of a build. For the one codec
        chain precompute writes (:func:`precompute.shards.pixel_level`) the shards are read
        directly: their index, then only the inner chunks needed, checksums verified; any other
        array, or a frame without its size, is read by zarr."""
        arr = self._array(kind)
        levels = self.__dict__.setdefault("_levels", {})
        if kind not in levels:
            levels[kind] = shards.pixel_level(arr)
        level = levels[kind]
        H, W = int(arr.shape[0]), int(arr.shape[1])
        y0, y1, x0, x1 = max(y0, 0), min(y1, H), max(x0, 0), min(x1, W)
        if level is None or y1 <= y0 or x1 <= x0:
            return np.asarray(arr[y0:y1, x0:x1])
        Th, Tw = int(arr.shards[0]), int(arr.shards[1])
        out = np.full((y1 - y0, x1 - x0, *arr.shape[2:]), np.nan, np.dtype(arr.dtype))
        for sy in range(y0 // Th, (y1 - 1) // Th + 1):
            for sx in range(x0 // Tw, (x1 - 1) // Tw + 1):
                a0, a1 = max(y0, sy * Th), min(y1, sy * Th + Th)
                b0, b1 = max(x0, sx * Tw), min(x1, sx * Tw + Tw)
                p = self.chunk_path(kind, (sy, sx) + (0,) * (arr.ndim - 2))
                try:
                    block = shards.read_pixels(p, tuple(arr.shards), arr.dtype, level,
                                               (a0 - sy * Th, a1 - sy * Th),
                                               (b0 - sx * Tw, b1 - sx * Tw))
                except shards.NotDirect:
                    return np.asarray(arr[y0:y1, x0:x1])
                except shards.ShardError as e:
                    raise StoreError(f"{self.path}: cannot read '{kind}' tile ({sy}, {sx}): "
                                     f"{p.relative_to(self.path)} is damaged ({e}); `precompute "
                                     "run` on its config recomputes it, `precompute verify "
                                     "--integrity-only` lists all damage") from None
                if block is not None:
                    out[a0 - y0:a1 - y0, b0 - x0:b1 - x0] = block.reshape(
                        a1 - a0, b1 - b0, *arr.shape[2:])
        return out

    # -- summaries --------------------------------------------------------------------------
    @property
    def scale(self) -> float | None:
        return None if not self.geometry else float(self.geometry.get("scale", 1))

    @property
    def offset(self) -> float:
        return 0.0 if not self.geometry else float(self.geometry.get("offset", 0))

    def requirement3(self) -> float | None:
        v = self.checks.get("requirement3_rel")
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    # -- svd (docs/FORMAT.md, section "SVD") --------------------------------------------------
    def svd(self) -> "SvdResult | None":
        """The complete top-k SVD of the store, or None when there is none (not planned, not
        finished: ``svd/zarr.json`` lacks ``complete: true``, which is written last)."""
        zj = self.path / "svd" / "zarr.json"
        if not zj.is_file():
            return None
        try:
            attrs = store_format.read_json(zj).get("attributes") or {}
        except (store_format.FormatError, AttributeError) as e:
            raise StoreError(f"{self.path}: unreadable svd/zarr.json ({e})") from None
        if not attrs.get("complete"):
            return None
        sigma = np.asarray(self.read("svd/sigma"), np.float64)
        k = len(sigma)
        want = {"u": (k, *self.output_shape), "v": (k, *self.input_shape), "residual": (k, 2)}
        for name, shape in want.items():
            got = tuple(self._array(f"svd/{name}").shape)
            if got != shape:
                raise StoreError(f"{self.path}: array 'svd/{name}' has shape {got}, expected {shape}")
        return SvdResult(self, attrs, sigma, np.asarray(self.read("svd/residual"), np.float64))


@dataclass(frozen=True)
class SvdResult:
    """σ (k), measured residuals (k, 2) and the solver's attributes; eigen-vectors per triplet."""

    store: Store
    attrs: dict
    sigma: np.ndarray
    residual: np.ndarray

    @property
    def k(self) -> int:
        return len(self.sigma)

    def u(self, i: int) -> np.ndarray:
        """Eigen-output i: (C', H', W'), or (K,) for a vector model."""
        return np.asarray(self.store._array("svd/u")[i])

    def v(self, i: int) -> np.ndarray:
        """Eigen-input i: (C, H, W)."""
        return np.asarray(self.store._array("svd/v")[i])


def open_store(path: str | Path) -> Store:
    return Store(Path(path))


def find_stores(root: str | Path) -> list[Path]:
    """Every store (a ``*.zarr`` directory with a group zarr.json) below ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.rglob("*.zarr")):
        if p.is_dir() and (p / "zarr.json").is_file() and not any(
                q.suffix == ".zarr" for q in p.relative_to(root).parents if q != Path(".")):
            found.append(p)
    return found


# -- classifier analyses (FORMAT.md "Classifier analyses") --------------------------------------

@dataclass
class Classify:
    """A complete ``classify/`` (or ``classify/adversarial/``) group, read whole (it is small)."""

    attrs: dict
    arrays: dict
    adversarial: "Classify | None" = None


def _complete_group(path: Path, name: str):
    zj = path / name / "zarr.json"
    if not zj.is_file():
        return None
    try:
        g = zarr.open_group(str(path / name), mode="r")
        attrs = dict(g.attrs)
    except Exception as e:
        raise StoreError(f"{path}: cannot open the group '{name}' ({e})") from None
    return g if attrs.get("complete") else None


def classify_complete(path: str | Path) -> bool:
    """The store at ``path`` holds complete classifier analyses."""
    return _complete_group(Path(path), "classify") is not None


def read_classify(store: Store) -> Classify | None:
    """The classifier analyses of a store, or None when it has none (or they are incomplete)."""
    def read(name):
        g = _complete_group(store.path, name)
        if g is None:
            return None
        try:
            arrays = {k: _whole(a) for k, a in g.arrays()}
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"{store.path}: cannot read '{name}' ({e})") from None
        return Classify(dict(g.attrs), arrays)

    clean = read("classify")
    if clean is not None:
        clean.adversarial = read("classify/adversarial")
    return clean


def is_summary(path: str | Path) -> bool:
    """A dataset summary store (``kind: "summary"``) rather than the store of one run."""
    zj = Path(path) / "zarr.json"
    try:
        return (store_format.read_json(zj).get("attributes") or {}).get("kind") == "summary"
    except (store_format.FormatError, AttributeError):
        return False


class Summary:
    """A dataset summary store (FORMAT.md "Dataset summary"): Table 4 and Figure 8 data."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            g = zarr.open_group(str(self.path), mode="r")
            self.attrs = dict(g.attrs)
            version = self.attrs.get("format_version")
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise StoreError(f"{self.path} has format_version {version}, not one this "
                                 "sitegen reads: upgrade linearscope")
            store_format.validate_attrs(self.attrs, summary=True)
            link = store_format.first_link(self.path)
            if link is not None:
                raise StoreError(f"{self.path}: {link}; the store is damaged")
            for k, a in list(g.arrays()) + (list(g["adversarial"].arrays())
                                            if "adversarial" in g else []):
                problem = store_format.array_problem(k, a.shape, a.chunks, a.shards, str(a.dtype),
                                                     {"shape": tuple(a.shape), "dtype": str(a.dtype),
                                                      "chunks": tuple(a.shape), "shards": None})
                if problem:
                    raise StoreError(f"{self.path}: {problem}; the store is damaged")
            self.arrays = {k: _whole(a) for k, a in g.arrays()}
            self.adversarial = None
            if "adversarial" in g:
                a = g["adversarial"]
                self.adversarial = (dict(a.attrs), {k: _whole(v) for k, v in a.arrays()})
        except StoreError:
            raise
        except store_format.FormatError as e:
            raise StoreError(f"{self.path}: {e}; the store is damaged") from None
        except Exception as e:
            raise StoreError(f"{self.path}: cannot read the dataset summary ({e})") from None
        self.name = str(self.attrs.get("name") or self.path.stem)
