"""Writing and reading whole shards of ``columns`` / ``rows`` directly, byte for byte as zarr.

A tile of a store is one shard of one-pixel inner chunks (docs/FORMAT.md): 256 chunks for a
16×16 tile. zarr 3 encodes every inner chunk through its async pipeline, with a thread hop per
zstd call (~1 ms a chunk), which made writing — not probing — the slowest stage of a compressed
run. For the one codec chain LinearScope creates (``sharding_indexed`` with inner
``bytes(little) → zstd(level, no checksum) → crc32c`` and index ``bytes(little) → crc32c`` at the
end) :func:`encode_shard` produces the same bytes with the same libraries (numcodecs' Zstd,
google_crc32c) and zarr's own Morton order, in a tight loop; any other metadata falls back to
zarr (:func:`fast_path`). The tile store writes the encoded shard atomically
(:meth:`precompute.tile_store.TileStore.write_tile`; on local files like zarr's LocalStore,
``<key>.<uuid>.partial`` then renamed), so "a tile is done when its shard exists" still holds.

:func:`decode_shard` is the reverse, for the analyses that read every stored window back (the
SVD on the stored F, :mod:`precompute.stored_operator`): zarr's per-chunk overhead made reading
a 144×144 store's columns take longer than the SVD it feeds. Every inner chunk's crc32c and the
index's are checked, as zarr checks them.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

MAX_UINT_64 = np.iinfo(np.uint64).max


def fast_path(array) -> int | None:
    """The zstd level if ``array`` is sharded with exactly the codec chain above, else None."""
    try:
        meta = array.metadata.to_dict()
        (sharding,) = meta["codecs"]
        conf = sharding["configuration"]
        inner = conf["codecs"]
        ok = (sharding["name"] == "sharding_indexed"
              and conf.get("index_location", "end") == "end"
              and [c["name"] for c in inner] == ["bytes", "zstd", "crc32c"]
              and inner[0].get("configuration", {}).get("endian", "little") == "little"
              and not inner[1]["configuration"].get("checksum", False)
              and [c["name"] for c in conf["index_codecs"]] == ["bytes", "crc32c"]
              and conf["index_codecs"][0].get("configuration", {}).get("endian", "little") == "little"
              and not meta.get("storage_transformers")
              and meta["chunk_key_encoding"]["name"] == "default")
        return int(inner[1]["configuration"]["level"]) if ok else None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


@lru_cache(maxsize=8)
def _zstd(level: int):
    from numcodecs.zstd import Zstd

    return Zstd.from_config({"level": level, "checksum": False})  # as zarr's ZstdCodec


@lru_cache(maxsize=16)
def _order(chunks_per_shard: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    from zarr.codecs.sharding import morton_order_iter

    return tuple(tuple(int(v) for v in c) for c in morton_order_iter(chunks_per_shard))


def _crc(data: bytes) -> bytes:
    import google_crc32c

    return np.uint32(google_crc32c.value(data)).tobytes()  # little endian, as zarr


def encode_shard(block: np.ndarray, chunk_shape: tuple[int, ...], level: int) -> bytes | None:
    """The bytes of one shard holding ``block``, or None when every value is the fill value.

    As zarr does when an array is opened from its group (``write_empty_chunks`` is a runtime
    setting, off by default), an inner chunk that is entirely NaN (the fill value: pixels off
    the selection, or outside the array at its edges) is left out of the shard and reads as NaN.
    A computed filter is never all NaN, so a tile with a computed pixel always has its shard."""
    dt = np.asarray(block).dtype.newbyteorder("<")
    block = np.ascontiguousarray(block, dtype=dt)
    cps = tuple(s // c for s, c in zip(block.shape, chunk_shape))
    index = np.full(cps + (2,), MAX_UINT_64, dtype="<u8")
    zstd = _zstd(level)
    # our inner chunks are whole trailing axes (1, 1, C, C', wh, ww): each is one contiguous run
    # of the C-ordered block, so no copy per chunk; the fill-value test is vectorised
    per_chunk = block.size // max(1, int(np.prod(cps)))
    whole = all(c == 1 for c in chunk_shape[:2]) and tuple(chunk_shape[2:]) == block.shape[2:]
    if whole:
        flat = block.reshape(cps[:2] + (per_chunk,))
        empty = np.isnan(flat).all(-1) if block.dtype.kind == "f" else np.zeros(cps[:2], bool)
    parts, pos = [], 0
    for coords in _order(cps):
        if whole:
            if empty[coords[:2]]:
                continue
            raw = flat[coords[:2]]
        else:
            chunk = block[tuple(slice(i * c, (i + 1) * c) for i, c in zip(coords, chunk_shape))]
            if chunk.dtype.kind == "f" and np.isnan(chunk).all():
                continue
            raw = np.ascontiguousarray(chunk)
        comp = bytes(zstd.encode(raw))
        data = comp + _crc(comp)
        index[coords] = (pos, len(data))
        parts.append(data)
        pos += len(data)
    if not parts:
        return None
    index_bytes = index.tobytes()
    parts.append(index_bytes + _crc(index_bytes))
    return b"".join(parts)


class ShardError(ValueError):
    """A shard that does not decode: its index or a chunk fails its checksum, or points outside."""


def decode_shard(data: bytes, shard_shape: tuple[int, ...], chunk_shape: tuple[int, ...],
                 dtype, level: int) -> np.ndarray:
    """The block of one shard written by :func:`encode_shard` (or zarr, same codec chain), with
    NaN where an inner chunk is absent; :class:`ShardError` if a checksum or offset is wrong."""
    import google_crc32c

    dt = np.dtype(dtype).newbyteorder("<")
    cps = tuple(s // c for s, c in zip(shard_shape, chunk_shape))
    n = int(np.prod(cps))
    buf = np.frombuffer(data, np.uint8)  # read-only views: what google_crc32c accepts
    size = 16 * n + 4
    if len(buf) < size:
        raise ShardError(f"shorter ({len(buf)} bytes) than its {size}-byte index")
    index_bytes = buf[len(buf) - size:len(buf) - 4]
    if google_crc32c.value(index_bytes) != int(buf[len(buf) - 4:].view("<u4")[0]):
        raise ShardError("shard index checksum mismatch")
    index = index_bytes.view("<u8").reshape(cps + (2,))
    out = np.full(shard_shape, np.nan, dtype=dt)
    whole = all(c == 1 for c in chunk_shape[:2]) and tuple(chunk_shape[2:]) == tuple(shard_shape[2:])
    flat = out.reshape(cps[:2] + (-1,)) if whole else None
    zstd = _zstd(level)
    end = len(buf) - size
    for coords in np.argwhere(index[..., 0] != MAX_UINT_64):
        offset, length = (int(v) for v in index[tuple(coords)])
        if length < 4 or offset + length > end:
            raise ShardError(f"inner chunk {tuple(coords)} points outside the shard")
        chunk = buf[offset:offset + length]
        if google_crc32c.value(chunk[:-4]) != int(chunk[-4:].view("<u4")[0]):
            raise ShardError(f"inner chunk {tuple(coords)} checksum mismatch")
        raw = np.frombuffer(zstd.decode(chunk[:-4]), dtype=dt)
        if whole:
            flat[tuple(coords[:2])] = raw
        else:
            sl = tuple(slice(int(i) * c, (int(i) + 1) * c) for i, c in zip(coords, chunk_shape))
            out[sl] = raw.reshape(chunk_shape)
    return out


# ---------------------------------------------------------------------------------------------
# Reading part of a shard of one-pixel inner chunks (sitegen's filter tiles).


class NotDirect(Exception):
    """A shard this reader does not decode itself (a zstd frame without its content size, which
    neither zarr nor :func:`encode_shard` writes): the caller reads it with zarr instead."""


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def frame_content_size(frame) -> int | None:
    """The decoded size a zstd frame declares in its header (RFC 8878 §3.1.1.1), None when the
    header has no Frame_Content_Size; :class:`ShardError` for bytes that are not a zstd frame.
    Read before decoding so that a hostile chunk cannot make us allocate more than its window:
    numcodecs allocates whatever the header says."""
    head = bytes(frame[:18])
    if len(head) < 5 or head[:4] != _ZSTD_MAGIC:
        raise ShardError("not a zstd frame")
    fhd = head[4]
    single = (fhd >> 5) & 1
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]   # window descriptor, dictionary id
    size = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    if size == 0:
        return None
    if len(head) < pos + size:
        raise ShardError("truncated zstd frame header")
    value = int.from_bytes(head[pos:pos + size], "little")
    return value + 256 if size == 2 else value


def pixel_level(array) -> int | None:
    """The zstd level when ``array`` is a LinearScope ``columns`` / ``rows`` array exactly as
    ``precompute/store.py`` creates it (docs/FORMAT.md): the codec chain of :func:`fast_path`,
    a float dtype with fill value NaN, inner chunks of one pixel holding every trailing axis.
    None otherwise (read it with zarr)."""
    level = fast_path(array)
    try:
        shard, inner = tuple(array.shards or ()), tuple(array.metadata.codecs[0].chunk_shape)
        dtype = np.dtype(array.dtype)
        fill = array.metadata.fill_value
        ok = (len(shard) >= 2 and inner == (1, 1, *shard[2:])
              and tuple(shard[2:]) == tuple(array.shape[2:])
              and dtype.kind == "f" and np.isnan(fill))
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    return level if ok else None


def _open_regular(path: Path) -> int | None:
    """A read-only descriptor of a regular file, None when there is none; links are never
    followed (a received store must not make us read outside it)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        if path.is_symlink():
            raise ShardError("a symbolic link (not followed)") from None
        raise ShardError(f"unreadable ({e.strerror})") from None
    return fd


