"""The storage seam (precompute/tile_store.py): a run reaches the store's bytes only through a
TileStore, so another backend replaces the local files in one place."""

from __future__ import annotations

import re
from pathlib import Path

import precompute
from precompute import tile_store
from precompute.local_tiles import LocalTileStore
from sweep_helpers import cli, make_image, write_config

REPO = Path(__file__).resolve().parents[1]


class Recording:
    """A local tile store that records every operation called on it (name, key arguments)."""

    def __init__(self, path: Path, log: list):
        self.inner = LocalTileStore(path)
        self.path = self.inner.path
        self.log = log

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*a, **kw):
            tile = next((x for x in a if hasattr(x, "ty") and hasattr(x, "tx")), None)
            self.log.append((name, None if tile is None else (tile.ty, tile.tx)))
            return attr(*a, **kw)

        return call


def _cfg(tmp_path: Path) -> Path:
    make_image(tmp_path / "img.png", 6, 6, seed=4)
    return write_config(
        tmp_path / "c.yaml", name="d", model={"arch": "bicubic", "scale": 2}, image="img.png",
        dtype="float32", batch=4, output=str(tmp_path / "out"),
        analyses={"residual": True, "columns": {"window": 4, "tile": 2}, "rows": False},
    )


def _run(cfg: Path) -> tuple[list, object]:
    log: list = []
    with tile_store.backend(lambda p: Recording(p, log)):
        r = cli("run", "-q", cfg)
    assert r.exit_code == 0, r.stderr
    return log, r


def test_a_run_goes_through_the_tile_store(tmp_path):
    cfg = _cfg(tmp_path)
    log, _ = _run(cfg)
    names = [n for n, _ in log]
    st = precompute.open_store(tmp_path / "out" / "d.zarr")
    assert isinstance(st.tiles, tile_store.TileStore)  # the local backend has every operation
    planned = {(t.ty, t.tx) for t in st.planned_tiles("columns")}
    assert len(planned) == 9 and st.is_complete()
    # every tile was written through the tile store, once
    written = [t for n, t in log if n == "write_tile"]
    assert sorted(written) == sorted(planned)
    for op in ("check_writable", "free_bytes", "lock", "remove_partials", "clear_damaged"):
        assert op in names, op
    # the lock is taken before the first tile is written
    assert names.index("lock") < names.index("write_tile")

    # resuming a finished store: every tile asked "done?" through the tile store, none written
    log, r = _run(cfg)
    assert "already done" in r.stdout
    assert {t for n, t in log if n == "tile_done"} == planned
    assert "write_tile" not in [n for n, _ in log]


def test_a_damaged_tile_is_cleared_and_written_again_through_the_tile_store(tmp_path):
    cfg = _cfg(tmp_path)
    _run(cfg)
    store = tmp_path / "out" / "d.zarr"
    shard = store / "columns" / "c" / "1" / "2" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # the shard's index: the tile is not done
    shard.write_bytes(bytes(data))
    log, _ = _run(cfg)
    assert [t for n, t in log if n == "write_tile"] == [(1, 2)]
    assert "clear_damaged" in [n for n, _ in log]
    assert precompute.open_store(store).is_complete()
    assert precompute.open_store(store).check_integrity().ok


def test_only_the_local_tile_store_touches_local_files():
    """fcntl locks, statvfs, rglob, disk usage and mtimes are the local backend's
    (precompute/local_tiles.py, with its checksum reader precompute/integrity.py)."""
    allowed = {"local_tiles.py", "integrity.py", "tile_store.py"}  # (tile_store: its docstring)
    pattern = re.compile(r"\b(fcntl|statvfs|rglob|disk_usage|st_mtime|shard_file)\b")
    found = sorted(f"{f.name}: {m.group(1)}" for f in (REPO / "precompute").rglob("*.py")
                   if f.name not in allowed for m in pattern.finditer(f.read_text()))
    assert not found, found


def _opened_outside_the_seam(monkeypatch) -> list:
    """Record every zarr group or array opened from a precompute module other than the tile
    store's own (local_tiles, and integrity, its checksum reader)."""
    import sys

    import zarr

    seam = {"precompute.local_tiles", "precompute.integrity"}
    foreign: list = []

    def watch(fn):
        def opened(*a, **kw):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("precompute") and caller not in seam:
                foreign.append((caller, fn.__name__, str(a[0]) if a else kw))
            return fn(*a, **kw)
        return opened

    for name in ("open_group", "open_array", "open", "group", "create_group"):
        monkeypatch.setattr(zarr, name, watch(getattr(zarr, name)))
    return foreign


def test_whole_f_analyses_and_summaries_open_stores_only_through_the_tile_store(tmp_path,
                                                                                  monkeypatch):
    """The SVD (its result and its resumable state), the classifier groups and the dataset
    summary store are reached through the tile store too: no precompute module but the local
    backend opens a store by its path."""
    from precompute.models.digits import SHIPPED_WEIGHTS
    from sweep_helpers import make_image, write_config

    make_image(tmp_path / "img.png", 6, 6, seed=4)
    svd_cfg = write_config(
        tmp_path / "s.yaml", name="s", model={"arch": "bicubic", "scale": 2}, image="img.png",
        dtype="float64", output=str(tmp_path / "out"),
        analyses={"columns": False, "rows": False, "svd": {"k": 2, "operator": "network",
                                                           "method": "block"}},
    )
    digits = REPO / "examples" / "images" / "digits"
    cls_cfg = write_config(
        tmp_path / "d.yaml", name="dg", model={"arch": "digits", "checkpoint": str(SHIPPED_WEIGHTS)},
        dtype="float64", images=str(digits / "[38]-*.png"), output=str(tmp_path / "out"),
        analyses={"classify": {"top_k": 2}},
    )
    foreign = _opened_outside_the_seam(monkeypatch)
    log: list = []
    with tile_store.backend(lambda p: Recording(p, log)):
        r = cli("run", "-q", svd_cfg, cls_cfg)
    assert r.exit_code == 0, r.output
    assert foreign == []
    assert (tmp_path / "out" / "dg.summary.zarr" / "zarr.json").is_file()
    assert precompute.open_store(tmp_path / "out" / "s.zarr").attrs["analyses"]["svd"]
    names = [n for n, _ in log]
    assert names.count("create") == 4  # three stores and the summary, each created once
