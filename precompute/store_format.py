"""The store format at the boundary: what a received store must be before anything reads it.

One module, shared by ``precompute`` (store.py, integrity.py) and ``sitegen`` (reader.py), and
therefore torch-free (it imports json, pydantic and nothing of this package): a store is checked
once, at open, on both sides, against docs/FORMAT.md:

* its ``zarr.json`` files are read with a bound on size and nesting (:func:`read_json`);
* its group attributes are validated by one pydantic schema (:func:`validate_attrs`), so a
  ``geometry.scale`` that is a string, an ``analyses.columns.stride`` of 0 or ``checks`` that are a
  list is one sentence, not a ``TypeError`` three calls later;
* every array's metadata (shape, chunks, shards, dtype) is checked against those attributes and
  the shapes of ``input``/``output`` (:func:`array_problem`), which bounds the number of chunks a
  reader will visit by what the store's own attributes describe;
* arrays written whole must have every chunk on disk (:data:`WRITTEN_WHOLE`);
* no directory of the store is a symbolic link, and no file outside the tiled arrays is one
  (:func:`first_link`): a store's files lie inside it.

Every function reports a problem as a sentence (or raises :class:`FormatError`, a ValueError
whose message is that sentence); callers prefix the store's path and raise their own error type.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat,
                      StrictInt, StrictStr, ValidationError, model_validator)

#: the store format this code writes and reads (docs/FORMAT.md); a newer store is refused
FORMAT_VERSION = 1
#: the root attribute of a store still being created (format_version is written last)
CREATING = "linearscope_creating"
#: a ``zarr.json`` larger than this is not metadata LinearScope wrote (its largest, the group's,
#: holds the config and a few hundred labels: kilobytes)
MAX_JSON_BYTES = 16 << 20
#: arrays written whole (one chunk each, ``write_empty_chunks`` on, or data that never equals the
#: fill value): a chunk absent from disk is damage whatever the array's size, never "fill value"
WRITTEN_WHOLE = ("input", "output", "residual", "display/input", "display/output",
                 "svd/sigma", "svd/u", "svd/v", "svd/residual")
#: most chunk (or shard) files any array may declare: a backstop on the work a reader does per
#: array, above what any store of a 4096×4096 image with tile 8 needs
MAX_CHUNKS = 1 << 20


class FormatError(ValueError):
    """A store that does not follow docs/FORMAT.md; the message is one sentence."""


# ---------------------------------------------------------------------------------------------
# JSON


def read_json(path: Path) -> Any:
    """The JSON value of a metadata file, or :class:`FormatError`: unreadable, not a regular file
    (a FIFO would block), larger than :data:`MAX_JSON_BYTES`, not UTF-8, not JSON, or nested
    deeper than Python's JSON reader recurses (a 200,000-deep array is 400 KB)."""
    path = Path(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(f"{path.name} is not a regular file")
        if st.st_size > MAX_JSON_BYTES:
            raise FormatError(f"{path.name} takes {st.st_size:,} bytes, more than metadata "
                              f"can ({MAX_JSON_BYTES:,})")
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
        return json.loads(data.decode("utf-8"))
    except FormatError:
        raise
    except RecursionError:
        raise FormatError(f"{path.name} is nested too deeply to be metadata") from None
    except OSError as e:
        raise FormatError(f"{path.name} is unreadable ({e.strerror})") from None
    except ValueError as e:  # bad JSON or bad UTF-8
        text = str(e).splitlines()[0][:100] if str(e) else "empty"
        raise FormatError(f"unreadable {path.name} ({type(e).__name__}: {text})") from None


def version_problem(attrs: dict, store: Path) -> str | None:
    """Why a store with root attributes ``attrs`` cannot be read by this version (still being
    created, no or a damaged ``format_version``, a newer format), or None."""
    v = attrs.get("format_version")
    if v is None and attrs.get(CREATING):
        return (f"{store} is still being created (or its creation was interrupted: run the same "
                "`precompute run` command to finish it)")
    if v is None:
        return f"{store} is not a LinearScope store (no format_version attribute)"
    if not isinstance(v, int) or isinstance(v, bool):
        return (f"{store} has format_version {str(v)[:20]!r}, not an integer: damaged, or not a "
                "LinearScope store")
    if v > FORMAT_VERSION:
        return (f"{store} has format_version {v}, newer than this LinearScope reads "
                f"({FORMAT_VERSION}); upgrade linearscope to read it")
    return None


def root_attributes(store: Path) -> dict:
    """The attributes of the group in ``store/zarr.json`` (which must exist), or
    :class:`FormatError` naming the store: unreadable (:func:`read_json`), not a Zarr group, or
    attributes that are not a mapping. What `precompute` and sitegen's reader both open first."""
    try:
        node = read_json(Path(store) / "zarr.json")
    except FormatError as e:
        raise FormatError(f"{store}: {e}; the store is damaged") from None
    if not isinstance(node, dict) or node.get("node_type") != "group":
        raise FormatError(f"{store} is not a LinearScope store (its zarr.json is not a Zarr group)")
    attrs = node.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise FormatError(f"{store}: damaged zarr.json (attributes are not a mapping)")
    return attrs


# ---------------------------------------------------------------------------------------------
# The group attributes (docs/FORMAT.md, "Attributes")


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


Num = Union[StrictInt, StrictFloat]  # floats may be NaN (checks, timings); never bools or text
Finite = Annotated[Union[StrictInt, StrictFloat], AfterValidator(_finite)]
Pos = Annotated[StrictInt, Field(ge=1)]
NonNeg = Annotated[StrictInt, Field(ge=0)]
Pair = Annotated[list[Pos], Field(min_length=2, max_length=2)]
Region = Annotated[list[NonNeg], Field(min_length=4, max_length=4)]


class _Loose(BaseModel):
    """Keys FORMAT.md does not name are kept (a newer writer may add some)."""

    model_config = ConfigDict(extra="allow")


class ModelAttrs(_Loose):
    id: StrictStr
    arch: StrictStr | None = None
    scale: Annotated[Finite, Field(gt=0)] | None = None
    checkpoint: StrictStr | None = None
    checkpoint_sha256: StrictStr | None = None
    kind: Literal["image", "vector"] = "image"
    labels: list[StrictStr] | None = None
    description: StrictStr | None = None


class ImageAttrs(_Loose):
    path: StrictStr
    sha256: StrictStr
    crop: Region | None = None
    size: Pair | None = None
    orientation: Annotated[StrictInt, Field(ge=1, le=8)] | None = None


class Geometry(_Loose):
    scale: Annotated[Finite, Field(gt=0)]
    offset: Finite = 0


class Windowed(_Loose):
    """``analyses.columns`` / ``analyses.rows``."""

    window: Pair
    full: StrictBool
    tile: Pos
    region: Region
    stride: Pos
    batch: Pos | None = None


class SvdPlan(_Loose):
    k: Pos
    method: StrictStr


class ClassifyPlan(_Loose):
    top_k: Pos


class Analyses(_Loose):
    residual: StrictBool | None = None
    columns: Windowed | None = None
    rows: Windowed | None = None
    svd: SvdPlan | None = None
    classify: ClassifyPlan | None = None


class Probe(_Loose):
    method: Literal["single", "compressed", "from_columns"]
    period: Pair | None = None
    block: Pos | None = None

    @model_validator(mode="after")
    def _lattice(self):
        if self.method != "single" and (self.period is None or self.block is None):
            raise ValueError(f"method {self.method} needs a `period` and a `block`")
        return self


class Support(_Loose):
    rows: Pair | None = None
    columns: Pair | None = None


class Probing(_Loose):
    requested: StrictStr | None = None
    support: Support | None = None
    columns: Probe | None = None
    rows: Probe | None = None


class StoreAttrs(_Loose):
    """The group attributes of the store of one run."""

    format_version: StrictInt
    name: StrictStr | None = None
    config: dict | None = None
    model: ModelAttrs
    image: ImageAttrs
    interpreter: StrictStr
    dtype: Literal["float32", "float64"]
    geometry: Geometry | None = None
    checks: dict[str, Num | None] = {}
    analyses: Analyses = Analyses()
    probing: Probing | None = None
    timings: dict[str, Num] = {}
    versions: dict | None = None
    device: StrictStr | None = None
    created: StrictStr | None = None
    oom_splits: NonNeg = 0


class SummaryAttrs(_Loose):
    """The group attributes of a dataset summary (FORMAT.md "Dataset summary")."""

    format_version: StrictInt
    kind: Literal["summary"]
    name: StrictStr | None = None
    model: ModelAttrs | None = None
    terms: list[StrictStr]
    stores: list[StrictStr] = []
    count: NonNeg
    residual_share_mean: Num
    residual_share_std: Num


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    def tag(p) -> bool:  # pydantic's names of union members and validators, not keys
        p = str(p)
        return p in ("int", "float", "str", "bool", "list", "dict", "none") or p.startswith(
            ("function-", "union[", "list[", "dict[", "constrained-", "tagged-union["))

    where = ".".join(str(p) for p in err["loc"] if not tag(p))
    value = repr(err.get("input"))
    value = value if len(value) <= 40 else value[:37] + "..."
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    msg = err["msg"].removeprefix("Value error, ")
    return f"attribute `{where or 'attributes'}` {msg[:1].lower() + msg[1:]}, got {value}{more}"


def validate_attrs(attrs: Any, summary: bool = False) -> dict:
    """``attrs`` when they follow FORMAT.md (the store of a run, or a dataset ``summary``), else
    :class:`FormatError` naming the first attribute that does not. The attributes themselves are
    returned, unchanged: validation only decides whether they may be used."""
    if not isinstance(attrs, dict):
        raise FormatError("its attributes are not a mapping")
    try:
        (SummaryAttrs if summary else StoreAttrs).model_validate(attrs)
    except ValidationError as e:
        raise FormatError(_first_error(e)) from None
    except RecursionError:
        raise FormatError("its attributes are nested too deeply") from None
    return attrs


# ---------------------------------------------------------------------------------------------
# Array metadata against the attributes (docs/FORMAT.md, "Arrays")


def expected_arrays(attrs: dict, in_shape: tuple, out_shape: tuple) -> dict[str, dict]:
    """name -> {"shape", "chunks", "shards", "dtype"} of every array FORMAT.md defines for a store
    with these (validated) attributes and ``input``/``output`` shapes; None where any value is
    allowed."""
    dt = attrs["dtype"]
    whole = lambda shape, dtype=dt: {"shape": tuple(shape), "chunks": tuple(shape),  # noqa: E731
                                     "shards": None, "dtype": dtype}
    want = {"input": whole(in_shape), "output": whole(out_shape), "residual": whole(out_shape)}
    if len(in_shape) == 3:
        want["display/input"] = whole((*in_shape[1:], 3), "uint8")
    if len(out_shape) == 3:
        want["display/output"] = whole((*out_shape[1:], 3), "uint8")
    analyses = attrs.get("analyses") or {}
    for name in ("columns", "rows"):
        a = analyses.get(name)
        if not a or len(in_shape) != 3 or len(out_shape) != 3:
            continue
        (c, h, w), (co, _, _) = (in_shape, out_shape) if name == "columns" else (out_shape, in_shape)
        T, win = a["tile"], tuple(a["window"])
        chunk = (1, 1, c, co, *win)
        want[name] = {"shape": (h, w, c, co, *win), "chunks": chunk,
                      "shards": (T, T, *chunk[2:]), "dtype": dt}
        want[name + "_origin"] = {"shape": (h, w, 2), "chunks": (T, T, 2), "shards": None,
                                  "dtype": "int32"}
        want[name + "_outside"] = {"shape": (h, w, c), "chunks": (T, T, c), "shards": None,
                                   "dtype": dt}
    return want


def analysis_problem(name: str, a: dict, in_shape: tuple, out_shape: tuple) -> str | None:
    """An ``analyses.columns``/``rows`` entry that does not fit the shapes: a window larger
    than the other domain, a region outside the probed one."""
    probe, other = (in_shape, out_shape) if name == "columns" else (out_shape, in_shape)
    if len(probe) != 3 or len(other) != 3:
        return f"attribute `analyses.{name}` is planned for a model without images"
    if a["window"][0] > other[1] or a["window"][1] > other[2]:
        return (f"attribute `analyses.{name}.window` {a['window']} is larger than the "
                f"{other[1]}×{other[2]} pixels it lies in")
    top, left, h, w = a["region"]
    if h < 1 or w < 1 or top + h > probe[1] or left + w > probe[2]:
        return (f"attribute `analyses.{name}.region` {a['region']} leaves the {probe[1]}×"
                f"{probe[2]} pixels it selects from")
    return None


def grid(shape: tuple, chunks: tuple) -> int:
    """How many chunks a shape of that chunk shape has (0 for an empty shape)."""
    return math.prod(-(-int(n) // max(int(c), 1)) for n, c in zip(shape, chunks))


def array_problem(name: str, shape, chunks, shards, dtype: str, want: dict | None) -> str | None:
    """What is wrong with an array's metadata, or None: against ``want`` (from
    :func:`expected_arrays`) when FORMAT.md defines the array, and for every array a chunk count
    below :data:`MAX_CHUNKS` and chunks no larger than the array (positive sides)."""
    shape, chunks = tuple(int(n) for n in shape), tuple(int(n) for n in chunks)
    shards = None if shards is None else tuple(int(n) for n in shards)
    outer = shards or chunks
    if any(c < 1 for c in chunks):
        return f"array '{name}' has chunks {chunks}"
    n = grid(shape, outer)
    if want is None and n > MAX_CHUNKS:
        return (f"array '{name}' declares shape {shape} in {n:,} chunks of {outer}, more than "
                f"any store holds ({MAX_CHUNKS:,})")
    if want is None:
        return None
    for key, got in (("shape", shape), ("chunks", chunks), ("shards", shards), ("dtype", dtype)):
        if got != want[key]:
            return f"array '{name}' has {key} {got}, expected {want[key]} (docs/FORMAT.md)"
    return None


# ---------------------------------------------------------------------------------------------
# Links


TILED = ("columns", "rows", "columns_origin", "rows_origin", "columns_outside", "rows_outside")


def links(root: Path, specials: bool = False):
    """Every symbolic link inside the store at ``root`` (relative paths, sorted by folder),
    found without following any: one directory entry per file of the store (``d_type``). With
    ``specials``, also every entry that is neither a folder nor a regular file (a FIFO would
    block whoever reads it, a device never end)."""
    stack = [(Path(root), ())]
    while stack:
        folder, rel = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue  # unreadable: whoever reads it next says so
        for e in entries:
            if e.is_symlink():
                yield "/".join(rel + (e.name,))
            elif e.is_dir(follow_symlinks=False):
                stack.append((Path(e.path), rel + (e.name,)))
            elif specials and not e.is_file(follow_symlinks=False):
                yield "/".join(rel + (e.name,))


def first_link(root: Path, files_allowed: tuple[str, ...] = ()) -> str | None:
    """The first symbolic link (or FIFO, socket, device) inside the store at ``root``, as a
    sentence naming its relative path, or None.

    Writers create none, so any link is damage or a store made to read files outside itself:
    every directory link is reported; a file link (or FIFO, ...) only outside the arrays named
    in ``files_allowed`` (whose chunk files the caller checks one by one, e.g. the tiles that
    ``precompute run`` recomputes when their shard is a link). Walks without following links;
    the work is one directory entry per file of the store."""
    for link in links(root, specials=True):
        rel = link.split("/")
        if len(rel) > 1 and rel[0] in files_allowed and not (Path(root) / link).is_dir():
            continue  # a tile's file: checked (never followed) with its tile
        if not os.path.islink(Path(root) / link):
            return f"{link} is not a regular file (a FIFO, socket or device)"
        return f"{link} is a symbolic link (a store's files lie inside it; writers make none)"
    return None


# ---------------------------------------------------------------------------------------------
# The whole check at open


def _arrays(group) -> dict:
    """name -> zarr Array of every array of the group, nested ones included (``display/input``)."""
    return {name: a for name, a in group.arrays()} | {
        f"{gname}/{name}": a for gname, sub in group.groups() for name, a in _arrays(sub).items()}


def whole_missing(arr, name: str | None = None) -> str | None:
    """The first chunk file of an array written whole that is not on disk (its chunk count is
    bounded by :func:`array_problem` first); ``name`` for an array opened on its own."""
    import itertools

    name = name or arr.path
    root = Path(arr.store.root) / arr.path
    ranges = [range(-(-int(n) // int(c))) for n, c in zip(arr.shape, arr.chunks)]
    for index in itertools.product(*ranges):
        f = root / arr.metadata.encode_chunk_key(index)
        if not f.is_file():
            key = f.relative_to(root).as_posix()
            return (f"array '{name}' is written whole but its chunk {name}/{key} is "
                    f"{'not a file' if f.exists() else 'missing'}")
    return None


def store_problem(root: Path, group, attrs: dict, files_allowed: tuple[str, ...] = ()) -> str | None:
    """The first way the store at ``root`` (its zarr ``group``, its ``attrs``) departs from
    docs/FORMAT.md, or None: attributes (schema), symbolic links, every array's metadata against
    the attributes and the ``input``/``output`` shapes, and arrays written whole with a chunk
    missing. Reads metadata only (and lists the store's entries for links)."""
    try:
        validate_attrs(attrs)
    except FormatError as e:
        return str(e)
    link = first_link(root, files_allowed)
    if link is not None:
        return link
    arrays = _arrays(group)
    for name in ("input", "output"):
        if name not in arrays:
            return f"array '{name}' is missing"
    in_shape, out_shape = tuple(arrays["input"].shape), tuple(arrays["output"].shape)
    if len(in_shape) != 3 or len(out_shape) not in (1, 3):
        return f"arrays 'input' {in_shape} and 'output' {out_shape} are not an image and an image or vector"
    size = attrs["image"].get("size")
    if size is not None and list(in_shape[1:]) != size:
        return f"array 'input' has shape {in_shape}, but attribute `image.size` is {size}"
    for name in ("columns", "rows"):
        a = attrs.get("analyses", {}).get(name)
        problem = a and analysis_problem(name, a, in_shape, out_shape)
        if problem:
            return problem
    want = expected_arrays(attrs, in_shape, out_shape)
    if "svd/sigma" in arrays:
        k = int(arrays["svd/sigma"].shape[0]) if arrays["svd/sigma"].ndim == 1 else -1
        for name, shape, chunks in (("svd/sigma", (k,), (k,)), ("svd/residual", (k, 2), (k, 2)),
                                    ("svd/u", (k, *out_shape), (1, *out_shape)),
                                    ("svd/v", (k, *in_shape), (1, *in_shape))):
            dtype = str(arrays[name].dtype) if name in arrays else None
            want[name] = {"shape": shape, "chunks": chunks, "shards": None, "dtype": dtype}
    for name, arr in sorted(arrays.items()):
        w = want.get(name)
        if w is None and name.startswith("classify/"):  # written whole, one chunk (FORMAT.md)
            w = {"shape": tuple(arr.shape), "chunks": tuple(arr.shape), "shards": None,
                 "dtype": str(arr.dtype)}
        problem = array_problem(name, arr.shape, arr.chunks, arr.shards, str(arr.dtype), w)
        if problem:
            return problem
    svd_done = "svd/sigma" in arrays and bool(dict(group["svd"].attrs).get("complete"))
    for name in WRITTEN_WHOLE:
        if name in arrays and (svd_done or not name.startswith("svd/")):  # a killed SVD: unfinished
            problem = whole_missing(arrays[name])
            if problem:
                return problem
    return None