def _pread(fd: int, n: int, at: int) -> bytes:
    data = os.pread(fd, n, at)
    if len(data) != n:
        raise ShardError("shorter than its index says (changed while read?)")
    return data


def read_pixels(path: Path, shard_shape: tuple[int, ...], dtype, level: int,
                ys: tuple[int, int], xs: tuple[int, int]) -> np.ndarray | None:
    """Pixels ``[ys[0]:ys[1], xs[0]:xs[1]]`` (shard-local) of a shard of one-pixel inner chunks
    (:func:`pixel_level`), NaN where an inner chunk is absent; None when the shard file does not
    exist (all fill value). One read of the index at the end of the file and one of the span of
    the chunks needed; every index entry is bounds-checked, the index's and every decoded
    chunk's crc32c verified, as zarr does; any damage is a :class:`ShardError`."""
    import google_crc32c

    dt = np.dtype(dtype).newbyteorder("<")
    th, tw = shard_shape[:2]
    per = int(np.prod(shard_shape[2:]))
    index_size = 16 * th * tw + 4
    limit = 2 * th * tw * per * dt.itemsize + (1 << 20)  # as precompute/integrity.py
    fd = _open_regular(Path(path))
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        if not (st.st_mode & 0o170000) == 0o100000:
            raise ShardError("not a regular file")
        if st.st_size < index_size:
            raise ShardError(f"{st.st_size} bytes, shorter than its {index_size}-byte index")
        if st.st_size > limit:
            raise ShardError(f"{st.st_size} bytes, more than any shard of this array can take")
        end = st.st_size - index_size
        tail = np.frombuffer(_pread(fd, index_size, end), np.uint8)
        if google_crc32c.value(tail[:-4]) != int(tail[-4:].view("<u4")[0]):
            raise ShardError("shard index checksum mismatch")
        index = tail[:-4].view("<u8").reshape(th, tw, 2)
        present = ~((index[..., 0] == MAX_UINT_64) & (index[..., 1] == MAX_UINT_64))
        offsets, lengths = index[..., 0], index[..., 1]
        # no uint64 wrap-around: each term is compared with `end` on its own first
        bad = present & ((offsets > end) | (lengths > end) | (offsets + np.minimum(lengths, end) > end)
                         | (lengths < 4))
        if bad.any():
            raise ShardError(f"inner chunk {tuple(int(v) for v in np.argwhere(bad)[0])} points "
                             "outside the shard")
        want = np.zeros_like(present)
        want[ys[0]:ys[1], xs[0]:xs[1]] = True
        want &= present
        out = np.full((ys[1] - ys[0], xs[1] - xs[0], per), np.nan, dt)
        if not want.any():
            return out
        lo = int(offsets[want].min())
        raw = _pread(fd, int((offsets[want] + lengths[want]).max()) - lo, lo)
    finally:
        os.close(fd)
    zstd = _zstd(level)
    span = np.frombuffer(raw, np.uint8)
    offs, lens = offsets.tolist(), lengths.tolist()  # Python ints: the loop is per inner chunk
    for y, x in zip(*(c.tolist() for c in np.nonzero(want))):
        o, n = offs[y][x] - lo, lens[y][x]
        payload = span[o:o + n - 4]  # a read-only view, as google_crc32c wants
        if google_crc32c.value(payload) != int.from_bytes(raw[o + n - 4:o + n], "little"):
            raise ShardError(f"inner chunk {(y, x)} checksum mismatch")
        dst = out[y - ys[0], x - xs[0]]
        size = frame_content_size(payload)
        if size is None:
            raise NotDirect
        if size != dst.nbytes:
            raise ShardError(f"inner chunk {(y, x)} decodes to {size} bytes, not {dst.nbytes}")
        try:
            zstd.decode(payload, out=dst)
        except Exception as e:  # noqa: BLE001 — numcodecs raises RuntimeError/ValueError
            raise ShardError(f"inner chunk {(y, x)} does not decode ({e})") from None
    return out
