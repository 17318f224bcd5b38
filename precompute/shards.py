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

from functools import lru_cache

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
