"""The storage seam: where a store's bytes live, behind the operations a run needs.

A LinearScope store is a Zarr group (docs/FORMAT.md); zarr reads and writes its arrays through
its own store abstraction. What a run needs *besides* zarr — and what used to assume the local
file system in ~10 places — is this protocol: whether a tile is done, writing a tile's shard
atomically, a lock serialising creation and metadata updates between processes (``--shard``),
the free space for the disk check, integrity (the damage of a tile or of the whole store, and
clearing damaged files of tiles left to do), and listing and sizing the store.

:func:`open_tiles` gives the tile store of a location; today that is always
:class:`precompute.local_tiles.LocalTileStore` (shard-file existence, an ``fcntl`` lock,
``statvfs``, ``rglob``). Another backend (an object store, say) implements :class:`TileStore`
and is returned by :func:`open_tiles` for its locations; :func:`backend` installs a factory for
the duration of a block (tests use it to record every call a run makes).

Keys are the store's relative Zarr keys (``columns/c/0/1/0/0/0/0``, ``classify/zarr.json``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager, Iterator, Protocol, runtime_checkable

from precompute.local_tiles import LocalTileStore

if TYPE_CHECKING:
    import numpy as np
    import zarr

    from precompute import integrity
    from precompute import probes as P
    from precompute.layout import Layout


@runtime_checkable
class TileStore(Protocol):
    """The operations on a store that the sweep, resuming and the integrity checks use."""

    #: the store's location (messages name it); for the local backend, the store's folder
    path: Path

    # the store as a whole -------------------------------------------------------------------
    def group(self, mode: str = "r") -> "zarr.Group":
        """The Zarr group (zarr does the array reads and writes)."""

    def create(self, attributes: dict) -> "zarr.Group":
        """A new, empty store with these root attributes (written with the group's metadata, in
        one write), replacing whatever was at the location."""

    def exists(self) -> bool:
        """Anything at the location (a store, an interrupted creation, or something else)."""

    def is_empty(self) -> bool:
        """Nothing at the location, or an empty folder."""

    def has(self, key: str) -> bool:
        """Whether ``key`` is stored (also when damaged: a link, a folder where a file belongs)."""

    def has_group(self, key: str = "") -> bool:
        """A group's metadata is stored at ``key`` (the store itself for ``""``)."""

    def read_attrs(self) -> dict:
        """The group attributes, with a one-line StoreError for anything unreadable."""

    def remove(self, key: str = "") -> None:
        """Delete ``key`` and everything under it (the whole store for ``""``)."""

    def check_writable(self) -> None:
        """Refuse (UserError) a location the store cannot be written to, creating nothing."""

    def free_bytes(self) -> int:
        """Bytes free where the store is (or will be) written."""

    def lock(self) -> ContextManager[None]:
        """Serialise store creation and metadata updates between processes; released when
        its holder dies."""

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every stored key under ``prefix`` (not following links)."""

    def size(self) -> int:
        """Bytes stored."""

    # tiles -----------------------------------------------------------------------------------
    def tile_problem(self, arrays, name: str, ty: int, tx: int, full: bool = True) -> str | None:
        """None when tile (ty, tx) of ``name`` is done and intact, ``integrity.MISSING`` when
        it was never written, else what is damaged. ``full=False``: the shard's index only."""

    def tile_done(self, arrays, lay: "Layout", tile: "P.Tile", full: bool = True) -> bool:
        """A tile is done when its shard is stored and intact (docs/FORMAT.md)."""

    def write_tile(self, group, lay: "Layout", tile: "P.Tile", block: "np.ndarray",
                   origin: "np.ndarray", outside: "np.ndarray") -> None:
        """Write one tile whole; its shard appears atomically (the tile's "done" mark)."""

    def read(self, key: str) -> bytes:
        """The stored bytes of ``key``."""

    # integrity and resuming ------------------------------------------------------------------
    def key_problem(self, key: str, array, full: bool = True) -> str | None:
        """Damage of one stored chunk or shard of ``array`` (checksums), or None."""

    def delete(self, key: str) -> None:
        """Delete one stored key (a damaged chunk, to be written anew)."""

    def clear_damaged(self, arrays, lay: "Layout", tiles: list) -> list[str]:
        """Delete the damaged keys of ``tiles`` (left to do); return them."""

    def remove_partials(self, names: list[str], owned: set | None, root: bool) -> int:
        """Delete what killed writers left half-written; return how many."""

    def format_problem(self, group, attrs: dict) -> str | None:
        """docs/FORMAT.md checked on what is stored (attributes, links, array metadata)."""

    def core_damage(self, group, attrs: dict) -> list[str]:
        """Damage outside the tiles (metadata, arrays written at creation)."""

    def check(self) -> "integrity.Report":
        """Every stored key checked against its checksums (``precompute verify``)."""


_factory: Callable[[Path], TileStore] = LocalTileStore


def open_tiles(path: str | Path) -> TileStore:
    """The tile store of the store at ``path`` (the local file system, unless :func:`backend`
    installed another)."""
    return _factory(Path(path))


@contextlib.contextmanager
def backend(factory: Callable[[Path], TileStore]):
    """Use ``factory`` (location → TileStore) for every store opened inside the block."""
    global _factory
    old, _factory = _factory, factory
    try:
        yield
    finally:
        _factory = old
