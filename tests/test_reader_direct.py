"""sitegen's direct shard reader (precompute/shards.py ``read_pixels``, sitegen/reader.py
``read_block``) reads exactly what zarr reads, and reports damage as damage.

Every comparison is against zarr reading the same files (``arr[...]``): rows and columns, edge
shards, blocks across shards, tiles never written, inner chunks left out (all fill value), and
frames zarr can read that the direct reader does not decode itself (fallback to zarr).
"""

from __future__ import annotations

import os
import shutil

import google_crc32c
import numpy as np
import pytest
import zarr

from precompute import probes as P
from precompute import shards
from precompute import layout as L
from precompute import store_create as SC
from precompute.tile_store import open_tiles
from precompute.local_tiles import LocalTileStore
from sitegen.reader import StoreError, open_store
from tests.site_fixtures import make_store

MAX = 2**64 - 1


def _blocks(H, W, rng, n=12):
    """Whole grid, single pixels, blocks across shard borders, the last (edge) pixels."""
    out = [(0, H, 0, W), (H - 1, H, W - 1, W), (0, 1, 0, 1), (1, H - 1, 2, W)]
    for _ in range(n):
        y0, x0 = int(rng.integers(0, H)), int(rng.integers(0, W))
        out.append((y0, int(rng.integers(y0 + 1, H + 1)), x0, int(rng.integers(x0 + 1, W + 1))))
    return out


def _assert_same_as_zarr(st, kind):
    arr = zarr.open_group(str(st.path), mode="r")[kind]
    assert shards.pixel_level(arr) == 3  # the direct path is the one under test
    H, W = arr.shape[:2]
    for y0, y1, x0, x1 in _blocks(H, W, np.random.default_rng(H * W)):
        vals, _, _ = st.read_block(kind, y0, y1, x0, x1)
        ref = np.asarray(arr[y0:y1, x0:x1])
        assert vals.dtype == ref.dtype and vals.shape == ref.shape
        assert np.array_equal(vals, ref, equal_nan=True), (kind, y0, y1, x0, x1)


def test_fixture_stores_read_as_zarr_reads_them(tmp_path):
    """zarr-written stores: edge shards (10×7 pixels in tiles of 4), tiles never written (NaN)."""
    fx = make_store(tmp_path / "s.zarr", H=10, W=7, tile=4, missing_col_tiles=((1, 0), (2, 1)),
                    missing_row_tiles=((0, 1),))
    assert not (fx.path / "columns/c/1/0/0/0/0/0").exists()
    st = open_store(fx.path)
    for kind in ("columns", "rows"):
        _assert_same_as_zarr(st, kind)
    vals, _, _ = st.read_block("columns", 4, 8, 0, 4)
    assert np.isnan(vals).all()  # a tile never written reads as the fill value


def test_inner_chunks_left_out_read_as_fill_value(tmp_path):
    """zarr leaves an all-NaN inner chunk out of a shard (index entry 2⁶⁴−1, 2⁶⁴−1)."""
    fx = make_store(tmp_path / "s.zarr", H=8, W=8, tile=4)
    arr = zarr.open_group(str(fx.path), mode="r+")["columns"]  # write_empty_chunks off
    block = np.asarray(arr[0:4, 0:4]).copy()
    block[1, 2] = np.nan
    block[3, 3, 0] = np.nan  # partly NaN: stored
    arr[0:4, 0:4] = block
    tail = (fx.path / "columns/c/0/0/0/0/0/0").read_bytes()[-(16 * 16 + 4):-4]
    index = np.frombuffer(tail, "<u8").reshape(4, 4, 2)
    assert (index[1, 2] == MAX).all() and (index[3, 3] != MAX).all()
    st = open_store(fx.path)
    _assert_same_as_zarr(st, "columns")
    vals, _, _ = st.read_block("columns", 0, 4, 0, 4)
    assert np.isnan(vals[1, 2]).all() and np.array_equal(vals, block, equal_nan=True)


