"""The site folder: files written only when their bytes change, and a manifest of what a build
wrote so that the next build removes what it no longer makes (and nothing else, ever)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from sitegen.util import BuildError, atomic_write

MANIFEST = ".linearscope-build.json"


class SiteWriter:
    """Writes files under ``out`` only when their bytes change; removes what is no longer built.

    A site folder may come from someone else, so nothing outside ``out`` is ever touched: paths
    are relative and free of ``..``; no symbolic link inside the folder is followed — a link
    where a folder must be is an error, a link where a file goes is replaced by the file (the
    link itself, never its target), and the manifest of a previous build only ever removes
    regular files reached through real folders.
    """

    def __init__(self, out: Path):
        self.out = out
        self.files: dict[str, int] = {}
        self.written = 0
        self.unchanged = 0
        self.removed = 0
        self.skipped = 0  # manifest entries that could not be ours (never removed)
        self._folders: set[Path] = set()
        out.mkdir(parents=True, exist_ok=True)  # the folder the user named (may be a link)

    @staticmethod
    def _parts(rel: str) -> list[str] | None:
        """The components of a site-relative path, or None if it could leave the folder."""
        if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
            return None
        parts = rel.split("/")
        return None if any(p in ("", ".", "..") for p in parts) else parts

    def _folder(self, parts: list[str], create: bool) -> Path | None:
        """The real folder ``out/parts…`` (made when ``create``), or None if it does not exist;
        BuildError where a link or a file stands in the way of writing."""
        d = self.out
        for part in parts:
            d = d / part
            if d in self._folders:
                continue
            if d.is_symlink():
                if not create:
                    return None
                raise BuildError(f"{d} is a symbolic link; sitegen never writes through links "
                                 "inside the output folder: remove it (or choose another -o)")
            if not d.is_dir():
                if not create:
                    return None
                if d.exists():
                    raise BuildError(f"{d} is in the way of the site's folder {d.name}/")
                d.mkdir()
            self._folders.add(d)
        return d

    def write(self, rel: str, data: bytes) -> None:
        parts = self._parts(rel)
        if parts is None:
            raise BuildError(f"refusing to write outside the site: {rel!r}")
        path = self._folder(parts[:-1], create=True) / parts[-1]
        self.files[rel] = len(data)
        try:
            st = path.lstat()
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise BuildError(f"{path} is a folder where the site has a file")
        if (st is not None and stat.S_ISREG(st.st_mode) and st.st_size == len(data)
                and path.read_bytes() == data):
            self.unchanged += 1
            return
        atomic_write(path, data)
        self.written += 1

    def finish(self) -> None:
        for rel in read_manifest(self.out):
            if rel in self.files or rel == MANIFEST:
                continue
            parts = self._parts(rel)
            folder = self._folder(parts[:-1], create=False) if parts else None
            p = folder / parts[-1] if folder is not None else None
            if p is None or not p.is_file() or p.is_symlink():
                self.skipped += 1
                continue
            p.unlink()
            self.removed += 1
        data = json.dumps({"files": sorted(self.files)}, indent=0).encode() + b"\n"
        self.write(MANIFEST, data)

    def existing_size(self, rel: str) -> int | None:
        """Size of the regular file a previous build left at ``rel`` (not through links)."""
        parts = self._parts(rel)
        folder = self._folder(parts[:-1], create=False) if parts else None
        try:
            st = (folder / parts[-1]).lstat() if folder is not None else None
        except OSError:
            return None
        return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else None

    def keep(self, rel: str, size: int) -> None:
        """Count a file this build makes, known unchanged without producing its bytes."""
        self.files[rel] = size
        self.unchanged += 1

    @property
    def total(self) -> int:
        return sum(self.files.values())


def read_manifest(out: Path) -> list[str]:
    """The files a previous build listed (only strings; a link or an unreadable manifest is
    ignored: nothing is removed on its word)."""
    man = out / MANIFEST
    try:
        if man.is_symlink() or not man.is_file():
            return []
        files = json.loads(man.read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []
