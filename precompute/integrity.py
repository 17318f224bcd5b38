"""Integrity of a store on disk: every chunk file checked against its checksums, nothing decoded.

Every (inner) chunk of a store ends with a crc32c of its compressed bytes, and every shard of
``columns`` / ``rows`` ends with an index of (offset, length) per inner chunk that has its own
crc32c (docs/FORMAT.md, "Integrity"). Checking a file is reading it and recomputing those
checksums with ``google_crc32c`` (the library zarr's own codec uses; hardware crc32c, ~10 GB/s),
without decompressing anything, so a check runs at the speed of the disk.

A file is *damaged* when it is empty or shorter than its index, when an index or chunk checksum
does not match, when its index points outside the file, or when it is larger than any chunk of
its array could be (never read whole). A symbolic link is reported, never followed: LinearScope
writes none, and a received store must not make us read files outside it.

:func:`tile_problem` decides whether a tile counts as done (``precompute run`` recomputes a
damaged one); :func:`check_store` checks every file of a store (``precompute verify``).
"""

from __future__ import annotations

import math
import stat
from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c
import numpy as np
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

from precompute import store_format

ANALYSES = ("columns", "rows")
MISSING = "missing"  # tile_problem: the tile was never written (not damage)
_EMPTY = 2**64 - 1  # an index entry of an inner chunk that was never written


def _crc_ok(buf: np.ndarray) -> bool:
    """The last 4 bytes of ``buf`` are the crc32c (little endian) of the bytes before them."""
    return len(buf) >= 4 and int(google_crc32c.value(buf[:-4])) == int(buf[-4:].view("<u4")[0])


def _ends_with_crc(codecs) -> bool:
    return bool(codecs) and isinstance(codecs[-1], Crc32cCodec)


def _read(path: Path, limit: int) -> bytes | str:
    """The bytes of a regular file of at most ``limit`` bytes, or why it cannot be checked."""
    try:
        st = path.lstat()
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link (not followed)"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    if st.st_size > limit:
        return f"{st.st_size} bytes, more than any chunk of this array can take ({limit})"
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError as e:
        return f"unreadable ({e.strerror})"


def _limit(array, shape) -> int:
    """Most bytes a stored chunk of ``shape`` may take: raw size, doubled, plus slack."""
    return 2 * math.prod(shape) * array.dtype.itemsize + (1 << 20)


def chunk_problem(data: np.ndarray, codecs) -> str | None:
    """Problem of one encoded (inner) chunk, or None; a chunk without crc32c is not checkable."""
    if _ends_with_crc(codecs) and not _crc_ok(data):
        return "checksum mismatch"
    return None


def _index_size(codec: ShardingCodec, n_inner: int) -> int | None:
    """Bytes of a shard index, or None for an index encoding zarr does not write."""
    if not all(isinstance(c, (BytesCodec, Crc32cCodec)) for c in codec.index_codecs):
        return None
    return 16 * n_inner + (4 if _ends_with_crc(codec.index_codecs) else 0)


def _at_end(codec: ShardingCodec) -> bool:
    return str(getattr(codec.index_location, "value", codec.index_location)) == "end"


def index_problem(index: np.ndarray, file_size: int, codec: ShardingCodec, n_inner: int):
    """Check a shard's index (its bytes, from the file of ``file_size`` bytes): a problem
    sentence, or the (offset, length) entries of its inner chunks."""
    if _ends_with_crc(codec.index_codecs) and not _crc_ok(index):
        return "shard index checksum mismatch (damaged or truncated)"
    entries = [(int(o), int(n)) for o, n in index[:16 * n_inner].view("<u8").reshape(-1, 2)]
    size = len(index)
    lo, hi = (0, file_size - size) if _at_end(codec) else (size, file_size)
    for k, (offset, length) in enumerate(entries):
        if offset == _EMPTY and length == _EMPTY:
            continue
        if offset < lo or offset + length > hi:  # Python ints: no wrap-around
            return f"inner chunk {k} points outside the file"
    return entries


def shard_problem(data: np.ndarray, codec: ShardingCodec, n_inner: int, full: bool) -> str | None:
    """Problem of one shard file's bytes: its index (checksum, bounds), and with ``full`` every
    inner chunk's checksum."""
    size = _index_size(codec, n_inner)
    if size is None:
        return None  # not checkable here
    if len(data) < size:
        return f"truncated ({len(data)} bytes, shorter than its {size}-byte index)"
    index = data[len(data) - size:] if _at_end(codec) else data[:size]
    entries = index_problem(index, len(data), codec, n_inner)
    if isinstance(entries, str):
        return entries
    if full:
        for k, (offset, length) in enumerate(entries):
            if offset != _EMPTY:
                problem = chunk_problem(data[offset:offset + length], codec.codecs)
                if problem:
                    return f"inner chunk {k}: {problem}"
    return None


