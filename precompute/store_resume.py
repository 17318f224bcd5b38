"""Resuming a store: which tiles are done, and what a killed or damaged run left behind.

A tile is done when its shard exists and is intact (docs/FORMAT.md, "Integrity"); damaged files
of tiles left to do are deleted so they are written anew (``*.partial`` leftovers of killed
writers are the tile store's to remove), and damage outside the tiles (the arrays written at
creation) refuses the resume (``--overwrite`` makes the store again).

Written on the primitives of a tile store (``tiles``: a :class:`precompute.tile_store.TileStore`;
``has``, ``delete``, ``key_problem``, ``tile_problem``, ``format_problem``), so every backend
shares this policy; the local one is :mod:`precompute.local_tiles`.
"""

from __future__ import annotations

import zarr

from precompute import integrity
from precompute import probes as P
from precompute.layout import Layout
from precompute.store_create import ANALYSES, shard_key


def tile_done(tiles, group: zarr.Group, lay: Layout, tile: P.Tile,
              full: bool = True) -> bool:
    """A tile is done when its shard exists and it is intact: the shard's index and inner-chunk
    checksums, and its origin and outside chunks (:mod:`precompute.integrity`). ``full=False``
    checks the shard's index only (a small read at its end): empty and truncated shards, not
    flipped bytes inside a chunk. ``group``: the group or its tiled arrays."""
    return tiles.tile_problem(group, lay.name, tile.ty, tile.tx, full) is None


def tile_keys(group: zarr.Group, lay: Layout, tile: P.Tile) -> dict[str, str]:
    """The keys of one tile: its shard, origin chunk and outside chunk, by array name."""
    keys = {lay.name: shard_key(group[lay.name], lay.name, tile)}
    for name in (f"{lay.name}_origin", f"{lay.name}_outside"):
        if name in group:
            keys[name] = f"{name}/{group[name].metadata.encode_chunk_key((tile.ty, tile.tx, 0))}"
    return keys


def clear_damaged(tiles, group: zarr.Group, lay: Layout,
                  todo: list[P.Tile]) -> list[str]:
    """Delete the damaged files of tiles left to do, so that they are written anew rather than
    merged into (zarr reads a chunk it writes only in part): every file of a tile whose shard is
    on disk but not intact, and any origin/outside chunk that fails its checksum. Returns the
    deleted keys (files relative to the store)."""
    found = []
    for t in todo:
        problem = tiles.tile_problem(group, lay.name, t.ty, t.tx)
        if problem is None:
            continue  # done meanwhile (another process)
        for name, key in tile_keys(group, lay, t).items():
            if not tiles.has(key):
                continue
            if problem == integrity.MISSING and not tiles.key_problem(key, group[name]):
                continue  # left intact by a killed run: simply overwritten
            tiles.delete(key)
            found.append(key)
    return found


def core_damage(tiles, group: zarr.Group, attrs: dict) -> list[str]:
    """Damage outside the tiles: unreadable array metadata, or a missing or damaged chunk of the
    arrays written at creation (``input``, ``output``, ``residual``, ``display/*``, FORMAT.md).
    A store with such damage cannot be resumed; ``--overwrite`` makes it again."""
    problem = tiles.format_problem(group, attrs)
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
        key = f"{name}/{arr.metadata.encode_chunk_key((0,) * arr.ndim)}"
        problem = tiles.key_problem(key, arr) if tiles.has(key) else "missing"
        if problem:
            found.append(f"{key}: {problem}")
    return found
