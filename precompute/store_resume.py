"""Resuming a store: which tiles are done, and what a killed or damaged run left behind.

A tile is done when its shard exists and is intact (docs/FORMAT.md, "Integrity"); damaged files
of tiles left to do are deleted so they are written anew, ``*.partial`` leftovers of killed
writers are removed, and damage outside the tiles (the arrays written at creation) refuses the
resume (``--overwrite`` makes the store again).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import zarr

from precompute import integrity
from precompute import probes as P
from precompute import store_format
from precompute.layout import Layout
from precompute.store_create import ANALYSES, shard_file


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
            if f.is_dir() and not f.is_symlink():  # a folder where the file belongs (inside
                shutil.rmtree(f)  # the store: its folders are checked not to be links)
            else:
                f.unlink()
            found.append(str(f.relative_to(path)))
    return found


def core_damage(path: Path, group: zarr.Group, attrs: dict) -> list[str]:
    """Damage outside the tiles: unreadable array metadata, or a missing or damaged chunk of the
    arrays written at creation (``input``, ``output``, ``residual``, ``display/*``, FORMAT.md).
    A store with such damage cannot be resumed; ``--overwrite`` makes it again."""
    problem = store_format.store_problem(path, group, attrs, files_allowed=store_format.TILED)
    if problem:
        return [problem]
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
