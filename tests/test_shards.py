"""The direct shard writer (precompute/shards.py) writes the very bytes zarr writes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from precompute import probes as P
from precompute import shards
from precompute import layout as L
from precompute import store_create as SC
from precompute.tile_store import open_tiles
from precompute.local_tiles import LocalTileStore


@pytest.mark.parametrize("name, window, shape_in, shape_out, tile, dtype", [
    ("rows", 6, (1, 13, 11), (1, 39, 33), 8, "float32"),      # edge tiles (39 = 4·8 + 7)
    ("columns", 5, (3, 10, 9), (3, 20, 18), 4, "float64"),
    ("columns", "full", (2, 5, 6), (1, 10, 12), 2, "float32"),
])
def test_shards_are_byte_identical_to_zarr(tmp_path, name, window, shape_in, shape_out, tile, dtype):
    lay = L.make_layout(name, window, tile, P.Selection(), shape_in, shape_out, 2.0, 0.0,
                        np.dtype(dtype).itemsize)
    stores = {}
    for mode in ("zarr", "direct"):
        path = tmp_path / f"{mode}.zarr"
        g = SC.create_store(open_tiles(path), attrs={}, dtype=dtype, input=np.zeros(shape_in),
                           output=np.zeros(shape_out), residual=None,
                           display_input=np.zeros((2, 2, 3), np.uint8), display_output=None,
                           layouts=[lay])
        assert shards.fast_path(g[name]) == 3
        rng = np.random.default_rng(0)
        for t in lay.tiles():
            th, tw = t.shape
            b = rng.standard_normal((th, tw) + lay.chunk[2:]).astype(dtype)
            b[0, 0] = np.nan             # an unselected pixel: left out of the shard
            b[-1, -1] = 0                # an all-zero filter: stored
            b[th // 2, tw // 2, 0] = np.nan  # partly NaN: stored
            if mode == "zarr":
                g[name][t.y0:t.y1, t.x0:t.x1] = b
            else:
                LocalTileStore(path).write_tile(g, lay, t, b, np.zeros((th, tw, 2), np.int32),
                                                np.zeros((th, tw, lay.probe_shape[0]), dtype))
        stores[mode] = path
    files = sorted(p.relative_to(stores["zarr"]) for p in (stores["zarr"] / name / "c").rglob("*")
                   if p.is_file())
    assert files and files == sorted(p.relative_to(stores["direct"])
                                     for p in (stores["direct"] / name / "c").rglob("*") if p.is_file())
    for f in files:
        assert (stores["zarr"] / f).read_bytes() == (stores["direct"] / f).read_bytes(), f
    a = zarr.open_group(str(stores["zarr"]))[name][...]
    assert np.array_equal(a, zarr.open_group(str(stores["direct"]))[name][...], equal_nan=True)
    assert not list(stores["direct"].rglob("*.partial"))


def test_other_codecs_fall_back_to_zarr(tmp_path):
    g = zarr.open_group(str(tmp_path / "x.zarr"), mode="w")
    a = g.create_array("a", shape=(4, 4), chunks=(1, 1), shards=(2, 2), dtype="f4")
    assert shards.fast_path(a) is None  # default codecs (no crc32c): zarr writes these
    shutil.rmtree(tmp_path / "x.zarr")


@pytest.mark.parametrize("name, window, shape_in, shape_out, tile, dtype", [
    ("rows", 6, (1, 13, 11), (1, 39, 33), 8, "float32"),      # edge tiles
    ("columns", 5, (3, 10, 9), (3, 20, 18), 4, "float64"),
])
def test_decode_shard_reads_what_zarr_reads(tmp_path, name, window, shape_in, shape_out, tile,
                                            dtype):
    """decode_shard (the fast reader of the stored F) returns zarr's values for shards zarr wrote,
    absent inner chunks as NaN, and refuses a flipped byte in a chunk or in the index."""
    lay = L.make_layout(name, window, tile, P.Selection(), shape_in, shape_out, 2.0, 0.0,
                        np.dtype(dtype).itemsize)
    path = tmp_path / "z.zarr"
    g = SC.create_store(open_tiles(path), attrs={}, dtype=dtype, input=np.zeros(shape_in),
                       output=np.zeros(shape_out), residual=None,
                       display_input=np.zeros((2, 2, 3), np.uint8), display_output=None,
                       layouts=[lay])
    arr = g[name]
    rng = np.random.default_rng(1)
    for t in lay.tiles():
        th, tw = t.shape
        b = rng.standard_normal((th, tw) + lay.chunk[2:]).astype(dtype)
        b[0, 0] = np.nan  # left out of the shard
        arr[t.y0:t.y1, t.x0:t.x1] = b
    level = shards.fast_path(arr)
    for t in lay.tiles():
        f = path / SC.shard_key(arr, name, t)
        got = shards.decode_shard(f.read_bytes(), arr.shards, arr.metadata.codecs[0].chunk_shape,
                                  dtype, level)
        th, tw = t.shape
        assert np.array_equal(got[:th, :tw], arr[t.y0:t.y1, t.x0:t.x1], equal_nan=True)
        assert np.isnan(got[0, 0]).all() and np.isnan(got[th:]).all()
    data = bytearray(f.read_bytes())
    for pos in (10, len(data) - 10):  # a chunk's byte, then an index byte
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        with pytest.raises(shards.ShardError, match="checksum"):
            shards.decode_shard(bytes(bad), arr.shards, arr.metadata.codecs[0].chunk_shape,
                                dtype, level)