def file_problem(path: Path, array, full: bool = True) -> str | None:
    """Problem of one chunk (or shard) file of ``array`` (a zarr Array), or None."""
    codecs = array.metadata.codecs
    sharding = codecs[0] if isinstance(codecs[0], ShardingCodec) else None
    outer = array.shards if sharding is not None else array.chunks
    data = _read(path, _limit(array, outer))
    if isinstance(data, str):
        return data
    buf = np.frombuffer(data, np.uint8)
    if sharding is None:
        return chunk_problem(buf, codecs)
    n_inner = math.prod(s // c for s, c in zip(array.shards, sharding.chunk_shape))
    return shard_problem(buf, sharding, n_inner, full)


def _chunk_path(root: Path, group, name: str, index: tuple) -> Path:
    return Path(root) / name / group[name].metadata.encode_chunk_key(index)


def tile_problem(root: Path, group, name: str, ty: int, tx: int, full: bool = True) -> str | None:
    """Whether tile (ty, tx) of ``columns``/``rows`` is done: None when its shard exists and its
    shard, window-origin and outside-fraction chunks are intact; :data:`MISSING` when the shard
    was never written; otherwise what is damaged. ``full=False`` checks the shard's index only
    (a small read at its end), not the checksums of its inner chunks."""
    arr = group[name]
    shard = _chunk_path(root, group, name, (ty, tx) + (0,) * (arr.ndim - 2))
    if not shard.exists() and not shard.is_symlink():
        return MISSING
    problem = file_problem(shard, arr, full) if full else _index_problem(shard, arr)
    if problem:
        return f"{shard.relative_to(root)}: {problem}"
    for part in ("_origin", "_outside"):
        if name + part not in group:
            continue
        f = _chunk_path(root, group, name + part, (ty, tx, 0))
        if not f.exists() and not f.is_symlink():
            return f"{f.relative_to(root)}: missing (the tile's shard exists)"
        problem = file_problem(f, group[name + part]) if full else None
        if problem:
            return f"{f.relative_to(root)}: {problem}"
    return None


def _index_problem(path: Path, array) -> str | None:
    """A shard's index checked with one small read at the end of the file (size, checksum,
    bounds), without reading its chunks."""
    sharding = array.metadata.codecs[0]
    n_inner = math.prod(s // c for s, c in zip(array.shards, sharding.chunk_shape))
    size = _index_size(sharding, n_inner)
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size == 0:
            return "empty file (0 bytes)"
        if size is None or not _at_end(sharding):
            return None
        if st.st_size < size:
            return f"truncated ({st.st_size} bytes, shorter than its {size}-byte index)"
        with open(path, "rb") as f:
            f.seek(st.st_size - size)
            tail = np.frombuffer(f.read(size), np.uint8)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    entries = index_problem(tail, st.st_size, sharding, n_inner)
    return entries if isinstance(entries, str) else None


# ---------------------------------------------------------------------------------------------
# Every file of a store.


@dataclass
class Report:
    """What :func:`check_store` found: files and bytes checked, damage by name."""

    files: int = 0
    bytes: int = 0
    unchecked: int = 0  # chunk files of arrays without crc32c
    damaged: list[str] = field(default_factory=list)
    damaged_tiles: dict[str, set] = field(default_factory=dict)  # analysis -> {(ty, tx)}

    @property
    def ok(self) -> bool:
        return not self.damaged

    def text(self) -> str:
        head = (f"integrity: {self.files} files ({self.bytes / 1e6:.1f} MB) checked against their "
                f"crc32c checksums: " + ("no damage" if self.ok else f"{len(self.damaged)} damaged"))
        if self.unchecked:
            head += f"; {self.unchecked} chunk file(s) have no checksum (not checked)"
        lines = [head] + [f"  {d}" for d in self.damaged]
        if self.damaged_tiles:
            lines.append("  damaged tiles are recomputed by `precompute run` on the store's config")
        return "\n".join(lines)


def _tile_of(rel: tuple[str, ...]) -> tuple[str, int, int] | None:
    """(analysis, ty, tx) of a chunk file of columns/rows or their origin/outside arrays."""
    base = rel[0].removesuffix("_origin").removesuffix("_outside")
    if base in ANALYSES and len(rel) >= 4 and rel[1] == "c":
        try:
            return base, int(rel[2]), int(rel[3])
        except ValueError:
            return None
    return None


#: arrays written whole up to this size are read whatever they declare; larger ones only with
#: every chunk on disk (``small`` writes even chunks that equal the fill value)
WHOLE_ARRAY_TRUSTED_BYTES = 64 << 20


def _finished(arr, name: str) -> bool:
    """An array of ``svd/`` counts as written only once the SVD is complete (a killed SVD leaves
    its arrays created, not written: unfinished, not damaged)."""
    if not name.startswith("svd/"):
        return True
    try:
        meta = store_format.read_json(Path(arr.store.root) / arr.path / ".." / "zarr.json")
        return bool((meta.get("attributes") or {}).get("complete"))
    except (store_format.FormatError, AttributeError):
        return True


def missing_chunks(arr, name: str | None = None) -> str | None:
    """Arrays written whole (``input``, ``output``, ``residual``, ``display/*``, ``svd/*``,
    ``classify/*``) have every chunk on disk: a shape that declares more chunks than there are
    files (damage, or a store made to blow up whoever reads it) is refused before anything is
    read. Counting is bounded by the files actually present."""
    nbytes = math.prod(int(n) for n in arr.shape) * arr.dtype.itemsize
    name = name or arr.path  # (an array opened on its own has no path)
    if name in store_format.WRITTEN_WHOLE and nbytes and _finished(arr, name):
        problem = store_format.whole_missing(arr, name)  # every chunk, whatever the size
        return problem and f"{problem} (the array reads as fill values)"
    if nbytes <= WHOLE_ARRAY_TRUSTED_BYTES:
        return None  # small enough to read whatever it declares (empty chunks may be absent)
    grid = arr.shards or arr.chunks
    expected = math.prod(-(-int(n) // max(int(c), 1)) for n, c in zip(arr.shape, grid))
    root = Path(arr.store.root) / arr.path / "c"
    present = 0
    if root.is_dir():
        for f in root.rglob("*"):
            if f.is_file():
                present += 1
                if present >= expected:
                    return None
    if present >= expected:
        return None
    return (f"array '{arr.path}' declares shape {tuple(arr.shape)} ({nbytes / 1e9:.3g} GB in "
            f"{expected:,} chunks) but only {present:,} of its chunks are on disk")


def check_store(root: str | Path) -> Report:
    """Check every metadata and chunk file of the store at ``root`` (read-only), and that every
    tile whose shard exists has its window-origin and outside-fraction chunks."""
    import zarr

    root = Path(root)
    rep = Report()
    present: dict[str, set] = {}  # array name -> {(ty, tx)} of its chunk files (tiled arrays)

    def damage(rel, problem: str, tile=None):
        if tile is not None:
            rep.damaged_tiles.setdefault(tile[0], set()).add(tile[1:])
            rep.damaged.append(f"{tile[0]} tile ({tile[1]}, {tile[2]}) [{rel}]: {problem}")
        else:
            rep.damaged.append(f"{rel}: {problem}")

    for meta in sorted(root.rglob("zarr.json")):
        rel = meta.relative_to(root)
        rep.files += 1
        if meta.is_symlink():
            damage(rel, "a symbolic link (not followed)")
            continue
        try:
            rep.bytes += meta.stat().st_size
            node = store_format.read_json(meta)
            if node.get("node_type") != "array":
                continue
            arr = zarr.open_array(str(meta.parent), mode="r")
            depth = len(arr.metadata.encode_chunk_key((0,) * arr.ndim).split("/"))
        except Exception as e:  # noqa: BLE001 — any failure here is damaged metadata
            damage(rel, f"unreadable metadata ({type(e).__name__})")
            continue
        codecs = arr.metadata.codecs
        checkable = _ends_with_crc(codecs) or isinstance(codecs[0], ShardingCodec)
        for f in sorted(meta.parent.rglob("*")):
            if f.name == "zarr.json" or f.name.endswith(".partial"):
                continue
            frel = f.relative_to(root)
            own = f.relative_to(meta.parent).parts
            if f.is_dir() and not f.is_symlink():
                if own[0] == "c" and len(own) == depth:  # a folder where a chunk file belongs
                    damage(frel, "a directory, not a chunk file", _tile_of(frel.parts))
                continue
            if own[0] == "c" and len(own) > depth:
                continue  # inside such a folder (reported above)
            tile = _tile_of(frel.parts)
            if tile is not None:
                present.setdefault(frel.parts[0], set()).add(tile[1:])
            rep.files += 1
            try:
                rep.bytes += f.lstat().st_size
            except OSError:
                pass
            if not checkable:
                rep.unchecked += 1
                continue
            problem = file_problem(f, arr)
            if problem:
                damage(frel, problem, tile)
        parts = meta.parent.relative_to(root).parts
        if parts and parts[0] not in ANALYSES and _tile_of(parts + ("c", "0", "0")) is None \
                and parts[:2] != ("svd", "state"):  # written whole (the solver state is not)
            problem = missing_chunks(arr, "/".join(parts))
            if problem:
                damage(meta.parent.relative_to(root), problem)
    for link in store_format.links(root):
        rel = Path(link)
        if (root / rel).is_dir():  # (file links are reported with their array above)
            damage(rel, "a symbolic link to a directory (not followed; a store's files lie "
                        "inside it)", _tile_of(rel.parts))
    for name in ANALYSES:
        for part in ("_origin", "_outside"):
            if name + part not in present and not (root / (name + part)).is_dir():
                continue
            for ty, tx in sorted(present.get(name, set()) - present.get(name + part, set())):
                damage(f"{name}{part}/c/{ty}/{tx}/0", "missing (the tile's shard exists)",
                       (name, ty, tx))
    return rep