@pytest.mark.parametrize("name, window, shape_in, shape_out, tile, dtype", [
    ("rows", 6, (1, 13, 11), (1, 39, 33), 8, "float32"),      # edge tiles (39 = 4·8 + 7)
    ("columns", 5, (3, 10, 9), (3, 20, 18), 4, "float64"),
    ("columns", "full", (2, 5, 6), (1, 10, 12), 2, "float32"),
])
def test_precompute_shards_read_as_zarr_reads_them(tmp_path, name, window, shape_in, shape_out,
                                                   tile, dtype):
    """Shards written by precompute's own writer (LocalTileStore.write_tile), some tiles not written."""
    lay = L.make_layout(name, window, tile, P.Selection(), shape_in, shape_out, 2.0, 0.0,
                        np.dtype(dtype).itemsize)
    g = SC.create_store(open_tiles(tmp_path / "s.zarr"), attrs={}, dtype=dtype, input=np.zeros(shape_in),
                       output=np.zeros(shape_out), residual=None,
                       display_input=np.zeros((2, 2, 3), np.uint8), display_output=None,
                       layouts=[lay])
    rng = np.random.default_rng(1)
    for k, t in enumerate(lay.tiles()):
        if k % 3 == 1:
            continue  # a partly written store
        th, tw = t.shape
        b = rng.standard_normal((th, tw) + lay.chunk[2:]).astype(dtype)
        b[0, 0] = np.nan  # left out of the shard
        LocalTileStore(tmp_path / "s.zarr").write_tile(
            g, lay, t, b, np.zeros((th, tw, 2), np.int32),
            np.zeros((th, tw, lay.probe_shape[0]), dtype))
    arr = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")[name]
    level = shards.pixel_level(arr)
    assert level == 3
    Th, Tw = arr.shards[:2]
    for t in lay.tiles():
        f = tmp_path / "s.zarr" / name / arr.metadata.encode_chunk_key((t.ty, t.tx, 0, 0, 0, 0))
        for ys, xs in (((0, Th), (0, Tw)), ((1, Th), (0, 1)), ((0, 1), (1, Tw))):
            got = shards.read_pixels(f, tuple(arr.shards), arr.dtype, level, ys, xs)
            ref = np.asarray(arr[t.y0 + ys[0]:t.y0 + ys[1], t.x0 + xs[0]:t.x0 + xs[1]])
            if got is None:
                assert not f.exists() and np.isnan(ref).all()
                continue
            got = got.reshape(ys[1] - ys[0], xs[1] - xs[0], *arr.shape[2:])
            h, w = ref.shape[:2]  # past the array's edge a shard holds fill values only
            assert np.isnan(got[h:]).all() and np.isnan(got[:, w:]).all()
            assert np.array_equal(got[:h, :w], ref, equal_nan=True)


def test_other_metadata_is_read_by_zarr(tmp_path):
    g = zarr.open_group(str(tmp_path / "x.zarr"), mode="w")
    a = g.create_array("a", shape=(4, 4, 2), chunks=(1, 1, 2), shards=(2, 2, 2), dtype="f4",
                       compressors=SC.codecs(), fill_value=0.0)
    assert shards.fast_path(a) == 3 and shards.pixel_level(a) is None  # fill value 0, not NaN
    b = g.create_array("b", shape=(4, 4, 2), chunks=(1, 1, 1), shards=(2, 2, 2), dtype="f4",
                       compressors=SC.codecs(), fill_value=np.nan)
    assert shards.pixel_level(b) is None  # inner chunks are not whole pixels
    c = g.create_array("c", shape=(4, 4, 2), chunks=(1, 1, 2), shards=(2, 2, 2), dtype="f4",
                       compressors=SC.codecs(), fill_value=np.nan)
    assert shards.pixel_level(c) == 3


def test_frame_content_size_of_real_frames():
    from numcodecs.zstd import Zstd

    for n in (0, 1, 255, 256, 257, 65_791, 65_792, 1 << 20):
        frame = Zstd(level=3).encode(np.arange(n, dtype=np.uint8))
        assert shards.frame_content_size(frame) == n
    with pytest.raises(shards.ShardError, match="not a zstd frame"):
        shards.frame_content_size(b"\x00" * 16)


# -- damage -------------------------------------------------------------------------------------

def _rewrite(path, n_inner, change):
    """Re-lay a shard file after ``change(k, payload) -> payload`` on its inner chunks, with
    correct offsets and checksums (a well-formed shard whose chunks say something else)."""
    data = path.read_bytes()
    index = np.frombuffer(data[-(16 * n_inner + 4):-4], "<u8").reshape(-1, 2).copy()
    parts, pos = [], 0
    for k, (o, n) in enumerate(index.tolist()):
        if o == MAX:
            continue
        payload = change(k, data[o:o + n - 4])
        chunk = payload + np.uint32(google_crc32c.value(payload)).tobytes()
        index[k] = (pos, len(chunk))
        parts.append(chunk)
        pos += len(chunk)
    ib = index.tobytes()
    path.write_bytes(b"".join(parts) + ib + np.uint32(google_crc32c.value(ib)).tobytes())


