"""The local-file tile store: a store is a folder of Zarr v3 files (docs/FORMAT.md).

The one place (with the checksum reader :mod:`precompute.integrity` it calls) that knows a store
is files: a tile is done when its shard file exists intact; a shard is written to
``<key>.<uuid>.partial`` and renamed into place, as zarr's LocalStore does, so it exists whole
or not at all; creation and metadata updates take an ``fcntl`` lock on ``.<name>.lock`` beside
the store (released by the kernel when its holder dies, so a SIGKILL never leaves it locked);
free space is ``shutil.disk_usage``; ``*.partial`` leftovers of killed writers are found with
``rglob``. Implements :class:`precompute.tile_store.TileStore`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Iterator

import zarr

from precompute import integrity
from precompute import store_create as SC
from precompute import store_format
from precompute import store_resume as SR
from precompute.errors import StoreError, UserError


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (its nearest existing parent).

    ``LINEARSCOPE_FREE_BYTES`` overrides the measurement (tests and dry planning).
    """
    from precompute.environment import env_int

    env = env_int("LINEARSCOPE_FREE_BYTES")
    if env is not None:
        return env
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


class LocalTileStore:
    """A store in the folder ``path`` on the local file system."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"LocalTileStore({str(self.path)!r})"

    def _file(self, key: str) -> Path:
        return self.path / key if key else self.path

    # the store as a whole -------------------------------------------------------------------
    def group(self, mode: str = "r") -> zarr.Group:
        return zarr.open_group(str(self.path), mode=mode)

    def create(self, attributes: dict) -> zarr.Group:
        return zarr.open_group(str(self.path), mode="w", attributes=attributes)

    def exists(self) -> bool:
        return self.path.exists()

    def is_empty(self) -> bool:
        if not self.path.is_dir():
            return not self.path.exists()
        return not any(self.path.iterdir())

    def has(self, key: str) -> bool:
        f = self._file(key)
        return f.exists() or f.is_symlink()

    def has_group(self, key: str = "") -> bool:
        """A group's metadata (``zarr.json``, a regular file) is stored at ``key``."""
        return (self._file(key) / "zarr.json").is_file()

    def read_attrs(self) -> dict:
        """The group attributes, read from its ``zarr.json`` with a one-line StoreError for
        anything unreadable (missing, empty, truncated, not a group)."""
        path = self.path
        meta = path / "zarr.json"
        if not meta.is_file():
            raise StoreError(f"no LinearScope store at {path}")
        try:
            return store_format.root_attributes(path)  # bounded size and nesting
        except store_format.FormatError as e:
            raise StoreError(str(e)) from None

    def remove(self, key: str = "") -> None:
        f = self._file(key)
        if f.exists():
            shutil.rmtree(f)

    def check_writable(self) -> None:
        """Refuse early (before any work, without creating anything) an output directory we
        cannot write."""
        directory = self.path.parent
        p = directory
        while not p.exists() and p != p.parent:
            p = p.parent
        if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
            raise UserError(f"cannot write to the output directory {directory}: "
                            f"{p} is {'not a directory' if not p.is_dir() else 'not writable'}")
        if os.statvfs(p).f_blocks == 0:  # /proc, /sys: root may "write" there, nothing is stored
            raise UserError(f"cannot write to the output directory {directory}: {p} is on a "
                            "virtual file system without storage (such as /proc or /sys)")

    def free_bytes(self) -> int:
        return free_disk_bytes(self.path.parent)

    @contextlib.contextmanager
    def lock(self):
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path.with_name(f".{path.name}.lock"), "a+")
        except OSError as e:
            raise UserError(f"cannot write to the output directory {path.parent}: "
                            f"{e.strerror}") from None
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Regular files under ``prefix`` (links are not followed), relative to the store."""
        for f in self._file(prefix).rglob("*"):
            if stat.S_ISREG(f.lstat().st_mode):
                yield f.relative_to(self.path).as_posix()

    def size(self) -> int:
        """Bytes of the store's regular files (links are not followed)."""
        return sum(self._file(k).lstat().st_size for k in self.keys())

    # tiles -----------------------------------------------------------------------------------
    def tile_problem(self, arrays, name: str, ty: int, tx: int, full: bool = True) -> str | None:
        return integrity.tile_problem(self.path, arrays, name, ty, tx, full)

    def tile_done(self, arrays, lay, tile, full: bool = True) -> bool:
        return SR.tile_done(self, arrays, lay, tile, full)

    def write_tile(self, group, lay, tile, block, origin, outside) -> None:
        SC.write_tile(group, lay, tile, block, origin, outside, put=self.put)

    def put(self, key: str, data: bytes | None) -> None:
        """Write one file atomically (a ``*.partial`` file renamed into place, as zarr's
        LocalStore does); None: remove it (an all-fill shard, as zarr)."""
        path = self._file(key)
        if data is None:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def read(self, key: str) -> bytes:
        return self._file(key).read_bytes()

    # integrity and resuming ------------------------------------------------------------------
    def key_problem(self, key: str, array, full: bool = True) -> str | None:
        return integrity.file_problem(self._file(key), array, full)

    def delete(self, key: str) -> None:
        f = self._file(key)
        if f.is_dir() and not f.is_symlink():  # a folder where the file belongs (inside the
            shutil.rmtree(f)  # store: its folders are checked not to be links)
        else:
            f.unlink()

    def clear_damaged(self, arrays, lay, tiles: list) -> list[str]:
        return SR.clear_damaged(self, arrays, lay, tiles)

    def remove_partials(self, names: list[str], owned: set[tuple[str, int, int]] | None,
                        root: bool) -> int:
        """Delete ``*.partial`` leftovers of killed writers; return how many.

        With ``owned`` (a set of (analysis, ty, tx)) only files of those tiles are touched, so a
        process never deletes the in-flight temporary file of another shard process. ``root``:
        also the group-level leftovers (metadata, small arrays), for the metadata process.
        """
        n = 0
        path = self.path
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

    def format_problem(self, group, attrs: dict) -> str | None:
        """docs/FORMAT.md checked on what is stored: attributes, links, array metadata."""
        return store_format.store_problem(self.path, group, attrs,
                                          files_allowed=store_format.TILED)

    def core_damage(self, group, attrs: dict) -> list[str]:
        return SR.core_damage(self, group, attrs)

    def check(self) -> integrity.Report:
        return integrity.check_store(self.path)
