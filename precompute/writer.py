"""Writing: finished tiles go through a bounded queue to writer threads; one lock per store.

Compression (zstd releases the GIL) and disk never stall the device. Tiles are written through
the store's tile store (:mod:`precompute.tile_store`), which makes each shard appear atomically.
Store creation and metadata updates are serialised between processes (``--shard``, torchrun) by
:func:`store_lock`, the tile store's lock.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

from precompute.errors import UserError
from precompute.tile_store import TileStore, open_tiles




class Writer:
    """Writes finished tiles from a bounded queue, so compression and disk never stall the device.

    The queue holds at most ``depth`` tiles (bounded memory); ``put`` blocks only when the disk
    is slower than the device. A writer error is re-raised in the computing thread.
    """

    def __init__(self, group, threads: int, depth: int, tiles: TileStore):
        self.group = group
        self.tiles = tiles
        self.q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.error: BaseException | None = None
        self.written = 0
        self.seconds = 0.0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _loop(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue
            lay, tile, block, origin, outside = item
            t0 = time.perf_counter()
            try:
                self.tiles.write_tile(self.group, lay, tile, block, origin, outside)
            except BaseException as e:  # noqa: BLE001 — handed to the computing thread
                self.error = e
            with self._lock:
                self.written += 1
                self.seconds += time.perf_counter() - t0

    def put(self, item) -> None:
        self.raise_error()
        self.q.put(item)

    def raise_error(self):
        if self.error is None:
            return
        if isinstance(self.error, OSError):  # disk full, permissions, ...: the user can fix it
            raise UserError(f"writing the store failed: {self.error}; finished tiles are kept, "
                            "fix this and run the same command to continue") from None
        raise RuntimeError(f"writing the store failed: {self.error!r}") from self.error

    def close(self) -> None:
        """Finish every queued tile (nothing computed is lost), then stop."""
        for _ in self.threads:
            self.q.put(None)
        for t in self.threads:
            t.join()
        self.raise_error()


def store_lock(path: Path):
    """Serialise store creation and metadata updates between processes (``--shard``): the lock
    of the store's tile store (on local files an flock, released by the kernel when its holder
    dies, so a SIGKILL never leaves the store locked)."""
    return open_tiles(path).lock()