def _without_content_size(frame: bytes) -> bytes:
    """The same zstd frame with its header saying no content size (legal zstd, which neither
    zarr nor precompute writes): single-segment off, a window descriptor of 128 KiB."""
    fhd = frame[4]
    single = (fhd >> 5) & 1
    did = (0, 1, 2, 4)[fhd & 3]
    fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    head = 5 + (0 if single else 1)
    body = frame[head + did + fcs:]
    return frame[:4] + bytes([fhd & 0b00000111]) + b"\x38" + frame[head:head + did] + body


@pytest.fixture
def store8(tmp_path):
    fx = make_store(tmp_path / "s.zarr", H=8, W=8, tile=4)
    return fx.path, fx.path / "columns/c/0/1/0/0/0/0"


def _damage(path, shard, tmp_path, st=None):
    st = st or open_store(path)
    with pytest.raises(StoreError) as e:
        st.read_block("columns", 0, 8, 0, 8)
    msg = str(e.value)
    assert "\n" not in msg and "cannot read 'columns' tile (0, 1)" in msg
    assert "columns/c/0/1/0/0/0/0 is damaged" in msg and "precompute run" in msg
    return msg


def test_flipped_byte_in_an_inner_chunk_is_damage(store8, tmp_path):
    path, shard = store8
    data = bytearray(shard.read_bytes())
    data[40] ^= 0x01
    shard.write_bytes(bytes(data))
    assert "checksum mismatch" in _damage(path, shard, tmp_path)


def test_flipped_byte_in_the_index_is_damage(store8, tmp_path):
    path, shard = store8
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0x80
    shard.write_bytes(bytes(data))
    assert "shard index checksum mismatch" in _damage(path, shard, tmp_path)


def test_index_pointing_outside_is_damage(store8, tmp_path):
    path, shard = store8
    data = shard.read_bytes()
    index = np.frombuffer(data[-(16 * 16 + 4):-4], "<u8").copy().reshape(-1, 2)
    index[5] = (len(data), 8)
    index[6] = (MAX - 2, 8)  # no wrap-around past 2⁶⁴
    ib = index.tobytes()
    shard.write_bytes(data[:-(16 * 16 + 4)] + ib + np.uint32(google_crc32c.value(ib)).tobytes())
    assert "points outside the shard" in _damage(path, shard, tmp_path)


def test_truncated_and_linked_shards_are_damage(store8, tmp_path):
    path, shard = store8
    data = shard.read_bytes()
    shard.write_bytes(data[:100])
    assert "shorter than its" in _damage(path, shard, tmp_path)
    shard.write_bytes(data)
    st = open_store(path)  # a link is refused at open; here one appears after it
    other = tmp_path / "elsewhere"
    other.write_bytes(data)
    shard.unlink()
    os.symlink(other, shard)
    assert "symbolic link" in _damage(path, shard, tmp_path, st)


def test_a_frame_declaring_another_size_is_damage_not_an_allocation(store8, tmp_path):
    """A chunk with a valid checksum whose zstd header claims 2⁴⁰ bytes: refused from the header,
    before numcodecs would allocate what it says."""
    path, shard = store8

    def huge(k, payload):
        if k != 3:
            return payload
        fhd = payload[4]
        single = (fhd >> 5) & 1
        pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
        size = (1 if single else 0, 2, 4, 8)[fhd >> 6]
        body = payload[pos + size:]
        # FCS of 8 bytes (flag 3), single segment kept
        return payload[:4] + bytes([(fhd & 0b00111111) | 0b11000000]) + payload[5:pos] + \
            (1 << 40).to_bytes(8, "little") + body

    _rewrite(shard, 16, huge)
    assert "decodes to 1099511627776 bytes" in _damage(path, shard, tmp_path)


def test_frames_without_content_size_fall_back_to_zarr(store8, tmp_path):
    path, shard = store8
    before = np.asarray(zarr.open_group(str(path), mode="r")["columns"][...])
    _rewrite(shard, 16, lambda k, p: _without_content_size(p) if k % 2 else p)
    arr = zarr.open_group(str(path), mode="r")["columns"]
    after = np.asarray(arr[...])
    assert np.array_equal(after, before, equal_nan=True)  # zarr still reads the rewritten frames
    with pytest.raises(shards.NotDirect):
        shards.read_pixels(shard, tuple(arr.shards), arr.dtype, 3, (0, 4), (0, 4))
    vals, _, _ = open_store(path).read_block("columns", 0, 8, 0, 8)
    assert np.array_equal(vals, before, equal_nan=True)


def test_site_build_reports_a_damaged_shard_in_one_line(store8, tmp_path):
    import subprocess
    import sys

    path, shard = store8
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x10
    shard.write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "-m", "sitegen.cli", "build", "--quiet", str(path),
                        "-o", str(tmp_path / "site")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "is damaged" in r.stderr, r.stderr
    shutil.rmtree(tmp_path / "site", ignore_errors=True)
