"""Creating a LinearScope store and writing its tiles (docs/FORMAT.md is the contract).

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

from typing import Callable

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from precompute import probes as P
from precompute import shards
from precompute.layout import Layout
from precompute.store_format import CREATING, FORMAT_VERSION  # noqa: F401  (re-exported)

ANALYSES = ("columns", "rows")


def codecs() -> list:
    """Lossless only: zstd level 3 then a crc32c checksum per (inner) chunk."""
    return [ZstdCodec(level=3), Crc32cCodec()]


def create_store(tiles, *, attrs: dict, dtype: str, input: np.ndarray, output: np.ndarray,
                 residual: np.ndarray | None, display_input: np.ndarray,
                 display_output: np.ndarray | None, layouts: list[Layout]) -> zarr.Group:
    """Create the group and every array, write the small arrays, then the group attributes.

    ``tiles`` is where the store goes (a :class:`precompute.tile_store.TileStore`, e.g.
    ``open_tiles(path)``: the storage seam below this module, so it is handed in).

    The attributes (with ``format_version``) are written last, in one atomic file: a store
    without them is an interrupted creation and may be deleted and made again.
    """
    # marker until the real attributes replace it: lets a resumed run tell its own interrupted
    # creation (safe to delete) from someone else's Zarr data (never deleted)
    g = tiles.create({CREATING: True})
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


def shard_key(array: zarr.Array, name: str, tile: P.Tile) -> str:
    """The store key of a tile's shard (``columns/c/ty/tx/0/0/0/0``)."""
    return f"{name}/{array.metadata.encode_chunk_key((tile.ty, tile.tx) + (0,) * (array.ndim - 2))}"


def write_tile(group: zarr.Group, lay: Layout, tile: P.Tile, block: np.ndarray,
               origin: np.ndarray, outside: np.ndarray, *,
               put: Callable[[str, bytes | None], None] | None) -> None:
    """Write one tile: origins and outside fractions first, then the whole shard (atomically).

    Only the shard's existence marks the tile done, so a kill between the writes just makes
    the tile recomputed and rewritten. ``put(key, data)`` stores the encoded shard atomically
    (None: remove it), the tile store's job (:mod:`precompute.tile_store`); without it, or for
    codecs the fast encoder does not write, zarr writes the shard.
    """
    ys, xs = slice(tile.y0, tile.y1), slice(tile.x0, tile.x1)
    group[f"{lay.name}_origin"][ys, xs] = origin
    group[f"{lay.name}_outside"][ys, xs] = outside
    arr = group[lay.name]
    level = shards.fast_path(arr)
    if level is None or put is None:
        arr[ys, xs] = block
        return
    # the same bytes zarr would write, without its per-chunk overhead (precompute/shards.py)
    full = np.full(arr.metadata.chunk_grid.chunk_shape, np.nan, dtype=arr.dtype.to_native_dtype()
                   if hasattr(arr.dtype, "to_native_dtype") else arr.dtype)
    full[:block.shape[0], :block.shape[1]] = block
    inner = arr.metadata.codecs[0].chunk_shape
    put(shard_key(arr, lay.name, tile), shards.encode_shard(full, tuple(inner), level))


def tiled_arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    """The tiled arrays of a store (``columns``, ``rows`` and their ``_origin`` / ``_outside``),
    opened once: the tile functions below take this mapping (or the group itself) and look
    arrays up per tile, which costs a metadata read each on a group."""
    names = [n + part for n in ANALYSES for part in ("", "_origin", "_outside")]
    members = {name for name, _ in group.arrays()}
    return {n: group[n] for n in names if n in members}
